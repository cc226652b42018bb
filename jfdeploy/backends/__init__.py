"""Who executes the stages of a frame. Backends share one small interface (``base.Backend``) and run
the frame loop's own stages on a stage runtime (``runtime.StageRuntime``).

- ``eager``: the published inference loop in PyTorch, object by object (the reference);
- ``torch``: the exportable stages with a fixed-capacity key/value cache, objects batched;
- ``onnxruntime`` / ``tensorrt``: the same stages from an engine directory (``engines=DIR``), without torch.
"""

from __future__ import annotations

from typing import Any

from jfdeploy.backends.base import Backend
from jfdeploy.errors import InputError

BACKENDS = ("eager", "torch", "onnxruntime", "tensorrt")


def make_backend(name: str, model: Any, *, max_memory_frames: int, **options: Any) -> Backend:
    """The backend called ``name``; ``options`` are backend-specific (e.g. torch: autocast=torch.float16;
    every backend: runtime=, the runtime of another backend of the same configuration to share)."""
    if name in ("eager", "torch") and model is None:
        raise InputError(f"backend {name!r} needs a model (jfdeploy.load_model)")
    if name == "eager":
        unknown = sorted(set(options) - {"autocast", "runtime"})
        if unknown:
            raise InputError(f"backend 'eager' takes only the option autocast, got {unknown}")
        from jfdeploy.backends.eager import EagerBackend

        return EagerBackend(model, max_memory_frames=max_memory_frames, **options)
    if name == "torch":
        from jfdeploy.backends.torch_runtime import torch_backend

        return torch_backend(model, max_memory_frames=max_memory_frames, **options)
    if name in ("onnxruntime", "tensorrt"):
        from jfdeploy.backends.engines import engine_backend

        return engine_backend(name, max_memory_frames=max_memory_frames, **options)
    raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
