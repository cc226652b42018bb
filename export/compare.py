"""An engine directory against PyTorch through Polygraphy's comparator (``jfdeploy check``).

Two checks, both run by ``polygraphy.comparator.Comparator`` and judged by its ``SimpleCompareFunc``
with per-output tolerances. Polygraphy's element-wise rule: an element is out of tolerance when its
absolute error exceeds ``atol`` AND its relative error ``|a - b| / |reference|`` exceeds ``rtol``.

- stages: every stage's example inputs (``examples.example_numpy`` at the manifest's example size, or
  with TensorRT the smallest frame of its first profile) go through one Polygraphy runner per backend:
  the PyTorch stage module (the reference, same weights), Polygraphy's ``OnnxrtRunner`` on the stage
  graph, and the TensorRT stage runtime (``backends.trt_runtime``; when TensorRT, CUDA and plans
  are present). Without the torch runner nothing here imports torch;
- drift: the frames of a generated clip go through each backend's whole staged loop
  (``jfdeploy.Segmenter``) from the same first mask, one Polygraphy iteration per frame. The
  reference memory feeds every frame's output into the next ones, so an engine's error can grow
  with time; each frame reports the probabilities' error and the argmax masks' IoU / disagreement.

Runner names are the backend names; a pair is written ``"onnxruntime vs torch"`` (the second is the
reference the relative error divides by).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER

from jfdeploy import specs
from jfdeploy.backends.runtime import NUMPY_DTYPES
from jfdeploy.devices import Device, cuda_device_count, onnxruntime_has_cuda
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.export.examples import example_numpy

# default tolerances by engine precision: (atol, rtol); fp16 graphs run in half precision
TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (1e-1, 5e-2)}
# the drift check's probabilities get at least this atol by default: the memory feeds rounding back, and
# float32 alone (torch float32 against float64, same weights) drifts to ~3e-3 within 8 frames
DRIFT_MIN_ATOL = 1e-2
RUNNER_KINDS = ("torch", "onnxruntime", "tensorrt")
CLIP = "clip"  # the drift check's "stage"
CLIP_OUTPUT = "prob"  # its one compared output: (1 + objects) x H x W probabilities per frame


# ------------------------------------------------------------------------------------------ tolerances


@dataclass(frozen=True)
class Tolerances:
    """Global atol / rtol and per-output overrides; keys are ``output`` or ``stage.output``.

    A global value None: not given yet (``with_defaults`` fills it from the engines' precision).
    """

    atol: float | None
    rtol: float | None
    atol_by_output: Mapping[str, float] = field(default_factory=dict)
    rtol_by_output: Mapping[str, float] = field(default_factory=dict)

    def with_defaults(self, default: tuple[float, float]) -> Tolerances:
        """Fill the global values not given from ``default``; without any atol given, the drift check's
        probabilities get at least ``DRIFT_MIN_ATOL``."""
        atol_by_output = dict(self.atol_by_output)
        drift_names = (CLIP_OUTPUT, f"{CLIP}.{CLIP_OUTPUT}")
        if self.atol is None and not any(name in atol_by_output for name in drift_names):
            atol_by_output[f"{CLIP}.{CLIP_OUTPUT}"] = max(default[0], DRIFT_MIN_ATOL)
        atol = default[0] if self.atol is None else self.atol
        rtol = default[1] if self.rtol is None else self.rtol
        return replace(self, atol=atol, rtol=rtol, atol_by_output=atol_by_output)

    def of(self, stage: str, output: str) -> tuple[float, float]:
        """(atol, rtol) of one output: ``stage.output`` over ``output`` over the global values."""
        assert self.atol is not None and self.rtol is not None, "with_defaults() fills the global values first"

        def pick(default: float, by_output: Mapping[str, float]) -> float:
            return by_output.get(f"{stage}.{output}", by_output.get(output, default))

        return pick(self.atol, self.atol_by_output), pick(self.rtol, self.rtol_by_output)

    def compare_func(self, stage: str, outputs: Sequence[str]):
        """Polygraphy's SimpleCompareFunc with this stage's per-output tolerance dictionaries."""
        resolved = {name: self.of(stage, name) for name in outputs}
        return SimpleCompareFunc(
            atol={"": self.atol, **{name: a for name, (a, _) in resolved.items()}},
            rtol={"": self.rtol, **{name: r for name, (_, r) in resolved.items()}},
            check_shapes=True,
            check_error_stat="elemwise",
        )


def known_outputs() -> set[str]:
    """Output names a per-output tolerance may use: plain and ``stage.output`` (and the clip's ``prob``)."""
    names = {CLIP_OUTPUT, f"{CLIP}.{CLIP_OUTPUT}"}
    for stage in specs.STAGES:
        for output in specs.output_names(stage):
            names.update((output, f"{stage}.{output}"))
    return names


def _tolerance_value(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{option} wants a number >= 0 (or NAME=VALUE), got {text!r}")
    return value


def parse_tolerances(
    atol: Sequence[str], rtol: Sequence[str], default: tuple[float, float] | None = None
) -> Tolerances:
    """Tolerances from ``--atol`` / ``--rtol`` arguments: ``VALUE`` (every output) or ``NAME=VALUE``.

    NAME is a stage output (``f16``, ``memory_token_out``...), qualified as ``stage.output`` to pick one
    stage's, or ``prob`` for the drift check's probabilities. The last value given for a name wins.
    default: (atol, rtol) where no global value is given (None: left for ``with_defaults``).
    """
    known = known_outputs()
    parsed: list[tuple[float | None, dict[str, float]]] = []
    for option, args in (("--atol", atol), ("--rtol", rtol)):
        global_value, by_output = None, {}
        for arg in args:
            name, sep, value = arg.rpartition("=")
            if not sep:
                global_value = _tolerance_value(arg, option)
                continue
            name = name.strip()
            if name not in known:
                plain = sorted(n for n in known if "." not in n)
                raise InputError(f"{option} {arg!r}: unknown output {name!r}; outputs: {', '.join(plain)} "
                                 "(or stage.output)")  # fmt: skip
            by_output[name] = _tolerance_value(value, f"{option} {name}")
        parsed.append((global_value, by_output))
    (atol_value, atol_by), (rtol_value, rtol_by) = parsed
    tolerances = Tolerances(atol_value, rtol_value, atol_by, rtol_by)
    return tolerances if default is None else tolerances.with_defaults(default)


# --------------------------------------------------------------------------------------------- runners


def missing_requirement(kind: str, manifest: Mapping[str, Any]) -> str | None:
    """Why runner ``kind`` cannot run these engines here, or None when it can."""
    if kind == "torch":
        return None
    if kind == "onnxruntime":
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"
    if kind == "tensorrt":
        try:
            importlib.import_module("tensorrt")
        except Exception:  # ImportError, or an install failing at import (missing CUDA libraries)
            return "TensorRT is not installed (or does not import)"
        if not cuda_device_count():
            return "TensorRT needs a CUDA device"
        if not manifest.get("tensorrt"):
            return "the engine directory holds no TensorRT plans (jfdeploy build)"
        return None
    return f"unknown runner {kind!r}; runners: {', '.join(RUNNER_KINDS)}"


def runner_device(kind: str, device: str) -> Device:
    """Where runner ``kind`` runs: torch on ``device``; onnxruntime on it too if it is CUDA and onnxruntime
    has its CUDA provider, else on the CPU; tensorrt on ``device`` if it is CUDA, else on cuda."""
    device = Device(device)
    if kind == "tensorrt":
        return device if device.type == "cuda" else Device("cuda")
    if kind == "onnxruntime" and device.type == "cuda":
        return device if onnxruntime_has_cuda() else Device("cpu")
    return device


def parse_runners(text: str | None) -> list[str] | None:
    """``--runners``: a comma list of runner kinds, the first being the reference (None: not given)."""
    if text is None:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in RUNNER_KINDS]
    if unknown:
        raise InputError(f"unknown runner(s) {', '.join(unknown)}; runners: {', '.join(RUNNER_KINDS)}")
    if len(set(kinds)) != len(kinds) or len(kinds) < 2:
        raise InputError(f"--runners needs two or more different runners, got {text!r}")
    return kinds


def select_runners(requested: Sequence[str] | None, manifest: Mapping[str, Any]) -> list[str]:
    """The runner kinds to compare, reference first.

    requested: kinds (the first is the reference; each must be able to run here), or None for torch
    and every engine runner that can run here (tensorrt only with TensorRT, CUDA and plans).
    """
    if requested is None:
        return [k for k in RUNNER_KINDS if missing_requirement(k, manifest) is None]
    for kind in requested:
        reason = missing_requirement(kind, manifest)
        if reason:
            raise JfDeployError(f"runner {kind} cannot run here: {reason}")
    return list(requested)


class TorchStageRunner(BaseRunner):
    """A Polygraphy runner over a PyTorch stage module (numpy in, numpy out; Polygraphy's own PytRunner
    moves every input to CUDA and returns a tuple, so it cannot run on a CPU)."""

    def __init__(self, stage: str, module: Any, widths: specs.Widths, device: str, model_float: str) -> None:
        super().__init__(name="torch")
        self._stage, self._module, self._widths, self._device = stage, module, widths, device
        self._model_float = model_float

    def get_input_metadata_impl(self):
        return _stage_metadata(self._stage, self._widths, self._model_float)

    def infer_impl(self, feed_dict):
        import torch

        tensors = [
            torch.from_numpy(np.array(feed_dict[name])).to(self._device) for name in specs.input_names(self._stage)
        ]
        if self._stage in specs.MODEL_STAGES:  # the reference runs the model in fp32 whatever the engines' precision
            tensors = [t.float() if t.is_floating_point() else t for t in tensors]
        start = time.perf_counter()
        with torch.inference_mode():
            result = self._module(*tensors)
            result = result if isinstance(result, tuple) else (result,)
            if Device(self._device).type == "cuda":
                torch.cuda.synchronize(self._device)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (name, value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
            for name, value in zip(specs.output_names(self._stage), result, strict=True)
        )


class RuntimeStageRunner(BaseRunner):
    """A Polygraphy runner over one stage of a stage runtime (``jfdeploy.backends.runtime``): uploads the
    feed, runs the stage, downloads the outputs. The TensorRT runner of ``check``."""

    def __init__(self, name: str, stage: str, runtime: Any, widths: specs.Widths) -> None:
        super().__init__(name=name)
        self._stage, self._runtime, self._widths = stage, runtime, widths

    def get_input_metadata_impl(self):
        return _stage_metadata(self._stage, self._widths, self._runtime.model_float)

    def infer_impl(self, feed_dict):
        arrays = [self._runtime.upload(np.asarray(feed_dict[name])) for name in specs.input_names(self._stage)]
        start = time.perf_counter()
        outputs = [self._runtime.download(a) for a in self._runtime.run(self._stage, *arrays)]
        self.inference_time = time.perf_counter() - start
        return OrderedDict(zip(specs.output_names(self._stage), outputs, strict=True))


def _stage_metadata(stage: str, widths: specs.Widths, model_float: str = "float32") -> TensorMetadata:
    """A stage's inputs as Polygraphy metadata: dtype and shape (symbols are dynamic dimensions)."""
    meta = TensorMetadata()
    for name in specs.input_names(stage):
        dtype = NUMPY_DTYPES[specs.tensor_dtype(stage, name, model_float)]
        meta.add(name, dtype, specs.stage_shapes(widths)[stage][name])
    return meta


class StageRunners:
    """Polygraphy runners of each stage for the chosen backends (reference first).

    torch: the stage modules of ``model`` (``jfdeploy.stages``, ``jfdeploy.loop_stages``); onnxruntime:
    Polygraphy's OnnxrtRunner over the stage graph; tensorrt: the TensorRT stage runtime over the plans.
    """

    def __init__(self, kinds: Sequence[str], *, engines: Path, manifest: Mapping[str, Any], model,
                 device: str) -> None:  # fmt: skip
        self.kinds = list(kinds)
        self.engines = Path(engines)
        self.manifest = manifest
        self.widths = specs.Widths.from_manifest(manifest)
        self.model_float = manifest["stages"]["frame_encoder"]["inputs"][0]["dtype"]
        self.device = Device(device)
        self._torch_stages: dict[str, Any] | None = None
        if "torch" in kinds:
            from jfdeploy.loop_stages import build_loop_stages
            from jfdeploy.stages import build_stages

            model = model.eval().to(str(runner_device("torch", self.device)))
            import torch

            loop = build_loop_stages(model_dtype=getattr(torch, self.model_float), in_place=False)
            self._torch_stages = {**dict(build_stages(model).items()), **loop}
        self._tensorrt = None
        if "tensorrt" in kinds:
            from jfdeploy.backends.engines import engine_runtime

            target = str(runner_device("tensorrt", self.device))
            self._tensorrt = engine_runtime("tensorrt", self.engines, dict(manifest), target)

    def _onnxruntime(self, stage: str):
        import onnxruntime
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        onnxruntime.set_default_logger_severity(3)  # errors only: the fp16 graphs' notices are expected
        providers = ["cuda", "cpu"] if runner_device("onnxruntime", self.device).type == "cuda" else ["cpu"]
        path = self.engines / self.manifest["stages"][stage]["onnx"]
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=providers), name="onnxruntime")

    def for_stage(self, stage: str) -> list:
        runners: list[BaseRunner] = []
        for kind in self.kinds:
            if kind == "onnxruntime":
                runners.append(self._onnxruntime(stage))
            elif kind == "torch":
                assert self._torch_stages is not None  # built when "torch" is among the kinds
                device = str(runner_device(kind, self.device))
                module = self._torch_stages[stage]
                runners.append(TorchStageRunner(stage, module, self.widths, device, self.model_float))
            else:
                assert self._tensorrt is not None  # loaded when "tensorrt" is among the kinds
                runners.append(RuntimeStageRunner(kind, stage, self._tensorrt, self.widths))
        return runners


