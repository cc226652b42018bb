"""Tensor names, symbolic shapes and dtypes of every stage graph: what export, the manifest,
TensorRT profiles and the engine runners agree on. Plain Python (no torch): the torch-free runtime reads it.

Stages: the model's (``MODEL_STAGES``, ``jfdeploy.stages``) and the frame loop's tensor ops around them
(``LOOP_STAGES``, ``jfdeploy.loop_stages``): pre- and postprocessing, aggregation, the memory write.

Dynamic symbols: ``objects`` (O; ``old_objects`` before new ones are added), ``frames`` (frames encoded
together), ``token_rows`` (1: one frame's tokens shared by its objects, or O: each (video, object) pair's),
``classes`` = O + 1 (background first), ``height``/``width`` (padded model input, multiples of 16),
``h16``/``w16`` = H/16, W/16 (and h8, w8, h4, w4), ``tokens`` = h16 * w16, ``slots`` (memory slots S),
``ref_tokens`` = S * tokens, ``source_height``/``source_width`` (the caller's frame), ``row_taps``/``col_taps``
(resampling taps).
Static dimensions (channels, joint blocks, heads) are fixed by the model's architecture: ``Widths``
(the published ConvMAE-Base by default, ``Widths.of(config)`` for any other, e.g. ``ModelConfig.tiny()``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jfdeploy.model.config import ModelConfig

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


MODEL_STAGES = ("frame_encoder", "reference_encoder", "memory_reader", "enhancer", "decoder", "memory_token_update")
LOOP_STAGES = (
    "preprocess",
    "label_masks",
    "aggregate",
    "merge_masks",
    "memory_grow",
    "memory_write",
    "postprocess",
    "label_map",
)
STAGES = MODEL_STAGES + LOOP_STAGES

# stage -> (input names, output names), in the order the stage modules take and return them
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "frame_encoder": (("frame",), ("tokens", "f8", "f4")),
    "reference_encoder": (
        ("frame", "object_prob", "memory_token"),
        ("reference_keys", "reference_values", "memory_token_out"),
    ),
    "memory_reader": (("tokens", "reference_keys", "reference_values", "reference_valid"), ("f16",)),
    "enhancer": (("f16", "memory_token"), ("enhanced_f16",)),
    "decoder": (("f16", "f8", "f4", "enhanced_f16"), ("logits", "decoder_tokens")),
    "memory_token_update": (("decoder_tokens", "memory_token"), ("memory_token_out",)),
    "preprocess": (("rgb", "row_index", "row_weight", "col_index", "col_weight"), ("frame",)),
    "label_masks": (("label_map", "object_labels", "mask_rows", "mask_cols"), ("given_masks",)),
    "aggregate": (("logits",), ("probabilities", "object_prob")),
    "merge_masks": (("probabilities", "given_masks", "keep_predicted"), ("merged", "object_prob")),
    "memory_grow": (
        ("memory_keys", "memory_values", "memory_valid", "memory_token", "initial_memory_token", "object_labels"),
        ("memory_keys_out", "memory_values_out", "memory_valid_out", "memory_token_out"),
    ),
    "memory_write": (
        ("memory_keys", "memory_values", "memory_valid", "reference_keys", "reference_values", "slot"),
        ("memory_keys_out", "memory_values_out", "memory_valid_out"),
    ),
    "postprocess": (
        ("probabilities", "row_index", "row_weight", "col_index", "col_weight", "accumulated"),
        ("accumulated_out",),
    ),
    "label_map": (("probabilities", "object_labels"), ("labels",)),
}

# tensors that are not of the model's float type: stage -> name -> dtype ("model" floats are the graphs'
# precision, float32 or float16; the loop stages compute probabilities and masks in float32)
MODEL_FLOAT = "model"
_LOOP_FLOAT = "float32"
TENSOR_DTYPES: dict[str, dict[str, str]] = {
    "memory_reader": {"reference_valid": "bool"},
    "preprocess": {
        "rgb": "uint8",
        "row_index": "int64",
        "row_weight": "int32",
        "col_index": "int64",
        "col_weight": "int32",
    },
    "label_masks": {
        "label_map": "uint8",
        "object_labels": "int64",
        "mask_rows": "int64",
        "mask_cols": "int64",
        "given_masks": _LOOP_FLOAT,
    },
    "aggregate": {"probabilities": _LOOP_FLOAT},
    "merge_masks": {
        "probabilities": _LOOP_FLOAT,
        "given_masks": _LOOP_FLOAT,
        "keep_predicted": "bool",
        "merged": _LOOP_FLOAT,
    },
    "memory_grow": {"memory_valid": "bool", "memory_valid_out": "bool", "object_labels": "int64"},
    "memory_write": {"memory_valid": "bool", "memory_valid_out": "bool", "slot": "int64"},
    "postprocess": {
        "probabilities": _LOOP_FLOAT,
        "row_index": "int64",
        "row_weight": _LOOP_FLOAT,
        "col_index": "int64",
        "col_weight": _LOOP_FLOAT,
        "accumulated": _LOOP_FLOAT,
        "accumulated_out": _LOOP_FLOAT,
    },
    "label_map": {"probabilities": _LOOP_FLOAT, "object_labels": "int64", "labels": "uint8"},
}


class NamedStage:
    """A stage's name and, from ``STAGE_IO``, its input and output names (the stage modules' base)."""

    name = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return STAGE_IO[self.name][0]

    @property
    def output_names(self) -> tuple[str, ...]:
        return STAGE_IO[self.name][1]


def tensor_dtype(stage: str, name: str, model_float: str = "float32") -> str:
    """The dtype name of a stage tensor; ``model_float`` is the graphs' float type (float32 / float16)."""
    dtype = TENSOR_DTYPES.get(stage, {}).get(name, MODEL_FLOAT)
    return model_float if dtype == MODEL_FLOAT else dtype


