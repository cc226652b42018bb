"""What the verbs share: the parser class, argument types, the option groups, device, model and options.

One name per idea, the same default everywhere (README "Options"):

    --size          shorter side fed to the model, 0 = the frame's own (run 480; eval: a comma list averages
                    test-time scales; bench: a comma list sweeps rows; demo: the generated clip's size)
    --precision     fp32 | fp16 | bf16 (torch / eager backends: autocast; export: the graphs' precision)
    --attention     torch | triton (top-k attention of the torch backend)
    --max-objects   20: masks with more objects are refused; engines' profiles cover 1..20
    --mem-every, --max-memory-frames, --topk: the memory and attention settings (--preset sets all three)

Older spellings stay accepted but hidden: --autocast (none = fp32), --scales, --resolution, --workspace-gib.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jfdeploy.devices import cuda_device_count, device_name, resolve_device
from jfdeploy.errors import EXIT_USAGE, InputError

DEFAULT_MAX_OBJECTS = 20
PRECISION_CHOICES = ("fp32", "fp16", "bf16")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the CLI's contract: one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------- argument types


def int_at_least(minimum: int) -> Callable[[str], int]:
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


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """argparse type: a comma list of integers >= ``minimum`` (``480p`` reads as 480)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v.strip().removesuffix("p")) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
        return values

    parse.__name__ = "comma list"
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _old_precision(text: str) -> str:
    """The hidden ``--autocast`` spelling: none / fp16 / bf16."""
    if text not in ("none", "fp16", "bf16"):
        raise argparse.ArgumentTypeError(f"expected none, fp16 or bf16, got {text!r}")
    return "fp32" if text == "none" else text


# ------------------------------------------------------------------------------------- option groups


def model_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="JointFormer checkpoint (published .pth, a trainer checkpoint, or jfdeploy format). "
        "Without it: deterministic RANDOM weights (meaningless masks, loud warning).",
    )
    group.add_argument(
        "--topk", type=int_at_least(1), default=120, help="reference scores kept per query row (default 120)"
    )
    group.add_argument(
        "--topk-range",
        choices=["all_frames", "every_frame"],
        default="all_frames",
        help="top-k over all reference frames jointly, or within each (default all_frames)",
    )
    group.add_argument(
        "--topk-blocks", choices=["all", "half", "last", "none"], default="all",
        help="joint blocks that use top-k (default all)",
    )  # fmt: skip
    group.add_argument("--topk-memory-token", action="store_true", help="also top-k on the memory token's attention")
    if device:
        group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def size_argument(parser, *, default: int, many: str | None = None, alias: str | None = None) -> None:
    """``--size``: one shorter side, or (``many`` says what several do) a comma list."""
    help_text = f"shorter side fed to the model, 0 = the frame's own size (default {default})"
    if many:
        help_text += f"; a comma list {many}"
    parser.add_argument(
        "--size",
        type=int_list(0) if many else int_at_least(0),
        default=[default] if many else default,
        metavar="N[,N...]" if many else "N",
        help=help_text + "; masks are written at the original size",
    )
    if alias:
        parser.add_argument(alias, dest="size", type=int_list(0), default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def inference_arguments(parser: argparse.ArgumentParser, *, default_size: int, many_sizes: str | None = None,
                        size_alias: str | None = None) -> None:  # fmt: skip
    """The options of the frame loop (``RunOptions``), shared by run, demo, eval and run-many."""
    from jfdeploy.backends import BACKENDS
    from jfdeploy.presets import PRESETS

    group = parser.add_argument_group("inference")
    group.add_argument("--backend", default="torch", help=f"one of {', '.join(BACKENDS)} (default torch)")
    group.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="eager / torch backends: fp32, or autocast to fp16 (GPU) / bf16 (GPU, or a CPU with bf16 units) "
        "(default fp32)",
    )
    group.add_argument("--autocast", dest="precision", type=_old_precision, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)  # fmt: skip
    group.add_argument(
        "--attention",
        choices=["torch", "triton"],
        default="torch",
        help="top-k attention of the torch backend: PyTorch ops, or the fused Triton kernel (GPU) (default torch)",
    )
    group.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="a dataset's published evaluation setting, memory frames / top-k (memory every 5 frames): "
        + ", ".join(f"{p.name} {p.max_memory_frames}/{p.topk}" for p in PRESETS.values())
        + "; options given explicitly win",
    )
    group.add_argument("--mem-every", type=int_at_least(1), default=5, help="a memory frame every N frames (default 5)")
    group.add_argument(
        "--max-memory-frames", type=int_at_least(1), default=3,
        help="memory frames kept per object: the first + FIFO (default 3)",
    )  # fmt: skip
    size_argument(group, default=default_size, many=many_sizes, alias=size_alias)
    group.add_argument(
        "--max-objects", type=int_at_least(1), default=DEFAULT_MAX_OBJECTS,
        help=f"refuse masks with more objects (default {DEFAULT_MAX_OBJECTS})",
    )  # fmt: skip
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overlay", type=Path, default=None, help="also write an mp4 of the masks over the video")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


