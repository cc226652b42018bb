"""Backends "onnxruntime" and "tensorrt": the staged runtime over an engine directory.

Both build stage runners from ``jfdeploy export``'s files and hand them to the same frame loop as
backend "torch" (``StagedBackend``); they know the stages only by the manifest.

- onnxruntime: one InferenceSession per stage. On the CPU, tensors go in and out as numpy views.
  On CUDA (onnxruntime-gpu), inputs and outputs are bound to torch CUDA tensors by address
  (I/O binding): stage outputs stay on the device and feed the next stage with no host copy.
- tensorrt: one plan per stage (built by ``jfdeploy build``) run by Polygraphy's TrtRunner, fed torch
  CUDA tensors and returning torch CUDA tensors (no host copies; see ``TrtStage``); one optimization
  profile per resolution bucket, chosen per call.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jfdeploy import specs
from jfdeploy.backends.staged import StagedBackend, StageRunner
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.limits import frame_tokens_needed
from jfdeploy.manifest import EngineError, check_tensorrt_plans, load_manifest
from jfdeploy.plans import manifest_profiles, polygraphy_errors, require_tensorrt, select_profile


def resolve_shape(stage: str, name: str, bound: dict[str, int], widths: specs.Widths) -> tuple[int, ...]:
    """A stage tensor's concrete shape from the symbols its inputs bound (``specs.Size`` derives the rest)."""
    h16 = bound["h16"] if "h16" in bound else bound["height"] // 16
    w16 = bound["w16"] if "w16" in bound else bound["width"] // 16
    slots = bound.get("ref_tokens", h16 * w16) // (h16 * w16)
    size = specs.Size(objects=bound.get("objects", 1), height=16 * h16, width=16 * w16, slots=slots, widths=widths)
    return specs.shape_at(stage, name, size)


def bind_symbols(stage: str, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    bound: dict[str, int] = {}
    for name, tensor in zip(specs.input_names(stage), inputs, strict=True):
        for dim, size in zip(specs.stage_shapes()[stage][name], tensor.shape, strict=True):  # symbols only
            if isinstance(dim, str):
                bound[dim] = int(size)
    return bound


class OrtStage:
    """One stage graph run by onnxruntime; torch tensors in, torch tensors out (on ``device``)."""

    def __init__(
        self, path: Path, stage: str, entry: dict[str, Any], device: torch.device, widths: specs.Widths
    ) -> None:
        import onnxruntime as ort

        self.stage = stage
        self.device = device
        self.widths = widths  # the static dimensions of the outputs bound on the GPU
        self.input_dtypes = [_torch_dtype(i["dtype"]) for i in entry["inputs"]]
        self.output_dtypes = [_torch_dtype(o["dtype"]) for o in entry["outputs"]]
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
            torch.empty(resolve_shape(self.stage, name, bound, self.widths), dtype=dtype, device=self.device)
            for name, dtype in zip(self.output_names, self.output_dtypes, strict=True)
        ]
        for name, tensor in zip(self.output_names, outputs, strict=True):
            binding.bind_output(name, "cuda", self.device.index or 0, _numpy_dtype(tensor.dtype),
                                list(tensor.shape), tensor.data_ptr())  # fmt: skip
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch kernels
        self.session.run_with_iobinding(binding)
        return tuple(outputs)


def _torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a manifest names ("float32", "float16", "bfloat16", "bool")."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise EngineError(f"the manifest names an unknown tensor type {name!r}")
    return dtype


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_}[dtype]


class TrtStage:
    """One TensorRT plan run by Polygraphy's TrtRunner; torch CUDA tensors in and out, no host copies.

    The inputs are fed as torch CUDA tensors: TrtRunner binds their addresses as they are. With
    ``copy_outputs_to_host=False`` it returns torch CUDA tensors that view its own output buffers,
    which its next call reuses (and may resize): each output is cloned on the device. The runner
    enqueues on its own CUDA stream, made to wait for torch's current stream first, and synchronizes
    that stream before returning. The optimization profile (resolution bucket) is chosen per call
    from the profiles recorded in the manifest.
    """

    def __init__(
        self, path: Path, stage: str, entry: dict[str, Any], profiles: list[dict], device: torch.device
    ) -> None:
        from polygraphy.backend.trt import EngineFromPath, TrtRunner

        self.stage = stage
        self.device = device
        self.profiles = profiles
        self.input_dtypes = {i["name"]: _torch_dtype(i["dtype"]) for i in entry["inputs"]}
        self.profile: int | None = None
        self.runner = TrtRunner(EngineFromPath(str(path)), name=f"jfdeploy-{stage}")
        with torch.cuda.device(device), polygraphy_errors(f"TensorRT could not load {path.name}"):
            self.runner.activate()
        built = self.runner.engine.num_optimization_profiles
        if built != len(profiles):
            self.close()
            raise EngineError(f"{path.name} has {built} optimization profiles, the manifest lists {len(profiles)}")

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()

    def __del__(self) -> None:  # free the context and buffers with the backend (Polygraphy warns otherwise)
        if hasattr(self, "runner"):
            with contextlib.suppress(Exception):  # at interpreter exit CUDA may already be gone
                self.close()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {
            name: tensor.to(self.device, self.input_dtypes[name]).contiguous()
            for name, tensor in zip(specs.input_names(self.stage), inputs, strict=True)
        }
        shapes = {name: tuple(tensor.shape) for name, tensor in feed.items()}
        index = select_profile(self.profiles, shapes, self.profile)
        if index < 0:
            raise InputError(
                f"stage {self.stage}: input shapes {shapes} fit no optimization profile of these TensorRT plans "
                "(frame sizes, objects and memory slots of `jfdeploy build --profile/--max-objects`): rebuild them"
            )
        with torch.cuda.device(self.device):
            torch.cuda.ExternalStream(self.runner.stream.ptr).wait_stream(torch.cuda.current_stream())
            if index != self.profile:
                self.runner.set_profile(index)  # set_optimization_profile_async on the runner's stream
                for name, shape in shapes.items():  # every input shape under the new profile (Polygraphy
                    self.runner.context.set_input_shape(name, shape)  # sets only those it sees change)
                self.profile = index
            outputs = self.runner.infer(feed, check_inputs=False, copy_outputs_to_host=False)
            return tuple(outputs[name].clone() for name in specs.output_names(self.stage))


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
    runners: dict[str, StageRunner]
    if kind == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise JfDeployError("backend onnxruntime needs: pip install 'jfdeploy[onnx]'") from exc
        target = torch.device(device or "cpu")
        widths = specs.Widths.from_manifest(manifest)
        runners = {
            stage: OrtStage(directory / entry["onnx"], stage, entry, target, widths)
            for stage, entry in manifest["stages"].items()
        }
    elif kind == "tensorrt":
        trt = require_tensorrt("backend tensorrt", hint=" (pip install tensorrt, on the GPU machine)")
        target = torch.device(device or "cuda")
        check_tensorrt_plans(manifest, tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name(target))
        plans = manifest["tensorrt"]["plans"]
        runners = {
            stage: TrtStage(directory / plans[stage], stage, entry, manifest_profiles(manifest, stage), target)
            for stage, entry in manifest["stages"].items()
        }
    else:
        raise InputError(f"unknown engine backend {kind!r}")
    backend = EngineBackend(runners, manifest, token.to(target), max_memory_frames=max_memory_frames)
    backend.name = kind
    return backend
