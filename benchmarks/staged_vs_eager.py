"""Frames/s of backend "torch" (stages, key/value cache, objects batched) against "eager" (the published loop).

One run, same clip, same weights (deterministic random: speed does not depend on their values):

    python benchmarks/staged_vs_eager.py --height 240 --width 432 --objects 2 --memory-frames 3

Warm-up frames are excluded; the clip is long enough for the memory to be full. Times are wall
clock per ``Segmenter.step`` (on a GPU, synchronized). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import jfdeploy


def time_backend(model, backend, frames, masks, args, **options) -> list[float]:
    seg = jfdeploy.Segmenter(
        model, mem_every=args.mem_every, max_memory_frames=args.memory_frames, backend=backend, **options
    )
    times = []
    for t, frame in enumerate(frames):
        if frame.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        seg.step(frame, mask=masks if t == 0 else None, last=t == len(frames) - 1)
        if frame.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[args.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, default=3)
    parser.add_argument("--mem-every", type=int, default=5)
    parser.add_argument("--frames", type=int, default=0, help="default: enough to fill the memory, + 4")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--topk", type=int, default=120)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="torch", help="extra torch-backend rows: torch-fp16, torch-triton, ...")
    args = parser.parse_args()
    num_frames = args.frames or args.mem_every * args.memory_frames + 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = jfdeploy.load_model(None, topk=args.topk).to(args.device)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(num_frames, 3, args.height, args.width, generator=g).to(args.device)
    masks = torch.zeros(args.objects, args.height, args.width)
    for row in range(args.objects):  # side-by-side vertical bands
        band = args.width // args.objects
        masks[row, args.height // 4 : 3 * args.height // 4, row * band : (row + 1) * band - 4] = 1
    masks = masks.to(args.device)
    results = {}
    with torch.inference_mode():
        results["eager"] = time_backend(model, "eager", frames, masks, args)
        for variant in args.variants.split(","):
            options = {}
            if "fp16" in variant:
                options["autocast"] = torch.float16
            if "bf16" in variant:
                options["autocast"] = torch.bfloat16
            if "triton" in variant:
                options["attention"] = "triton"
            results[variant] = time_backend(model, "torch", frames, masks, args, **options)
    print(
        f"device: {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"{args.height}x{args.width}, {args.objects} objects, {args.memory_frames} memory frames + previous, "
        f"mem_every {args.mem_every}, top-k {args.topk}, {num_frames} frames ({args.warmup} warm-up excluded)\n"
    )
    print("| backend | median ms/frame | frames/s | speedup vs eager |")
    print("| --- | --- | --- | --- |")
    eager_median = statistics.median(results["eager"])
    for backend, times in results.items():
        median = statistics.median(times)
        print(f"| {backend} | {median * 1e3:.1f} | {1 / median:.2f} | {eager_median / median:.2f}x |")


if __name__ == "__main__":
    main()