@functools.cache
def stage_shapes(widths: Widths = PUBLISHED) -> dict[str, dict[str, Shape]]:
    """stage -> tensor name -> symbolic shape (inputs then outputs, in the stage's order)."""
    c, layers, heads, d = widths.c16, widths.layers, widths.heads, widths.head_dim
    memory: Shape = (layers, "objects", heads, "slots", "tokens", d)
    old_memory: Shape = (layers, "old_objects", heads, "slots", "tokens", d)
    reference: Shape = (layers, "objects", heads, "tokens", d)
    return {
        "frame_encoder": {  # a batch of frames (of several videos: a server's sessions)
            "frame": ("frames", 3, "height", "width"),
            "tokens": ("frames", c, "h16", "w16"),
            "f8": ("frames", widths.c8, "h8", "w8"),
            "f4": ("frames", widths.c4, "h4", "w4"),
        },
        "reference_encoder": {
            "frame": (1, 3, "height", "width"),
            "object_prob": ("objects", "height", "width"),
            "memory_token": ("objects", 1, c),
            "reference_keys": reference,
            "reference_values": reference,
            "memory_token_out": ("objects", 1, c),
        },
        "memory_reader": {  # tokens: the frame's (1 row, shared by its objects) or each pair's (O rows)
            "tokens": ("token_rows", c, "h16", "w16"),
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
            "f8": ("token_rows", widths.c8, "h8", "w8"),
            "f4": ("token_rows", widths.c4, "h4", "w4"),
            "enhanced_f16": ("objects", c, "h16", "w16"),
            "logits": ("objects", 1, "height", "width"),
            "decoder_tokens": ("objects", c, "h16", "w16"),
        },
        "memory_token_update": {
            "decoder_tokens": ("objects", c, "h16", "w16"),
            "memory_token": ("objects", 1, c),
            "memory_token_out": ("objects", 1, c),
        },
        "preprocess": {
            "rgb": ("source_height", "source_width", 3),
            "row_index": ("height", "row_taps"),
            "row_weight": ("height", "row_taps"),
            "col_index": ("width", "col_taps"),
            "col_weight": ("width", "col_taps"),
            "frame": (1, 3, "height", "width"),
        },
        "label_masks": {
            "label_map": ("source_height", "source_width"),
            "object_labels": ("objects",),
            "mask_rows": ("height",),
            "mask_cols": ("width",),
            "given_masks": ("objects", "height", "width"),
        },
        "aggregate": {
            "logits": ("objects", 1, "height", "width"),
            "probabilities": ("classes", "height", "width"),
            "object_prob": ("objects", "height", "width"),
        },
        "merge_masks": {
            "probabilities": ("old_classes", "height", "width"),
            "given_masks": ("objects", "height", "width"),
            "keep_predicted": ("old_objects",),
            "merged": ("classes", "height", "width"),
            "object_prob": ("objects", "height", "width"),
        },
        "memory_grow": {
            "memory_keys": old_memory,
            "memory_values": old_memory,
            "memory_valid": ("old_objects", "slots", "tokens"),
            "memory_token": ("old_objects", 1, c),
            "initial_memory_token": (1, 1, c),
            "object_labels": ("objects",),
            "memory_keys_out": memory,
            "memory_values_out": memory,
            "memory_valid_out": ("objects", "slots", "tokens"),
            "memory_token_out": ("objects", 1, c),
        },
        "memory_write": {
            "memory_keys": memory,
            "memory_values": memory,
            "memory_valid": ("objects", "slots", "tokens"),
            "reference_keys": reference,
            "reference_values": reference,
            "slot": ("objects",),
            "memory_keys_out": memory,
            "memory_values_out": memory,
            "memory_valid_out": ("objects", "slots", "tokens"),
        },
        "postprocess": {
            "probabilities": ("classes", "height", "width"),
            "row_index": ("source_height", "row_taps"),
            "row_weight": ("source_height", "row_taps"),
            "col_index": ("source_width", "col_taps"),
            "col_weight": ("source_width", "col_taps"),
            "accumulated": ("classes", "source_height", "source_width"),
            "accumulated_out": ("classes", "source_height", "source_width"),
        },
        "label_map": {
            "probabilities": ("classes", "source_height", "source_width"),
            "object_labels": ("objects",),
            "labels": ("source_height", "source_width"),
        },
    }