def _tensorrt_profiles(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((manifest.get("tensorrt") or {}).get("profiles") or [])


def comparison_size(manifest: Mapping[str, Any], kinds: Sequence[str]) -> specs.Size:
    """The stage inputs' size: the manifest's example size, or with TensorRT the first profile's smallest frame."""
    size = specs.Size(**manifest["example_size"], widths=specs.Widths.from_manifest(manifest))
    profiles = _tensorrt_profiles(manifest)
    if "tensorrt" in kinds and profiles:
        height, width = profiles[0]["min_hw"]
        objects = min(size.objects, manifest["tensorrt"].get("max_objects", size.objects))
        size = specs.Size(objects, height, width, size.slots, size.widths)
    return size


# ------------------------------------------------------------------------------------------ comparison


@dataclass
class OutputCheck:
    """One output of one stage, one runner against the reference (errors None: shapes differ)."""

    stage: str
    output: str
    runners: str  # "onnxruntime vs torch": the second is the reference
    max_abs: float | None
    max_rel: float | None
    mean_abs: float | None
    atol: float
    rtol: float
    ok: bool


@dataclass
class FrameCheck:
    """One frame of the drift clip, one runner's loop against the reference loop."""

    frame: int
    runners: str
    max_abs: float | None  # of the (1 + objects) x H x W probabilities
    mean_abs: float | None
    max_rel: float | None
    iou: float  # mean over objects of the IoU of the argmax masks
    disagreement: float  # fraction of pixels whose argmax label differs
    atol: float
    rtol: float
    ok: bool


def _compare(run_results, tolerances: Tolerances, stage: str, outputs: Sequence[str]) -> list[OutputCheck]:
    """Every runner against the first, every iteration and output, by Polygraphy's compare_accuracy.

    Returns one OutputCheck per (iteration, runner pair, output): iterations outermost, then pairs in
    ``run_results`` order, then ``outputs`` in order.
    """
    count = len(list(run_results.keys()))
    accuracy = Comparator.compare_accuracy(
        run_results,
        comparisons=[(index, 0) for index in range(1, count)],
        compare_func=tolerances.compare_func(stage, outputs),
    )
    (per_pair,) = accuracy  # one compare func
    rows: list[tuple[int, OutputCheck]] = []
    for (runner, reference), iterations in per_pair.items():
        for index, matches in enumerate(iterations):
            for output in outputs:
                result = matches.get(output, False)
                atol, rtol = tolerances.of(stage, output)
                metrics: tuple[float | None, float | None, float | None] = (None, None, None)  # shapes differ
                if hasattr(result, "max_absdiff"):
                    metrics = (result.max_absdiff, result.max_reldiff, result.mean_absdiff)
                check = OutputCheck(stage, output, f"{runner} vs {reference}", *metrics, atol, rtol, bool(result))
                rows.append((index, check))
    rows.sort(key=lambda item: item[0])  # stable: iteration, then pair, then output
    return [check for _, check in rows]


def _run(runners, feeds: Sequence[Mapping[str, np.ndarray]]):
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):  # the table is the report; no Polygraphy log
            return Comparator.run(runners, data_loader=feeds)
    except PolygraphyException as exc:
        raise JfDeployError(f"Polygraphy could not run {[r.name for r in runners]}: {exc}") from exc


