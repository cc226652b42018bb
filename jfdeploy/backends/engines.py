"""Backends "onnxruntime" and "tensorrt": the staged runtime over an engine directory, without torch.

Both build a stage runtime from ``jfdeploy export``'s files and hand it to the same frame loop as
backend "torch" (``StagedBackend``); they know the stages only by the manifest.

- onnxruntime: one InferenceSession per stage, on the CPU or CUDA (onnxruntime-gpu), arrays bound by
  address with I/O binding (``jfdeploy.backends.ort_runtime``).
- tensorrt: one plan per stage (built by ``jfdeploy build``) run through TensorRT's execution contexts,
  device buffers from Polygraphy's ``cuda`` module (``jfdeploy.backends.trt_runtime``); one optimization
  profile per resolution bucket, chosen per call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy import specs
from jfdeploy.backends.runtime import NUMPY_DTYPES, StageRuntime
from jfdeploy.backends.staged import StagedBackend
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.limits import frame_tokens_needed
from jfdeploy.manifest import check_stages, check_tensorrt_plans, load_manifest
from jfdeploy.plans import require_tensorrt


class EngineBackend(StagedBackend):
    """StagedBackend over an engine directory; refuses frames too small for the graphs' constant k."""

    def __init__(self, runtime: StageRuntime, manifest: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(runtime, *_initial_token(runtime, manifest), **kwargs)
        self.manifest = manifest

    def check_frame_size(self, height: int, width: int) -> None:
        needed = frame_tokens_needed(self.manifest["limits"], self.memory.num_slots)
        tokens = (height // 16) * (width // 16)
        if tokens < needed:
            raise InputError(
                f"a {height}x{width} (padded) frame has {tokens} tokens; these engines (top-k "
                f"{self.manifest['limits']['topk']}) need >= {needed} per frame: use a larger --size"
            )


def _initial_token(runtime: StageRuntime, manifest: dict[str, Any]) -> tuple[Any, specs.Widths]:
    token = np.load(Path(manifest["directory"]) / manifest["initial_memory_token"])
    return runtime.upload(token.astype(NUMPY_DTYPES[runtime.memory_float])), specs.Widths.from_manifest(manifest)


def engine_runtime(
    kind: str, directory: Path, manifest: dict[str, Any], device: str | None = None, threads: int | None = None
) -> StageRuntime:
    """The stage runtime of ``kind`` ("onnxruntime" / "tensorrt") over the engine directory (loaded manifest)."""
    if kind == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise JfDeployError("backend onnxruntime needs: pip install 'jfdeploy[runtime]'") from exc
        from jfdeploy.backends.ort_runtime import OrtRuntime

        check_stages(manifest, directory)
        graphs = {stage: directory / entry["onnx"] for stage, entry in manifest["stages"].items()}
        return OrtRuntime(graphs, manifest["stages"], device or "cpu", threads=threads)
    if kind == "tensorrt":
        from jfdeploy.backends.trt_runtime import TrtRuntime

        trt = require_tensorrt("backend tensorrt", hint=" (pip install tensorrt, on the GPU machine)")
        check_stages(manifest, directory)
        runtime = TrtRuntime(directory, manifest, device or "cuda")
        check_tensorrt_plans(manifest, tensorrt_version=trt.__version__, gpu=runtime.gpu_name)
        runtime.load()
        return runtime
    raise InputError(f"unknown engine backend {kind!r}")


def engine_backend(
    kind: str,
    engines: str | os.PathLike | None = None,
    *,
    max_memory_frames: int,
    device: str | None = None,
    runtime: StageRuntime | None = None,
    threads: int | None = None,
) -> EngineBackend:
    """Backend ``kind`` ("onnxruntime" / "tensorrt") over the engine directory ``engines`` (``runtime``: one
    already loaded from the same directory, shared)."""
    if engines is None:
        raise InputError(f"backend {kind!r} needs engines=DIR (made by `jfdeploy export`)")
    directory = Path(engines)
    manifest = {**load_manifest(directory), "directory": str(directory)}
    if runtime is None:
        runtime = engine_runtime(kind, directory, manifest, None if device is None else str(device), threads)
    backend = EngineBackend(runtime, manifest, max_memory_frames=max_memory_frames)
    backend.name = kind
    return backend
