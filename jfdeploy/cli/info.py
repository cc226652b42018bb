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
    import torch

    import jfdeploy

    print(f"jfdeploy {jfdeploy.__version__}, python {platform.python_version()}, {platform.platform()}")
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
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
    backends = ["eager", "torch"]
    backends += ["onnxruntime"] if "onnxruntime" in present else []
    backends += ["tensorrt"] if "tensorrt" in present and torch.cuda.is_available() else []
    print(f"backends: {', '.join(backends)}")
    if "triton" in present:
        where = "CUDA" if torch.cuda.is_available() else "CPU interpreter only (TRITON_INTERPRET=1)"
        print(f"attention kernels (--attention triton): {where}")
