"""DAVIS benchmark metrics: region similarity J, boundary accuracy F and their J&F aggregation.

These follow the official ``davis2017-evaluation`` code (``davis2017/metrics.py``, ``utils.db_statistics``,
``evaluation.py`` and ``evaluation_method.py``) number for number, without its OpenCV and scikit-image
dependencies:

* J (``db_eval_iou``): |A ∩ B| / |A ∪ B| per frame; a frame where both masks are empty scores 1.
* F (``f_measure``): boundaries by the benchmark's ``seg2bmap`` (1 pixel wide, offset half a pixel towards
  the origin), each dilated by a disk of radius ``bound_pix`` (``bound_th`` itself when ``bound_th >= 1``,
  else ``ceil(bound_th * ||(H, W)||)``, i.e. 8 at 480x854); precision = matched predicted boundary pixels /
  predicted boundary pixels, recall = matched ground-truth boundary pixels / ground-truth boundary pixels,
  F = 2PR / (P + R). Both boundaries empty -> 1, exactly one empty -> 0.
* Statistics per object over frames (``db_statistics``): mean, recall (fraction of frames scoring > 0.5)
  and decay (mean of the first quarter of the frames minus the mean of the last quarter).
* Semi-supervised protocol (``evaluate_sequence``): the first and the last frame are left out, objects are
  ``1..max(first ground-truth frame)``, the void label 255 of the ground truth counts as background.
* Aggregation (``summarize``): global J and F are means over all objects of all sequences (not over
  sequences), J&F is their mean.

The dilation reproduces the official ``cv2.dilate(boundary, skimage.morphology.disk(bound_pix))`` (same
footprint, same anchor, same border handling) in plain numpy, so the module needs neither OpenCV nor scipy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jfdeploy.errors import InputError

__all__ = [
    "VOID_LABEL",
    "bound_pixels",
    "db_eval_boundary",
    "db_eval_iou",
    "db_statistics",
    "disk",
    "evaluate_sequence",
    "f_measure",
    "seg2bmap",
    "summarize",
]

VOID_LABEL = 255
"""Label of the DAVIS annotations' "void" pixels (object borders); the semi-supervised protocol counts them
as background of the ground truth."""


# --------------------------------------------------------------------------------------------- J: region


def _without_void(gt: np.ndarray, pred: np.ndarray, void_pixels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks with the void pixels (ground truth 255 / ignore regions) cleared in both."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    if void_pixels is None:
        return gt, pred
    void_pixels = np.asarray(void_pixels)
    if void_pixels.shape != gt.shape:
        raise InputError(f"void_pixels {void_pixels.shape} and masks {gt.shape} shapes differ")
    keep = ~void_pixels.astype(bool)
    return gt & keep, pred & keep


def db_eval_iou(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None
) -> float | np.ndarray:
    """Region similarity J (Jaccard index) of binary masks, per frame.

    Args:
        annotation: ground-truth mask, [H, W] or [..., H, W]; nonzero = object.
        segmentation: predicted mask, same shape as ``annotation``; nonzero = object.
        void_pixels: optional mask (same shape) of pixels left out of both sets.

    Returns:
        |A ∩ B| / |A ∪ B| over the last two axes: a float for [H, W] inputs, else an array of shape [...].
        Where the union is empty (both masks empty) the score is 1, as in the benchmark.
    """
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise InputError(f"annotation {annotation.shape} and segmentation {segmentation.shape} shapes differ")
    if annotation.ndim < 2:
        raise InputError(f"masks must have at least 2 dimensions [..., H, W], got shape {annotation.shape}")
    gt, pred = _without_void(annotation, segmentation, void_pixels)
    inters = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    j = np.where(union == 0, 1.0, inters / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


# ------------------------------------------------------------------------------------------- F: boundary


def bound_pixels(shape: tuple[int, ...], bound_th: float = 0.008) -> float:
    """Dilation radius of the boundary measure: ``bound_th`` if ``bound_th >= 1``, else
    ``ceil(bound_th * ||shape||)`` with ``shape`` = (H, W); 8.0 for a 480x854 DAVIS frame."""
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm(shape)))


def disk(radius: float) -> np.ndarray:
    """Disk footprint as ``skimage.morphology.disk(radius)`` builds it (the benchmark's structuring element).

    Coordinates run over ``arange(-radius, radius + 1)`` on both axes and a cell is set where
    ``x**2 + y**2 <= radius**2``: an integer radius r gives a (2r+1)x(2r+1) footprint; a non-integer radius
    can give an even-sized one, which is kept (and anchored as OpenCV anchors it, see ``_dilate``).

    Returns:
        bool array [K, K].
    """
    coords = np.arange(-radius, radius + 1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    return (xx**2 + yy**2) <= radius**2


def _dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation equal to ``cv2.dilate(mask.astype(uint8), footprint.astype(uint8)) > 0``.

    OpenCV anchors a [KH, KW] kernel at (KH // 2, KW // 2), reads ``dst[y, x] = OR src[y + i - KH // 2,
    x + j - KW // 2]`` over the kernel's set cells (i, j), and treats pixels outside the image as absent.
    Each footprint row is one run of columns for a disk (any row with gaps is split into runs), so the
    dilation is an OR over rows of a vertically shifted horizontal run dilation, the latter a window count
    on a cumulative sum: O(KH * H * W), with no OpenCV or scipy. Equal to
    ``scipy.ndimage.binary_dilation(mask, footprint, origin=[0 if k % 2 else -1 for k in footprint.shape])``.

    Args:
        mask: bool [H, W].
        footprint: bool [KH, KW].

    Returns:
        bool [H, W].
    """
    out = np.zeros(mask.shape, dtype=bool)
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        return out
    # work on the set pixels' bounding box grown by the kernel size: nothing outside it can be reached
    kh, kw = footprint.shape
    y0, y1 = max(int(ys[0]) - kh, 0), min(int(ys[-1]) + kh + 1, mask.shape[0])
    x0, x1 = max(int(xs[0]) - kw, 0), min(int(xs[-1]) + kw + 1, mask.shape[1])
    out[y0:y1, x0:x1] = _dilate_dense(mask[y0:y1, x0:x1], footprint)
    return out


def _dilate_dense(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``_dilate`` over the whole of ``mask`` (bool [H, W]) with ``footprint`` (bool [KH, KW])."""
    h, w = mask.shape
    kh, kw = footprint.shape
    anchor_y, anchor_x = kh // 2, kw // 2
    out = np.zeros((h, w), dtype=bool)
    # csum[y, pad + k] = number of set pixels in mask[y, :k], k in [0, w]; flat beyond both ends so that
    # windows reaching outside the image are clipped to it
    pad = kw
    csum = np.zeros((h, w + 1 + 2 * pad), dtype=np.int32)
    np.cumsum(mask, axis=1, dtype=np.int32, out=csum[:, pad + 1 : pad + 1 + w])
    csum[:, pad + 1 + w :] = csum[:, pad + w : pad + w + 1]
    runs_done: dict[tuple[int, int], np.ndarray] = {}
    for i in range(kh):
        dy = i - anchor_y
        if abs(dy) >= h:
            continue
        row = np.flatnonzero(footprint[i])
        if row.size == 0:
            continue
        # split the row's set columns into contiguous runs [j0, j1]
        breaks = np.flatnonzero(np.diff(row) > 1)
        starts = np.concatenate((row[:1], row[breaks + 1]))
        ends = np.concatenate((row[breaks], row[-1:]))
        for j0, j1 in zip(starts.tolist(), ends.tolist(), strict=True):
            a, b = j0 - anchor_x, j1 - anchor_x
            hdil = runs_done.get((a, b))
            if hdil is None:
                # hdil[y, x] = any(mask[y, x + a : x + b + 1]) = csum(x + b + 1) - csum(x + a) > 0
                hdil = (csum[:, pad + b + 1 : pad + b + 1 + w] - csum[:, pad + a : pad + a + w]) > 0
                runs_done[(a, b)] = hdil
            # out[y] |= hdil[y + dy]
            if dy >= 0:
                out[: h - dy] |= hdil[dy:]
            else:
                out[-dy:] |= hdil[: h + dy]
    return out


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a binary segmentation, as the benchmark's ``_seg2bmap`` (D. Martin, 2003) computes it.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (neighbours
    outside the image count as background). On the last row only the east neighbour is compared, on the last
    column only the south one, and the bottom-right pixel is never a boundary. The boundary lies 1 pixel
    wide, offset half a pixel towards the origin from the true segment border.

    Args:
        seg: [H, W] mask, nonzero = foreground.

    Returns:
        bool [H, W] boundary map.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise InputError(f"seg2bmap takes one [H, W] mask, got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def f_measure(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> float:
    """Boundary F-measure of one frame, as the benchmark's ``f_measure``.

    Args:
        foreground_mask: predicted mask [H, W], nonzero = object.
        gt_mask: ground-truth mask [H, W], nonzero = object.
        void_pixels: optional [H, W] mask of pixels removed from both masks before their boundaries are taken.
        bound_th: boundary tolerance: a fraction of the image diagonal if < 1, else a radius in pixels.

    Returns:
        F = 2PR / (P + R) where P is the fraction of predicted boundary pixels within ``bound_pix`` (disk) of
        the ground-truth boundary and R the fraction of ground-truth boundary pixels within ``bound_pix`` of
        the predicted boundary. Both boundaries empty -> 1.0; exactly one empty -> 0.0.
    """
    pred = np.asarray(foreground_mask)
    gt = np.asarray(gt_mask)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise InputError(f"f_measure takes two [H, W] masks of one shape, got {pred.shape} and {gt.shape}")
    gt, pred = _without_void(gt, pred, void_pixels)

    bound_pix = bound_pixels(pred.shape, bound_th)
    pred_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))

    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        footprint = disk(bound_pix)
        pred_dil = _dilate(pred_boundary, footprint)
        gt_dil = _dilate(gt_boundary, footprint)
        precision = np.count_nonzero(pred_boundary & gt_dil) / n_pred
        recall = np.count_nonzero(gt_boundary & pred_dil) / n_gt

    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> float | np.ndarray:
    """F-measure per frame of [H, W] or [T, H, W] masks (the benchmark's ``db_eval_boundary``).

    Args:
        annotation: ground truth, [H, W] or [T, H, W].
        segmentation: prediction, same shape.
        void_pixels: optional void mask, same shape.
        bound_th: see ``f_measure``.

    Returns:
        a float for [H, W] inputs, else a float64 array [T].
    """
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise InputError(f"annotation {annotation.shape} and segmentation {segmentation.shape} shapes differ")
    if void_pixels is not None and np.shape(void_pixels) != annotation.shape:
        raise InputError(f"void_pixels {np.shape(void_pixels)} and annotation {annotation.shape} shapes differ")
    if annotation.ndim == 2:
        return f_measure(segmentation, annotation, void_pixels, bound_th=bound_th)
    if annotation.ndim != 3:
        raise InputError(f"db_eval_boundary takes [H, W] or [T, H, W] masks, got shape {annotation.shape}")
    out = np.zeros(annotation.shape[0])
    for t in range(annotation.shape[0]):
        void_t = None if void_pixels is None else np.asarray(void_pixels)[t]
        out[t] = f_measure(segmentation[t], annotation[t], void_t, bound_th=bound_th)
    return out


# ------------------------------------------------------------------------------------------- statistics


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores (the benchmark's ``utils.db_statistics``).

    Args:
        per_frame_values: float [T], T >= 1; NaNs are ignored by the means.

    Returns:
        (mean, recall, decay): recall = fraction of frames scoring strictly above 0.5; decay = mean of the
        first of 4 bins of frames minus mean of the last, the bins' bounds being
        ``round(linspace(1, T, 5)) - 1`` with each bin including its right bound.
    """
    values = np.asarray(per_frame_values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise InputError("db_statistics needs at least one per-frame value")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        n_bins = 4
        ids = (np.round(np.linspace(1, len(values), n_bins + 1) + 1e-10) - 1).astype(np.int64)
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(n_bins)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1]))
    return mean, recall, decay


# --------------------------------------------------------------------------------------- per sequence


def evaluate_sequence(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    object_ids: Iterable[int] | None = None,
    skip_first_and_last: bool = True,
    bound_th: float = 0.008,
) -> dict[int, dict[str, float]]:
    """J and F statistics of every object of one sequence, as the semi-supervised DAVIS benchmark scores it.

    Args:
        pred_labels: predicted label maps [T, H, W] (uint8; 0 = background, k = object k).
        gt_labels: ground-truth label maps [T, H, W] (uint8; 255 = void, counted as background).
        object_ids: objects to score; default ``1..max(gt_labels[0])`` (void excluded) as the benchmark does,
            which then rejects predictions holding a label above that in the evaluated frames.
        skip_first_and_last: leave out frame 0 (the given reference mask) and frame T-1, as the
            semi-supervised benchmark does; both are still used to find the default objects.
        bound_th: see ``f_measure``.

    Returns:
        ``{object_id: {"J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}}`` (floats), in
        ``object_ids`` order.
    """
    pred = np.asarray(pred_labels)
    gt = np.asarray(gt_labels)
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise InputError(f"pred_labels and gt_labels must be [T, H, W] of one shape, got {pred.shape} and {gt.shape}")
    gt = np.where(gt == VOID_LABEL, 0, gt)

    n_objects = int(gt[0].max()) if gt.size else 0
    ids = list(range(1, n_objects + 1)) if object_ids is None else [int(i) for i in object_ids]
    if not ids:
        raise InputError("no object to evaluate: the first ground-truth frame is all background")

    if skip_first_and_last:
        if gt.shape[0] < 3:
            raise InputError(f"skipping the first and last frame needs T >= 3, got T = {gt.shape[0]}")
        pred, gt = pred[1:-1], gt[1:-1]

    if object_ids is None:
        # the benchmark reads only the evaluated frames' predictions and refuses an unknown object there
        max_pred = int(pred.max()) if pred.size else 0
        if max_pred > n_objects:
            raise InputError(
                f"prediction holds label {max_pred} but the first ground-truth frame has {n_objects} objects"
            )

    out: dict[int, dict[str, float]] = {}
    for obj in ids:
        gt_obj = gt == obj
        pred_obj = pred == obj
        j_frames = np.atleast_1d(db_eval_iou(gt_obj, pred_obj))
        f_frames = np.atleast_1d(db_eval_boundary(gt_obj, pred_obj, bound_th=bound_th))
        j_mean, j_recall, j_decay = db_statistics(j_frames)
        f_mean, f_recall, f_decay = db_statistics(f_frames)
        out[obj] = {
            "J-Mean": j_mean,
            "J-Recall": j_recall,
            "J-Decay": j_decay,
            "F-Mean": f_mean,
            "F-Recall": f_recall,
            "F-Decay": f_decay,
        }
    return out


# ------------------------------------------------------------------------------------------ aggregation


def summarize(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, Any]:
    """Benchmark aggregation over sequences (``evaluation_method.py``).

    Args:
        results: ``{sequence_name: evaluate_sequence(...)}``.

    Returns:
        ``{"J&F", "J", "F", "J-Recall", "J-Decay", "F-Recall", "F-Decay": float, "sequences": {name: {"J",
        "F"}}, "objects": {f"{name}_{object_id}": {"J", "F"}}}`` where every global value is a mean over all
        objects of all sequences (a sequence with 3 objects weighs 3 times one with 1), "J&F" = (J + F) / 2,
        a sequence's "J"/"F" is the mean over its objects and "objects" lists the benchmark's per-object
        means (its per-sequence CSV rows).
    """
    keys = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    pooled: dict[str, list[float]] = {k: [] for k in keys}
    sequences: dict[str, dict[str, float]] = {}
    objects: dict[str, dict[str, float]] = {}
    for name, per_object in results.items():
        if not per_object:
            raise InputError(f"sequence {name!r} has no object results")
        for obj, stats in per_object.items():
            for k in keys:
                pooled[k].append(float(stats[k]))
            objects[f"{name}_{obj}"] = {"J": float(stats["J-Mean"]), "F": float(stats["F-Mean"])}
        sequences[name] = {
            "J": float(np.mean([s["J-Mean"] for s in per_object.values()])),
            "F": float(np.mean([s["F-Mean"] for s in per_object.values()])),
        }
    if not sequences:
        raise InputError("summarize needs at least one sequence")
    g = {k: float(np.mean(v)) for k, v in pooled.items()}
    return {
        "J&F": (g["J-Mean"] + g["F-Mean"]) / 2,
        "J": g["J-Mean"],
        "F": g["F-Mean"],
        "J-Recall": g["J-Recall"],
        "J-Decay": g["J-Decay"],
        "F-Recall": g["F-Recall"],
        "F-Decay": g["F-Decay"],
        "sequences": sequences,
        "objects": objects,
    }
