"""The ``jfdeploy`` command.

    jfdeploy run VIDEO_OR_FOLDER --mask FIRST_MASK.png --out masks/ [--checkpoint CKPT]
    jfdeploy demo --out demo/          # a generated clip, end to end, random weights
    jfdeploy info                      # versions, devices, optional backends present

Errors a user can cause end in one line on stderr and exit status 2; nothing half-written stays.
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

from jfdeploy.backends import BACKENDS
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
        model = load_model(args.checkpoint, topk=args.topk, topk_range=args.topk_range, topk_blocks=args.topk_blocks)
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


def cmd_run(args: argparse.Namespace) -> None:
    from jfdeploy.io import open_frames
    from jfdeploy.pipeline import read_first_mask

    options = _options(args)
    source = open_frames(args.input)  # inputs are checked before the model is loaded
    read_first_mask(args.mask, source.size, options.max_objects)
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


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "info": cmd_info}


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
