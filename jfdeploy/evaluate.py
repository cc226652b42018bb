"""``jfdeploy eval``: run a backend over a VOS dataset, write the benchmark's mask layout, score it.

Per sequence (``jfdeploy.datasets.Sequence``): frames are read at their size and go through the
``VideoPredictor`` frame loop; test-time augmentation (shorter sides x horizontal flip, the paper's
Table 8) is the predictor's (``RunOptions.sizes`` / ``flip``: one segmenter each, probabilities
averaged at the original size); the argmax is written with the dataset's labels. Objects that
appear on later frames (YouTube-VOS) get their masks on those frames with only their labels valid.
A sequence is written to a staging folder next to its own and renamed into place when complete
(``evaluate_sequence``), so an interrupted evaluation resumes where it stopped (and keeps only complete
sequences). ``evaluate_dataset`` runs the sequences in this process; ``jfdeploy eval --workers N``
runs them on ``jfdeploy.batch``'s pool of workers (``SequenceJob``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jfdeploy import datasets, fsutil
from jfdeploy.datasets import Sequence
from jfdeploy.errors import JfDeployError
from jfdeploy.predictor import VideoPredictor, predict_frames


def segment_sequence(predictor: VideoPredictor, sequence: Sequence) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, labels uint8 H x W at the original size) for every frame of ``sequence`` from
    its first annotation on. A later annotation starts the objects new on it (its other labels are not
    taken as corrections: the published evaluation gives only new objects on later frames)."""
    predictor.reset()
    known: set[int] = set()

    def prompt(index: int) -> np.ndarray | None:
        if index not in sequence.annotations:
            return None
        annotation = sequence.load_annotation(index)
        new = [obj for obj in sequence.object_ids if obj not in known and (annotation == obj).any()]
        known.update(new)
        return np.where(np.isin(annotation, new), annotation, 0).astype(np.uint8) if new else None

    frames = ((str(index), sequence.read_frame(index)) for index in range(len(sequence.frames)))
    for result in predict_frames(predictor, frames, prompt, frame_count=len(sequence.frames)):
        if result.object_ids:  # frames before the first annotation have nothing to segment
            yield result.index, result.labels


def evaluate_sequence(predictor: VideoPredictor, sequence: Sequence, out_root: str | os.PathLike) -> int:
    """Segment ``sequence`` and write its masks (the frames the benchmark saves) into its folder under
    ``out_root`` (``datasets.sequence_folder``), replacing what was there; return the frames segmented.

    The masks go to a staging folder next to the sequence's folder (``.NAME.partial-*``), renamed onto it
    when every frame is written: the folder is complete or absent, never half-written. On any error
    (JfDeployError for a corrupt frame or annotation) the staging folder is removed and the old folder
    stays as it was.
    """
    frames = 0
    # a registered staging folder (fsutil.new_staging_dir), committed when the block ends, discarded on an error
    with fsutil.atomic_directory(datasets.sequence_folder(out_root, sequence), overwrite=True) as staging:
        for index, labels in segment_sequence(predictor, sequence):
            frames += 1
            if sequence.save[index]:
                datasets.write_frame_mask(staging, sequence, index, labels)
    return frames


def evaluate_dataset(
    predictor: VideoPredictor,
    sequences: list[Sequence],
    out_root: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Segment, in this process, every sequence not yet complete under ``out_root`` (every one if
    ``overwrite``) with ``evaluate_sequence``; return the names (re)computed and, by name, the one-line
    error of each sequence that failed (a corrupt frame, a bad annotation: the others still run).

    An interruption keeps the sequences already complete, and only those (``datasets.sequence_complete``
    tells them on the next run). ``jfdeploy.batch.run_many`` with ``SequenceJob``s does the same on a
    pool of workers.
    """
    done: list[str] = []
    failed: dict[str, str] = {}
    fsutil.make_dirs(out_root)
    pending = [s for s in sequences if overwrite or not datasets.sequence_complete(out_root, s)]
    for sequence in tqdm(pending, desc="sequences", unit="seq", disable=not progress):
        try:
            evaluate_sequence(predictor, sequence, out_root)
        except JfDeployError as error:
            failed[sequence.name] = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"sequence {sequence.name} failed: {failed[sequence.name]}", file=sys.stderr)
            continue
        done.append(sequence.name)
    return done, failed


def write_scores(summary: dict[str, Any], out_dir: Path) -> None:
    """per-sequence CSV (J, F, J&F) and summary JSON, as the DAVIS benchmark reports them."""
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["sequence", "J", "F", "J&F"])
    for name, scores in sorted(summary["sequences"].items()):
        writer.writerow([name, f"{scores['J']:.4f}", f"{scores['F']:.4f}", f"{(scores['J'] + scores['F']) / 2:.4f}"])
    fsutil.write_text_atomic(out_dir / "per_sequence.csv", table.getvalue())
    fsutil.write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