WORKER_OPTIONS = {"threads": "--threads", "retries": "--retries"}  # apply only with --workers / --ray


def worker_arguments(parser: argparse.ArgumentParser, noun: str, without: str = "1 locally") -> None:
    """The "workers" group of run-many and eval (``jfdeploy.batch``): pool size, threads, Ray, retries;
    ``noun`` is what one job is ("video", "sequence"), ``without`` what runs when --workers is not given."""
    pool = parser.add_argument_group("workers")
    pool.add_argument("--workers", type=int_at_least(1), default=None,
                      help=f"worker processes (default: {without}; with --ray, as many Ray actors as fit)")  # fmt: skip
    pool.add_argument("--threads", type=int_at_least(1), default=None,
                      help="CPU threads per worker (default: the CPUs shared among the workers)")  # fmt: skip
    pool.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run on Ray (pip install 'jfdeploy[ray]'): a local cluster, or the cluster at ADDRESS (auto, ray://...)",
    )  # fmt: skip
    pool.add_argument("--retries", type=int_at_least(0), default=2,
                      help=f"times a {noun} whose worker died is given to another worker (default 2)")  # fmt: skip


# ----------------------------------------------------------------------------- given options, presets


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the command line set explicitly (a default repeated on the line counts as given)."""
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if action.dest != "help" and not action.required:
                action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return set(vars(parser.parse_args(argv)))


def refuse_given(args: argparse.Namespace, options: dict[str, str], reason: str) -> None:
    """InputError naming the first of ``options`` (dest -> option string) given on the command line."""
    for dest, option in options.items():
        if dest in args.given:
            raise InputError(f"{option} does not apply {reason}")


def apply_preset(args: argparse.Namespace) -> None:
    """Fill --max-memory-frames, --mem-every and --topk from --preset where they were not given."""
    from jfdeploy.presets import get_preset

    if getattr(args, "preset", None) is None:
        return
    preset = get_preset(args.preset)
    for dest in ("max_memory_frames", "mem_every", "topk"):
        if dest not in args.given:
            setattr(args, dest, getattr(preset, dest))


# -------------------------------------------------------------------------------- device and model


def announce(args: argparse.Namespace, backend: str, device, detail: str = "") -> None:
    """The first progress line: which backend runs on which device."""
    if not getattr(args, "quiet", False):
        print(f"jfdeploy {args.command}: backend {backend} on {device_name(device)}{detail}", file=sys.stderr)


def warn_random_weights(args: argparse.Namespace) -> None:
    """The command line's warning (once, on stderr) when no --checkpoint gives the weights."""
    if args.checkpoint is None:
        print(
            "WARNING: no --checkpoint: using deterministic RANDOM weights, masks are not meaningful.", file=sys.stderr
        )


