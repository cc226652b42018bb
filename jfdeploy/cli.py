"""The ``jfdeploy`` command.

    jfdeploy run VIDEO_OR_FOLDER --mask FIRST_MASK.png --out masks/ [--checkpoint CKPT]
    jfdeploy demo --out demo/          # a generated clip, end to end, random weights
    jfdeploy info                      # versions, devices, optional backends present

Errors a user can cause end in one line on stderr and exit status 2; nothing half-written stays.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import warnings
from pathlib import Path

from jfdeploy.backends import BACKENDS
from jfdeploy.bench import VARIANTS
from jfdeploy.errors import JfDeployError

EXIT_USAGE = 2


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="JointFormer checkpoint (published .pth or jfdeploy format). "
        "Without it: deterministic RANDOM weights (meaningless masks, loud warning).",
    )
    group.add_argument("--topk", type=int, default=120, help="reference scores kept per query row (default 120)")
    group.add_argument(
        "--topk-range",
        choices=["all_frames", "every_frame"],
        default="all_frames",
        help="top-k over all reference frames jointly, or within each (default all_frames)",
    )
    group.add_argument(
        "--topk-blocks",
        choices=["all", "half", "last", "none"],
        default="all",
        help="joint blocks that use top-k (default all)",
    )
    group.add_argument("--topk-memory-token", action="store_true", help="also top-k on the memory token's attention")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _run_arguments(parser: argparse.ArgumentParser, *, default_size: int) -> None:
    group = parser.add_argument_group("inference")
    group.add_argument("--backend", default="torch", help=f"one of {', '.join(BACKENDS)} (default torch)")
    group.add_argument("--mem-every", type=int, default=5, help="a memory frame every N frames (default 5)")
    group.add_argument(
        "--max-memory-frames",
        type=int,
        default=3,
        help="memory frames kept per object: the first + FIFO (default 3)",
    )
    group.add_argument(
        "--size",
        type=int,
        default=default_size,
        help=f"resize the shorter side to this for the model, 0 = original (default {default_size}); "
        "masks are written at the original size",
    )
    group.add_argument(
        "--autocast",
        choices=["none", "fp16", "bf16"],
        default="none",
        help="mixed precision for the torch backend (GPU: fp16/bf16; default none)",
    )
    group.add_argument(
        "--attention",
        choices=["torch", "triton"],
        default="torch",
        help="top-k attention of the torch backend: PyTorch ops, or the fused Triton kernel (GPU) (default torch)",
    )
    group.add_argument("--max-objects", type=int, default=20, help="refuse masks with more objects (default 20)")
    group.add_argument("--overlay", type=Path, default=None, help="also write an mp4 of the masks over the video")
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jfdeploy",
        description="JointFormer video object segmentation: run, deploy and benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="segment a video from its first-frame mask",
        description="Segment every frame of a video (mp4/avi/mov/mkv, or a folder of frames such as "
        "DAVIS JPEGImages/480p/<seq>) given the first frame's palette PNG mask. Writes one "
        "palette PNG per frame (labels as in the given mask) into --out.",
    )
    run.add_argument("input", type=Path, help="video file or folder of frames")
    run.add_argument("--mask", type=Path, required=True, help="first frame's mask: palette PNG, 0 = background")
    run.add_argument("--out", type=Path, required=True, help="output folder for the masks")
    run.add_argument(
        "--engines",
        type=Path,
        default=None,
        help="engine directory from `jfdeploy export`: runs it with TensorRT if it holds plans and "
        "TensorRT is present, else with onnxruntime (--backend is then ignored)",
    )
    _model_arguments(run)
    _run_arguments(run, default_size=480)

    demo = sub.add_parser(
        "demo",
        help="generate a clip and segment it end to end (random weights)",
        description="Generate a small synthetic clip with moving objects, write it as a DAVIS-style "
        "folder, and run the full pipeline on it. Without --checkpoint the weights are "
        "deterministic random ones: the masks show the pipeline works, not what a trained "
        "model sees.",
    )
    demo.add_argument("--out", type=Path, default=Path("jfdeploy-demo"), help="output folder (default ./jfdeploy-demo)")
    demo.add_argument("--frames", type=int, default=8, help="clip length (default 8)")
    demo.add_argument("--objects", type=int, default=2, help="objects in the clip, 1-5 (default 2)")
    demo.add_argument("--height", type=int, default=120)
    demo.add_argument("--width", type=int, default=200)
    _model_arguments(demo)
    _run_arguments(demo, default_size=0)

    export = sub.add_parser(
        "export",
        help="export the stages to ONNX graphs (and TensorRT plans) in an engine directory",
        description="Export every stage to an ONNX graph (opset 17, dynamic objects / frame size / "
        "reference tokens), check each against TensorRT's ONNX operator support, and with --format "
        "tensorrt build one TensorRT plan per stage. Writes the directory atomically with a manifest "
        "(versions, settings, sha256 of every file).",
    )
    export.add_argument("--out", type=Path, required=True, help="engine directory to write")
    export.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: half-precision graphs with LayerNorm/softmax/top-k scores in fp32",
    )
    export.add_argument(
        "--format",
        choices=["onnx", "tensorrt"],
        default=None,
        help="default: tensorrt when TensorRT is importable, else onnx",
    )
    export.add_argument("--max-memory-frames", type=int, default=3, help="memory capacity the plans target")
    export.add_argument("--max-objects", type=int, default=8, help="TensorRT profiles: most objects (default 8)")
    export.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT workspace limit (default 4)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    export.add_argument("--verify", action="store_true", help="compare every stage with PyTorch afterwards")
    _model_arguments(export)

    check = sub.add_parser(
        "check",
        help="compare each stage of an engine directory with PyTorch",
        description="Run random inputs through every stage of the engine directory and through "
        "PyTorch, and print a per-stage error table. Exit status 1 if a stage is off.",
    )
    check.add_argument("engines", type=Path, help="engine directory")
    check.add_argument("--checkpoint", type=Path, default=None, help="the checkpoint the engines came from")
    check.add_argument("--device", default=None)

    bench = sub.add_parser(
        "bench",
        help="frames/s and peak memory of every backend, the paper's Table 9 setting",
        description="Benchmark backends side by side with eager PyTorch in the paper's Table 9 setting: "
        "shorter side 480 on a 16:9 clip, a memory frame every 5 frames, top-k 120 over all references, "
        "Ours-1 / Ours-3. Each row runs in a fresh process (its own peak memory). Without a GPU the "
        "defaults shrink to a CPU smoke run (96p). Backends: " + ", ".join(VARIANTS) + ".",
    )
    bench.add_argument("--backends", default=None, help="comma list (default: all available)")
    bench.add_argument("--refs", default="1,3", help="memory frames besides the previous one: Ours-N (default 1,3)")
    bench.add_argument("--objects", default="1", help="objects, comma list to sweep (default 1)")
    bench.add_argument("--resolution", default=None, help="shorter sides, e.g. 240p,480p,720p (default 480p; CPU 96p)")
    bench.add_argument("--frames", type=int, default=None, help="clip length (default: memory full + 8)")
    bench.add_argument("--warmup", type=int, default=None, help="untimed first frames (default: until memory is full)")
    bench.add_argument("--mem-every", type=int, default=5)
    bench.add_argument("--topk", type=int, default=120)
    bench.add_argument("--checkpoint", type=Path, default=None, help="weights (default: random; speed is the same)")
    bench.add_argument("--engines", type=Path, default=None, help="engine directory for onnxruntime / tensorrt rows")
    bench.add_argument("--device", default=None, help="default: cuda if available")
    bench.add_argument("--json", type=Path, default=None, help="write the rows and the environment as JSON")
    bench.add_argument("--chart", type=Path, default=None, help="write a PNG chart (needs matplotlib)")

    evaluate = sub.add_parser(
        "eval",
        help="segment a VOS dataset, write its mask layout and score it (J&F)",
        description="Run a backend over DAVIS 2016/2017 or YouTube-VOS 2018/2019 (or a generic folder), "
        "write the masks in the benchmark's layout, and, where ground truth is available (DAVIS), write "
        "per-sequence J/F/J&F to per_sequence.csv and summary.json. Resumable: sequences already "
        "written completely are skipped.",
    )
    evaluate.add_argument(
        "--dataset", required=True, choices=["davis2016", "davis2017", "youtubevos2018", "youtubevos2019", "generic"]
    )
    evaluate.add_argument(
        "--root",
        type=Path,
        required=True,
        help="dataset root (generic: a folder of frames; give the first mask with --mask)",
    )
    evaluate.add_argument(
        "--split", default=None, help="val / valid / test-dev (default: the dataset's validation split)"
    )
    evaluate.add_argument("--mask", type=Path, default=None, help="generic: the first frame's mask")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--sequences", default=None, help="only these sequences (comma list)")
    evaluate.add_argument("--engines", type=Path, default=None, help="engine directory (onnxruntime / tensorrt)")
    evaluate.add_argument("--flip", action="store_true", help="test-time augmentation: also horizontally flipped")
    evaluate.add_argument(
        "--scales",
        default=None,
        help="test-time augmentation: shorter sides to average, e.g. 480,600 (default: --size)",
    )
    _model_arguments(evaluate)
    _run_arguments(evaluate, default_size=480)

    compare = sub.add_parser(
        "compare",
        help="J&F of a folder of masks against another (DAVIS layout)",
        description="J&F (as the DAVIS benchmark computes it) of PRED against GT: two folders with one "
        "sub-folder of palette PNGs per sequence. GT may be real ground truth, or fp32 eager masks when "
        "judging an fp16 engine.",
    )
    compare.add_argument("pred", type=Path)
    compare.add_argument("gt", type=Path)
    compare.add_argument("--json", type=Path, default=None, help="write the scores as JSON")
    compare.add_argument(
        "--youtube-meta",
        type=Path,
        default=None,
        help="YouTube-VOS layout: the split's meta.json (objects, categories, scored frames)",
    )
    compare.add_argument(
        "--seen-categories",
        type=Path,
        default=None,
        help="with --youtube-meta: training categories (text file or train meta.json) for the seen / unseen split",
    )

    sub.add_parser("info", help="versions, devices and which optional backends are present")
    return parser


def _load(args: argparse.Namespace):
    import torch

    from jfdeploy.model.checkpoint import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise JfDeployError(f"bad --device {args.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JfDeployError("--device cuda requested but CUDA is not available")
    if args.checkpoint is None:
        print(
            "WARNING: no --checkpoint: using deterministic RANDOM weights, masks are not meaningful.",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NO CHECKPOINT GIVEN")
        model = load_model(
            args.checkpoint,
            topk=args.topk,
            topk_range=args.topk_range,
            topk_blocks=args.topk_blocks,
            topk_memory_token=args.topk_memory_token,
        )
    return model.to(device)


def _options(args: argparse.Namespace):
    from jfdeploy.pipeline import RunOptions

    if args.backend not in BACKENDS:
        raise JfDeployError(f"unknown backend {args.backend!r}; available: {', '.join(BACKENDS)}")
    return RunOptions(
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        backend=args.backend,
        size=args.size if args.size > 0 else None,
        max_objects=args.max_objects,
        autocast=args.autocast,
        attention=args.attention,
    )


def _segment(args: argparse.Namespace, model, source, first_mask: Path, options) -> None:
    """Run the pipeline with the command line's output options and report the speed."""
    from jfdeploy.pipeline import segment_video

    summary = segment_video(
        model,
        source,
        first_mask,
        args.out,
        options=options,
        overlay=args.overlay,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"{summary.frames} frames, objects {summary.object_ids}: {summary.fps:.2f} frames/s -> {args.out}")


