"""Tensor names, symbolic shapes and dtypes of every stage graph: what export, the manifest,
TensorRT profiles and the engine runners agree on.

Symbols: ``objects`` (O), ``height``/``width`` (padded frame, multiples of 16), ``h16``/``w16`` =
H/16, W/16 (and h8, w8, h4, w4), ``ref_tokens`` = slots * h16 * w16, ``tokens`` = h16 * w16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jfdeploy.model.config import NUM_JOINT_BLOCKS
from jfdeploy.model.jointformer import EMBED_DIMS, NUM_HEADS
from jfdeploy.stages import STAGE_TYPES

C = EMBED_DIMS[2]
HEAD_DIM = C // NUM_HEADS
L = NUM_JOINT_BLOCKS

Dim = int | str
Shape = tuple[Dim, ...]

# stage -> tensor name -> symbolic shape (inputs then outputs, in the stage's order)
SHAPES: dict[str, dict[str, Shape]] = {
    "frame_encoder": {
        "frame": (1, 3, "height", "width"),
        "tokens": (1, C, "h16", "w16"),
        "f8": (1, EMBED_DIMS[1], "h8", "w8"),
        "f4": (1, EMBED_DIMS[0], "h4", "w4"),
    },
    "reference_encoder": {
        "frame": (1, 3, "height", "width"),
        "object_prob": ("objects", "height", "width"),
        "memory_token": ("objects", 1, C),
        "reference_keys": (L, "objects", NUM_HEADS, "tokens", HEAD_DIM),
        "reference_values": (L, "objects", NUM_HEADS, "tokens", HEAD_DIM),
        "memory_token_out": ("objects", 1, C),
    },
    "memory_reader": {
        "tokens": (1, C, "h16", "w16"),
        "reference_keys": (L, "objects", NUM_HEADS, "ref_tokens", HEAD_DIM),
        "reference_values": (L, "objects", NUM_HEADS, "ref_tokens", HEAD_DIM),
        "reference_valid": ("objects", "ref_tokens"),
        "f16": ("objects", C, "h16", "w16"),
    },
    "enhancer": {
        "f16": ("objects", C, "h16", "w16"),
        "memory_token": ("objects", 1, C),
        "enhanced_f16": ("objects", C, "h16", "w16"),
    },
    "decoder": {
        "f16": ("objects", C, "h16", "w16"),
        "f8": (1, EMBED_DIMS[1], "h8", "w8"),
        "f4": (1, EMBED_DIMS[0], "h4", "w4"),
        "enhanced_f16": ("objects", C, "h16", "w16"),
        "logits": ("objects", 1, "height", "width"),
        "decoder_tokens": ("objects", C, "h16", "w16"),
    },
    "memory_token_update": {
        "decoder_tokens": ("objects", C, "h16", "w16"),
        "memory_token": ("objects", 1, C),
        "memory_token_out": ("objects", 1, C),
    },
}
BOOL_TENSORS = {"reference_valid"}


@dataclass(frozen=True)
class Size:
    """A concrete point of the shape space."""

    objects: int
    height: int
    width: int
    slots: int  # memory slots (max_memory_frames + 1)

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 16:
            raise ValueError(f"frame size {self.height}x{self.width} must be positive multiples of 16")
        if self.objects < 1 or self.slots < 1:
            raise ValueError(f"objects and slots must be >= 1, got {self.objects}, {self.slots}")

    def value(self, dim: Dim) -> int:
        if isinstance(dim, int):
            return dim
        h16, w16 = self.height // 16, self.width // 16
        return {
            "objects": self.objects,
            "height": self.height,
            "width": self.width,
            "h16": h16,
            "w16": w16,
            "h8": 2 * h16,
            "w8": 2 * w16,
            "h4": 4 * h16,
            "w4": 4 * w16,
            "tokens": h16 * w16,
            "ref_tokens": self.slots * h16 * w16,
        }[dim]


def input_names(stage: str) -> tuple[str, ...]:
    return STAGE_TYPES[stage].input_names


def output_names(stage: str) -> tuple[str, ...]:
    return STAGE_TYPES[stage].output_names


def shape_at(stage: str, name: str, size: Size) -> tuple[int, ...]:
    return tuple(size.value(d) for d in SHAPES[stage][name])


def dynamic_axes(stage: str) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: every symbolic dimension of every input and output."""
    return {
        name: {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
        for name, shape in SHAPES[stage].items()
    }


def example_inputs(stage: str, size: Size, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple:
    """Random inputs of the stage at ``size`` (masks in [0, 1], validity all True)."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for name in input_names(stage):
        shape = shape_at(stage, name, size)
        if name in BOOL_TENSORS:
            inputs.append(torch.ones(shape, dtype=torch.bool))
        elif name == "object_prob":
            inputs.append(torch.rand(shape, generator=g, dtype=dtype))
        else:
            inputs.append(torch.randn(shape, generator=g, dtype=dtype))
    return tuple(inputs)