def check_stages(runners: StageRunners, size: specs.Size, tolerances: Tolerances, seed: int = 2) -> list[OutputCheck]:
    """Every stage's example inputs at ``size`` through every runner; one row per output and pair.

    The inputs are random: random reference keys put some of the memory reader's top-k selections near
    ties, where fp16 graphs pick other tokens than fp32 (tiny model, seeds 0-5: memory_reader.f16 max abs
    0.002 to 0.43 between fp16 graphs and PyTorch). The default seed is one without such a flip; the drift
    check (real frames through the whole loop) is the measure of what fp16 does to masks."""
    checks = []
    for stage in specs.STAGES:
        feed = OrderedDict(example_numpy(stage, size, runners.model_float, seed=seed))
        run_results = _run(runners.for_stage(stage), [feed])
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
            checks.extend(_compare(run_results, tolerances, stage, specs.output_names(stage)))
    return checks


# ------------------------------------------------------------------------------------------------ drift


@dataclass(frozen=True)
class Clip:
    """A generated clip for the drift check: RGB frames and the first frame's label map."""

    frames: list[np.ndarray]  # uint8 [H, W, 3] each
    first_labels: np.ndarray  # uint8 [H, W], objects 1..O

    @property
    def objects(self) -> int:
        return int(self.first_labels.max())


