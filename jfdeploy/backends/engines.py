"""Backends "onnxruntime" and "tensorrt": the staged runtime over an engine directory.

Both build stage runners from ``jfdeploy export``'s files and hand them to the same frame loop as
backend "torch" (``StagedBackend``); they know the stages only by the manifest.

- onnxruntime: one InferenceSession per stage. On the CPU, tensors go in and out as numpy views.
  On CUDA (onnxruntime-gpu), inputs and outputs are bound to torch CUDA tensors by address
  (I/O binding): stage outputs stay on the device and feed the next stage with no host copy.
- tensorrt: one engine and execution context per stage, all on one CUDA stream; inputs and outputs
  are torch CUDA tensors passed by address (``set_tensor_address``), outputs allocated per shape.
  torch is the device-memory owner (not cuda-python/pycuda): it is already a dependency and its
  caching allocator makes per-shape output buffers cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jfdeploy.backends.staged import StagedBackend
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.export import specs
from jfdeploy.export.manifest import check_tensorrt_plans, load_manifest
from jfdeploy.export.onnx_export import frame_tokens_needed

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "bool": torch.bool}


def resolve_shape(stage: str, name: str, bound: dict[str, int]) -> tuple[int, ...]:
    """A stage tensor's concrete shape from the symbols its inputs bound (``specs.Size`` derives the rest)."""
    h16 = bound["h16"] if "h16" in bound else bound["height"] // 16
    w16 = bound["w16"] if "w16" in bound else bound["width"] // 16
    slots = bound.get("ref_tokens", h16 * w16) // (h16 * w16)
    size = specs.Size(objects=bound.get("objects", 1), height=16 * h16, width=16 * w16, slots=slots)
    return specs.shape_at(stage, name, size)


def bind_symbols(stage: str, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    bound: dict[str, int] = {}
    for name, tensor in zip(specs.input_names(stage), inputs, strict=True):
        for dim, size in zip(specs.SHAPES[stage][name], tensor.shape, strict=True):
            if isinstance(dim, str):
                bound[dim] = int(size)
    return bound


class OrtStage:
    """One stage graph run by onnxruntime; torch tensors in, torch tensors out (on ``device``)."""

    def __init__(self, path: Path, stage: str, entry: dict[str, Any], device: torch.device) -> None:
        import onnxruntime as ort

        self.stage = stage
        self.device = device
        self.input_dtypes = [TORCH_DTYPES[i["dtype"]] for i in entry["inputs"]]
        self.output_dtypes = [TORCH_DTYPES[o["dtype"]] for o in entry["outputs"]]
        self.input_names = [i["name"] for i in entry["inputs"]]
        self.output_names = [o["name"] for o in entry["outputs"]]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise JfDeployError("onnxruntime on CUDA needs onnxruntime-gpu (CUDAExecutionProvider is missing)")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = tuple(t.to(dtype).contiguous() for t, dtype in zip(inputs, self.input_dtypes, strict=True))
        if self.device.type != "cuda":
            feed = {name: t.numpy() for name, t in zip(self.input_names, inputs, strict=True)}
            return tuple(torch.from_numpy(o) for o in self.session.run(self.output_names, feed))
        binding = self.session.io_binding()
        for name, tensor in zip(self.input_names, inputs, strict=True):
            binding.bind_input(name, "cuda", self.device.index or 0, _numpy_dtype(tensor.dtype),
                               list(tensor.shape), tensor.data_ptr())  # fmt: skip
        bound = bind_symbols(self.stage, inputs)
        outputs = [
            torch.empty(resolve_shape(self.stage, name, bound), dtype=dtype, device=self.device)
            for name, dtype in zip(self.output_names, self.output_dtypes, strict=True)
        ]
        for name, tensor in zip(self.output_names, outputs, strict=True):
            binding.bind_output(name, "cuda", self.device.index or 0, _numpy_dtype(tensor.dtype),
                                list(tensor.shape), tensor.data_ptr())  # fmt: skip
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch kernels
        self.session.run_with_iobinding(binding)
        return tuple(outputs)


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_}[dtype]


