"""``jfdeploy eval``: run a backend over a VOS dataset, write the benchmark's mask layout, score it.

Per sequence (``jfdeploy.datasets.Sequence``): frames are read at their size, each test-time
augmentation (shorter-side scale x horizontal flip, the paper's Table 8) runs its own Segmenter,
the probabilities are mapped back (unflipped, resized to the original size) and averaged, and the
argmax is written with the dataset's labels. Objects that appear on later frames (YouTube-VOS) get
their masks on those frames with only their labels valid. A sequence is written to a temporary
folder and moved into place when complete, so an interrupted evaluation resumes where it stopped
(and keeps only complete sequences).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from jfdeploy import fsutil
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
    overwrite: bool = False,
) -> list[str]:
    """Segment every sequence not yet complete under ``out_root`` (every one if ``overwrite``); return the
    names (re)computed.

    write_masks(root, sequence, index, labels) -> path written (or None) and is_complete(root, sequence)
    come from ``jfdeploy.datasets`` (they know the layout). Each sequence is written into a staging folder
    and its folder renamed into place when complete (replacing what was there): an interruption keeps
    the sequences already complete, and only those.
    """
    done = []
    fsutil.make_dirs(out_root)
    pending = [s for s in sequences if overwrite or not is_complete(out_root, s)]
    for sequence in tqdm(pending, desc="sequences", unit="seq", disable=not progress):
        staging = fsutil.new_staging_dir(out_root)
        try:
            folders = set()
            for index, labels in segment_sequence(model, sequence, options):
                fsutil.raise_if_interrupted()  # stop at once even if a library swallowed the interrupt
                if sequence.save[index]:
                    written = write_masks(staging, sequence, index, labels)
                    if written is not None:
                        folders.add(Path(written).parent)
            for folder in folders:  # the sequence's folder(s), each moved into place in one rename
                target = out_root / folder.relative_to(staging)
                fsutil.make_dirs(target.parent)
                fsutil.commit(folder, target)
        finally:
            fsutil.discard(staging)
        done.append(sequence.name)
    return done


def write_scores(summary: dict[str, Any], out_dir: Path) -> None:
    """per-sequence CSV (J, F, J&F) and summary JSON, as the DAVIS benchmark reports them."""
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["sequence", "J", "F", "J&F"])
    for name, scores in sorted(summary["sequences"].items()):
        writer.writerow([name, f"{scores['J']:.4f}", f"{scores['F']:.4f}", f"{(scores['J'] + scores['F']) / 2:.4f}"])
    fsutil.write_text_atomic(out_dir / "per_sequence.csv", table.getvalue())
    fsutil.write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def check_scales(scales: Sequence[int]) -> tuple[int | None, ...]:
    if any(s < 0 for s in scales):
        raise InputError(f"scales must be shorter sides >= 0 (0 = original size), got {list(scales)}")
    return tuple(s or None for s in scales)
