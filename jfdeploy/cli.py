"""The ``jfdeploy`` command.

    jfdeploy run VIDEO_OR_FOLDER --mask FIRST_MASK.png --out masks/ [--checkpoint CKPT]
    jfdeploy demo --out demo/          # a generated clip, end to end, random weights
    jfdeploy info                      # versions, devices, optional backends present

Every verb keeps one contract: an error a user can cause ends in one line on stderr (no traceback)
and exit status 2 (bad input or configuration; 1 where a check or comparison found a difference);
options are checked when parsed or before anything is loaded; SIGINT / SIGTERM remove whatever the
command was writing and exit 130 / 143 (``jfdeploy.errors.exit_status``, ``jfdeploy.fsutil``).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import warnings
from pathlib import Path

from jfdeploy import fsutil
from jfdeploy.backends import BACKENDS
from jfdeploy.bench import VARIANTS
from jfdeploy.errors import EXIT_USAGE, InputError, JfDeployError, exit_status


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the CLI's contract: one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (the message names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="JointFormer checkpoint (published .pth or jfdeploy format). "
        "Without it: deterministic RANDOM weights (meaningless masks, loud warning).",
    )
    group.add_argument(
        "--topk", type=_int_at_least(1), default=120, help="reference scores kept per query row (default 120)"
    )
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


def _run_arguments(parser: argparse.ArgumentParser, *, default_size: int, outputs: bool = True) -> None:
    """Inference options; ``outputs``: also --overlay / --overwrite (a command writing one video's masks)."""
    group = parser.add_argument_group("inference")
    group.add_argument("--backend", default="torch", help=f"one of {', '.join(BACKENDS)} (default torch)")
    group.add_argument(
        "--mem-every", type=_int_at_least(1), default=5, help="a memory frame every N frames (default 5)"
    )
    group.add_argument(
        "--max-memory-frames",
        type=_int_at_least(1),
        default=3,
        help="memory frames kept per object: the first + FIFO (default 3)",
    )
    group.add_argument(
        "--size",
        type=_int_at_least(0),
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
    group.add_argument(
        "--max-objects", type=_int_at_least(1), default=20, help="refuse masks with more objects (default 20)"
    )
    if outputs:
        group.add_argument("--overlay", type=Path, default=None, help="also write an mp4 of the masks over the video")
        group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _profile(text: str):
    """argparse type: a TensorRT optimization profile (``jfdeploy.export.tensorrt.Bucket``)."""
    from jfdeploy.export.tensorrt import parse_bucket

    try:
        return parse_bucket(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TensorRT plans")
    group.add_argument(
        "--profile",
        action="append",
        type=_profile,
        default=None,
        metavar="MIN_HxW:OPT_HxW:MAX_HxW",
        help="one optimization profile (resolution bucket) of padded frame sizes, e.g. 384x384:480x864:608x1088, "
        "or 360p / 480p / 720p; repeat for more (each costs about one more build; default 480p)",
    )
    group.add_argument(
        "--max-objects", type=_int_at_least(1), default=8, help="objects the profiles cover: 1..N (default 8)"
    )
    group.add_argument(
        "--workspace", "--workspace-gib", dest="workspace_gib", type=_positive_float, default=4.0, metavar="GiB",
        help="TensorRT builder workspace limit (default 4)",
    )  # fmt: skip
    group.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        metavar="FILE",
        help="TensorRT timing cache, read and updated (default: timing.cache in the engine directory)",
    )
    group.add_argument(
        "--optimization-level",
        type=_int_at_least(0),
        default=None,
        help="TensorRT builder optimization level 0..5: lower builds faster, runs slower (default: TensorRT's, 3)",
    )


def _add_build_parser(sub) -> None:
    build = sub.add_parser(
        "build",
        help="build the TensorRT plans of an engine directory (on the GPU machine)",
        description="Build one TensorRT plan per stage (through Polygraphy) from the ONNX graphs of an engine "
        "directory made by `jfdeploy export`, possibly on another machine. Plans are built for this GPU and "
        "this TensorRT version (recorded in the manifest; other GPUs and versions are refused when loading). "
        "The directory is updated atomically: if the build fails it stays as it was.",
    )
    build.add_argument("engines", type=Path, metavar="ENGINE_DIR", help="engine directory from `jfdeploy export`")
    _tensorrt_arguments(build)


def _add_kernels_parser(sub) -> None:
    from jfdeploy.kernels import report

    kernels = sub.add_parser(
        "kernels",
        help="compile the Triton kernels ahead of time per GPU arch: registers, spills, shared memory (no GPU needed)",
        description="Compile the fused top-k attention kernel for each NVIDIA arch with Triton's compiler and "
        "its bundled ptxas, exactly as the launch wrapper would launch it (Table 9 inputs), and print registers, "
        "spill bytes, shared memory and the launch configuration per arch and configuration.",
    )
    report.add_arguments(kernels)


def _check_tolerance_defaults() -> str:
    try:
        from jfdeploy.export import compare
    except ImportError:  # Polygraphy missing: `check` says so when it runs
        return "see the engines' precision"
    return "; ".join(f"{precision} atol {a:g}, rtol {r:g}" for precision, (a, r) in compare.TOLERANCE.items())


def _add_check_parser(sub) -> None:
    defaults = _check_tolerance_defaults()
    check = sub.add_parser(
        "check",
        help="compare an engine directory with PyTorch: stage by stage, and frame by frame (drift)",
        description="Compare the runtimes of an engine directory with PyTorch through Polygraphy's comparator. "
        "Stages: every stage's example inputs through PyTorch (the reference: the stage modules, same weights), "
        "onnxruntime (the ONNX graphs) and TensorRT (the plans, when TensorRT, CUDA and plans are present). "
        "With --frames N: N frames of a generated clip through each backend's whole frame loop from the same "
        "first mask, with every frame's probability error and mask IoU / disagreement (the memory feeds each "
        "frame's error into the next ones, so it can grow). An element is out of tolerance when "
        "|a - b| > atol AND |a - b| > rtol * |reference| (Polygraphy's element-wise check). Prints Markdown "
        "tables; exit status 0 when everything is within tolerance, 1 when something is not, 2 on bad input.",
    )
    check.add_argument("engines", type=Path, metavar="ENGINE_DIR", help="engine directory from `jfdeploy export`")
    check.add_argument("--checkpoint", type=Path, default=None, help="the checkpoint the engines came from")
    check.add_argument(
        "--device",
        default=None,
        help="PyTorch's device (default: cuda if available); onnxruntime runs there too if it is CUDA and "
        "onnxruntime has its CUDA provider (else on the CPU); TensorRT runs on CUDA",
    )
    check.add_argument(
        "--runners",
        default=None,
        metavar="A,B[,C]",
        help="runners to compare, the first being the reference: torch, onnxruntime, tensorrt (default: torch, "
        "onnxruntime, and tensorrt when TensorRT, CUDA and plans are present)",
    )
    for name, index in (("atol", 0), ("rtol", 1)):
        check.add_argument(
            f"--{name}",
            action="append",
            default=[],
            metavar="[NAME=]VALUE",
            help=f"{'absolute' if index == 0 else 'relative'} tolerance: VALUE for every output, NAME=VALUE for "
            "one output (a stage output such as f16 or logits, stage.output for one stage's, prob for the "
            f"--frames probabilities); repeatable (default by engine precision: {defaults})",
        )
    check.add_argument(
        "--frames",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="also run N >= 2 frames of a generated clip through each backend's frame loop and report the error "
        "at every frame (drift); the tolerance of output prob (default: the global --atol / --rtol) applies to "
        "each frame's probabilities (default 0: stages only)",
    )
    check.add_argument("--objects", type=int, choices=range(1, 6), default=2, metavar="1..5",
                       help="objects in the clip (default 2)")  # fmt: skip
    check.add_argument(
        "--clip-size",
        default=None,
        metavar="HxW",
        help="frame size of the clip (default: with TensorRT its first profile's optimal size, else the smallest "
        "16:9 size from 128x224 the engines take)",
    )
    check.add_argument(
        "--mem-every", type=_int_at_least(1), default=5, help="a memory frame every N frames (default 5)"
    )
    check.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")


def build_parser() -> argparse.ArgumentParser:
    from jfdeploy import __version__

    parser = _Parser(
        prog="jfdeploy",
        description="JointFormer video object segmentation: run, deploy and benchmark. Exit status: 0 success, "
        "1 a check or comparison found a difference, 2 bad input or configuration, 130 / 143 interrupted "
        "(SIGINT / SIGTERM: unfinished output is removed).",
    )
    parser.add_argument("--version", action="version", version=f"jfdeploy {__version__}")
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
        "TensorRT is present, else with onnxruntime (--backend, --checkpoint, --topk*, --autocast and "
        "--attention do not apply: the engines fixed them)",
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
    demo.add_argument("--frames", type=_int_at_least(1), default=8, help="clip length (default 8)")
    demo.add_argument("--objects", type=int, choices=range(1, 6), default=2, metavar="1..5",
                      help="objects in the clip, 1-5 (default 2)")  # fmt: skip
    demo.add_argument("--height", type=_int_at_least(16), default=120, help="clip height (default 120)")
    demo.add_argument("--width", type=_int_at_least(16), default=200, help="clip width (default 200)")
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
    export.add_argument(
        "--max-memory-frames", type=_int_at_least(1), default=3, help="memory capacity the plans target"
    )
    _tensorrt_arguments(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    export.add_argument("--verify", action="store_true", help="compare every stage with PyTorch afterwards")
    _model_arguments(export)

    _add_check_parser(sub)

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
    bench.add_argument("--frames", type=_int_at_least(2), default=None, help="clip length (default: memory full + 8)")
    bench.add_argument(
        "--warmup", type=_int_at_least(0), default=None, help="untimed first frames (default: until memory is full)"
    )
    bench.add_argument("--mem-every", type=_int_at_least(1), default=5)
    bench.add_argument("--topk", type=_int_at_least(1), default=120)
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
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every sequence again, replacing its masks (default: resume, skipping complete sequences)",
    )
    evaluate.add_argument("--flip", action="store_true", help="test-time augmentation: also horizontally flipped")
    evaluate.add_argument(
        "--scales",
        default=None,
        help="test-time augmentation: shorter sides to average, e.g. 480,600 (default: --size)",
    )
    _model_arguments(evaluate)
    _run_arguments(evaluate, default_size=480, outputs=False)

    compare = sub.add_parser(
        "compare",
        help="J&F of a folder of masks against another (two run outputs, or the DAVIS layout)",
        description="J&F (as the DAVIS benchmark computes it) of PRED against GT: two folders of palette "
        "PNGs with matching names (e.g. two `jfdeploy run` outputs), or two folders with one sub-folder of "
        "PNGs per sequence (DAVIS layout). GT may be real ground truth, or fp32 eager masks when judging "
        "an fp16 engine.",
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

    _add_build_parser(sub)
    _add_kernels_parser(sub)
    sub.add_parser("info", help="versions, devices, and the optional packages and backends that import")
    return parser


def _onnxruntime_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _device(requested: str | None, engine_kind: str | None = None):
    """The torch.device a command runs on: ``--device`` as given (checked), else CUDA when available.

    engine_kind "onnxruntime" / "tensorrt": the device of an engine directory's runtime (onnxruntime
    defaults to CUDA only when it has its CUDA provider; TensorRT runs on CUDA only).
    """
    import torch

    cuda = torch.cuda.is_available()
    if engine_kind == "tensorrt" and not cuda:
        raise InputError("TensorRT engines run on CUDA devices only, and CUDA is not available on this machine")
    if requested is None:
        use_cuda = cuda and (engine_kind != "onnxruntime" or _onnxruntime_has_cuda())
        return torch.device("cuda" if use_cuda else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {requested!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {requested!r}: only cpu, cuda and cuda:N are supported")
    if device.type == "cuda":
        if not cuda:
            raise InputError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if engine_kind == "onnxruntime" and not _onnxruntime_has_cuda():
            raise InputError(f"--device {requested}: onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    elif engine_kind == "tensorrt":
        raise InputError(f"--device {requested}: TensorRT engines run on CUDA devices only")
    return device


def _device_name(device) -> str:
    import torch

    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _announce(args: argparse.Namespace, backend: str, device, detail: str = "") -> None:
    """The first progress line: which backend runs on which device."""
    if not getattr(args, "quiet", False):
        print(f"jfdeploy {args.command}: backend {backend} on {_device_name(device)}{detail}", file=sys.stderr)


def _load(args: argparse.Namespace):
    from jfdeploy.model.checkpoint import load_model

    device = _device(args.device)
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


def _option_defaults() -> dict[str, tuple[str, object]]:
    """dest -> (option string, default) of the model and inference options."""
    parser = argparse.ArgumentParser(add_help=False)
    _model_arguments(parser)
    _run_arguments(parser, default_size=0)
    return {action.dest: (action.option_strings[0], action.default) for action in parser._actions}


def _refuse_unless_default(args: argparse.Namespace, dests: list[str], reason: str) -> None:
    """InputError naming the first option in ``dests`` that was given a non-default value."""
    defaults = _option_defaults()
    for dest in dests:
        option, default = defaults[dest]
        value = getattr(args, dest, default)
        if value != default:
            shown = option if isinstance(value, bool) else f"{option} {value}"
            raise InputError(f"{shown} does not apply {reason}")


def _options(args: argparse.Namespace):
    """RunOptions from the command line; options that do not apply to the chosen backend are refused."""
    from jfdeploy.pipeline import RunOptions

    if args.backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend {args.backend!r}; available: {', '.join(BACKENDS)}")
    engines = getattr(args, "engines", None)
    if engines is not None:
        if args.backend not in ("torch", "onnxruntime", "tensorrt"):  # torch (the default): chosen by the engines
            raise InputError(f"--backend {args.backend} does not apply with --engines (onnxruntime or tensorrt)")
        fixed = ["checkpoint", "topk", "topk_range", "topk_blocks", "topk_memory_token", "autocast", "attention"]
        _refuse_unless_default(args, fixed, "with --engines: the engine directory fixed it at export")
    elif args.backend in ("onnxruntime", "tensorrt"):
        raise InputError(f"--backend {args.backend} needs --engines DIR (made by `jfdeploy export`)")
    elif args.backend != "torch":
        _refuse_unless_default(args, ["autocast", "attention"], f"to --backend {args.backend} (only to torch)")
    if args.attention == "triton" and engines is None:
        _check_triton(_device(args.device))
    return RunOptions(
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        backend=args.backend,
        size=args.size if args.size > 0 else None,
        max_objects=args.max_objects,
        autocast=args.autocast,
        attention=args.attention,
    )


def _check_triton(device) -> None:
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        raise InputError("--attention triton needs Triton (pip install 'jfdeploy[triton]')")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(
            f"--attention triton runs on CUDA devices, not {device} (TRITON_INTERPRET=1 runs it in Triton's "
            "CPU interpreter, slowly)"
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


def _engine_kind(engines: Path, backend: str = "torch") -> str:
    """The runtime of an engine directory: ``backend`` if it names one (onnxruntime / tensorrt), else
    tensorrt if the directory holds plans and TensorRT is importable, else onnxruntime."""
    import importlib.util

    from jfdeploy.export.manifest import load_manifest

    manifest = load_manifest(engines, verify_files=False)  # the backend verifies the hashes
    if backend in ("onnxruntime", "tensorrt"):
        return backend
    return "tensorrt" if manifest.get("tensorrt") and importlib.util.find_spec("tensorrt") else "onnxruntime"


def cmd_run(args: argparse.Namespace) -> None:
    from jfdeploy.io import open_frames
    from jfdeploy.pipeline import read_first_mask

    options = _options(args)
    if args.engines is not None:
        kind = _engine_kind(args.engines, args.backend)
        device = _device(args.device, kind)
    else:
        device = _device(args.device)
    source = open_frames(args.input)  # inputs are checked before the model is loaded
    read_first_mask(args.mask, source.size, options.max_objects)
    if args.engines is not None:
        options = dataclasses.replace(options, engines=args.engines, device=str(device), backend=kind)
        model = None
    else:
        model = _load(args)
    _announce(args, options.backend, device, _precision_note(options, device))
    _segment(args, model, source, args.mask, options)


def _precision_note(options, device=None) -> str:
    """What the first progress line adds to backend and device: precision options, or why not CUDA."""
    import torch

    notes = [f"autocast {options.autocast}"] if options.autocast != "none" else []
    notes += [f"{options.attention} attention"] if options.attention != "torch" else []
    if options.backend == "onnxruntime" and device is not None and device.type == "cpu" and torch.cuda.is_available():
        notes.append("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu to run on CUDA")
    return f" ({', '.join(notes)})" if notes else ""


def cmd_demo(args: argparse.Namespace) -> None:
    import tempfile

    from jfdeploy.io import make_clip, open_frames, write_clip_folder, write_label_png

    options = _options(args)
    device = _device(args.device)
    frames, labels = make_clip(num_frames=args.frames, height=args.height, width=args.width, num_objects=args.objects)
    model = _load(args)
    _announce(args, options.backend, device, _precision_note(options))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip"
        images, _ = write_clip_folder(clip, frames, labels)
        first_mask = write_label_png(Path(tmp) / "first_mask.png", labels[0])
        _segment(args, model, open_frames(images), first_mask, options)
    if args.checkpoint is None:
        print("(random weights: these masks only show that the pipeline runs end to end)")


def _import_version(module: str) -> str | None:
    """The version of ``module`` if it imports (an installed but broken package does not count), else None."""
    import importlib

    try:
        imported = importlib.import_module(module)
    except Exception:  # ImportError, or a package failing at import (missing CUDA libraries, ...)
        return None
    return str(getattr(imported, "__version__", "(version unknown)"))


def cmd_info(_: argparse.Namespace) -> None:
    import torch

    import jfdeploy

    print(f"jfdeploy {jfdeploy.__version__}, python {platform.python_version()}, {platform.platform()}")
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
    optional = {"numpy": "numpy", "pillow": "PIL", "av (video)": "av", "onnx": "onnx", "onnxruntime": "onnxruntime",
                "triton": "triton", "tensorrt": "tensorrt", "polygraphy": "polygraphy", "onnxslim": "onnxslim",
                "matplotlib": "matplotlib"}  # fmt: skip
    present = {name: version for name, module in optional.items() if (version := _import_version(module))}
    for name, version in present.items():
        extra = ""
        if name == "onnxruntime":
            import onnxruntime

            extra = f" (providers: {', '.join(onnxruntime.get_available_providers())})"
        print(f"{name} {version}{extra}")
    backends = ["eager", "torch"]
    backends += ["onnxruntime"] if "onnxruntime" in present else []
    backends += ["tensorrt"] if "tensorrt" in present and torch.cuda.is_available() else []
    print(f"backends: {', '.join(backends)}")
    if "triton" in present:
        where = "CUDA" if torch.cuda.is_available() else "CPU interpreter only (TRITON_INTERPRET=1)"
        print(f"attention kernels (--attention triton): {where}")


def _checkpoint_sha256(path: Path | None) -> str | None:
    from jfdeploy.fsutil import sha256_file

    return None if path is None else sha256_file(path)


def cmd_export(args: argparse.Namespace) -> None:
    import importlib.util

    from jfdeploy.export.onnx_export import export_engines

    fmt = args.format or ("tensorrt" if importlib.util.find_spec("tensorrt") else "onnx")
    tensorrt = _build_settings(args) if fmt == "tensorrt" else None
    if tensorrt is not None:  # before the model loads
        from jfdeploy.export.tensorrt import BUILD_HINT, require_tensorrt

        require_tensorrt(hint=BUILD_HINT)
    model = _load(args)
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


def _build_settings(args: argparse.Namespace):
    from jfdeploy.export.tensorrt import DEFAULT_BUCKETS, BuildSettings

    buckets = tuple(args.profile) if args.profile else DEFAULT_BUCKETS
    return BuildSettings(
        buckets,
        max_objects=args.max_objects,
        workspace_gib=args.workspace_gib,
        timing_cache=args.timing_cache,
        optimization_level=args.optimization_level,
    )


def cmd_build(args: argparse.Namespace) -> None:
    from jfdeploy.export.tensorrt import build_engine_dir

    manifest = build_engine_dir(args.engines, _build_settings(args), progress=print)
    built = manifest["tensorrt"]
    print(f"{len(built['plans'])} TensorRT plans, {len(built['profiles'])} profile(s), written to {args.engines}")


def _check(
    engines: Path,
    model,
    device,
    *,
    manifest=None,
    runners: list[str] | None = None,
    tolerances=None,
    frames: int = 0,
    objects: int = 2,
    clip_size: tuple[int, int] | None = None,
    mem_every: int = 5,
    json_path: Path | None = None,
) -> None:
    """Compare ``engines`` with PyTorch (``model``: the weights they came from); print the tables.

    Raises DifferenceError (exit status 1) when an output or frame is out of tolerance, after the
    tables are printed and the JSON written. Defaults: every runner that runs here, the tolerances of
    the engines' precision, stages only.
    """
    from jfdeploy.errors import DifferenceError
    from jfdeploy.export import compare
    from jfdeploy.export.manifest import load_manifest

    manifest = manifest or load_manifest(engines)
    device = device if not isinstance(device, str | None) else _device(device)
    runners = runners or compare.select_runners(None, manifest)
    tolerances = tolerances or compare.parse_tolerances([], [], compare.TOLERANCE[manifest["precision"]])
    model = model.to(device) if model is not None else None
    size = compare.comparison_size(manifest, runners)
    stage_runners = compare.StageRunners(runners, engines=engines, manifest=manifest, model=model, device=device)
    print(f"stages, {size.objects} objects at {size.height}x{size.width}, {size.slots} memory slots "
          f"({manifest['precision']} engines, reference {runners[0]}):")  # fmt: skip
    stages = compare.check_stages(stage_runners, size, tolerances)
    print(compare.format_stage_table(stages))
    report = compare.CheckReport(str(engines), manifest["precision"], runners, dataclasses.asdict(size), stages)
    if frames:
        height, width = clip_size or compare.default_clip_size(manifest, runners)
        clip = compare.make_drift_clip(frames, height, width, objects)
        factories = compare.segmenter_factories(runners, model=model, engines=engines, manifest=manifest,
                                                device=device, mem_every=mem_every)  # fmt: skip
        print(f"\ndrift, {frames} frames of a generated {height}x{width} clip, {objects} objects, "
              f"a memory frame every {mem_every}:")  # fmt: skip
        report.frames = compare.check_drift(factories, clip, tolerances)
        report.clip = {"frames": frames, "height": height, "width": width, "objects": objects, "mem_every": mem_every}
        print(compare.format_drift_table(report.frames))
    if json_path is not None:
        compare.save_json(report, json_path)
    failed = [c for c in report.stages if not c.ok] + [c for c in report.frames if not c.ok]
    if failed:
        raise DifferenceError(f"{len(failed)} of {len(report.stages) + len(report.frames)} comparisons out of "
                              f"tolerance (first: {_check_name(failed[0])})")  # fmt: skip
    print("all within tolerance")


def _check_name(check) -> str:
    where = f"{check.stage}.{check.output}" if hasattr(check, "stage") else f"frame {check.frame}"
    error = "shapes differ" if check.max_abs is None else f"max abs {check.max_abs:.2e}"
    return f"{where}, {check.runners}, {error} > atol {check.atol:g}"


def cmd_kernels(args: argparse.Namespace) -> None:
    from jfdeploy.kernels import report

    report.run_from_args(args)


def cmd_check(args: argparse.Namespace) -> None:
    try:
        from jfdeploy.export import compare
    except ImportError as exc:
        raise JfDeployError(f"jfdeploy check needs: pip install 'jfdeploy[onnx]' ({exc})") from exc
    from jfdeploy.export.manifest import load_manifest

    tolerances = compare.parse_tolerances(args.atol, args.rtol)  # options first, then the engines, then the model
    requested = compare.parse_runners(args.runners)
    if args.frames == 1:
        raise InputError("--frames must be 0 (stages only) or >= 2: the first frame only holds the given mask")
    clip_size = compare.parse_clip_size(args.clip_size) if args.clip_size else None
    device = _device(args.device)
    manifest = load_manifest(args.engines)
    tolerances = tolerances.with_defaults(compare.TOLERANCE[manifest["precision"]])
    runners = compare.select_runners(requested, manifest)
    model = None
    if "torch" in runners:
        if manifest["checkpoint_sha256"] != _checkpoint_sha256(args.checkpoint):
            raise InputError("--checkpoint is not the checkpoint these engines were exported from")
        options = manifest["model"]
        args.topk, args.topk_range, args.topk_blocks = options["topk"], options["topk_range"], options["topk_blocks"]
        args.topk_memory_token = options["topk_memory_token"]
        model = _load(args)
    _check(args.engines, model, device, manifest=manifest, runners=runners, tolerances=tolerances,
           frames=args.frames, objects=args.objects, clip_size=clip_size, mem_every=args.mem_every,
           json_path=args.json)  # fmt: skip


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v.strip().removesuffix("p")) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise JfDeployError(f"{what} must be a comma list of integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise JfDeployError(f"{what} must be positive, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> None:
    from jfdeploy.bench import format_markdown, run_bench, save_json, write_chart

    device = str(_device(args.device))
    gpu = device.startswith("cuda")
    variants = (args.backends or ",".join(VARIANTS)).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"--backends: unknown backends {unknown}; available: {', '.join(VARIANTS)}")
    if args.engines is not None and not any("engines" in VARIANTS[v][2] for v in variants):
        raise InputError("--engines applies to the onnxruntime / tensorrt rows only, and --backends has none")
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

    run_options = _options(args)
    if args.dataset != "generic" and args.mask is not None:
        raise InputError("--mask applies to --dataset generic only (datasets bring their annotations)")
    if args.dataset == "generic" and args.split is not None:
        raise InputError("--split does not apply to --dataset generic")
    if args.scales and args.size != 480:  # 480: eval's default --size
        raise InputError(f"--size {args.size} does not apply with --scales: list every shorter side in --scales")
    scales = check_scales(_int_list(args.scales, "--scales") if args.scales else [args.size])
    if args.engines is not None:
        backend = _engine_kind(args.engines, args.backend)
        device = _device(args.device, backend)
    else:
        backend, device = run_options.backend, _device(args.device)
    sequences, layout = _sequences(args)
    if args.sequences:
        wanted = set(args.sequences.split(","))
        unknown = sorted(wanted - {s.name for s in sequences})
        if unknown:
            raise InputError(f"--sequences: unknown sequences {unknown}")
        sequences = [s for s in sequences if s.name in wanted]
    backend_options, model = {}, None
    if args.engines is not None:
        backend_options = {"engines": args.engines, "device": str(device)}
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
    _announce(args, backend, device, _precision_note(dataclasses.replace(run_options, backend=backend), device))
    computed = evaluate_dataset(
        model,
        sequences,
        masks_root,
        options=options,
        progress=not args.quiet,
        write_masks=datasets.write_sequence_masks,
        is_complete=datasets.sequence_complete,
        overwrite=args.overwrite,
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

    if args.seen_categories is not None and args.youtube_meta is None:
        raise InputError("--seen-categories applies with --youtube-meta only")
    if args.youtube_meta is not None:
        seen = read_categories(args.seen_categories) if args.seen_categories else set()
        scores = compare_youtube(args.pred, args.gt, args.youtube_meta, seen)
        groups = {k: v for k, v in scores.items() if k != "objects"}
        print("  ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in groups.items()))
        if args.json:
            fsutil.write_text_atomic(args.json, json.dumps(scores, indent=2) + "\n")
        return
    summary = compare_folders(args.pred, args.gt)
    print("| sequence | J | F | J&F |\n| --- | --- | --- | --- |")
    for name, scores in sorted(summary["sequences"].items()):
        print(f"| {name} | {scores['J']:.4f} | {scores['F']:.4f} | {(scores['J'] + scores['F']) / 2:.4f} |")
    print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}")
    if args.json:
        fsutil.write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")


COMMANDS = {
    "eval": cmd_eval,
    "compare": cmd_compare,
    "run": cmd_run,
    "demo": cmd_demo,
    "export": cmd_export,
    "check": cmd_check,
    "build": cmd_build,
    "kernels": cmd_kernels,
    "bench": cmd_bench,
    "info": cmd_info,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error a user can cause becomes one line on stderr and its exit status.

    The command runs in ``fsutil.command_scope``: SIGTERM raises like Ctrl-C, and on any failure what
    it was writing is removed. Statuses (``jfdeploy.errors``): 0 success, 1 a difference found, 2 bad
    input or configuration, 128 + signal when interrupted (130 SIGINT, 143 SIGTERM).
    """
    args = build_parser().parse_args(argv)
    try:
        with fsutil.command_scope():
            COMMANDS[args.command](args)
    except BaseException as exc:
        status = exit_status(exc)
        if status is None:
            raise  # a bug: keep the traceback (the scope has already removed any unfinished output)
        code, message = status
        print(f"jfdeploy {args.command}: {'error: ' if code <= EXIT_USAGE else ''}{message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
