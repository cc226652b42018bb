"""Which device a command runs on, without importing torch where it is not installed.

A ``Device`` is a string ("cpu", "cuda", "cuda:1") with ``type`` and ``index`` as torch.device has them, so
it goes to ``model.to(...)`` and to the engine runtimes alike. CUDA devices are counted by torch when it is
installed, else by the CUDA driver (``libcuda``, which every NVIDIA driver installs), so the torch-free
runtime defaults to CUDA exactly when torch would.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

from jfdeploy.errors import InputError


class Device(str):
    """A device name with torch.device's ``type`` and ``index``."""

    @property
    def type(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:  # type: ignore[override]
        _, sep, index = self.partition(":")
        return int(index) if sep else None


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices on this machine (0 without a driver or a GPU)."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def cuda_device_name(index: int) -> str:
    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch.cuda.get_device_name(index)
    driver = ctypes.CDLL("libcuda.so.1")
    handle, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
    driver.cuDeviceGet(ctypes.byref(handle), index)
    driver.cuDeviceGetName(name, 256, handle)
    return name.value.decode()


def onnxruntime_has_cuda() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve_device(requested: str | None, engine_kind: str | None = None) -> Device:
    """The device a command runs on: ``--device`` as given (checked), else CUDA when available.

    engine_kind "onnxruntime" / "tensorrt": the device of an engine directory's runtime (onnxruntime
    defaults to CUDA only when it has its CUDA provider; TensorRT runs on CUDA only).
    """
    cuda = cuda_device_count() > 0
    if engine_kind == "tensorrt" and not cuda:
        raise InputError("TensorRT engines run on CUDA devices only, and CUDA is not available on this machine")
    if requested is None:
        use_cuda = cuda and (engine_kind != "onnxruntime" or onnxruntime_has_cuda())
        return Device("cuda" if use_cuda else "cpu")
    kind, sep, index = requested.strip().partition(":")
    if kind not in ("cpu", "cuda") or (sep and not index.isdigit()) or (kind == "cpu" and sep):
        raise InputError(f"--device {requested!r} is not a device: use cpu, cuda or cuda:N")
    device = Device(f"{kind}:{int(index)}" if sep else kind)
    if device.type == "cuda":
        if not cuda:
            raise InputError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= cuda_device_count():
            raise InputError(f"--device {requested}: this machine has {cuda_device_count()} CUDA device(s)")
        if engine_kind == "onnxruntime" and not onnxruntime_has_cuda():
            raise InputError(f"--device {requested}: onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    elif engine_kind == "tensorrt":
        raise InputError(f"--device {requested}: TensorRT engines run on CUDA devices only")
    return device


def device_name(device: str) -> str:
    """``cuda:N (GPU name)`` for a CUDA device, the name itself otherwise."""
    device = Device(device)
    if device.type != "cuda":
        return str(device)
    index = device.index or 0
    return f"cuda:{index} ({cuda_device_name(index)})"