def _engine_kind(engines: Path) -> str:
    """tensorrt if the directory holds plans and TensorRT is importable, else onnxruntime."""
    import importlib.util

    from jfdeploy.export.manifest import load_manifest

    manifest = load_manifest(engines, verify_files=False)  # the backend verifies the hashes
    return "tensorrt" if manifest.get("tensorrt") and importlib.util.find_spec("tensorrt") else "onnxruntime"


def cmd_run(args: argparse.Namespace) -> None:
    from jfdeploy.io import open_frames
    from jfdeploy.pipeline import read_first_mask

    options = _options(args)
    source = open_frames(args.input)  # inputs are checked before the model is loaded
    read_first_mask(args.mask, source.size, options.max_objects)
    if args.engines is not None:
        options = dataclasses.replace(
            options, engines=args.engines, device=args.device, backend=_engine_kind(args.engines)
        )
        model = None
    else:
        model = _load(args)
    _segment(args, model, source, args.mask, options)


def cmd_demo(args: argparse.Namespace) -> None:
    import tempfile

    from jfdeploy.io import make_clip, open_frames, write_clip_folder, write_label_png

    options = _options(args)
    if not 1 <= args.objects <= 5:
        raise JfDeployError(f"--objects must be 1..5, got {args.objects}")
    frames, labels = make_clip(num_frames=args.frames, height=args.height, width=args.width, num_objects=args.objects)
    model = _load(args)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip"
        images, _ = write_clip_folder(clip, frames, labels)
        first_mask = write_label_png(Path(tmp) / "first_mask.png", labels[0])
        _segment(args, model, open_frames(images), first_mask, options)
    if args.checkpoint is None:
        print("(random weights: these masks only show that the pipeline runs end to end)")


