"""TensorRT plans as every side sees them: optimization profiles (resolution buckets), and TensorRT loaded.

The builder (``jfdeploy.export.tensorrt``) makes one profile per bucket; the runtime
(``jfdeploy.backends.engines``) reads the buckets back from the manifest and picks, per call, a profile
that holds the input shapes. TensorRT and Polygraphy are imported lazily: the profile logic is plain Python.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jfdeploy import specs
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.limits import frame_tokens_needed
from jfdeploy.manifest import EngineError

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) of one input
_SIZE = r"(\d+)x(\d+)"


@dataclass(frozen=True)
class Bucket:
    """Frames from min to max (padded sizes, multiples of 16, height x width), tuned for opt."""

    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    def __post_init__(self) -> None:
        sides = (*self.min_hw, *self.opt_hw, *self.max_hw)
        if any(side < 16 or side % 16 for side in sides):
            raise InputError(f"profile {self}: frame sides must be positive multiples of 16")
        if not all(lo <= opt <= hi for lo, opt, hi in zip(self.min_hw, self.opt_hw, self.max_hw, strict=True)):
            raise InputError(f"profile {self}: needs min <= opt <= max in height and in width")

    def __str__(self) -> str:
        return ":".join(f"{h}x{w}" for h, w in (self.min_hw, self.opt_hw, self.max_hw))

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Bucket:
        return cls(tuple(entry["min_hw"]), tuple(entry["opt_hw"]), tuple(entry["max_hw"]))


NAMED_BUCKETS = {
    "360p": Bucket((128, 128), (240, 432), (368, 656)),  # up to ~360p
    "480p": Bucket((384, 384), (480, 864), (608, 1088)),  # the paper's setting (480 x 854 padded to 480 x 864)
    "720p": Bucket((624, 624), (720, 1280), (1088, 1920)),  # 720p..1080p
}
DEFAULT_BUCKETS = (NAMED_BUCKETS["480p"],)  # each bucket costs about a full build: only 480p by default


def parse_bucket(text: str) -> Bucket:
    """``MIN_HxW:OPT_HxW:MAX_HxW`` (e.g. ``384x384:480x864:608x1088``) or a name of ``NAMED_BUCKETS``."""
    if text in NAMED_BUCKETS:
        return NAMED_BUCKETS[text]
    match = re.fullmatch(f"{_SIZE}:{_SIZE}:{_SIZE}", text.strip())
    if match is None:
        raise InputError(
            f"profile {text!r}: expected MIN_HxW:OPT_HxW:MAX_HxW (e.g. 384x384:480x864:608x1088) "
            f"or one of {', '.join(NAMED_BUCKETS)}"
        )
    h0, w0, h1, w1, h2, w2 = (int(v) for v in match.groups())
    return Bucket((h0, w0), (h1, w1), (h2, w2))


def check_bucket_tokens(bucket: Bucket, *, slots: int, limits: dict[str, Any]) -> None:
    """InputError if the bucket's smallest frame has fewer tokens than the graphs' constant top-k needs."""
    needed = frame_tokens_needed(limits, slots)
    low_h, low_w = bucket.min_hw
    if (low_h // 16) * (low_w // 16) < needed:
        raise InputError(f"profile {bucket}: minimum {low_h}x{low_w} has fewer than the {needed} tokens top-k needs")


# the frame loop's stages see the caller's frames: from 16 x 16 to 4K (sources), with resampling taps
# from 1 (no resize) to what the largest source shrunk to the bucket's smallest frame needs
SOURCE_MIN_HW = (16, 16)
SOURCE_MAX_HW = (2160, 4096)


def _max_taps(bucket: Bucket) -> int:
    """PIL's bilinear taps when the largest source shrinks to the bucket's smallest frame (2 ceil(scale) + 1)."""
    scale = max(SOURCE_MAX_HW[0] / bucket.min_hw[0], SOURCE_MAX_HW[1] / bucket.min_hw[1])
    return 2 * int(-(-scale // 1)) + 1


def profile_shapes(
    stage: str, bucket: Bucket, *, max_objects: int, slots: int, limits: dict[str, Any], widths: specs.Widths
) -> dict[str, ShapeRange]:
    """(min, opt, max) shape of every input of ``stage`` in ``bucket``: min and opt 1 object, max ``max_objects``;
    sources from 16 x 16 to 4K, opt a 1080p frame; objects already in memory from 0 (the first frame)."""
    check_bucket_tokens(bucket, slots=slots, limits=limits)
    taps = _max_taps(bucket)
    sizes = (
        specs.Size(1, *bucket.min_hw, slots, widths, *SOURCE_MIN_HW, 1, 1, old_objects=0),
        specs.Size(1, *bucket.opt_hw, slots, widths, 1080, 1920, 5, 5, old_objects=1),
        specs.Size(
            max_objects,
            *bucket.max_hw,
            slots,
            widths,
            *SOURCE_MAX_HW,
            taps,
            taps,
            old_objects=max_objects,
            frames=max_objects,
            token_rows=max_objects,
        ),
    )
    return {
        name: tuple(specs.shape_at(stage, name, size) for size in sizes)  # type: ignore[misc]
        for name in specs.input_names(stage)
    }


def select_profile(ranges: list[dict[str, ShapeRange]], shapes: dict[str, tuple[int, ...]], current: int | None) -> int:
    """Index of a profile holding every input shape (``current`` if it does, else the first); -1 if none."""

    def holds(profile: dict[str, ShapeRange]) -> bool:
        return all(
            len(shapes[name]) == len(low)
            and all(lo <= d <= hi for lo, d, hi in zip(low, shapes[name], high, strict=True))
            for name, (low, _, high) in profile.items()
        )

    if current is not None and holds(ranges[current]):
        return current
    return next((index for index, profile in enumerate(ranges) if holds(profile)), -1)


def manifest_profiles(manifest: dict[str, Any], stage: str) -> list[dict[str, ShapeRange]]:
    """The (min, opt, max) input shapes of each optimization profile of ``stage``'s plan, from the manifest."""
    built = manifest["tensorrt"]
    slots, limits, widths = manifest["memory"]["slots"], manifest["limits"], specs.Widths.from_manifest(manifest)
    return [
        profile_shapes(
            stage, Bucket.from_dict(e), max_objects=built["max_objects"], slots=slots, limits=limits, widths=widths
        )
        for e in built["profiles"]
    ]


def require_tensorrt(purpose: str = "building TensorRT plans", hint: str = ""):
    """The ``tensorrt`` module, once Polygraphy, TensorRT and a CUDA GPU are all there; else a one-line error."""
    import importlib

    try:
        importlib.import_module("polygraphy")
    except ImportError as exc:
        raise JfDeployError(f"{purpose} needs Polygraphy: pip install 'jfdeploy[tensorrt]'") from exc
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JfDeployError(f"TensorRT is not installed ({reason}): {purpose} needs it{hint}") from exc
    from jfdeploy.devices import cuda_device_count

    if not cuda_device_count():
        raise JfDeployError(f"{purpose} needs a CUDA GPU (none is visible)")
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # no "install colored" notice; messages stay plain text
    return trt


@contextlib.contextmanager
def polygraphy_errors(what: str) -> Iterator[None]:
    """Polygraphy reports failures by logging and raising PolygraphyException: make that a one-line error."""
    from polygraphy.exception import PolygraphyException

    try:
        yield
    except PolygraphyException as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise EngineError(f"{what}: {first} (see the log above)") from exc
