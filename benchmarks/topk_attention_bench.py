"""Time and peak memory of the fused Triton top-k attention against the PyTorch reference.

The joint-block readout at the paper's 480p setting: one object, 12 heads, head dim 64, N = 1620
current tokens (30 x 54) reading T reference frames of N tokens, k = 60 / 120 over all frames.

    python benchmarks/topk_attention_bench.py                 # GPU: the 480p shapes, fp16
    python benchmarks/topk_attention_bench.py --tokens 64     # CPU: small shapes (kernel interpreted)

On a GPU: median of ``triton.testing.do_bench`` (warm-up and compile excluded) and the peak of
``torch.cuda.max_memory_allocated`` above the inputs. On the CPU the kernel runs in Triton's
interpreter: its time says nothing about speed and is not printed; the parity check still runs.
Target on an H100 (issue 4): >= 5x faster than the reference, >= 10x less peak memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from jfdeploy.kernels.topk_attention import topk_joint_attention, topk_joint_attention_reference  # noqa: E402

HEADS, HEAD_DIM, SCALE = 12, 64, 64**-0.5


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
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if GPU else "cpu"
    n = args.tokens
    rows = []
    name = torch.cuda.get_device_name() if GPU else "CPU (Triton interpreter)"
    print(f"device: {name}; torch {torch.__version__}; heads {HEADS}, head dim {HEAD_DIM}, N {n}, {args.dtype}\n")
    columns = ["T", "k", "reference ms", "kernel ms", "speedup", "reference peak MB", "kernel peak MB"]
    columns += ["memory ratio", "max abs diff"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for frames in (int(t) for t in args.frames.split(",")):
        for topk in (int(k) for k in args.topk.split(",")):
            g = torch.Generator(device=device).manual_seed(0)

            def rand(tokens, g=g):
                return torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g, device=device, dtype=dtype)

            inputs = dict(q=rand(n), k_own=rand(n), v_own=rand(n), k_ref=rand(frames * n), v_ref=rand(frames * n))
            reference = functools.partial(topk_joint_attention_reference, scale=SCALE, topk=topk, frames=frames)
            kernel = functools.partial(topk_joint_attention, scale=SCALE, topk=topk, frames=frames)
            ref_ms, ref_mb = measure(reference, inputs)
            ker_ms, ker_mb = measure(kernel, inputs)
            diff = (kernel(**inputs).float() - reference(**inputs).float()).abs().max().item()
            ker_ms = ker_ms if GPU else None
            rows.append(dict(frames=frames, topk=topk, tokens=n, dtype=args.dtype, reference_ms=ref_ms,
                             kernel_ms=ker_ms, reference_peak_mb=ref_mb, kernel_peak_mb=ker_mb,
                             max_abs_diff=diff))  # fmt: skip
            speed = ref_ms / ker_ms if ker_ms else None
            memory = ref_mb / ker_mb if ref_mb and ker_mb else None
            cells = [frames, topk, fmt(ref_ms), fmt(ker_ms), fmt(speed, "x"), fmt(ref_mb), fmt(ker_mb)]
            cells += [fmt(memory, "x"), f"{diff:.1e}"]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
