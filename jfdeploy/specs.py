"""Tensor names, symbolic shapes and dtypes of every stage graph: what export, the manifest,
TensorRT profiles and the engine runners agree on.

Dynamic symbols: ``objects`` (O), ``height``/``width`` (padded frame, multiples of 16), ``h16``/``w16`` =
H/16, W/16 (and h8, w8, h4, w4), ``ref_tokens`` = slots * h16 * w16, ``tokens`` = h16 * w16.
Static dimensions (channels, joint blocks, heads) are fixed by the model's architecture: ``Widths``
(the published ConvMAE-Base by default, ``Widths.of(config)`` for any other, e.g. ``ModelConfig.tiny()``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from jfdeploy.model.config import ModelConfig
from jfdeploy.stages import STAGE_TYPES

Dim = int | str
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class Widths:
    """The static dimensions of the stage tensors, fixed by the architecture (published defaults)."""

    c4: int = 256  # channels at 1/4
    c8: int = 384  # channels at 1/8
    c16: int = 768  # channels at 1/16: the transformer width C
    layers: int = 11  # L, the joint blocks
    heads: int = 12

    @property
    def head_dim(self) -> int:
        return self.c16 // self.heads

    @classmethod
    def of(cls, config: ModelConfig) -> Widths:
        c4, c8, c16 = config.embed_dims
        return cls(c4=c4, c8=c8, c16=c16, layers=config.num_joint_blocks, heads=config.num_heads)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Widths:
        """The widths of an engine directory's model (its manifest's ``model`` entry)."""
        return cls.of(ModelConfig(**manifest["model"]))


PUBLISHED = Widths.of(ModelConfig())


@functools.cache
def stage_shapes(widths: Widths = PUBLISHED) -> dict[str, dict[str, Shape]]:
    """stage -> tensor name -> symbolic shape (inputs then outputs, in the stage's order)."""
    c, layers, heads, d = widths.c16, widths.layers, widths.heads, widths.head_dim
    return {
        "frame_encoder": {
            "frame": (1, 3, "height", "width"),
            "tokens": (1, c, "h16", "w16"),
            "f8": (1, widths.c8, "h8", "w8"),
            "f4": (1, widths.c4, "h4", "w4"),
        },
        "reference_encoder": {
            "frame": (1, 3, "height", "width"),
            "object_prob": ("objects", "height", "width"),
            "memory_token": ("objects", 1, c),
            "reference_keys": (layers, "objects", heads, "tokens", d),
            "reference_values": (layers, "objects", heads, "tokens", d),
            "memory_token_out": ("objects", 1, c),
        },
        "memory_reader": {
            "tokens": (1, c, "h16", "w16"),
            "reference_keys": (layers, "objects", heads, "ref_tokens", d),
            "reference_values": (layers, "objects", heads, "ref_tokens", d),
            "reference_valid": ("objects", "ref_tokens"),
            "f16": ("objects", c, "h16", "w16"),
        },
        "enhancer": {
            "f16": ("objects", c, "h16", "w16"),
            "memory_token": ("objects", 1, c),
            "enhanced_f16": ("objects", c, "h16", "w16"),
        },
        "decoder": {
            "f16": ("objects", c, "h16", "w16"),
            "f8": (1, widths.c8, "h8", "w8"),
            "f4": (1, widths.c4, "h4", "w4"),
            "enhanced_f16": ("objects", c, "h16", "w16"),
            "logits": ("objects", 1, "height", "width"),
            "decoder_tokens": ("objects", c, "h16", "w16"),
        },
        "memory_token_update": {
            "decoder_tokens": ("objects", c, "h16", "w16"),
            "memory_token": ("objects", 1, c),
            "memory_token_out": ("objects", 1, c),
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
    widths: Widths = PUBLISHED

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 16:
            raise ValueError(f"frame size {self.height}x{self.width} must be positive multiples of 16")
        if self.objects < 1 or self.slots < 1:
            raise ValueError(f"objects and slots must be >= 1, got {self.objects}, {self.slots}")

    def point(self) -> dict[str, int]:
        """The dynamic part (what a manifest records as its example size; the widths are the model's)."""
        return {"objects": self.objects, "height": self.height, "width": self.width, "slots": self.slots}

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
    return tuple(size.value(d) for d in stage_shapes(size.widths)[stage][name])


def dynamic_axes(stage: str) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: every symbolic dimension of every input and output."""
    return {
        name: {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
        for name, shape in stage_shapes()[stage].items()  # the symbols are the same for every Widths
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
