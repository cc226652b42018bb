"""``jfdeploy export`` (ONNX graphs, TensorRT plans), ``build`` (plans on the GPU machine), ``check`` (engines
against PyTorch) and ``kernels`` (the Triton kernels compiled ahead of time)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from jfdeploy.cli.common import (
    DEFAULT_MAX_OBJECTS,
    int_at_least,
    load_model,
    model_arguments,
    positive_float,
    refuse_given,
    resolve_device,
)
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.io.synthetic import MAX_OBJECTS


def add_export_parser(sub) -> None:
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
    export.add_argument("--max-memory-frames", type=int_at_least(1), default=3, help="memory capacity the plans target")
    tensorrt_arguments(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    export.add_argument("--verify", action="store_true", help="compare every stage with PyTorch afterwards")
    model_arguments(export)
    export.set_defaults(handler=cmd_export)


def profile_type(text: str):
    """argparse type: a TensorRT optimization profile (``jfdeploy.export.tensorrt.Bucket``)."""
    from jfdeploy.plans import parse_bucket

    try:
        return parse_bucket(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TensorRT plans")
    group.add_argument(
        "--profile",
        action="append",
        type=profile_type,
        default=None,
        metavar="MIN_HxW:OPT_HxW:MAX_HxW",
        help="one optimization profile (resolution bucket) of padded frame sizes, e.g. 384x384:480x864:608x1088, "
        "or 360p / 480p / 720p; repeat for more (each costs about one more build; default 480p)",
    )
    group.add_argument(
        "--max-objects",
        type=int_at_least(1),
        default=DEFAULT_MAX_OBJECTS,
        help=f"objects the profiles cover: 1..N (default {DEFAULT_MAX_OBJECTS})",
    )
    group.add_argument(
        "--workspace", "--workspace-gib", dest="workspace_gib", type=positive_float, default=4.0, metavar="GiB",
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
        type=int_at_least(0),
        default=None,
        help="TensorRT builder optimization level 0..5: lower builds faster, runs slower (default: TensorRT's, 3)",
    )


def add_build_parser(sub) -> None:
    build = sub.add_parser(
        "build",
        help="build the TensorRT plans of an engine directory (on the GPU machine)",
        description="Build one TensorRT plan per stage (through Polygraphy) from the ONNX graphs of an engine "
        "directory made by `jfdeploy export`, possibly on another machine. Plans are built for this GPU and "
        "this TensorRT version (recorded in the manifest; other GPUs and versions are refused when loading). "
        "The directory is updated atomically: if the build fails it stays as it was.",
    )
    build.add_argument("engines", type=Path, metavar="ENGINE_DIR", help="engine directory from `jfdeploy export`")
    tensorrt_arguments(build)
    build.set_defaults(handler=cmd_build)


def add_kernels_parser(sub) -> None:
    try:
        from jfdeploy.kernels import report
    except ImportError as exc:  # the torch-free runtime install: the verb exists and says what it needs
        reason = f"jfdeploy kernels needs torch and Triton ({exc})"
        missing = sub.add_parser("kernels", help="compile the Triton kernels ahead of time (needs torch and Triton)")
        missing.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        missing.set_defaults(handler=lambda args: _needs(reason))
        return
    kernels = sub.add_parser(
        "kernels",
        help="compile the Triton kernels ahead of time per GPU arch: registers, spills, shared memory (no GPU needed)",
        description="Compile the fused top-k attention kernel for each NVIDIA arch with Triton's compiler and "
        "its bundled ptxas, exactly as the launch wrapper would launch it (Table 9 inputs), and print registers, "
        "spill bytes, shared memory and the launch configuration per arch and configuration.",
    )
    report.add_arguments(kernels)
    kernels.set_defaults(handler=cmd_kernels)


def _needs(message: str) -> None:
    raise JfDeployError(f"{message}: pip install 'jfdeploy[triton]'")


def _check_tolerance_defaults() -> str:
    try:
        from jfdeploy.export import compare
    except ImportError:  # Polygraphy missing: `check` says so when it runs
        return "see the engines' precision"
    return "; ".join(f"{precision} atol {a:g}, rtol {r:g}" for precision, (a, r) in compare.TOLERANCE.items())


def add_check_parser(sub) -> None:
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
    check.add_argument(
        "engines",
        type=Path,
        nargs="?",
        default=None,
        metavar="ENGINE_DIR",
        help="engine directory from `jfdeploy export`; without it, --runners compares configurations of the "
        "PyTorch model frame by frame (e.g. torch,torch-bf16 --frames 8: bf16 against fp32)",
    )
    check.add_argument(
        "--checkpoint", type=Path, default=None,
        help="the checkpoint the engines came from (without ENGINE_DIR: the model's; default random weights)",
    )  # fmt: skip
    check.add_argument("--topk", type=int_at_least(1), default=120,
                       help="without ENGINE_DIR: the model's top-k (the engines fixed theirs)")  # fmt: skip
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
        "onnxruntime, and tensorrt when TensorRT, CUDA and plans are present); without ENGINE_DIR, variants of "
        "the model (BACKEND[-PRECISION][-triton]: torch, torch-bf16, torch-fp16, eager, ...)",
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
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="also run N >= 2 frames of a generated clip through each backend's frame loop and report the error "
        "at every frame (drift); the tolerance of output prob (default: the global --atol / --rtol) applies to "
        "each frame's probabilities (default 0: stages only)",
    )
    check.add_argument("--objects", type=int, choices=range(1, MAX_OBJECTS + 1), default=2, metavar=f"1..{MAX_OBJECTS}",
                       help="objects in the clip (default 2)")  # fmt: skip
    check.add_argument(
        "--clip-size",
        default=None,
        metavar="HxW",
        help="frame size of the clip (default: with TensorRT its first profile's optimal size, else the smallest "
        "16:9 size from 128x224 the engines take)",
    )
    check.add_argument("--mem-every", type=int_at_least(1), default=5, help="a memory frame every N frames (default 5)")
    check.add_argument("--max-memory-frames", type=int_at_least(1), default=3,
                       help="without ENGINE_DIR: memory frames kept per object (the engines fixed theirs)")  # fmt: skip
    check.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    check.set_defaults(handler=cmd_check)


def _checkpoint_sha256(path: Path | None) -> str | None:
    from jfdeploy.fsutil import sha256_file

    return None if path is None else sha256_file(path)


def cmd_export(args: argparse.Namespace) -> None:
    import importlib.util

    from jfdeploy.export.onnx_export import export_engines

    fmt = args.format or ("tensorrt" if importlib.util.find_spec("tensorrt") else "onnx")
    tensorrt = _build_settings(args) if fmt == "tensorrt" else None
    if tensorrt is not None:  # before the model loads
        from jfdeploy.export.tensorrt import BUILD_HINT
        from jfdeploy.plans import require_tensorrt

        require_tensorrt(hint=BUILD_HINT)
    model = load_model(args)
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
    from jfdeploy.export.tensorrt import BuildSettings
    from jfdeploy.plans import DEFAULT_BUCKETS

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
    from jfdeploy.manifest import load_manifest

    manifest = manifest or load_manifest(engines)
    device = device if not isinstance(device, str | None) else resolve_device(device)
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
        factories = compare.predictor_factories(runners, model=model, engines=engines, device=device,
                                                mem_every=mem_every,
                                                max_memory_frames=manifest["memory"]["max_memory_frames"])  # fmt: skip
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
    from jfdeploy.manifest import load_manifest

    if args.frames == 1:
        raise InputError("--frames must be 0 (stages only) or >= 2: the first frame only holds the given mask")
    if args.engines is None:
        _check_variants(args)
        return
    refuse_given(args, {"topk": "--topk", "max_memory_frames": "--max-memory-frames"},
                 "with ENGINE_DIR: the engine directory fixed it at export")  # fmt: skip
    tolerances = compare.parse_tolerances(args.atol, args.rtol)  # options first, then the engines, then the model
    requested = compare.parse_runners(args.runners)
    clip_size = compare.parse_clip_size(args.clip_size) if args.clip_size else None
    device = resolve_device(args.device)
    manifest = load_manifest(args.engines)
    tolerances = tolerances.with_defaults(compare.TOLERANCE[manifest["precision"]])
    runners = compare.select_runners(requested, manifest)
    model = None
    if "torch" in runners:
        if manifest["checkpoint_sha256"] != _checkpoint_sha256(args.checkpoint):
            raise InputError("--checkpoint is not the checkpoint these engines were exported from")
        from jfdeploy.model.config import ModelConfig

        options = manifest["model"]  # the engines' architecture and top-k settings
        args.topk, args.topk_range, args.topk_blocks = options["topk"], options["topk_range"], options["topk_blocks"]
        args.topk_memory_token = options["topk_memory_token"]
        model = load_model(args, config=ModelConfig(**options))
    _check(args.engines, model, device, manifest=manifest, runners=runners, tolerances=tolerances,
           frames=args.frames, objects=args.objects, clip_size=clip_size, mem_every=args.mem_every,
           json_path=args.json)  # fmt: skip


def _check_variants(args: argparse.Namespace) -> None:
    """``check --runners torch,torch-bf16 --frames N`` without engines: configurations of one model, frame by frame."""
    from jfdeploy.errors import DifferenceError
    from jfdeploy.export import compare
    from jfdeploy.predictor import ENGINE_BACKENDS, RunOptions

    if args.runners is None or args.frames < 2:
        raise InputError("without ENGINE_DIR, give --runners (e.g. torch,torch-bf16) and --frames N >= 2")
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    if len(set(runners)) < 2:
        raise InputError(f"--runners needs two or more different configurations, got {args.runners!r}")
    precisions = set()
    for runner in runners:
        if runner in ENGINE_BACKENDS:
            raise InputError(f"runner {runner} needs ENGINE_DIR")
        precisions.add(RunOptions.from_variant(runner).precision)
    default = compare.TOLERANCE["fp32" if precisions == {"fp32"} else "fp16"]  # reduced precision: fp16's tolerance
    tolerances = compare.parse_tolerances(args.atol, args.rtol).with_defaults(default)
    height, width = compare.parse_clip_size(args.clip_size) if args.clip_size else (128, 224)
    device = resolve_device(args.device)
    args.topk_range, args.topk_blocks, args.topk_memory_token = "all_frames", "all", False
    model = load_model(args, device)
    clip = compare.make_drift_clip(args.frames, height, width, args.objects)
    memory = {"mem_every": args.mem_every, "max_memory_frames": args.max_memory_frames}
    factories = compare.predictor_factories(runners, model=model, engines=None, device=device, **memory)
    print(f"drift, {args.frames} frames of a generated {height}x{width} clip, {args.objects} objects, a memory frame "
          f"every {args.mem_every}, {args.max_memory_frames} memory frames, reference {runners[0]}:")  # fmt: skip
    frames = compare.check_drift(factories, clip, tolerances)
    print(compare.format_drift_table(frames))
    if args.json is not None:
        report = compare.CheckReport("", "model", runners, {"height": height, "width": width}, [], frames,
                                     {"frames": args.frames, "height": height, "width": width, "objects": args.objects,
                                      "mem_every": args.mem_every})  # fmt: skip
        compare.save_json(report, args.json)
    failed = [c for c in frames if not c.ok]
    if failed:
        raise DifferenceError(f"{len(failed)} of {len(frames)} comparisons out of tolerance "
                              f"(first: {_check_name(failed[0])})")  # fmt: skip
    print("all within tolerance")
