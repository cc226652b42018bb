"""Frames to model inputs, and the resizes of the published evaluation.

The published evaluation resizes each frame so that its shorter side is 480 (torchvision ``Resize(480)``
on a PIL image: PIL's antialiased bilinear filter, the longer side truncated to an int), the first mask
with nearest neighbour, and resizes the output probabilities back with ``F.interpolate(bilinear,
align_corners=False)``. These functions do the same with PIL and torch alone.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.dtype} {rgb.shape}")


def to_model_input(
    rgb: np.ndarray, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """ImageNet-normalized model input.

    Args:
        rgb: uint8 [H, W, 3].
        dtype, device: of the result (the model's); the arithmetic is done in float32.

    Returns:
        [3, H, W] tensor: ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per channel.
    """
    _check_rgb(rgb)
    image = torch.from_numpy(np.array(rgb, copy=True)).to(device)  # decoders may hand out read-only arrays
    image = image.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return ((image - mean) / std).to(dtype).contiguous()


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``size`` and the longer one scaled and truncated, as torchvision."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter_side(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """Resize uint8 [H, W, 3] so that its shorter side is ``size``, keeping the aspect ratio.

    ``size`` None or <= 0, or equal to the shorter side already, returns the image unchanged. PIL's
    bilinear filter is antialiased when shrinking (area-like), so this suits both directions.
    """
    _check_rgb(rgb)
    if size is None or size <= 0 or min(rgb.shape[:2]) == size:
        return rgb
    height, width = shorter_side_size(rgb.shape[0], rgb.shape[1], size)
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [H, W] labels to ``size`` = (H', W') by nearest neighbour (labels stay labels)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be H x W, got shape {labels.shape}")
    if tuple(labels.shape) == tuple(size):
        return labels
    image = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint8, copy=False)))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST))


def resize_prob(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize probabilities [C, h, w] to [C, H, W] (``size`` = (H, W)), bilinear, align_corners=False."""
    if prob.dim() != 3:
        raise ValueError(f"prob must be C x H x W, got shape {tuple(prob.shape)}")
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    resized = torch.nn.functional.interpolate(prob[None], size=tuple(size), mode="bilinear", align_corners=False)
    return resized[0]
