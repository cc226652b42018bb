"""Stage runtimes: who executes stage graphs on a device and owns the arrays passed between them.

A runtime runs a stage by name (``jfdeploy.specs.STAGES``) on arrays it made, and moves arrays between
the host (numpy) and its device only where the frame loop hands data in or out: the caller's RGB frame
and label map, the resampling tables (once per frame size), the label map and probabilities back. The
frame loop (``jfdeploy.segmenter``, ``jfdeploy.predictor``) sees arrays as opaque values and asks the
runtime for the few things it needs besides running stages: a shape, a view of the same memory under
another shape (the memory reader reads the memory write's buffers), the rows from 1 on (objects
without the background), an empty or zero array.

- ``TorchRuntime`` (``jfdeploy.backends.torch_runtime``): torch tensors, the stage modules (eager, torch).
- ``OrtRuntime`` (``jfdeploy.backends.ort_runtime``): onnxruntime sessions over OrtValues bound by
  address (I/O binding), on the CPU or CUDA, no torch.
- ``TrtRuntime`` (``jfdeploy.backends.trt_runtime``): TensorRT plans through Polygraphy, device buffers
  from Polygraphy's ``cuda`` module, no torch.

``run(stage, *inputs, into=...)``: ``into`` names arrays to write the outputs into (the memory write
passes its own buffers, so a runtime that can bind an output to its input's memory updates the memory
in place); a runtime that cannot returns new arrays, and the caller keeps whatever ``run`` returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any  # a runtime's array: torch.Tensor, an ``ort_runtime.OrtArray``, a Polygraphy DeviceView


class StageRuntime:
    """Interface of a stage runtime (see the module docstring)."""

    name = "runtime"
    model_float = "float32"  # the float type of the model-side tensors (the graphs' precision)
    memory_float = "float32"  # the float type of the reference memory (the reference encoder's outputs)
    loop_float = "float32"  # the float type of probabilities and masks (the frame loop's stages)

    @property
    def device(self) -> str:
        """Where the arrays live, as a string ("cpu", "cuda:0")."""
        raise NotImplementedError

    def run(self, stage: str, *inputs: Array, into: Sequence[Array] | None = None) -> tuple[Array, ...]:
        raise NotImplementedError

    def upload(self, array: np.ndarray) -> Array:
        """A host array on the device (the stage's dtype is the array's: callers pass the right one)."""
        raise NotImplementedError

    def download(self, array: Array) -> np.ndarray:
        raise NotImplementedError

    def zeros(self, shape: Sequence[int], dtype: str) -> Array:
        """Zeros of ``dtype`` ("float32", "float16", "float64", "bool", "int64", "model" floats)."""
        raise NotImplementedError

    def shape(self, array: Array) -> tuple[int, ...]:
        raise NotImplementedError

    def view(self, array: Array, shape: Sequence[int]) -> Array:
        """The same (contiguous) memory under another shape of as many elements."""
        raise NotImplementedError

    def rows(self, array: Array, start: int, stop: int | None = None) -> Array:
        """``array[start:stop]`` along axis 0, without a copy."""
        raise NotImplementedError

    # Runtimes that can put the frames of several videos through one stage call (``batches``) also join
    # arrays and pick rows; the others run each video's stages in turn (``staged.segment_together``).
    batches = False

    def concat(self, arrays: Sequence[Array], axis: int) -> Array:
        """The arrays joined along ``axis`` (a copy)."""
        raise NotImplementedError

    def take(self, array: Array, index: Array) -> Array:
        """Rows ``index`` (int64 on the device) of ``array`` along axis 0 (a copy)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free device resources (sessions, contexts, buffers); the runtime is unusable afterwards."""


class AddressedRuntime(StageRuntime):
    """A runtime whose arrays are dataclasses with ``shape``, ``dtype`` and a byte ``offset`` into memory they
    keep alive (onnxruntime's OrtValues, Polygraphy's device arrays): views are address arithmetic, zeros
    are uploaded."""

    def zeros(self, shape: Sequence[int], dtype: str) -> Array:
        return self.upload(np.zeros(tuple(shape), NUMPY_DTYPES[dtype_name(dtype, self.model_float)]))

    def shape(self, array: Array) -> tuple[int, ...]:
        return array.shape

    def view(self, array: Array, shape: Sequence[int]) -> Array:
        shape = tuple(int(n) for n in shape)
        if int(np.prod(shape)) != int(np.prod(array.shape)):
            raise ValueError(f"cannot view {array.shape} as {shape}")
        return dataclasses.replace(array, shape=shape)

    def rows(self, array: Array, start: int, stop: int | None = None) -> Array:
        row = int(np.prod(array.shape[1:])) * array.dtype.itemsize
        shape = ((array.shape[0] if stop is None else stop) - start, *array.shape[1:])
        return dataclasses.replace(array, shape=shape, offset=array.offset + start * row)


def dtype_name(dtype: str, model_float: str) -> str:
    return model_float if dtype == "model" else dtype


NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "bool": np.bool_,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
}
