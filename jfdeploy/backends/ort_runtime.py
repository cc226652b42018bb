"""The onnxruntime stage runtime: one InferenceSession per stage graph, no torch.

Arrays are ``OrtArray``: an OrtValue (on the CPU or a CUDA device) with the shape and byte offset it is
read at, so a view (the memory reader's L x O x heads x (S*n) x d look at the L x O x heads x S x n x d
memory; the object rows of the probabilities) shares the memory. Every stage runs with I/O binding:
inputs are bound by address, outputs are allocated by onnxruntime on the same device (from its arena,
which reuses freed blocks: after the first frames a steady frame allocates nothing new from the system),
or bound to the arrays the caller passes as ``into`` (the memory write binds its outputs to its input
buffers, so the ScatterND of the graph writes the memory in place: onnxruntime's ScatterND skips its copy
when input and output share memory). Nothing leaves the device between stages; the host sees the arrays
only when it uploads a frame and downloads a label map.

On the CPU, numpy arrays are wrapped without a copy. On CUDA (onnxruntime-gpu) uploads and downloads
copy through OrtValue; each stage call synchronizes its device stream when it returns (onnxruntime's
default for I/O binding), so stages of different sessions never race.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy import specs
from jfdeploy.backends.runtime import NUMPY_DTYPES, AddressedRuntime
from jfdeploy.errors import JfDeployError
from jfdeploy.manifest import EngineError


@dataclass
class OrtArray:
    """``shape`` elements of ``dtype`` at byte ``offset`` in ``value``'s memory (``host``: the numpy array
    a CPU value wraps, kept alive with it)."""

    value: Any  # onnxruntime.OrtValue
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0
    host: np.ndarray | None = None

    @property
    def plain(self) -> bool:
        """The whole OrtValue as it is (bound as a value, no address arithmetic)."""
        return self.offset == 0 and tuple(self.value.shape()) == self.shape

    @property
    def address(self) -> int:
        return int(self.value.data_ptr()) + self.offset


class OrtRuntime(AddressedRuntime):
    """Stage graphs of an engine directory (``graphs``: stage -> ONNX path; ``entries``: the manifest's stage
    entries, for the tensor types) on ``device`` ("cpu", "cuda", "cuda:N"); ``threads``: intra-op threads."""

    name = "onnxruntime"

    def __init__(
        self, graphs: Mapping[str, Path], entries: Mapping[str, Any], device: str = "cpu", *, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda"):
            raise JfDeployError(f"onnxruntime runs on cpu or cuda, not {device!r}")
        self.device_type, self.device_id = kind, int(index or 0)
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise JfDeployError("onnxruntime on CUDA needs onnxruntime-gpu (CUDAExecutionProvider is missing)")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            stage: ort.InferenceSession(str(path), options, providers=providers) for stage, path in graphs.items()
        }
        self.input_dtypes = {stage: [e["dtype"] for e in entry["inputs"]] for stage, entry in entries.items()}
        self.model_float = entries["frame_encoder"]["inputs"][0]["dtype"]
        self.memory_float = self.model_float

    @property
    def device(self) -> str:
        return self.device_type if self.device_type == "cpu" else f"cuda:{self.device_id}"

    @property
    def batches(self) -> bool:  # type: ignore[override]
        """Frames of several videos in one call: graphs with a frame batch axis (exported since it exists),
        on the CPU, where joining arrays is a host copy (on CUDA it would need a graph of its own)."""
        frame = self.sessions["frame_encoder"].get_inputs()[0].shape
        tokens = self.sessions["memory_reader"].get_inputs()[0].shape
        return self.device_type == "cpu" and isinstance(frame[0], str) and isinstance(tokens[0], str)

    def concat(self, arrays: Sequence[OrtArray], axis: int) -> OrtArray:
        return self.upload(np.concatenate([self.download(array) for array in arrays], axis=axis))

    def take(self, array: OrtArray, index: OrtArray) -> OrtArray:
        return self.upload(self.download(array)[self.download(index)])

    def _wrap(self, value: Any, host: np.ndarray | None = None) -> OrtArray:
        dtype = np.dtype(host.dtype) if host is not None else _numpy_dtype(value.data_type())
        return OrtArray(value, tuple(value.shape()), dtype, 0, host)

    def run(self, stage: str, *inputs: OrtArray | None, into: Sequence[OrtArray] | None = None) -> tuple[OrtArray, ...]:
        session = self.sessions[stage]
        binding = session.io_binding()
        names, outputs = specs.input_names(stage), specs.output_names(stage)
        for name, array, dtype in zip(names, inputs, self.input_dtypes[stage], strict=True):
            if array is None:
                raise EngineError(f"stage {stage}: input {name} is required by the graphs")
            if array.dtype != np.dtype(NUMPY_DTYPES[dtype]):
                raise EngineError(f"stage {stage}: input {name} is {array.dtype}, the graph takes {dtype}")
            self._bind(binding.bind_input, binding.bind_ortvalue_input, name, array)
        for index, name in enumerate(outputs):
            if into is not None:
                self._bind(binding.bind_output, binding.bind_ortvalue_output, name, into[index])
            else:
                binding.bind_output(name, self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        if into is not None:
            return tuple(into)
        return tuple(self._wrap(value) for value in binding.get_outputs())

    def _bind(self, by_address: Any, by_value: Any, name: str, array: OrtArray) -> None:
        if array.plain or 0 in array.shape:
            if not array.plain:  # an empty view: an empty value of its shape (no memory to share)
                array = self.upload(np.zeros(array.shape, array.dtype))
            by_value(name, array.value)
        else:
            by_address(name, self.device_type, self.device_id, array.dtype, list(array.shape), array.address)

    def upload(self, array: np.ndarray) -> OrtArray:
        host = np.ascontiguousarray(array)
        if self.device_type == "cpu":
            if not host.flags.writeable:  # decoders hand out read-only arrays; the graphs only read them
                host = host.copy()
            return self._wrap(self._ort.OrtValue.ortvalue_from_numpy(host), host)
        value = self._ort.OrtValue.ortvalue_from_numpy(host, "cuda", self.device_id)
        return OrtArray(value, tuple(host.shape), host.dtype)

    def download(self, array: OrtArray) -> np.ndarray:
        if array.plain:
            return np.array(array.value.numpy(), copy=True)
        if self.device_type != "cpu":
            raise JfDeployError("onnxruntime: a view of a CUDA array cannot be downloaded (download the whole array)")
        count = int(np.prod(array.shape))
        buffer = memoryview((ctypes.c_byte * (count * array.dtype.itemsize)).from_address(array.address)).cast("B")
        return np.frombuffer(buffer, dtype=array.dtype, count=count).reshape(array.shape).copy()

    def close(self) -> None:
        self.sessions.clear()


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


def _numpy_dtype(ort_type: str) -> np.dtype:
    return np.dtype(_ORT_TYPES[ort_type])
