"""Time and peak memory of the fused Triton top-k attention against the PyTorch reference.

The joint-block readout at the paper's 480p setting: one object, 12 heads, head dim 64, N = 1620
current tokens (30 x 54) reading T reference frames of N tokens, k = 60 / 120 over all frames.

    python benchmarks/topk_attention_bench.py                 # GPU: the 480p shapes, fp16
    python benchmarks/topk_attention_bench.py --tokens 64     # CPU: small shapes (kernel interpreted)
    python benchmarks/topk_attention_bench.py --config 64x32x4x2 --config 128x32x8x2   # GPU: tile sweep

On a GPU: median of ``triton.testing.do_bench`` (warm-up and compile excluded) and the peak of
``torch.cuda.max_memory_allocated`` above the inputs. On the CPU the kernel runs in Triton's
interpreter: its time says nothing about speed and is not printed; the parity check still runs.
The launch configuration (tile sizes, warps, stages) is printed; ``jfdeploy kernels`` reports
registers, spills and shared memory of the same launches for every GPU arch without a GPU.
Target on an H100: >= 5x faster than the reference, >= 10x less peak memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import torch

from jfdeploy.precision import precision_dtype

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from jfdeploy.kernels.topk_attention import (  # noqa: E402
    KernelConfig,
    kernel_config,
    topk_joint_attention,
    topk_joint_attention_reference,
)

HEADS, HEAD_DIM, SCALE = 12, 64, 64**-0.5


def parse_config(text: str) -> KernelConfig:
    """'BLOCK_MxBLOCK_NxWARPSxSTAGES', e.g. 64x32x4x2."""
    block_m, block_n, warps, stages = (int(part) for part in text.lower().split("x"))
    return KernelConfig(block_m, block_n, warps, stages)


def fmt(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def measure(fn, inputs: dict) -> tuple[float | None, float | None]:
    """(median ms, peak MB above the inputs); None where not measurable."""
    if GPU:
        import triton.testing

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(**inputs)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return triton.testing.do_bench(lambda: fn(**inputs), return_mode="median"), peak
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn(**inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1620 if GPU else 64, help="N: tokens per frame")
    parser.add_argument("--frames", default="2,4", help="T values (reference frames)")
    parser.add_argument("--topk", default="60,120", help="k values")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16" if GPU else "fp32")
    parser.add_argument("--topk-range", choices=["all_frames", "every_frame"], default="all_frames")
    parser.add_argument(
        "--config", action="append", type=parse_config, default=None, metavar="BMxBNxWARPSxSTAGES",
        help="kernel tiles and launch options to time (repeatable; default: what the wrapper picks)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    dtype = precision_dtype(args.dtype)
    device = "cuda" if GPU else "cpu"
    n = args.tokens
    rows = []
    name = torch.cuda.get_device_name() if GPU else "CPU (Triton interpreter)"
    capability = None
    if GPU:
        major, minor = torch.cuda.get_device_capability()
        capability = 10 * major + minor
    configs = args.config or [kernel_config(dtype, HEAD_DIM, capability)]
    print(f"device: {name}; torch {torch.__version__}; heads {HEADS}, head dim {HEAD_DIM}, N {n}, {args.dtype}, "
          f"{args.topk_range}; the wrapper's launch: {kernel_config(dtype, HEAD_DIM, capability)}\n")  # fmt: skip
    columns = ["T", "k", "tiles", "reference ms", "kernel ms", "speedup", "reference peak MB", "kernel peak MB"]
    columns += ["memory ratio", "max abs diff"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for frames in (int(t) for t in args.frames.split(",")):
        for topk in (int(k) for k in args.topk.split(",")):
            g = torch.Generator(device=device).manual_seed(0)

            def rand(tokens, g=g):
                return torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g, device=device, dtype=dtype)

            inputs = dict(q=rand(n), k_own=rand(n), v_own=rand(n), k_ref=rand(frames * n), v_ref=rand(frames * n))
            options = dict(scale=SCALE, topk=topk, frames=frames, topk_range=args.topk_range)
            reference = functools.partial(topk_joint_attention_reference, **options)
            ref_ms, ref_mb = measure(reference, inputs)
            expected = reference(**inputs).float()
            for config in configs:
                kernel = functools.partial(topk_joint_attention, **options, config=config)
                ker_ms, ker_mb = measure(kernel, inputs)
                diff = (kernel(**inputs).float() - expected).abs().max().item()
                ker_ms = ker_ms if GPU else None
                tiles = f"{config.block_m}x{config.block_n}x{config.num_warps}x{config.num_stages}"
                rows.append(dict(frames=frames, topk=topk, topk_range=args.topk_range, tokens=n, dtype=args.dtype,
                                 tiles=tiles, reference_ms=ref_ms, kernel_ms=ker_ms, reference_peak_mb=ref_mb,
                                 kernel_peak_mb=ker_mb, max_abs_diff=diff))  # fmt: skip
                speed = ref_ms / ker_ms if ker_ms else None
                memory = ref_mb / ker_mb if ref_mb and ker_mb else None
                cells = [frames, topk, tiles, fmt(ref_ms), fmt(ker_ms), fmt(speed, "x"), fmt(ref_mb), fmt(ker_mb)]
                cells += [fmt(memory, "x"), f"{diff:.1e}"]
                print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
