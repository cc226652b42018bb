"""Resampling tables: the resizes, padding and flips of a frame loop as gather indices and weights.

The published evaluation resizes a frame to a shorter side of 480 with PIL's antialiased bilinear filter
(torchvision ``Resize`` on a PIL image), the first mask with PIL's nearest neighbour, zero-pads the
normalized frame to a multiple of 16 (split evenly), and resizes the output probabilities back with
``F.interpolate(bilinear, align_corners=False)``. Each of these is separable: output row ``i`` is a
weighted sum of a few input rows. This module computes those *taps* once per frame geometry, in numpy:

    index   (out, K) int64    input rows (or columns) read by each output row
    weight  (out, K)          their weights (0 for padding rows and unused taps): float32, or int32
                              fixed point for the frame's resize (PIL's integer arithmetic, bit for bit)

and the stages of ``jfdeploy.loop_stages`` apply them with a gather and a weighted sum, the same graph
on every backend. Padding, the horizontal flip of test-time augmentation and the 1/N of an average over
augmentations are folded into the tables, so no backend does any of these as a separate tensor op.

Everything here is integer bookkeeping and a handful of floats per output row: no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

PAD_MULTIPLE = 16
PIL_PRECISION_BITS = 22  # PIL's fixed-point resampling coefficients (8-bit images)

PIL_ONE = 1 << PIL_PRECISION_BITS  # the fixed-point weight 1.0

Taps = tuple[np.ndarray, np.ndarray]  # index (out, K) int64, weight (out, K) float32 or int32


def shorter_side_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(H, W) with the shorter side ``size`` and the longer one scaled and truncated, as torchvision;
    ``size`` None or <= 0 keeps the frame's own size."""
    if size is None or size <= 0:
        return height, width
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def padding(length: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """(before, after): the zero padding of ``length`` up to a multiple, split evenly (the odd one after)."""
    extra = -length % multiple
    return extra // 2, extra - extra // 2


def pil_bilinear_taps(in_size: int, out_size: int) -> Taps:
    """PIL's ``BILINEAR`` resize along one axis (antialiased when shrinking), as PIL computes it for 8-bit
    images: triangle filter widened by the scale, normalized, rounded to 22-bit fixed point (int32 weights;
    a pixel is ``(sum(value * weight) + PIL_ONE / 2) >> 22``, clipped to 0..255, one axis after the other,
    columns first, as PIL does)."""
    if in_size == out_size:
        index, _ = _identity(out_size)
        return index, np.full((out_size, 1), PIL_ONE, np.int32)
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    taps = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, taps), np.int64)
    weight = np.zeros((out_size, taps), np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        positions = np.arange(count)
        w = np.maximum(0.0, 1.0 - np.abs((positions + first - center + 0.5) / filter_scale))
        total = w.sum()
        if total != 0:
            w = w / total
        index[out, :count] = first + positions
        index[out, count:] = first
        weight[out, :count] = w
    fixed = np.where(weight < 0, np.trunc(-0.5 + weight * PIL_ONE), np.trunc(0.5 + weight * PIL_ONE))
    return index, fixed.astype(np.int32)


def pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """PIL's ``NEAREST`` resize along one axis: the input index of every output index, (out,) int64.

    PIL walks the output with an accumulated double-precision offset; the same sum is kept here."""
    if in_size == out_size:
        return np.arange(out_size, dtype=np.int64)
    step = in_size / out_size
    position = step * 0.5
    index = np.empty(out_size, np.int64)
    for out in range(out_size):
        index[out] = min(int(position), in_size - 1)
        position += step
    return index


def torch_bilinear_taps(in_size: int, out_size: int) -> Taps:
    """``F.interpolate(mode="bilinear", align_corners=False)`` along one axis, in float32 as torch's CPU
    kernel computes its source positions: (out, 2) taps."""
    if in_size == out_size:
        return _identity(out_size)
    scale = np.float32(in_size / out_size)
    source = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    first = source.astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    fraction = (source - first.astype(np.float32)).astype(np.float32)
    index = np.stack([first, second], axis=1)
    weight = np.stack([np.float32(1) - fraction, fraction], axis=1).astype(np.float32)
    return index, weight


def _identity(size: int) -> Taps:
    return np.arange(size, dtype=np.int64)[:, None], np.ones((size, 1), np.float32)


@dataclass(frozen=True)
class Geometry:
    """Where a frame of ``source`` size (H, W) sits in the model's input: resized so that its shorter side
    is ``side`` (None: its own size), optionally flipped left-right, zero-padded to multiples of 16.

    ``input_taps`` map the source frame to the padded model input (PIL bilinear, int32 fixed-point
    weights), ``mask_index`` the
    source label map to it (PIL nearest; padding reads the index ``H`` / ``W``: a zero row / column the
    stage appends), ``output_taps`` map the padded model output back to the source size (torch bilinear
    over the unpadded, unflipped output; ``scale`` multiplies the weights, e.g. 1/N to average N
    augmentations).
    """

    source: tuple[int, int]
    side: int | None = None
    flipped: bool = False

    @property
    def resized(self) -> tuple[int, int]:
        return shorter_side_size(*self.source, self.side)

    @property
    def padded(self) -> tuple[int, int]:
        return tuple(n + sum(padding(n)) for n in self.resized)  # type: ignore[return-value]

    def input_taps(self) -> tuple[Taps, Taps]:
        """(row taps, column taps) from the source frame to the padded model input."""
        return (
            _padded_taps(pil_bilinear_taps(self.source[0], self.resized[0]), False),
            _padded_taps(pil_bilinear_taps(self.source[1], self.resized[1]), self.flipped),
        )

    def mask_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(row index, column index) from the source label map to the padded model input."""
        rows, cols = (pil_nearest_index(n, m) for n, m in zip(self.source, self.resized, strict=True))
        return _padded_index(rows, self.source[0], False), _padded_index(cols, self.source[1], self.flipped)

    def output_taps(self, scale: float = 1.0) -> tuple[Taps, Taps]:
        """(row taps, column taps) from the padded model output to the source size, weights times ``scale``."""
        (h, w), (top, _), (left, _) = self.resized, padding(self.resized[0]), padding(self.resized[1])
        row_index, row_weight = torch_bilinear_taps(h, self.source[0])
        col_index, col_weight = torch_bilinear_taps(w, self.source[1])
        if self.flipped:
            col_index = w - 1 - col_index
        return (
            (row_index + top, (row_weight * np.float32(scale)).astype(np.float32)),
            (col_index + left, col_weight),
        )


def _padded_taps(taps: Taps, flipped: bool) -> Taps:
    """Taps of a resized axis placed in its padded length (zero weight on the padding), flipped if asked."""
    index, weight = taps
    if flipped:
        index, weight = index[::-1], weight[::-1]
    before, after = padding(index.shape[0])
    index = np.pad(index, ((before, after), (0, 0)))  # padding rows read input 0 with weight 0
    weight = np.pad(weight, ((before, after), (0, 0)))
    return np.ascontiguousarray(index), np.ascontiguousarray(weight)


def _padded_index(index: np.ndarray, in_size: int, flipped: bool) -> np.ndarray:
    if flipped:
        index = index[::-1]
    before, after = padding(index.shape[0])
    return np.ascontiguousarray(np.pad(index, (before, after), constant_values=in_size))


@functools.lru_cache(maxsize=64)
def geometry(source: tuple[int, int], side: int | None, flipped: bool) -> Geometry:
    """The (cached) geometry of a frame size under one augmentation."""
    return Geometry(source, side if side and side > 0 else None, flipped)
