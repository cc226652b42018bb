"""``jfdeploy bench``: the paper's Table 9 setting, every backend variant side by side with eager PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from jfdeploy.cli.common import int_at_least, int_list, resolve_device, size_argument
from jfdeploy.errors import InputError


def add_bench_parser(sub) -> None:
    from jfdeploy.bench import VARIANTS

    bench = sub.add_parser(
        "bench",
        help="frames/s and peak memory of every backend, the paper's Table 9 setting",
        description="Benchmark backend variants side by side with eager PyTorch in the paper's Table 9 setting: "
        "shorter side 480 on a 16:9 clip, a memory frame every 5 frames, top-k 120 over all references, "
        "Ours-1 / Ours-3. Each row runs in a fresh process (its own peak memory). Without a GPU the "
        "defaults shrink to a CPU smoke run (96p). Variants (BACKEND[-PRECISION][-triton]): "
        + ", ".join(VARIANTS)
        + ".",
    )
    bench.add_argument("--backends", default=None, metavar="VARIANT[,VARIANT...]",
                       help="comma list of variants (default: all that can run here)")  # fmt: skip
    bench.add_argument("--refs", type=int_list(1), default=[1, 3],
                       help="memory frames besides the previous one: Ours-N, comma list (default 1,3)")  # fmt: skip
    bench.add_argument("--objects", type=int_list(1), default=[1], help="objects, comma list to sweep (default 1)")
    size_argument(bench, default=480, many="sweeps rows, e.g. 240,480,720 (a CPU defaults to 96)",
                  alias="--resolution")  # fmt: skip
    bench.add_argument("--frames", type=int_at_least(2), default=None, help="clip length (default: memory full + 8)")
    bench.add_argument(
        "--warmup", type=int_at_least(0), default=None, help="untimed first frames (default: until memory is full)"
    )
    bench.add_argument("--mem-every", type=int_at_least(1), default=5, help="a memory frame every N frames (default 5)")
    bench.add_argument("--topk", type=int_at_least(1), default=120, help="reference scores kept per row (default 120)")
    bench.add_argument("--checkpoint", type=Path, default=None, help="weights (default: random; speed is the same)")
    bench.add_argument("--engines", type=Path, default=None, help="engine directory for onnxruntime / tensorrt rows")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    bench.add_argument("--json", type=Path, default=None, help="write the rows and the environment as JSON")
    bench.add_argument("--chart", type=Path, default=None, help="write a PNG chart (needs matplotlib)")
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from jfdeploy.bench import VARIANT_ALIASES, VARIANTS, format_markdown, run_bench, save_json, write_chart

    device = str(resolve_device(args.device))
    gpu = device.startswith("cuda")
    variants = [VARIANT_ALIASES.get(v, v) for v in (args.backends or ",".join(VARIANTS)).split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"--backends: unknown variants {unknown}; available: {', '.join(VARIANTS)}")
    if args.engines is not None and not {"onnxruntime", "tensorrt"} & set(variants):
        raise InputError("--engines applies to the onnxruntime / tensorrt rows only, and --backends has none")
    refs = args.refs
    sides = args.size if "size" in args.given else ([480] if gpu else [96])
    if any(side % 16 or side == 0 for side in sides):
        raise InputError(f"--size: bench sizes must be positive multiples of 16, got {sides}")
    fill = args.mem_every * (max(refs) - 1) + 2  # frames until every memory slot holds a frame
    warmup = args.warmup if args.warmup is not None else fill
    frames = args.frames or warmup + 8
    if frames <= warmup:
        raise InputError(f"--frames ({frames}) must exceed --warmup ({warmup})")
    rows, info = run_bench(
        variants,
        refs,
        args.objects,
        sides,
        frames=frames,
        warmup=warmup,
        mem_every=args.mem_every,
        topk=args.topk,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        engines=str(args.engines) if args.engines else None,
        device=device,
    )
    print(format_markdown(rows, info))
    settings = {"frames": frames, "warmup": warmup, "mem_every": args.mem_every, "topk": args.topk,
                "refs": refs, "resolutions": sides, "checkpoint": bool(args.checkpoint)}  # fmt: skip
    if args.json:
        save_json(args.json, rows, info, settings)
    if args.chart:
        try:
            write_chart(rows, args.chart)
        except ImportError:
            print("(no chart: pip install matplotlib)")
