"""jfdeploy: JointFormer video object segmentation, made fast and measurable on NVIDIA GPUs.

    model = jfdeploy.load_model("jointformer.pth", topk=120)
    predictor = jfdeploy.VideoPredictor(model, size=480)        # or VideoPredictor(engines="engines/")
    result = predictor.step(rgb, objects=first_label_map)       # then predictor.step(rgb) for the next frames

``import jfdeploy`` needs no torch: the model, checkpoints and the torch backends are imported when first
used, so an engine directory runs where only numpy, pillow and onnxruntime are installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jfdeploy.errors import CheckpointError, InputError, JfDeployError
from jfdeploy.model.config import ModelConfig

if TYPE_CHECKING:
    from jfdeploy.model import JointFormer
    from jfdeploy.model.checkpoint import load_model, save_checkpoint
    from jfdeploy.predictor import Prediction, RunOptions, VideoPredictor
    from jfdeploy.segmenter import Segmenter

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "JfDeployError",
    "JointFormer",
    "ModelConfig",
    "Prediction",
    "RunOptions",
    "Segmenter",
    "VideoPredictor",
    "load_model",
    "save_checkpoint",
]

_LAZY = {
    "JointFormer": "jfdeploy.model",
    "load_model": "jfdeploy.model.checkpoint",
    "save_checkpoint": "jfdeploy.model.checkpoint",
    "Segmenter": "jfdeploy.segmenter",
    "VideoPredictor": "jfdeploy.predictor",
    "RunOptions": "jfdeploy.predictor",
    "Prediction": "jfdeploy.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jfdeploy' has no attribute {name!r}")
