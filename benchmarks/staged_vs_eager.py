"""Frames/s of the torch backend's variants (stages, key/value cache, objects batched) against "eager" (the
published loop), in one process, through the same frame loop as every verb (``jfdeploy.bench.run_row``).

    python benchmarks/staged_vs_eager.py --height 192 --width 320 --objects 2 --mem-every 2 \\
        --memory-frames 3 --variants torch,torch-bf16 --repeats 5 --flops

Same clip (``make_clip``), same weights (deterministic random: speed does not depend on their values).
Warm-up frames (until the memory is full) are excluded; a row's time is the median per-frame time of a
run, and with ``--repeats N`` the best of N runs. Prints a Markdown table with the speedup over eager
fp32 and the mean IoU of each variant's masks against eager's. ``--flops`` adds the GFLOP of one
steady-state step (PyTorch's flop counter) and the speedup those flops allow over eager ("flop bound").
``--objects 1,8`` runs every variant at each object count and prints how time and flops scale with them.
"""

from __future__ import annotations

import argparse

import torch

from jfdeploy.bench import RowSpec, mean_iou, run_row


def measure(args: argparse.Namespace, variant: str, objects: int, frames: int, warmup: int):
    spec = RowSpec(variant, args.memory_frames, objects, args.height, frames, warmup, args.mem_every, args.topk,
                   None, None, args.device, width=args.width, count_flops=args.flops)  # fmt: skip
    runs = [run_row(spec) for _ in range(args.repeats)]
    fps = ", ".join(f"{run[0]['fps']:.3f}" for run in runs)
    print(f"{variant}, {objects} objects: {fps} frames/s", flush=True)
    return max(runs, key=lambda run: run[0]["fps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--objects", default="2", help="objects in the clip; a comma list runs each (e.g. 1,8)")
    parser.add_argument("--memory-frames", type=int, default=3)
    parser.add_argument("--mem-every", type=int, default=2)
    parser.add_argument("--frames", type=int, default=0, help="default: until the memory is full, + 6")
    parser.add_argument("--topk", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; the best median counts")
    parser.add_argument("--flops", action="store_true", help="also count the flops of one steady-state step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="torch", help="rows besides eager, e.g. torch,torch-bf16,torch-fp16")
    args = parser.parse_args()
    counts = [int(n) for n in args.objects.split(",")]
    variants = ["eager", *[v for v in args.variants.split(",") if v and v != "eager"]]
    warmup = args.mem_every * (args.memory_frames - 1) + 2
    frames = args.frames or warmup + 6
    results = {(v, n): measure(args, v, n, frames, warmup) for n in counts for v in variants}
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\ndevice: {args.device} ({name}), torch {torch.__version__}, threads {threads}")
    print(f"{args.height}x{args.width}, {args.memory_frames} memory frames + previous, mem_every {args.mem_every}, "
          f"top-k {args.topk}, {frames} frames ({warmup} warm-up excluded), best of {args.repeats}\n")  # fmt: skip
    flops = " GFLOP/frame | flop bound |" if args.flops else ""
    print(f"| objects | variant | median ms/frame | frames/s | speedup vs eager fp32 |{flops} mIoU vs eager |")
    print("| --- " * (6 + 2 * args.flops) + "|")
    for (variant, objects), (row, maps) in results.items():
        eager_row, eager_maps = results[("eager", objects)]
        cells = [str(objects), variant, f"{1e3 / row['fps']:.1f}", f"{row['fps']:.3f}",
                 f"{row['fps'] / eager_row['fps']:.2f}x"]  # fmt: skip
        if args.flops:
            cells += [f"{row['gflop_per_frame']:.1f}", f"{eager_row['gflop_per_frame'] / row['gflop_per_frame']:.2f}x"]
        cells.append(f"{mean_iou(maps, eager_maps, objects):.4f}")
        print("| " + " | ".join(cells) + " |")
    if len(counts) > 1:
        low, high = min(counts), max(counts)
        print(f"\nscaling from {low} to {high} objects (time ratio / flop ratio):")
        for variant in variants:
            (a, _), (b, _) = results[(variant, low)], results[(variant, high)]
            line = f"- {variant}: time {a['fps'] / b['fps']:.2f}x"
            if args.flops:
                ratio = b["gflop_per_frame"] / a["gflop_per_frame"]
                line += f", flops {ratio:.2f}x, time over flops {a['fps'] / b['fps'] / ratio - 1:+.1%}"
            print(line)


if __name__ == "__main__":
    main()
