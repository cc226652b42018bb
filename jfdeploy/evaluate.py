"""``jfdeploy eval``: run a backend over a VOS dataset, write the benchmark's mask layout, score it.

Per sequence (``jfdeploy.datasets.Sequence``): frames are read at their size, each test-time
augmentation (shorter-side scale x horizontal flip, the paper's Table 8) runs its own Segmenter,
the probabilities are mapped back (unflipped, resized to the original size) and averaged, and the
argmax is written with the dataset's labels. Objects that appear on later frames (YouTube-VOS) get
their masks on those frames with only their labels valid. A sequence is written to a temporary
folder and moved into place when complete, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from jfdeploy.errors import InputError
from jfdeploy.io import (
    masks_to_labels,
    resize_labels_nearest,
    resize_prob,
    resize_shorter_side,
    to_model_input,
)
from jfdeploy.segmenter import Segmenter


@dataclass(frozen=True)
class EvalOptions:
    mem_every: int = 5
    max_memory_frames: int = 3
    backend: str = "torch"
    backend_options: tuple[tuple[str, Any], ...] = ()  # e.g. (("engines", "engines/"),)
    scales: tuple[int | None, ...] = (480,)  # shorter sides; None = the original size
    flip: bool = False  # also run horizontally flipped frames and average

    @property
    def augmentations(self) -> list[tuple[int | None, bool]]:
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]


def _augment(rgb: np.ndarray, scale: int | None, flipped: bool) -> np.ndarray:
    image = resize_shorter_side(rgb, scale)
    return np.ascontiguousarray(image[:, ::-1]) if flipped else image


def segment_sequence(model, sequence, options: EvalOptions) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, labels uint8 H x W at the original size) for every frame of ``sequence``."""
    augmentations = options.augmentations
    segmenters = [
        Segmenter(model, mem_every=options.mem_every, max_memory_frames=options.max_memory_frames,
                  backend=options.backend, **dict(options.backend_options))
        for _ in augmentations
    ]  # fmt: skip
    dtype, device = segmenters[0].backend.dtype, segmenters[0].backend.device
    known: list[int] = []  # object ids introduced so far, in order: row i of the masks is known[i]
    last = len(sequence.frames) - 1
    for index in range(len(sequence.frames)):
        rgb = sequence.read_frame(index)
        annotation, new_rows = None, None
        if index in sequence.annotations:
            annotation = sequence.load_annotation(index)
            new = [obj for obj in sequence.object_ids if obj not in known and (annotation == obj).any()]
            new_rows = list(range(len(known) + 1, len(known) + len(new) + 1))  # 1-based rows of the new objects
            known += new
            if not new:
                annotation = None
        if not known:
            continue  # frames before the first annotation: nothing to segment yet
        total = None
        for (scale, flipped), seg in zip(augmentations, segmenters, strict=True):
            image = _augment(rgb, scale, flipped)
            mask = labels_valid = None
            if annotation is not None:
                small = resize_labels_nearest(annotation, image.shape[:2])
                small = small[:, ::-1] if flipped else small
                mask = torch.from_numpy(np.stack([small == obj for obj in known]).astype(np.float32)).to(device, dtype)
                labels_valid = None if len(new_rows) == len(known) else new_rows
            frame = to_model_input(image, dtype=dtype, device=device)
            prob = seg.step(frame, mask=mask, labels=labels_valid, last=index == last)
            prob = (prob.flip(-1) if flipped else prob).float().cpu()
            prob = resize_prob(prob, rgb.shape[:2]) if prob.shape[-2:] != rgb.shape[:2] else prob
            total = prob if total is None else total + prob
        yield index, masks_to_labels(total / len(augmentations), known)


def evaluate_dataset(
    model,
    sequences: list,
    out_root: Path,
    *,
    options: EvalOptions,
    write_masks,
    is_complete,
    progress: bool = True,
) -> list[str]:
    """Segment every sequence not yet complete under ``out_root``; return the names (re)computed.

    write_masks(root, sequence, index, labels) and is_complete(root, sequence) come from
    ``jfdeploy.datasets`` (they know the layout).
    """
    done = []
    out_root.mkdir(parents=True, exist_ok=True)
    pending = [s for s in sequences if not is_complete(out_root, s)]
    for sequence in tqdm(pending, desc="sequences", unit="seq", disable=not progress):
        staging = Path(tempfile.mkdtemp(dir=out_root.parent, prefix=f".{out_root.name}.partial-"))
        try:
            for index, labels in segment_sequence(model, sequence, options):
                if sequence.save[index]:
                    write_masks(staging, sequence, index, labels)
            for source in staging.rglob("*.png"):  # move the complete sequence into place
                target = out_root / source.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        done.append(sequence.name)
    return done


def write_scores(summary: dict[str, Any], out_dir: Path) -> None:
    """per-sequence CSV (J, F, J&F) and summary JSON, as the DAVIS benchmark reports them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_sequence.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence", "J", "F", "J&F"])
        for name, scores in sorted(summary["sequences"].items()):
            writer.writerow(
                [name, f"{scores['J']:.4f}", f"{scores['F']:.4f}", f"{(scores['J'] + scores['F']) / 2:.4f}"]
            )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def check_scales(scales: Sequence[int]) -> tuple[int | None, ...]:
    if any(s < 0 for s in scales):
        raise InputError(f"scales must be shorter sides >= 0 (0 = original size), got {list(scales)}")
    return tuple(s or None for s in scales)
