"""Example inputs of every stage at a size: what the stages are traced with and compared on.

Model stages get random floats (masks in [0, 1], validity all True); the frame loop's stages get inputs
a real frame would give them: resampling tables of a frame twice the model input's size (so the taps
are not trivial), label maps with the object labels, memory slots in range, one object fewer in memory
than in the frame (so growing and merging have something to do).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from jfdeploy import specs
from jfdeploy.resample import Geometry

if TYPE_CHECKING:
    import torch


def frame_geometry(size: specs.Size) -> Geometry:
    """A frame about twice the padded model input, resized to it: ``size.height x size.width`` once padded."""
    source = (2 * size.height - 6, 2 * size.width - 10)
    side = size.height - 3 if source[0] <= source[1] else size.width - 5
    geometry = Geometry(source, side, flipped=True)
    assert geometry.padded == (size.height, size.width), (geometry, size)
    return geometry


def loop_size(size: specs.Size) -> specs.Size:
    """``size`` with the frame loop's symbols of ``frame_geometry`` (source size, taps, objects in memory)."""
    geometry = frame_geometry(size)
    (row_index, _), (col_index, _) = geometry.input_taps()
    return dataclasses.replace(
        size,
        source_height=geometry.source[0],
        source_width=geometry.source[1],
        row_taps=row_index.shape[1],
        col_taps=col_index.shape[1],
        old_objects=max(size.objects - 1, 0),
    )


def example_numpy(stage: str, size: specs.Size, model_float: str = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of ``stage`` at ``size``, name -> numpy array (``model_float``: the model-side floats' dtype;
    the frame loop's probabilities and masks stay float32). Plain numpy: the torch-free ``check`` uses it."""
    rng = np.random.default_rng(seed)
    if stage in specs.LOOP_STAGES:
        values = _loop_inputs(stage, loop_size(size), np.dtype(model_float), rng)
    else:
        values = []
        for name in specs.input_names(stage):
            shape = specs.shape_at(stage, name, size)
            if specs.tensor_dtype(stage, name) == "bool":
                values.append(np.ones(shape, np.bool_))
            elif name == "object_prob":
                values.append(rng.random(shape, dtype=np.float32).astype(model_float))
            else:
                values.append(rng.standard_normal(shape, dtype=np.float32).astype(model_float))
    return {name: np.ascontiguousarray(v) for name, v in zip(specs.input_names(stage), values, strict=True)}


def example_inputs(stage: str, size: specs.Size, dtype: torch.dtype | None = None, seed: int = 0) -> tuple:
    """``example_numpy`` as torch tensors, in the stage's input order (``dtype``: the model-side floats')."""
    import torch

    name = "float16" if dtype == torch.float16 else "float32"
    return tuple(torch.from_numpy(a) for a in example_numpy(stage, size, name, seed).values())


def _loop_inputs(stage: str, size: specs.Size, dtype: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
    geometry = frame_geometry(size)
    if stage == "postprocess":  # 2 taps per output row back to the source size
        size = dataclasses.replace(size, row_taps=2, col_taps=2)
    objects, old = size.objects, size.value("old_objects")
    labels = np.arange(1, objects + 1, dtype=np.int64) * 3  # labels need not be consecutive

    def shape(name: str) -> tuple[int, ...]:
        return specs.shape_at(stage, name, size)

    def probabilities(name: str) -> np.ndarray:
        x = np.exp(rng.standard_normal(shape(name))).astype(np.float32)
        return (x / x.sum(0, keepdims=True)).astype(np.float32)

    def floats(name: str) -> np.ndarray:
        return rng.standard_normal(shape(name), dtype=np.float32).astype(dtype)

    def mask(name: str) -> np.ndarray:
        return rng.random(shape(name)) > 0.5

    if stage == "preprocess":
        (row_index, row_weight), (col_index, col_weight) = geometry.input_taps()
        rgb = rng.integers(0, 256, shape("rgb"), dtype=np.uint8)
        return [rgb, row_index, row_weight, col_index, col_weight]
    if stage == "label_masks":
        label_map = labels[rng.integers(0, objects, shape("label_map"))].astype(np.uint8)
        label_map[: label_map.shape[0] // 3] = 0  # some background
        return [label_map, labels, *geometry.mask_index()]
    if stage == "aggregate":
        return [floats("logits")]
    if stage == "merge_masks":
        given = (rng.random(shape("given_masks")) > 0.8).astype(np.float32)
        return [probabilities("probabilities"), given, np.arange(old) % 2 == 0]
    if stage == "memory_grow":
        tokens = [floats("memory_token"), floats("initial_memory_token")]
        return [floats("memory_keys"), floats("memory_values"), mask("memory_valid"), *tokens, labels]
    if stage == "memory_write":
        slot = rng.integers(0, size.slots, objects, dtype=np.int64)
        memory = [floats("memory_keys"), floats("memory_values"), mask("memory_valid")]
        return [*memory, floats("reference_keys"), floats("reference_values"), slot]
    if stage == "postprocess":
        (row_index, row_weight), (col_index, col_weight) = geometry.output_taps(scale=0.5)
        accumulated = probabilities("accumulated") * np.float32(0.5)
        return [probabilities("probabilities"), row_index, row_weight, col_index, col_weight, accumulated]
    if stage == "label_map":
        return [probabilities("probabilities"), labels]
    raise KeyError(stage)
