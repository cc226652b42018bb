"""``jfdeploy info``: versions, devices, and the optional packages and backends that import here."""

from __future__ import annotations

import argparse
import platform


def add_info_parser(sub) -> None:
    info = sub.add_parser("info", help="versions, devices, and the optional packages and backends that import")
    info.set_defaults(handler=cmd_info)


def _import_version(module: str) -> str | None:
    """The version of ``module`` if it imports (an installed but broken package does not count), else None."""
    import importlib

    try:
        imported = importlib.import_module(module)
    except Exception:  # ImportError, or a package failing at import (missing CUDA libraries, ...)
        return None
    return str(getattr(imported, "__version__", "(version unknown)"))


def cmd_info(_: argparse.Namespace) -> None:
    import jfdeploy
    from jfdeploy.devices import cuda_device_count, cuda_device_name

    print(f"jfdeploy {jfdeploy.__version__}, python {platform.python_version()}, {platform.platform()}")
    torch_version = _import_version("torch")
    cuda = cuda_device_count() > 0
    if torch_version is None:
        print("torch not installed: engine directories only (run / run-many / eval --engines)")
    print(f"torch {torch_version or '-'}, CUDA available: {cuda}")
    for index in range(cuda_device_count()):
        print(f"  cuda:{index} {cuda_device_name(index)}")
    optional = {"numpy": "numpy", "pillow": "PIL", "av (video)": "av", "onnx": "onnx", "onnxruntime": "onnxruntime",
                "triton": "triton", "tensorrt": "tensorrt", "polygraphy": "polygraphy", "onnxslim": "onnxslim",
                "matplotlib": "matplotlib"}  # fmt: skip
    present = {name: version for name, module in optional.items() if (version := _import_version(module))}
    for name, version in present.items():
        extra = ""
        if name == "onnxruntime":
            import onnxruntime

            extra = f" (providers: {', '.join(onnxruntime.get_available_providers())})"
        print(f"{name} {version}{extra}")
    backends = ["eager", "torch"] if torch_version else []
    backends += ["onnxruntime"] if "onnxruntime" in present else []
    backends += ["tensorrt"] if "tensorrt" in present and cuda else []
    print(f"backends: {', '.join(backends)}")
    if "triton" in present:
        where = "CUDA" if cuda else "CPU interpreter only (TRITON_INTERPRET=1)"
        print(f"attention kernels (--attention triton): {where}")
