"""``jfdeploy run`` (a video, a folder of frames, or a live source) and ``jfdeploy demo`` (a generated clip)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jfdeploy.cli.common import (
    announce,
    inference_arguments,
    int_at_least,
    load_model,
    model_arguments,
    output_arguments,
    precision_note,
    run_on_workers,
    run_options,
    worker_arguments,
)
from jfdeploy.errors import InputError
from jfdeploy.io.synthetic import MAX_OBJECTS

LIVE_HELP = "rtsp:// or http(s):// stream, /dev/videoN, or a camera index (0, 1, ...)"


def add_run_parser(sub) -> None:
    run = sub.add_parser(
        "run",
        help="segment a video (file, folder of frames, or live source) from its first-frame mask",
        description="Segment every frame of a video (mp4/avi/mov/mkv/webm, a folder of frames such as DAVIS "
        f"JPEGImages/480p/<seq>, or a live source: {LIVE_HELP}) given the first frame's palette PNG mask. Writes "
        "one palette PNG per frame (labels as in the given mask) into --out: all at once for a file or folder, "
        "as frames come for a live source (Ctrl-C keeps every mask written so far).",
    )
    run.add_argument("input", help=f"video file, folder of frames, or live source ({LIVE_HELP})")
    run.add_argument(
        "--mask",
        type=Path,
        required=True,
        help="first frame's mask: palette PNG, 0 = background; or a folder of such PNGs named as frames "
        "(00000.png, 00012.png, ...): each starts the objects new on its frame and corrects the ones it shows",
    )
    run.add_argument("--out", type=Path, required=True, help="output folder for the masks")
    run.add_argument(
        "--engines",
        type=Path,
        default=None,
        help="engine directory from `jfdeploy export`: runs it with TensorRT if it holds plans and "
        "TensorRT is present, else with onnxruntime (--checkpoint, --topk*, --precision and --attention "
        "do not apply: the engines fixed them)",
    )
    live = run.add_argument_group("live sources")
    live.add_argument("--max-frames", type=int_at_least(1), default=None, help="stop after N frames (any source)")
    live.add_argument(
        "--realtime",
        action="store_true",
        help="live sources: when the model falls behind, skip to the newest frame (the count of dropped "
        "frames is reported; mask names keep the stream's frame numbers)",
    )
    model_arguments(run)
    inference_arguments(run, default_size=480)
    output_arguments(run)
    run.set_defaults(handler=cmd_run)


def add_demo_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="generate a clip and segment it end to end (random weights)",
        description="Generate a small synthetic clip with moving objects, write it as a DAVIS-style folder, "
        "and run the full pipeline on it. Without --checkpoint the weights are deterministic random ones: "
        "the masks show the pipeline works, not what a trained model sees. --size defaults to 0 here: the "
        "clip's own size.",
    )
    demo.add_argument("--out", type=Path, default=Path("jfdeploy-demo"), help="output folder (default ./jfdeploy-demo)")
    demo.add_argument("--frames", type=int_at_least(1), default=8, help="clip length (default 8)")
    demo.add_argument("--objects", type=int, choices=range(1, MAX_OBJECTS + 1), default=2, metavar=f"1..{MAX_OBJECTS}",
                      help=f"objects in the clip, 1-{MAX_OBJECTS} (default 2)")  # fmt: skip
    demo.add_argument("--height", type=int_at_least(32), default=120, help="clip height (default 120)")
    demo.add_argument("--width", type=int_at_least(32), default=200, help="clip width (default 200)")
    model_arguments(demo)
    inference_arguments(demo, default_size=0)
    output_arguments(demo)
    demo.set_defaults(handler=cmd_demo)


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
    dropped = f", {summary.dropped} frames dropped (--realtime)" if summary.dropped else ""
    print(f"{summary.frames} frames, objects {summary.object_ids}: {summary.fps:.2f} frames/s{dropped} -> {args.out}")


def cmd_run(args: argparse.Namespace) -> None:
    from jfdeploy.io.video import open_frames
    from jfdeploy.pipeline import read_prompts

    options, device = run_options(args)
    source = open_frames(args.input, max_frames=args.max_frames, realtime=args.realtime)  # before the model loads
    try:
        read_prompts(args.mask, source, options.max_objects)
        model = None if options.engines is not None else load_model(args, device)
        announce(args, options.backend, device, precision_note(options, device))
        _segment(args, model, source, args.mask, options)
    finally:
        source.close()


def cmd_demo(args: argparse.Namespace) -> None:
    import tempfile

    from jfdeploy.io import make_clip, open_frames, write_clip_folder, write_label_png

    options, device = run_options(args)
    frames, labels = make_clip(num_frames=args.frames, height=args.height, width=args.width, num_objects=args.objects)
    model = load_model(args, device)
    announce(args, options.backend, device, precision_note(options, device))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip"
        images, _ = write_clip_folder(clip, frames, labels)
        first_mask = write_label_png(Path(tmp) / "first_mask.png", labels[0])
        _segment(args, model, open_frames(images), first_mask, options)
    if args.checkpoint is None:
        print("(random weights: these masks only show that the pipeline runs end to end)")


def add_run_many_parser(sub) -> None:
    run_many = sub.add_parser(
        "run-many",
        help="segment many videos on a pool of workers (local processes or Ray), resumable",
        description="Segment many videos, each from its first-frame mask, on a pool of workers: local processes "
        "by default, Ray actors with --ray (one per GPU, or per --threads CPU cores). Each video is written "
        "atomically to OUT/<video stem>/ and OUT/summary.json lists frames, seconds, FPS, status and error per "
        "video. Complete videos are skipped when run again; a failing video does not stop the others (exit "
        "status 1); a worker that dies has its video retried on another worker.",
    )
    run_many.add_argument("videos", nargs="*", help="video files or folders of frames")
    run_many.add_argument("--masks", type=Path, default=None, help="folder of first-frame masks: <video stem>.png")
    run_many.add_argument(
        "--manifest", type=Path, default=None,
        help='JSON lines, one {"video": ..., "mask": ...} per video (relative paths: from the manifest\'s folder)',
    )  # fmt: skip
    run_many.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per video")
    run_many.add_argument("--engines", type=Path, default=None, help="engine directory (onnxruntime / tensorrt)")
    worker_arguments(run_many, "video")
    run_many.add_argument("--overwrite", action="store_true", help="segment complete videos again, replacing them")
    model_arguments(run_many)
    inference_arguments(run_many, default_size=480)
    run_many.set_defaults(handler=cmd_run_many)


def cmd_run_many(args: argparse.Namespace) -> None:
    from jfdeploy.batch import jobs_from_manifest, jobs_from_videos

    options, device = run_options(args)
    if (args.manifest is None) == (not args.videos):
        raise InputError("give either VIDEOS with --masks DIR, or --manifest FILE")
    if args.manifest is not None:
        if args.masks is not None:
            raise InputError("--masks does not apply with --manifest (its lines name each video's mask)")
        jobs = jobs_from_manifest(args.manifest)
    else:
        if args.masks is None:
            raise InputError("VIDEOS need --masks DIR (the first-frame mask of each: <video stem>.png)")
        jobs = jobs_from_videos(args.videos, args.masks)
    run_on_workers(args, jobs, args.out, options, device)