def load_model(args: argparse.Namespace, device=None, config=None):
    """The model of the command line's --checkpoint and --topk* options, on ``device`` (default --device).

    ``config``: the architecture to expect (an engine directory's model); without a checkpoint, the
    random weights take it."""
    from jfdeploy.model.checkpoint import load_model as load

    device = device if device is not None else resolve_device(args.device)
    warn_random_weights(args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NO CHECKPOINT GIVEN")
        model = load(args.checkpoint, config=config, **model_kwargs(args))
    return model.to(device)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The --topk* options as ``load_model`` keyword arguments."""
    return {"topk": args.topk, "topk_range": args.topk_range, "topk_blocks": args.topk_blocks,
            "topk_memory_token": args.topk_memory_token}  # fmt: skip


def run_on_workers(args: argparse.Namespace, jobs: list, out_root: Path, options, device, *,
                   summary_path: Path | None = None, failure_note: str = ""):  # fmt: skip
    """Run ``jobs`` (``jfdeploy.batch``) on the pool of the "workers" options (``worker_arguments``), each
    worker loading the model of the command line (or the --engines); print the batch's line; return its
    ``BatchSummary``. DifferenceError (exit 1) naming the first failed job, then ``failure_note``."""
    from jfdeploy.batch import WorkerSpec, run_many
    from jfdeploy.errors import DifferenceError

    engines = options.engines is not None
    if not engines:
        warn_random_weights(args)
    spec = WorkerSpec(
        checkpoint=None if engines else args.checkpoint,
        model_kwargs={} if engines else model_kwargs(args),
        options=options,
        device=str(device),
        threads=args.threads,
    )
    noun = jobs[0].kind if jobs else "job"
    engine = f"Ray ({args.ray})" if args.ray else "local processes"
    announce(args, options.backend, device, f"{precision_note(options, device)}, {len(jobs)} {noun}s on {engine}")
    summary = run_many(jobs, out_root, spec, workers=args.workers, ray_address=args.ray, retries=args.retries,
                       overwrite=args.overwrite, progress=not args.quiet, summary_path=summary_path)  # fmt: skip
    totals = summary.totals
    print(f"{totals['done']} done, {totals['skipped']} already complete, {totals['failed']} failed, "
          f"{summary.wall_seconds:.1f} s, {summary.workers} {summary.engine} worker(s) -> {summary.path}")  # fmt: skip
    if summary.failed:
        first = summary.failed[0]
        count = f"{len(summary.failed)} of {len(jobs)} {noun}s failed"
        raise DifferenceError(f"{count} (first: {first.name}: {first.error}){failure_note}")
    return summary


def engine_kind(engines: Path, backend: str = "torch") -> str:
    """The runtime of an engine directory: ``backend`` if it names one (onnxruntime / tensorrt), else
    tensorrt if the directory holds plans and TensorRT is importable, else onnxruntime."""
    import importlib.util

    from jfdeploy.manifest import load_manifest

    manifest = load_manifest(engines, verify_files=False)  # the backend verifies the hashes
    if backend in ("onnxruntime", "tensorrt"):
        return backend
    return "tensorrt" if manifest.get("tensorrt") and importlib.util.find_spec("tensorrt") else "onnxruntime"


def check_triton(device) -> None:
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        raise InputError("--attention triton needs Triton (pip install 'jfdeploy[triton]')")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(
            f"--attention triton runs on CUDA devices, not {device} (TRITON_INTERPRET=1 runs it in Triton's "
            "CPU interpreter, slowly)"
        )


def check_precision(precision: str, device) -> None:
    from jfdeploy.precision import cpu_has_bf16

    if device.type == "cuda":
        return
    if precision == "fp16":
        raise InputError("--precision fp16 runs on CUDA devices; on a CPU use bf16 (CPUs with bf16 units) or fp32")
    if precision == "bf16" and not cpu_has_bf16():
        warnings.warn("--precision bf16 on a CPU without bf16 units is emulated and slow", stacklevel=2)


FIXED_BY_ENGINES = {"checkpoint": "--checkpoint", "topk": "--topk", "topk_range": "--topk-range",
                    "topk_blocks": "--topk-blocks", "topk_memory_token": "--topk-memory-token",
                    "precision": "--precision", "attention": "--attention"}  # fmt: skip


def run_options(args: argparse.Namespace, sizes: tuple[int, ...] | None = None):
    """(RunOptions, device) from the command line, checked before anything is loaded; options that do not
    apply to the chosen backend are refused by name."""
    import dataclasses

    from jfdeploy.backends import BACKENDS
    from jfdeploy.predictor import RunOptions

    apply_preset(args)
    if args.backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend {args.backend!r}; available: {', '.join(BACKENDS)}")
    engines = getattr(args, "engines", None)
    backend = args.backend
    if engines is not None:
        if backend not in ("torch", "onnxruntime", "tensorrt"):  # torch (the default): chosen by the engines
            raise InputError(f"--backend {backend} does not apply with --engines (onnxruntime or tensorrt)")
        refuse_given(args, FIXED_BY_ENGINES, "with --engines: the engine directory fixed it at export")
        backend = engine_kind(engines, backend)
        device = resolve_device(args.device, backend)
    elif backend in ("onnxruntime", "tensorrt"):
        raise InputError(f"--backend {backend} needs --engines DIR (made by `jfdeploy export`)")
    else:
        device = resolve_device(args.device)
        if backend != "torch":
            refuse_given(args, {"attention": "--attention"}, f"to --backend {backend} (only to torch)")
        if args.attention == "triton":
            check_triton(device)
        check_precision(args.precision, device)
    options = RunOptions(
        backend=backend,
        precision=args.precision if engines is None else "fp32",
        attention=args.attention if engines is None else "torch",
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        sizes=tuple(sizes if sizes is not None else [args.size]),
        max_objects=args.max_objects,
    )
    if engines is not None:
        options = dataclasses.replace(options, engines=engines, device=str(device))
    options.validate()
    return options, device


def precision_note(options, device=None) -> str:
    """What the first progress line adds to backend and device: precision options, or why not CUDA."""
    notes = [f"precision {options.precision}"] if options.precision != "fp32" else []
    notes += [f"{options.attention} attention"] if options.attention != "torch" else []
    if options.backend == "onnxruntime" and device is not None and device.type == "cpu" and cuda_device_count():
        notes.append("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu to run on CUDA")
    return f" ({', '.join(notes)})" if notes else ""