def cmd_info(_: argparse.Namespace) -> None:
    import importlib.metadata as md

    import torch

    import jfdeploy

    print(f"jfdeploy {jfdeploy.__version__}, python {platform.python_version()}, {platform.platform()}")
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
    for package in ("triton", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "av", "numpy", "pillow"):
        try:
            print(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            print(f"{package}: not installed")
    print(f"backends: {', '.join(BACKENDS)}")


def _checkpoint_sha256(path: Path | None) -> str | None:
    from jfdeploy.fsutil import sha256_file

    return None if path is None else sha256_file(path)


def cmd_export(args: argparse.Namespace) -> None:
    import importlib.util

    from jfdeploy.export.onnx_export import export_engines

    fmt = args.format or ("tensorrt" if importlib.util.find_spec("tensorrt") else "onnx")
    model = _load(args)
    tensorrt = None
    if fmt == "tensorrt":
        tensorrt = {"max_objects": args.max_objects, "workspace_gib": args.workspace_gib}
    export_engines(
        model.cpu(),
        args.out,
        precision=args.precision,
        max_memory_frames=args.max_memory_frames,
        checkpoint_sha256=_checkpoint_sha256(args.checkpoint),
        tensorrt=tensorrt,
        overwrite=args.overwrite,
        progress=print,
    )
    print(f"engine directory {args.out} ({fmt}, {args.precision}) written")
    if args.verify:
        _check(args.out, model, args.device)


def _check(engines: Path, model, device) -> None:
    from jfdeploy.backends.engines import engine_backend
    from jfdeploy.export.compare import TOLERANCE, compare_stages, format_table
    from jfdeploy.export.onnx_export import example_size

    backend = engine_backend("onnxruntime", engines, max_memory_frames=3, device=device)
    manifest = backend.manifest
    atol, rtol = TOLERANCE[manifest["precision"]]
    size = example_size(model, manifest["memory"]["slots"])
    results = compare_stages(model, backend.runners, size, atol=atol, rtol=rtol)
    print(format_table(results))
    if not all(results):
        raise JfDeployError(f"{engines}: stages differ from PyTorch beyond atol {atol}, rtol {rtol}")


def cmd_check(args: argparse.Namespace) -> None:
    from jfdeploy.export.manifest import load_manifest

    manifest = load_manifest(args.engines)
    if manifest["checkpoint_sha256"] != _checkpoint_sha256(args.checkpoint):
        raise JfDeployError("--checkpoint is not the checkpoint these engines were exported from")
    options = manifest["model"]
    args.topk, args.topk_range, args.topk_blocks = options["topk"], options["topk_range"], options["topk_blocks"]
    args.topk_memory_token = options["topk_memory_token"]
    _check(args.engines, _load(args), args.device)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v.strip().removesuffix("p")) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise JfDeployError(f"{what} must be a comma list of integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise JfDeployError(f"{what} must be positive, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from jfdeploy.bench import format_markdown, run_bench, save_json, write_chart

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    variants = (args.backends or ",".join(VARIANTS)).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise JfDeployError(f"unknown backends {unknown}; available: {', '.join(VARIANTS)}")
    refs = _int_list(args.refs, "--refs")
    sides = _int_list(args.resolution or ("480p" if gpu else "96p"), "--resolution")
    if any(side % 16 for side in sides):
        raise JfDeployError(f"resolutions must be multiples of 16, got {sides}")
    fill = args.mem_every * (max(refs) - 1) + 2  # frames until every memory slot holds a frame
    warmup = args.warmup if args.warmup is not None else fill
    frames = args.frames or warmup + 8
    if frames <= warmup:
        raise JfDeployError(f"--frames ({frames}) must exceed --warmup ({warmup})")
    rows, info = run_bench(
        variants,
        refs,
        _int_list(args.objects, "--objects"),
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


def _sequences(args: argparse.Namespace) -> tuple[list, str]:
    from jfdeploy import datasets

    if args.dataset == "generic":
        if args.mask is None:
            raise JfDeployError("--dataset generic needs --mask FIRST_MASK")
        return [datasets.generic(args.root, args.mask)], "davis"
    if args.dataset.startswith("davis"):
        year = int(args.dataset[-4:])
        return datasets.davis(args.root, year=year, split=args.split or "val"), "davis"
    return datasets.youtube_vos(args.root, split=args.split or "valid"), "youtube"


def cmd_eval(args: argparse.Namespace) -> None:
    from jfdeploy import datasets
    from jfdeploy.evaluate import EvalOptions, check_scales, evaluate_dataset, write_scores
    from jfdeploy.scoring import compare_folders

    sequences, layout = _sequences(args)
    if args.sequences:
        wanted = set(args.sequences.split(","))
        unknown = sorted(wanted - {s.name for s in sequences})
        if unknown:
            raise JfDeployError(f"unknown sequences {unknown}")
        sequences = [s for s in sequences if s.name in wanted]
    run_options = _options(args)
    scales = check_scales(_int_list(args.scales, "--scales") if args.scales else [args.size])
    backend, backend_options, model = run_options.backend, {}, None
    if args.engines is not None:
        backend = _engine_kind(args.engines)
        backend_options = {"engines": args.engines, "device": args.device}
    else:
        model = _load(args)
        if run_options.autocast != "none":
            import torch

            backend_options["autocast"] = getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[run_options.autocast])
        if run_options.attention != "torch":
            backend_options["attention"] = run_options.attention
    options = EvalOptions(
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        backend=backend,
        backend_options=tuple(backend_options.items()),
        scales=scales,
        flip=args.flip,
    )
    masks_root = args.out if layout == "youtube" else args.out / "masks"  # youtube: out/Annotations/<vid>
    computed = evaluate_dataset(
        model,
        sequences,
        masks_root,
        options=options,
        progress=not args.quiet,
        write_masks=datasets.write_sequence_masks,
        is_complete=datasets.sequence_complete,
    )
    print(f"{len(computed)} sequence(s) segmented, {len(sequences) - len(computed)} already complete -> {masks_root}")
    if layout == "davis" and args.dataset != "generic":
        gt_root = args.root / "Annotations" / "480p"
        summary = compare_folders(masks_root, gt_root, [s.name for s in sequences], binary=args.dataset == "davis2016")
        write_scores(summary, args.out)
        print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f} -> {args.out / 'summary.json'}")


def cmd_compare(args: argparse.Namespace) -> None:
    import json

    from jfdeploy.scoring import compare_folders, compare_youtube, read_categories

    if args.youtube_meta is not None:
        seen = read_categories(args.seen_categories) if args.seen_categories else set()
        scores = compare_youtube(args.pred, args.gt, args.youtube_meta, seen)
        groups = {k: v for k, v in scores.items() if k != "objects"}
        print("  ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in groups.items()))
        if args.json:
            args.json.write_text(json.dumps(scores, indent=2) + "\n")
        return
    summary = compare_folders(args.pred, args.gt)
    print("| sequence | J | F | J&F |\n| --- | --- | --- | --- |")
    for name, scores in sorted(summary["sequences"].items()):
        print(f"| {name} | {scores['J']:.4f} | {scores['F']:.4f} | {(scores['J'] + scores['F']) / 2:.4f} |")
    print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


COMMANDS = {
    "eval": cmd_eval,
    "compare": cmd_compare,
    "run": cmd_run,
    "demo": cmd_demo,
    "export": cmd_export,
    "check": cmd_check,
    "bench": cmd_bench,
    "info": cmd_info,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except JfDeployError as exc:
        print(f"jfdeploy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
