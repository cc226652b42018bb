"""Scores of mask folders: J&F as the DAVIS benchmark computes it, YouTube-VOS seen / unseen.

``jfdeploy compare`` and ``jfdeploy eval`` use these; the per-frame metrics are ``jfdeploy.metrics``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy.datasets import list_folder_images, quote_names, require_dir
from jfdeploy.errors import InputError
from jfdeploy.io.masks import read_label_png
from jfdeploy.io.video import natural_key
from jfdeploy.metrics import VOID_LABEL, db_eval_iou, evaluate_sequence, f_measure, summarize


def _stack_masks(files: list[Path], size: tuple[int, int] | None, binary: bool) -> np.ndarray:
    """uint8 [T, H, W] of label PNGs, all of one size (``size`` or the first file's)."""
    arrays = []
    for file in files:
        labels, _ = read_label_png(file)
        if size is None:
            size = labels.shape
        if labels.shape != tuple(size):
            raise InputError(f"{file}: mask is {labels.shape[0]}x{labels.shape[1]}, expected {size[0]}x{size[1]}")
        arrays.append((labels > 0).astype(np.uint8) if binary else labels)
    return np.stack(arrays)


def _evaluate_folder(pred_dir: Path, gt_dir: Path, binary: bool) -> dict[int, dict[str, float]]:
    """Per-object statistics of one sequence folder of predictions against its ground-truth folder."""
    gt_files = list_folder_images(gt_dir, (".png",))
    if not pred_dir.is_dir():
        raise InputError(f"prediction folder not found: {pred_dir}")
    pred_files = [pred_dir / f"{f.stem}.png" for f in gt_files]
    missing = [f.name for f in pred_files if not f.is_file()]
    if missing:
        raise InputError(f"{pred_dir}: missing prediction frame(s) {quote_names(missing)}")
    gt = _stack_masks(gt_files, None, binary)
    first = set(np.unique(gt[0]).tolist())
    if not binary and first == {0, VOID_LABEL}:
        raise InputError(
            f"{gt_files[0]}: ground truth is a 0/255 mask (255 is void to DAVIS 2017): for DAVIS 2016 pass binary=True"
        )
    pred = _stack_masks(pred_files, gt.shape[1:], binary)
    return evaluate_sequence(pred, gt)


def compare_folders(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    sequences: list[str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:
    """J&F of a DAVIS-layout results folder against ground truth, as davis2017-evaluation scores it.

    Layout: ``pred_root/<seq>/<frame>.png`` and ``gt_root/<seq>/<frame>.png`` (e.g. ``gt_root`` =
    ``DAVIS/Annotations/480p``); palette, grayscale or DAVIS-coloured PNGs. Every ground-truth frame must
    have its prediction (extra predictions are ignored); the first and the last frame are not scored.
    Two folders holding the PNGs themselves (e.g. two ``jfdeploy run`` outputs) are one sequence, named
    after ``pred_root``.

    Args:
        pred_root: the predictions.
        gt_root: the ground truth.
        sequences: the sequences to score (e.g. the val image set); default: every sub-folder of
            ``pred_root`` holding PNGs (each must have its ground truth).
        binary: DAVIS 2016: every nonzero label of both folders is the one object.

    Returns:
        ``jfdeploy.metrics.summarize`` of the sequences: ``{"J&F", "J", "F", "J-Recall", "J-Decay",
        "F-Recall", "F-Decay", "sequences": {name: {"J", "F"}}, "objects": {f"{name}_{id}": {"J", "F"}}}``.

    Raises:
        InputError: missing folders, sequences or prediction frames (named), masks of different sizes,
            predicted labels that the ground truth does not have.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    require_dir(pred_root, "predictions folder")
    require_dir(gt_root, "ground-truth folder")
    flat_pred, flat_gt = any(pred_root.glob("*.png")), any(gt_root.glob("*.png"))
    if sequences is None and (flat_pred or flat_gt):
        if not (flat_pred and flat_gt):
            flat, nested = (pred_root, gt_root) if flat_pred else (gt_root, pred_root)
            raise InputError(
                f"{flat} holds PNG masks but {nested} does not: give two folders of masks, or two folders "
                "of sequence folders (DAVIS layout)"
            )
        return summarize({pred_root.resolve().name: _evaluate_folder(pred_root, gt_root, binary)})
    if sequences is None:
        sequences = sorted(
            (d.name for d in pred_root.iterdir() if d.is_dir() and any(d.glob("*.png"))), key=natural_key
        )
        if not sequences:
            raise InputError(f"{pred_root}: no sequence folder of PNG masks found")
    missing = [s for s in sequences if not (gt_root / s).is_dir()]
    if missing:
        raise InputError(f"{gt_root}: no ground truth for sequence(s) {quote_names(missing)}")
    results = {name: _evaluate_folder(pred_root / name, gt_root / name, binary) for name in sequences}
    return summarize(results)


def read_categories(path: str | os.PathLike[str]) -> set[str]:
    """Category names from a text file (one per line) or a YouTube-VOS meta.json (every object's category)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"category file not found: {path}")
    if path.suffix.lower() != ".json":
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    try:
        videos = json.loads(path.read_text())["videos"]
        return {obj["category"] for video in videos.values() for obj in video["objects"].values()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a YouTube-VOS meta.json ({exc})") from exc


def compare_youtube(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    seen_categories: set[str],
) -> dict[str, Any]:
    """YouTube-VOS scores with the seen / unseen split: J and F per object, then means per group.

    Layout: ``<root>/<vid>/<frame>.png`` for predictions and ground truth (e.g. the ``Annotations``
    folders); ``meta`` is the split's meta.json (objects, their categories and scored frames).
    Each object is scored on its meta.json frames except the first (where its mask was given).
    ``seen_categories``: the categories of the training set (``read_categories``). Returns
    ``{"G": mean of the four, "J_seen", "F_seen", "J_unseen", "F_unseen", "objects": {f"{vid}_{id}": ...}}``;
    a group with no object is reported as None and left out of G.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    videos = _youtube_meta_objects(Path(meta))
    per_object: dict[str, dict[str, Any]] = {}
    for vid, objects in videos.items():
        for obj_id, (category, frames) in objects.items():
            scored = frames[1:]
            if not scored:
                continue
            j_values: list[float] = []
            f_values: list[float] = []
            for frame in scored:
                gt_file, pred_file = gt_root / vid / f"{frame}.png", pred_root / vid / f"{frame}.png"
                for file in (gt_file, pred_file):
                    if not file.is_file():
                        raise InputError(f"missing mask {file}")
                gt, _ = read_label_png(gt_file)
                pred, _ = read_label_png(pred_file)
                if pred.shape != gt.shape:
                    raise InputError(f"{pred_file}: mask is {pred.shape}, ground truth {gt.shape}")
                j_values.append(float(db_eval_iou(gt == obj_id, pred == obj_id)))  # H x W masks: one float
                f_values.append(f_measure(pred == obj_id, gt == obj_id))
            per_object[f"{vid}_{obj_id}"] = {
                "category": category,
                "seen": category in seen_categories,
                "J": float(np.mean(j_values)),
                "F": float(np.mean(f_values)),
            }
    groups: dict[str, float | None] = {}
    for seen, label in ((True, "seen"), (False, "unseen")):
        members = [o for o in per_object.values() if o["seen"] == seen]
        for metric in ("J", "F"):
            groups[f"{metric}_{label}"] = float(np.mean([o[metric] for o in members])) if members else None
    present = [v for v in groups.values() if v is not None]
    return {"G": float(np.mean(present)) if present else None, **groups, "objects": per_object}


def _youtube_meta_objects(meta: Path) -> dict[str, dict[int, tuple[str, list[str]]]]:
    """vid -> object id -> (category, sorted frame names) from a YouTube-VOS meta.json."""
    if not meta.is_file():
        raise InputError(f"meta.json not found: {meta}")
    try:
        videos = json.loads(meta.read_text())["videos"]
        return {
            vid: {
                int(obj_id): (obj["category"], sorted(obj["frames"], key=natural_key))
                for obj_id, obj in video["objects"].items()
            }
            for vid, video in sorted(videos.items())
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{meta}: not a YouTube-VOS meta.json ({exc})") from exc
