"""The faithful JointFormer model (inference only).

``ModelConfig`` is plain Python; the modules (``JointFormer``, ``soft_aggregate``) need torch and are
imported on first use, so that the torch-free runtime can read model configurations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jfdeploy.model.config import ModelConfig

if TYPE_CHECKING:
    from jfdeploy.model.jointformer import JointFormer, soft_aggregate

__all__ = ["JointFormer", "ModelConfig", "soft_aggregate"]


def __getattr__(name: str) -> Any:
    if name in ("JointFormer", "soft_aggregate"):
        from jfdeploy.model import jointformer

        return getattr(jointformer, name)
    raise AttributeError(f"module 'jfdeploy.model' has no attribute {name!r}")