class TrtStage:
    """One TensorRT engine; torch CUDA tensors by address, on the backend's single CUDA stream."""

    def __init__(self, path: Path, stage: str, runtime, stream: torch.cuda.Stream) -> None:
        import tensorrt as trt

        self.stage = stage
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise JfDeployError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profile: int | None = None

    def _select_profile(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Switch to the first optimization profile (resolution bucket) that holds these input shapes."""
        for index in range(self.engine.num_optimization_profiles):
            ranges = {n: self.engine.get_tensor_profile_shape(n, index) for n in self.input_names}
            if all(
                all(lo <= d <= hi for lo, d, hi in zip(ranges[n][0], shapes[n], ranges[n][2], strict=True))
                for n in self.input_names
            ):
                if index != self.profile:
                    self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
                    self.profile = index
                return
        raise InputError(f"stage {self.stage}: input shapes {shapes} are outside every TensorRT profile")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tensors = dict(zip(specs.input_names(self.stage), inputs, strict=True))
        self.stream.wait_stream(torch.cuda.current_stream())  # inputs written on torch's stream
        self._select_profile({n: tuple(tensors[n].shape) for n in self.input_names})
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                tensor = tensors[name].to(self.dtypes[name]).contiguous()
                tensors[name] = tensor  # keep alive until the enqueue
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = []
            for name in self.output_names:
                output = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
                self.context.set_tensor_address(name, output.data_ptr())
                outputs.append(output)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise JfDeployError(f"TensorRT failed to run stage {self.stage}")
        torch.cuda.current_stream().wait_stream(self.stream)
        order = {name: output for name, output in zip(self.output_names, outputs, strict=True)}
        return tuple(order[name] for name in specs.output_names(self.stage))


def _torch_dtype(trt, dtype) -> torch.dtype:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bool: torch.bool}[dtype]


class EngineBackend(StagedBackend):
    """StagedBackend over an engine directory; refuses frames too small for the graphs' constant k."""

    def __init__(self, runners, manifest: dict[str, Any], initial_memory_token: torch.Tensor, **kwargs) -> None:
        super().__init__(runners, initial_memory_token, **kwargs)
        self.manifest = manifest

    def check_frame_size(self, height: int, width: int) -> None:
        needed = frame_tokens_needed(self.manifest["limits"], self.memory.num_slots)
        tokens = (height // 16) * (width // 16)
        if tokens < needed:
            raise InputError(
                f"a {height}x{width} (padded) frame has {tokens} tokens; these engines (top-k "
                f"{self.manifest['limits']['topk']}) need >= {needed} per frame: use a larger --size"
            )


def engine_backend(
    kind: str, engines: str | os.PathLike, *, max_memory_frames: int, device: str | torch.device | None = None
) -> EngineBackend:
    """Backend ``kind`` ("onnxruntime" / "tensorrt") over the engine directory ``engines``."""
    if engines is None:
        raise InputError(f"backend {kind!r} needs engines=DIR (made by `jfdeploy export`)")
    directory = Path(engines)
    manifest = load_manifest(directory)
    token = torch.from_numpy(np.load(directory / manifest["initial_memory_token"]))
    if kind == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise JfDeployError("backend onnxruntime needs: pip install 'jfdeploy[onnx]'") from exc
        target = torch.device(device or "cpu")
        runners = {
            stage: OrtStage(directory / entry["onnx"], stage, entry, target)
            for stage, entry in manifest["stages"].items()
        }
    elif kind == "tensorrt":
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise JfDeployError("backend tensorrt needs TensorRT (pip install tensorrt, on a CUDA machine)") from exc
        if not torch.cuda.is_available():
            raise JfDeployError("backend tensorrt needs a CUDA GPU")
        target = torch.device(device or "cuda")
        check_tensorrt_plans(manifest, tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name(target))
        plans = manifest["tensorrt"]["plans"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        stream = torch.cuda.Stream(target)
        runners = {stage: TrtStage(directory / plans[stage], stage, runtime, stream) for stage in manifest["stages"]}
    else:
        raise InputError(f"unknown engine backend {kind!r}")
    backend = EngineBackend(runners, manifest, token.to(target), max_memory_frames=max_memory_frames)
    backend.name = kind
    return backend