def make_drift_clip(frames: int, height: int, width: int, objects: int, seed: int = 0) -> Clip:
    from jfdeploy.io import make_clip

    if frames < 2:
        raise InputError(f"--frames must be >= 2 (the first frame only holds the given mask), got {frames}")
    if not 1 <= objects <= 5:
        raise InputError(f"--objects must be 1..5, got {objects}")
    rgb, labels = make_clip(num_frames=frames, height=height, width=width, num_objects=objects, seed=seed)
    return Clip(list(rgb), labels[0])


def default_clip_size(manifest: Mapping[str, Any], kinds: Sequence[str]) -> tuple[int, int]:
    """The drift clip's size: with TensorRT the first profile's optimal frame size; else the smallest 16:9
    size from 128 x 224 up that holds the tokens the engines' constant top-k needs."""
    from jfdeploy.limits import frame_tokens_needed

    profiles = _tensorrt_profiles(manifest)
    if "tensorrt" in kinds and profiles:
        height, width = profiles[0]["opt_hw"]
        return int(height), int(width)
    needed = frame_tokens_needed(manifest["limits"], manifest["memory"]["slots"])
    height = 128
    while (height // 16) * (_width_for(height) // 16) < needed:
        height += 16
    return height, _width_for(height)


def parse_clip_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``128x224``), both >= 32."""
    height, sep, width = text.lower().partition("x")
    if not (sep and height.strip().isdigit() and width.strip().isdigit()) or min(int(height), int(width)) < 32:
        raise InputError(f"--clip-size wants HxW with both sides >= 32 (e.g. 128x224), got {text!r}")
    return int(height), int(width)


def _width_for(height: int) -> int:
    """The multiple of 16 nearest to 16 / 9 of ``height``."""
    return 16 * round(height * 16 / 9 / 16)


class PredictorRunner(BaseRunner):
    """One configuration's whole frame loop (``VideoPredictor``, as every verb runs it) as a Polygraphy
    runner: one iteration per frame, in order. Stateful: activation makes a fresh predictor; the first
    iteration gives it the first frame's label map."""

    def __init__(self, name: str, make_predictor: Callable[[], Any]) -> None:
        super().__init__(name=name)
        self._make_predictor = make_predictor

    def activate_impl(self):
        self.predictor = self._make_predictor()

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        meta.add("frame", np.uint8, ("height", "width", 3))
        meta.add("first_labels", np.uint8, ("height", "width"))
        return meta

    def infer_impl(self, feed_dict):
        first = not self.predictor.object_ids
        start = time.perf_counter()
        result = self.predictor.step(feed_dict["frame"], feed_dict["first_labels"] if first else None,
                                     probabilities=True)  # fmt: skip
        output = np.asarray(result.probabilities, dtype=np.float32)
        self.inference_time = time.perf_counter() - start
        return OrderedDict([(CLIP_OUTPUT, output)])

    def deactivate_impl(self):
        del self.predictor


