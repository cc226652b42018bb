"""jfdeploy: JointFormer video object segmentation, made fast and measurable on NVIDIA GPUs.

model = jfdeploy.load_model("jointformer.pth", topk=120)
seg = jfdeploy.Segmenter(model, mem_every=5, max_memory_frames=3, backend="eager")
prob = seg.step(frame, mask=first_mask)   # then seg.step(frame) for the next frames
"""

from jfdeploy.errors import CheckpointError, InputError, JfDeployError
from jfdeploy.model import JointFormer, ModelConfig
from jfdeploy.model.checkpoint import load_model, save_checkpoint
from jfdeploy.segmenter import Segmenter

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "JfDeployError",
    "JointFormer",
    "ModelConfig",
    "Segmenter",
    "load_model",
    "save_checkpoint",
]
