"""Segment a whole video: frames in, palette PNG masks (and an optional overlay video) out.

What ``jfdeploy run``, ``demo`` and ``run-many`` do per video: the first mask checked against the
frames, the frame loop of ``jfdeploy.predictor`` (resize, model, argmax to the mask's own labels at
the original size), one palette PNG per frame, written atomically (a failure leaves no partial folder).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jfdeploy.errors import InputError
from jfdeploy.fsutil import atomic_directory, make_dirs
from jfdeploy.io import OverlayWriter, read_label_png, write_label_png
from jfdeploy.io.video import FrameSource
from jfdeploy.predictor import RunOptions, VideoPredictor, predict_frames


@dataclass(frozen=True)
class RunSummary:
    frames: int
    object_ids: list[int]
    seconds: float  # predictor steps (resizing, model, argmax), without reading/writing files
    dropped: int = 0  # frames a real-time live source skipped because the model fell behind

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def read_first_mask(path: str | os.PathLike, frame_size: tuple[int, int], max_objects: int):
    """The first frame's label PNG -> (labels HxW uint8, object ids, palette); checked against the video."""
    labels, palette = read_label_png(path)
    if labels.shape != tuple(frame_size):
        raise InputError(
            f"mask {path} is {labels.shape[0]}x{labels.shape[1]}, frames are {frame_size[0]}x{frame_size[1]}"
        )
    object_ids = [int(v) for v in np.unique(labels) if v != 0]
    if not object_ids:
        raise InputError(f"mask {path} is empty: it labels no object (all pixels are 0)")
    if len(object_ids) > max_objects:
        raise InputError(f"mask {path} has {len(object_ids)} objects, more than the limit of {max_objects}")
    return labels, object_ids, palette


def read_prompts(path: str | os.PathLike, source: FrameSource, max_objects: int):
    """The masks given for a video -> ({frame index: labels H x W uint8}, object ids, palette).

    ``path``: the first frame's label PNG, or a folder of label PNGs named as frames (``00000.png``,
    ``00012.png``, ...): each starts the objects new on its frame and corrects the known ones it shows.
    """
    path = Path(path)
    if not path.is_dir():
        labels, object_ids, palette = read_first_mask(path, source.size, max_objects)
        return {0: labels}, object_ids, palette
    files = sorted(path.glob("*.png"))
    if not files:
        raise InputError(f"mask folder {path} holds no .png masks")
    index_of = {name: i for i, name in enumerate(source.names)} if source.names and not source.live else None
    prompts, object_ids, palette = {}, [], None
    for file in files:
        index = index_of.get(file.stem) if index_of is not None else (int(file.stem) if file.stem.isdigit() else None)
        if index is None:
            expected = f"named like {source.names[0]!r}" if index_of else "numbered from 0"
            raise InputError(f"mask {file} names no frame of the video (frames are {expected})")
        labels, ids, file_palette = read_first_mask(file, source.size, max_objects)
        prompts[index] = labels
        palette = palette if palette is not None else file_palette
        object_ids += [i for i in ids if i not in object_ids]
    if len(object_ids) > max_objects:
        raise InputError(f"the masks in {path} have {len(object_ids)} objects, more than the limit of {max_objects}")
    return dict(sorted(prompts.items())), sorted(object_ids), palette


def segment_video(
    model: Any,
    source: FrameSource,
    first_mask: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    options: RunOptions | None = None,
    overlay: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    predictor: VideoPredictor | None = None,
) -> RunSummary:
    """Segment every frame of ``source`` from the objects of ``first_mask`` into ``out_dir``/NAME.png.

    ``first_mask``: the first frame's label PNG, or a folder of label PNGs named as frames (objects may
    start on later frames; see ``read_prompts``).

    A file or folder source is written atomically (``out_dir`` appears complete, or not at all); a live
    source (camera, stream) writes each mask into ``out_dir`` as its frame comes, so an interrupt keeps
    every mask written so far. ``predictor``: one already loaded (it is reset first), else one is made
    from ``model`` and ``options``.
    """
    if predictor is None:
        predictor = VideoPredictor(model, options or RunOptions())
    else:
        predictor.reset()
    prompts, object_ids, palette = read_prompts(first_mask, source, predictor.options.max_objects)
    frame_count, live = source.frame_count, source.live
    out_dir = Path(out_dir)
    seconds, frames = 0.0, 0
    with contextlib.ExitStack() as stack:
        if live:
            if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
                raise InputError(f"output {out_dir} exists and is not empty (a live source writes masks as they come)")
            folder = make_dirs(out_dir)
        else:
            folder = stack.enter_context(atomic_directory(out_dir, overwrite=overwrite))
        writer = stack.enter_context(OverlayWriter(overlay, source.fps, source.size)) if overlay else None
        bar = stack.enter_context(tqdm(total=frame_count, unit="frame", disable=not progress, desc="segmenting"))
        for result in predict_frames(predictor, source, prompts, frame_count=frame_count):
            seconds += result.seconds
            frames += 1
            write_label_png(folder / f"{result.name}.png", result.labels, palette)
            if writer is not None:
                writer.write(result.rgb, result.labels)
            bar.update()
            bar.set_postfix(fps=f"{frames / seconds:.2f}")
    return RunSummary(frames=frames, object_ids=object_ids, seconds=seconds, dropped=source.dropped)