@dataclass(frozen=True)
class Size:
    """A concrete point of the shape space. The frame loop's symbols default to a frame already at the
    model's size (source = padded size, one resampling tap, every object already in memory)."""

    objects: int
    height: int
    width: int
    slots: int  # memory slots (max_memory_frames + 1)
    widths: Widths = PUBLISHED
    source_height: int | None = None
    source_width: int | None = None
    row_taps: int = 1
    col_taps: int = 1
    old_objects: int | None = None
    frames: int = 1  # frames encoded together
    token_rows: int = 1  # rows of the current tokens / f8 / f4 the reader and decoder take: 1 or objects

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
        old = self.objects if self.old_objects is None else self.old_objects
        return {
            "objects": self.objects,
            "frames": self.frames,
            "token_rows": self.token_rows,
            "old_objects": old,
            "classes": self.objects + 1,
            "old_classes": old + 1,
            "height": self.height,
            "width": self.width,
            "h16": h16,
            "w16": w16,
            "h8": 2 * h16,
            "w8": 2 * w16,
            "h4": 4 * h16,
            "w4": 4 * w16,
            "tokens": h16 * w16,
            "slots": self.slots,
            "ref_tokens": self.slots * h16 * w16,
            "source_height": self.height if self.source_height is None else self.source_height,
            "source_width": self.width if self.source_width is None else self.source_width,
            "row_taps": self.row_taps,
            "col_taps": self.col_taps,
        }[dim]


def input_names(stage: str) -> tuple[str, ...]:
    return STAGE_IO[stage][0]


def output_names(stage: str) -> tuple[str, ...]:
    return STAGE_IO[stage][1]


def shape_at(stage: str, name: str, size: Size) -> tuple[int, ...]:
    return tuple(size.value(d) for d in stage_shapes(size.widths)[stage][name])


def dynamic_axes(stage: str) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: every symbolic dimension of every input and output."""
    return {
        name: {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
        for name, shape in stage_shapes()[stage].items()  # the symbols are the same for every Widths
    }
