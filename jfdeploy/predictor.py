"""VideoPredictor: JointFormer frame by frame, RGB frames in, label maps out; and the one frame loop.

    predictor = jfdeploy.VideoPredictor(jfdeploy.load_model("jointformer.pth"), size=480)
    labels = predictor.step(first_rgb, objects=first_label_map)     # uint8 H x W, the map's labels
    for rgb in frames:
        labels = predictor.step(rgb)                                # uint8 H x W at the frame's size
    predictor.add_objects(label_map)   # new labels start with the next step; known ones are corrected
    predictor.reset()                  # a new video (engines and weights stay loaded)

Everything a caller would otherwise repeat lives here, as stages of the backend's runtime
(``jfdeploy.loop_stages``) driven by the tables of ``jfdeploy.resample``: the shorter-side resize the
published evaluation uses, ImageNet normalization and padding (``preprocess``), the given label maps
(``label_masks``), one ``Segmenter`` per test-time augmentation (shorter sides x horizontal flip,
probabilities averaged at the original size: ``postprocess``), the argmax back to the caller's labels
(``label_map``). No tensor library is imported here: with an engine directory the predictor runs where
torch is not installed. ``run``, ``demo``, ``eval``, ``run-many`` and ``bench`` all go through
``predict_frames`` below, so their masks are the masks this class returns.

Backends and variants: ``RunOptions.backend`` is eager | torch | onnxruntime | tensorrt; a variant
name spells a configuration as ``BACKEND[-PRECISION][-triton]`` (``torch``, ``torch-bf16``,
``torch-fp16-triton``, ``eager-fp16``), the same in the CLI, the bench JSON and the README.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy.backends import BACKENDS
from jfdeploy.backends.runtime import Array
from jfdeploy.errors import InputError
from jfdeploy.fsutil import raise_if_interrupted
from jfdeploy.precision import PRECISION_NAMES, precision_dtype
from jfdeploy.resample import geometry
from jfdeploy.segmenter import FramePlan, Segmenter

ENGINE_BACKENDS = ("onnxruntime", "tensorrt")
ATTENTIONS = ("torch", "triton")
MAX_LABEL = 255  # label maps are uint8 (DAVIS palette PNGs)


@dataclass(frozen=True)
class RunOptions:
    """How a video is segmented: one set of names and defaults for every verb and the Python API.

    backend: eager (the published loop) | torch (the staged runtime) | onnxruntime | tensorrt.
    precision: fp32 | fp16 | bf16, autocast of the eager / torch backends (engines fix theirs at export).
    attention: torch | triton, the top-k attention of the torch backend.
    engines, device: the engine directory of onnxruntime / tensorrt and where it runs (model
        backends run where the model is).
    mem_every, max_memory_frames: a memory frame every N frames; memory frames kept per object.
    sizes: shorter sides fed to the model (None: the frame's own size); several sizes, or ``flip``,
        run one segmenter each and average the probabilities (test-time augmentation).
    max_objects: label maps with more objects are refused.
    threads: intra-op threads of the onnxruntime sessions (None: onnxruntime's default, every core).
    """

    backend: str = "torch"
    precision: str = "fp32"
    attention: str = "torch"
    engines: Path | None = None
    device: str | None = None
    mem_every: int = 5
    max_memory_frames: int = 3
    sizes: tuple[int | None, ...] = (480,)
    flip: bool = False
    max_objects: int = 20
    threads: int | None = None  # onnxruntime's intra-op threads (None: its default); torch's are torch's own

    def __post_init__(self) -> None:
        sizes = tuple(None if s is None or s <= 0 else int(s) for s in self.sizes)
        object.__setattr__(self, "sizes", sizes)

    @property
    def variant(self) -> str:
        """The configuration's name, ``BACKEND[-PRECISION][-triton]``."""
        name = self.backend + (f"-{self.precision}" if self.precision != "fp32" else "")
        return name + ("-triton" if self.attention == "triton" else "")

    @classmethod
    def from_variant(cls, variant: str, **fields: Any) -> RunOptions:
        """RunOptions of a variant name (``torch-bf16``, ``torch-fp16-triton``, ``eager-fp16``, ``onnxruntime``)."""
        backend, *rest = variant.split("-")
        precision, attention = "fp32", "torch"
        if rest and rest[-1] == "triton":
            attention, rest = "triton", rest[:-1]
        if rest:
            precision = rest.pop(0)
        options = cls(backend=backend, precision=precision, attention=attention, **fields)
        if rest or options.variant != variant:
            raise InputError(f"unknown variant {variant!r}: write BACKEND[-PRECISION][-triton], e.g. torch-bf16")
        options.validate()
        return options

    @property
    def augmentations(self) -> list[tuple[int | None, bool]]:
        """(shorter side, flipped) of every segmenter."""
        return [(size, flipped) for size in self.sizes for flipped in ((False, True) if self.flip else (False,))]

    def validate(self) -> None:
        """InputError for a value or combination that cannot run (before anything is loaded)."""
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")
        if self.precision not in PRECISION_NAMES:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_NAMES)}")
        if self.attention not in ATTENTIONS:
            raise InputError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        engines = self.backend in ENGINE_BACKENDS
        if engines and self.engines is None:
            raise InputError(f"backend {self.backend} needs an engine directory (made by `jfdeploy export`)")
        if not engines and self.engines is not None:
            raise InputError(f"an engine directory runs on onnxruntime or tensorrt, not backend {self.backend}")
        if engines and (self.precision != "fp32" or self.attention != "torch"):
            raise InputError(f"precision and attention do not apply to {self.backend}: the engines fixed them")
        if self.backend == "eager" and self.attention != "torch":
            raise InputError("attention triton applies to backend torch only, not eager")
        if self.mem_every < 1 or self.max_memory_frames < 1 or self.max_objects < 1:
            raise InputError("mem_every, max_memory_frames and max_objects must be >= 1")
        if not self.sizes:
            raise InputError("sizes must name at least one shorter side")

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Segmenter`` / ``make_backend`` for this configuration."""
        if self.backend in ENGINE_BACKENDS:
            return {"engines": self.engines, "device": self.device, "threads": self.threads}
        options: dict[str, Any] = {}
        if self.precision != "fp32":
            options["autocast"] = precision_dtype(self.precision)
        if self.attention != "torch":
            options["attention"] = self.attention
        return options


def _as_numpy(image: Any) -> np.ndarray:
    """A numpy view of a numpy array or of a tensor of any library that converts (torch, on any device)."""
    if isinstance(image, np.ndarray):
        return image
    if hasattr(image, "detach"):  # a torch tensor, without importing torch
        image = image.detach().cpu()
    return np.asarray(image)


def _as_rgb(image: Any) -> np.ndarray:
    """uint8 H x W x 3 (numpy, or a torch tensor anywhere) -> a contiguous numpy array."""
    rgb = _as_numpy(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"a frame must be an RGB uint8 H x W x 3 array, got {rgb.dtype} {tuple(rgb.shape)}")
    return np.ascontiguousarray(rgb)


def _as_label_map(label_map: Any, size: tuple[int, int]) -> np.ndarray:
    label_map = _as_numpy(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise InputError(f"a label map must be an integer H x W array, got {label_map.dtype} {label_map.shape}")
    if label_map.shape != tuple(size):
        raise InputError(f"the label map is {label_map.shape[0]}x{label_map.shape[1]}, the frame {size[0]}x{size[1]}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > MAX_LABEL):
        raise InputError(f"labels must lie in 0..{MAX_LABEL} (0 = background)")
    return np.ascontiguousarray(label_map.astype(np.uint8, copy=False))


@dataclass
class Prediction:
    """One frame's result: ``labels`` uint8 H x W at the frame's size (0 background, else the caller's
    labels); ``object_ids`` the labels tracked, in row order of ``probabilities`` ((1 + O) x H x W float32
    numpy, background first) when asked for."""

    labels: np.ndarray
    object_ids: list[int]
    probabilities: np.ndarray | None = None


class VideoPredictor:
    """Segments one video at a time, frame by frame, on any backend.

    Args:
        model: a loaded JointFormer (``jfdeploy.load_model``) for the eager / torch backends, on the
            device and in the dtype it should run; None for onnxruntime / tensorrt (``engines=``).
        options: ``RunOptions``; keyword arguments override its fields (``size=`` is a shorthand for
            ``sizes=(size,)``), e.g. ``VideoPredictor(model, size=480, precision="bf16")``.
        runtime: the stage runtime of another predictor of the same model and options (``.runtime``) to
            share: its weights / engine sessions are loaded once, each predictor keeps its own memory
            (a server's sessions; their frames can then go through the model together).

    ``step`` is ``begin`` (preprocessing, the objects, each segmenter's ``FramePlan``), the model on
    every plan that needs it (``backend.segment``; ``jfdeploy.backends.staged.segment_together`` runs the
    plans of several predictors sharing a runtime as one batch), then ``finish``.
    """

    def __init__(
        self, model: Any = None, options: RunOptions | None = None, *, runtime: Any = None, **overrides: Any
    ) -> None:
        if "size" in overrides:
            overrides["sizes"] = (overrides.pop("size"),)
        if "engines" in overrides and overrides["engines"] is not None and "backend" not in overrides:
            overrides["backend"] = "onnxruntime"
        self.options = dataclasses.replace(options or RunOptions(), **overrides)
        self.options.validate()
        self.model = model
        self.segmenters: list[Segmenter] = []
        for _ in self.options.augmentations:  # one memory per augmentation, one runtime (weights, engines) for all
            first = self.segmenters[0].runtime if self.segmenters else runtime
            shared = {"runtime": first} if first is not None else {}
            self.segmenters.append(
                Segmenter(
                    model,
                    mem_every=self.options.mem_every,
                    max_memory_frames=self.options.max_memory_frames,
                    backend=self.options.backend,
                    **self.options.backend_options(),
                    **shared,
                )
            )
        self.runtime = self.segmenters[0].runtime
        self.object_ids: list[int] = []
        self._pending: Any = None
        self._tables: dict[tuple, tuple[Array, ...]] = {}  # per frame size: the resampling tables, on the device
        self._arrays: dict[tuple, Array] = {}  # object labels and zero accumulators, on the device

    @property
    def device(self) -> str:
        return self.runtime.device

    def reset(self) -> None:
        """Forget every object and the memory: the next frame starts a new video."""
        for segmenter in self.segmenters:
            segmenter.reset()
        self.object_ids = []
        self._pending = None

    def add_objects(self, label_map: Any) -> None:
        """Objects of ``label_map`` (H x W, 0 = background) for the next ``step``: labels not seen before
        start there; known labels present in the map are corrected; known labels absent keep tracking."""
        self._pending = label_map

    def _frame_tables(self, size: tuple[int, int], side: int | None, flipped: bool) -> tuple[Array, ...]:
        """(input taps x 4, mask rows, mask cols, output taps x 4) of one augmentation, uploaded once."""
        key = (size, side, flipped)
        if key not in self._tables:
            if len(self._tables) >= 16:  # a source whose frame size keeps changing: keep the newest only
                self._tables.clear()
            where = geometry(size, side, flipped)
            (ri, rw), (ci, cw) = where.input_taps()
            rows, cols = where.mask_index()
            (ori, orw), (oci, ocw) = where.output_taps(scale=1.0 / len(self.segmenters))
            self._tables[key] = tuple(self.runtime.upload(a) for a in (ri, rw, ci, cw, rows, cols, ori, orw, oci, ocw))
        return self._tables[key]

    def _array(self, key: tuple, make: Any) -> Array:
        if key not in self._arrays:
            if len(self._arrays) >= 16:
                self._arrays.clear()
            self._arrays[key] = make()
        return self._arrays[key]

    def begin(
        self, image: Any, objects: Any = None, *, last: bool = False, probabilities: bool = False
    ) -> PendingFrame:
        """The first half of ``step``: the frame preprocessed and planned by every segmenter."""
        rgb = _as_rgb(image)
        size = (rgb.shape[0], rgb.shape[1])
        if objects is None:
            objects, self._pending = self._pending, None
        valid_rows = None
        label_map = None
        if objects is not None:
            label_map = _as_label_map(objects, size)
            present = [int(v) for v in np.unique(label_map) if v != 0]
            new = [v for v in present if v not in self.object_ids]
            if len(self.object_ids) + len(new) > self.options.max_objects:
                raise InputError(
                    f"{len(self.object_ids) + len(new)} objects, more than the limit of {self.options.max_objects}"
                )
            self.object_ids += new
            if not present:
                label_map = None
            elif len(present) < len(self.object_ids):
                valid_rows = [self.object_ids.index(v) + 1 for v in present]
        pending = PendingFrame(size, list(self.object_ids), probabilities)
        if not self.object_ids:  # nothing to track yet: the frame is all background
            return pending
        run, runtime = self.runtime.run, self.runtime
        labels = self._array(
            ("labels", tuple(self.object_ids)), lambda: runtime.upload(np.asarray(self.object_ids, np.int64))
        )
        rgb_array = runtime.upload(rgb)
        label_array = None if label_map is None else runtime.upload(label_map)
        for (side, flipped), segmenter in zip(self.options.augmentations, self.segmenters, strict=True):
            tables = self._frame_tables(size, side, flipped)
            (frame,) = run("preprocess", rgb_array, *tables[:4])
            masks = None if label_array is None else run("label_masks", label_array, labels, *tables[4:6])[0]
            plan = segmenter.plan(frame, masks, valid_rows, last=last)
            assert plan is not None  # objects are tracked
            pending.plans.append(plan)
        return pending

    def finish(self, pending: PendingFrame, logits: list[Array | None]) -> Prediction:
        """The second half of ``step``: ``logits`` of each plan (None where it needs none) -> the Prediction."""
        size, ids = pending.size, tuple(pending.object_ids)
        if not ids:
            empty = np.zeros(size, np.uint8)
            return Prediction(empty, [], np.ones((1, *size), np.float32) if pending.probabilities else None)
        run, runtime = self.runtime.run, self.runtime
        labels = self._array(("labels", ids), lambda: runtime.upload(np.asarray(ids, np.int64)))
        accumulated = self._array(("zeros", len(ids), size), lambda: runtime.zeros((1 + len(ids), *size), "float32"))
        segments = zip(self.options.augmentations, self.segmenters, pending.plans, logits, strict=True)
        for (side, flipped), segmenter, plan, plan_logits in segments:
            prob = segmenter.complete(plan, plan_logits)
            tables = self._frame_tables(size, side, flipped)
            (accumulated,) = run("postprocess", prob, *tables[6:], accumulated)
        (label_out,) = run("label_map", accumulated, labels)
        return Prediction(
            runtime.download(label_out), list(ids), runtime.download(accumulated) if pending.probabilities else None
        )

    def step(
        self,
        image: Any,
        objects: Any = None,
        *,
        last: bool = False,
        probabilities: bool = False,
    ) -> Prediction:
        """Segment one RGB uint8 H x W x 3 frame; ``objects``: a label map given on this frame (as
        ``add_objects``); ``last``: the video's last frame (not memorized)."""
        pending = self.begin(image, objects, last=last, probabilities=probabilities)
        logits = [
            segmenter.backend.segment(plan.frame) if plan.need_segment else None
            for segmenter, plan in zip(self.segmenters, pending.plans, strict=False)  # no plans: no objects
        ]
        return self.finish(pending, logits)


@dataclass
class PendingFrame:
    """A frame between ``VideoPredictor.begin`` and ``finish``: its source ``size`` (H, W), the objects
    tracked, whether probabilities are wanted, and one ``FramePlan`` per segmenter (none without objects)."""

    size: tuple[int, int]
    object_ids: list[int]
    probabilities: bool
    plans: list[FramePlan] = dataclasses.field(default_factory=list)


@dataclass
class FramePrediction:
    """One frame of ``predict_frames``: its index and name, the RGB frame, the prediction, and the
    seconds the predictor's step took (wall clock; the step ends with the label map on the host)."""

    index: int
    name: str
    rgb: np.ndarray
    labels: np.ndarray
    object_ids: list[int]
    seconds: float


Prompts = Mapping[int, np.ndarray] | Callable[[int], np.ndarray | None]


def predict_frames(
    predictor: VideoPredictor,
    frames: Iterable[tuple[str, np.ndarray]],
    prompts: Prompts,
    *,
    frame_count: int | None = None,
) -> Iterator[FramePrediction]:
    """The frame loop: read -> step -> hand back, for every frame of ``frames`` ((name, rgb) pairs).

    ``prompts``: the label maps given on frames (index -> map, or a function of the index returning a
    map or None). ``frame_count``: the number of frames when known (the last is not memorized); a live
    source has none. Checks for an interrupt before each frame.
    """
    prompt_at = prompts.get if isinstance(prompts, Mapping) else prompts
    for index, (name, rgb) in enumerate(frames):
        raise_if_interrupted()  # stop at once even if a library swallowed the interrupt
        prompt = prompt_at(index)
        start = time.perf_counter()
        prediction = predictor.step(rgb, prompt, last=frame_count is not None and index == frame_count - 1)
        seconds = time.perf_counter() - start
        yield FramePrediction(index, name, rgb, prediction.labels, prediction.object_ids, seconds)
