"""Frames/s of the torch backend's variants (stages, key/value cache, objects batched) against "eager" (the
published loop), in one process, through the same frame loop as every verb (``jfdeploy.bench.run_row``).

    python benchmarks/staged_vs_eager.py --height 192 --width 320 --objects 2 --mem-every 2 \\
        --memory-frames 3 --variants torch,torch-bf16 --repeats 5

Same clip (``make_clip``), same weights (deterministic random: speed does not depend on their values).
Warm-up frames (until the memory is full) are excluded; a row's time is the median per-frame time of a
run, and with ``--repeats N`` the best of N runs. Prints a Markdown table with the speedup over eager
fp32 and the mean IoU of each variant's masks against eager's.
"""

from __future__ import annotations

import argparse

import torch

from jfdeploy.bench import RowSpec, mean_iou, run_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, default=3)
    parser.add_argument("--mem-every", type=int, default=2)
    parser.add_argument("--frames", type=int, default=0, help="default: until the memory is full, + 6")
    parser.add_argument("--topk", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; the best median counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="torch", help="rows besides eager, e.g. torch,torch-bf16,torch-fp16")
    args = parser.parse_args()
    warmup = args.mem_every * (args.memory_frames - 1) + 2
    frames = args.frames or warmup + 6
    results = {}
    for variant in ["eager", *[v for v in args.variants.split(",") if v and v != "eager"]]:
        spec = RowSpec(variant, args.memory_frames, args.objects, args.height, frames, warmup, args.mem_every,
                       args.topk, None, None, args.device, width=args.width)  # fmt: skip
        runs = [run_row(spec) for _ in range(args.repeats)]
        best = max(runs, key=lambda run: run[0]["fps"])
        results[variant] = best
        print(f"{variant}: " + ", ".join(f"{run[0]['fps']:.3f}" for run in runs) + " frames/s", flush=True)
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\ndevice: {args.device} ({name}), torch {torch.__version__}, threads {threads}")
    print(f"{args.height}x{args.width}, {args.objects} objects, {args.memory_frames} memory frames + previous, "
          f"mem_every {args.mem_every}, top-k {args.topk}, {frames} frames ({warmup} warm-up excluded), "
          f"best of {args.repeats}\n")  # fmt: skip
    print("| variant | median ms/frame | frames/s | speedup vs eager fp32 | mIoU vs eager |")
    print("| --- | --- | --- | --- | --- |")
    eager_row, eager_maps = results["eager"]
    for variant, (row, maps) in results.items():
        iou = mean_iou(maps, eager_maps, args.objects)
        print(f"| {variant} | {1e3 / row['fps']:.1f} | {row['fps']:.3f} | {row['fps'] / eager_row['fps']:.2f}x | "
              f"{iou:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
