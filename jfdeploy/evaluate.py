"""``jfdeploy eval``: run a backend over a VOS dataset, write the benchmark's mask layout, score it.

Per sequence (``jfdeploy.datasets.Sequence``): frames are read at their size and go through the
``VideoPredictor`` frame loop; test-time augmentation (shorter sides x horizontal flip, the paper's
Table 8) is the predictor's (``RunOptions.sizes`` / ``flip``: one segmenter each, probabilities
averaged at the original size); the argmax is written with the dataset's labels. Objects that
appear on later frames (YouTube-VOS) get their masks on those frames with only their labels valid.
A sequence is written to a temporary folder and moved into place when complete, so an interrupted
evaluation resumes where it stopped (and keeps only complete sequences).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jfdeploy import fsutil
from jfdeploy.errors import JfDeployError
from jfdeploy.predictor import VideoPredictor, predict_frames


def segment_sequence(predictor: VideoPredictor, sequence) -> Iterator[tuple[int, np.ndarray]]:
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


def evaluate_dataset(
    predictor: VideoPredictor,
    sequences: list,
    out_root: Path,
    *,
    write_masks,
    is_complete,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Segment every sequence not yet complete under ``out_root`` (every one if ``overwrite``); return the
    names (re)computed and, by name, the one-line error of each sequence that failed (a corrupt frame, a
    bad annotation: the others still run).

    write_masks(root, sequence, index, labels) -> path written (or None) and is_complete(root, sequence)
    come from ``jfdeploy.datasets`` (they know the layout). Each sequence is written into a staging folder
    and its folder renamed into place when complete (replacing what was there): an interruption keeps
    the sequences already complete, and only those.
    """
    done: list[str] = []
    failed: dict[str, str] = {}
    fsutil.make_dirs(out_root)
    pending = [s for s in sequences if overwrite or not is_complete(out_root, s)]
    for sequence in tqdm(pending, desc="sequences", unit="seq", disable=not progress):
        staging = fsutil.new_staging_dir(out_root)
        try:
            folders = set()
            for index, labels in segment_sequence(predictor, sequence):
                if sequence.save[index]:
                    written = write_masks(staging, sequence, index, labels)
                    if written is not None:
                        folders.add(Path(written).parent)
            for folder in folders:  # the sequence's folder(s), each moved into place in one rename
                target = out_root / folder.relative_to(staging)
                fsutil.make_dirs(target.parent)
                fsutil.commit(folder, target)
        except JfDeployError as error:
            failed[sequence.name] = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"sequence {sequence.name} failed: {failed[sequence.name]}", file=sys.stderr)
            continue
        finally:
            fsutil.discard(staging)
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
