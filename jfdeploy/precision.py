"""Precision names, the one table from the names users type to torch dtypes.

fp32   float32: exact (the float64 golden tests hold it to the published outputs)
fp16   float16 autocast (torch backend, GPU) / fp16 graphs (export)
bf16   bfloat16 autocast (torch backend: GPUs, and CPUs with bf16 units such as AVX512-BF16 / AMX)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from jfdeploy.errors import InputError

if TYPE_CHECKING:
    import torch

PRECISION_NAMES = ("fp32", "fp16", "bf16")  # torch dtypes float32, float16, bfloat16 (torch imported on use)


def torch_precisions() -> dict[str, torch.dtype]:
    """Precision name -> torch dtype (imports torch)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name; InputError naming the choices otherwise."""
    if name not in PRECISION_NAMES:
        raise InputError(f"unknown precision {name!r}; choose one of {', '.join(PRECISION_NAMES)}")
    return torch_precisions()[name]


def precision_name(dtype: torch.dtype) -> str:
    """The precision name of a torch dtype (float32 -> "fp32")."""
    for name, known in torch_precisions().items():
        if known == dtype:
            return name
    raise InputError(f"no precision name for {dtype}; supported: {', '.join(PRECISION_NAMES)}")


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic units (x86 AVX512-BF16 or AMX-BF16; Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
