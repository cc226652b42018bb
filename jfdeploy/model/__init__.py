"""The faithful JointFormer model (inference only)."""

from jfdeploy.model.config import ModelConfig
from jfdeploy.model.jointformer import JointFormer, soft_aggregate

__all__ = ["JointFormer", "ModelConfig", "soft_aggregate"]