def mask_agreement(prob: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(mean over objects of the argmax masks' IoU, fraction of pixels whose argmax label differs).

    prob, reference: (1 + objects) x H x W probabilities, background first.
    """
    from jfdeploy.metrics import db_eval_iou

    labels, reference_labels = prob.argmax(axis=0), reference.argmax(axis=0)
    objects = np.arange(1, prob.shape[0]).reshape(-1, 1, 1)
    iou = db_eval_iou(reference_labels[None] == objects, labels[None] == objects)
    return float(np.mean(iou)), float(np.mean(labels != reference_labels))


def predictor_factories(kinds: Sequence[str], *, model, engines: Path | None, device: str, mem_every: int,
                        max_memory_frames: int) -> dict[str, Callable[[], Any]]:  # fmt: skip
    """Runner name -> a function making a fresh ``VideoPredictor`` for it, at the clip's own size.

    kinds: engine runners (onnxruntime, tensorrt: ``engines``) or configurations of the model
    (``torch``, ``torch-bf16``, ``eager`` ...: variant names, see ``RunOptions.from_variant``).
    """
    from jfdeploy.predictor import ENGINE_BACKENDS, RunOptions, VideoPredictor

    def factory(kind: str) -> Callable[[], Any]:
        common: dict[str, Any] = {"mem_every": mem_every, "max_memory_frames": max_memory_frames, "sizes": (None,)}
        if kind in ENGINE_BACKENDS:
            options = RunOptions(backend=kind, engines=engines, device=str(runner_device(kind, device)), **common)
            return lambda: VideoPredictor(None, options)
        options = RunOptions.from_variant(kind, **common)
        return lambda: VideoPredictor(model, options)

    return {kind: factory(kind) for kind in kinds}


def check_drift(predictors: Mapping[str, Callable[[], Any]], clip: Clip, tolerances: Tolerances) -> list[FrameCheck]:
    """Run the clip through each predictor (the first is the reference); one row per frame and pair.

    predictors: runner name -> a function making a fresh ``VideoPredictor`` (``predictor_factories``).
    """
    runners = [PredictorRunner(name, make) for name, make in predictors.items()]
    feeds = [OrderedDict([("frame", frame), ("first_labels", clip.first_labels)]) for frame in clip.frames]
    run_results = _run(runners, feeds)
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        compared = _compare(run_results, tolerances, CLIP, [CLIP_OUTPUT])
    names = list(predictors)
    per_frame = len(names) - 1
    checks = []
    for index, check in enumerate(compared):
        frame, pair = divmod(index, per_frame)
        prob = run_results[names[pair + 1]][frame][CLIP_OUTPUT]
        reference = run_results[names[0]][frame][CLIP_OUTPUT]
        iou, disagreement = mask_agreement(prob, reference)
        checks.append(FrameCheck(frame, check.runners, check.max_abs, check.mean_abs, check.max_rel, iou,
                                 disagreement, check.atol, check.rtol, check.ok))  # fmt: skip
    return checks


# --------------------------------------------------------------------------------------------- reports


@dataclass
class CheckReport:
    engines: str
    precision: str
    runners: list[str]  # reference first
    size: dict[str, int]  # the stage inputs' size
    stages: list[OutputCheck]
    frames: list[FrameCheck] = field(default_factory=list)
    clip: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.stages) and all(c.ok for c in self.frames)

    def to_json(self) -> dict[str, Any]:
        per_frame: dict[int, list[dict[str, Any]]] = {}
        for check in self.frames:
            row = {k: v for k, v in asdict(check).items() if k != "frame"}
            per_frame.setdefault(check.frame, []).append(row)
        return {
            "engines": self.engines,
            "precision": self.precision,
            "runners": self.runners,
            "reference": self.runners[0],
            "rule": "an element is out of tolerance when |a - b| > atol and |a - b| > rtol * |reference|",
            "stage_size": self.size,
            "ok": self.ok,
            "stages": [asdict(c) for c in self.stages],
            "drift": None if self.clip is None else {
                **self.clip, "frames": [{"frame": t, "comparisons": rows} for t, rows in sorted(per_frame.items())]},
        }  # fmt: skip


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN / Infinity: non-finite numbers become null (nested lists and dicts too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def format_stage_table(checks: Sequence[OutputCheck]) -> str:
    lines = ["| stage | output | runners | max abs | max rel | tolerance | ok |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in checks:
        lines.append(f"| {c.stage} | {c.output} | {c.runners} | {_number(c.max_abs)} | {_number(c.max_rel)} | "
                     f"atol {c.atol:g}, rtol {c.rtol:g} | {'yes' if c.ok else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


def format_drift_table(checks: Sequence[FrameCheck]) -> str:
    lines = ["| frame | runners | max abs | mean abs | mask IoU | disagreement | tolerance | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in checks:
        lines.append(f"| {c.frame} | {c.runners} | {_number(c.max_abs)} | {_number(c.mean_abs)} | "
                     f"{c.iou:.4f} | {c.disagreement:.4f} | atol {c.atol:g}, rtol {c.rtol:g} | "
                     f"{'yes' if c.ok else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


def save_json(report: CheckReport, path: str | os.PathLike) -> Path:
    """Write the report as JSON, atomically (non-finite numbers become null)."""
    from jfdeploy.fsutil import write_text_atomic

    return write_text_atomic(path, json.dumps(_finite_or_none(report.to_json()), indent=2, allow_nan=False) + "\n")
