"""Precision names, the one table from the names users type to torch dtypes.

fp32   float32: exact (the float64 golden tests hold it to the published outputs)
fp16   float16 autocast (torch backend, GPU) / fp16 graphs (export)
bf16   bfloat16 autocast (torch backend: GPUs, and CPUs with bf16 units such as AVX512-BF16 / AMX)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from jfdeploy.errors import InputError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name; InputError naming the choices otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise InputError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}") from None


def precision_name(dtype: torch.dtype) -> str:
    """The precision name of a torch dtype (float32 -> "fp32")."""
    for name, known in PRECISIONS.items():
        if known == dtype:
            return name
    raise InputError(f"no precision name for {dtype}; supported: {', '.join(map(str, PRECISIONS.values()))}")


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
