"""Segment a whole video: frames in, palette PNG masks (and an optional overlay video) out.

What ``jfdeploy run`` and ``jfdeploy demo`` do, as a function: resize (shorter side, like the
published evaluation), ImageNet normalization, the Segmenter loop, resize back to the original
size, argmax to the mask's own labels, atomic output (a failure leaves no partial folder).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jfdeploy.errors import InputError
from jfdeploy.fsutil import atomic_directory, raise_if_interrupted
from jfdeploy.io import (
    OverlayWriter,
    labels_to_masks,
    masks_to_labels,
    read_label_png,
    resize_labels_nearest,
    resize_prob,
    resize_shorter_side,
    to_model_input,
    write_label_png,
)
from jfdeploy.io.video import FrameSource
from jfdeploy.model import JointFormer
from jfdeploy.segmenter import Segmenter

AUTOCAST = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RunOptions:
    mem_every: int = 5
    max_memory_frames: int = 3
    backend: str = "torch"
    size: int | None = 480  # shorter side fed to the model; None or <= 0: original size
    max_objects: int = 20
    autocast: str = "none"  # torch backend: none / fp16 / bf16
    attention: str = "torch"  # torch backend: top-k attention by PyTorch ops or the Triton kernel
    engines: Path | None = None  # onnxruntime / tensorrt backends: the engine directory
    device: str | None = None  # onnxruntime / tensorrt backends: where the stages run


@dataclass(frozen=True)
class RunSummary:
    frames: int
    object_ids: list[int]
    seconds: float  # model steps and resizing, without reading/writing files

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


def segment_video(
    model: JointFormer | None,
    source: FrameSource,
    first_mask: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    options: RunOptions = RunOptions(),
    overlay: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Segment every frame of ``source`` from the objects of ``first_mask`` into ``out_dir``/NAME.png."""
    if options.autocast not in AUTOCAST:
        raise InputError(f"autocast must be one of {', '.join(AUTOCAST)}, got {options.autocast!r}")
    first_labels, object_ids, palette = read_first_mask(first_mask, source.size, options.max_objects)
    backend_options = {}
    for name, value, default in (("autocast", options.autocast, "none"), ("attention", options.attention, "torch")):
        if value != default and options.backend != "torch":
            raise InputError(f"{name}={value!r} applies to backend 'torch' only, not {options.backend!r}")
    if options.autocast != "none":
        backend_options["autocast"] = AUTOCAST[options.autocast]
    if options.attention != "torch":
        backend_options["attention"] = options.attention
    if options.engines is not None:
        backend_options.update(engines=options.engines, device=options.device)
    seg = Segmenter(
        model,
        mem_every=options.mem_every,
        max_memory_frames=options.max_memory_frames,
        backend=options.backend,
        **backend_options,
    )
    dtype, device = seg.backend.dtype, seg.backend.device
    original_size = source.size
    out_dir = Path(out_dir)
    seconds = 0.0
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(atomic_directory(out_dir, overwrite=overwrite))
        writer = stack.enter_context(OverlayWriter(overlay, source.fps, original_size)) if overlay else None
        bar = stack.enter_context(tqdm(total=len(source), unit="frame", disable=not progress, desc="segmenting"))
        for index, (name, rgb) in enumerate(source):
            raise_if_interrupted()  # stop at once even if a library swallowed the interrupt
            resized = resize_shorter_side(rgb, options.size)
            frame = to_model_input(resized, dtype=dtype, device=device)
            mask = None
            if index == 0:
                small = resize_labels_nearest(first_labels, resized.shape[:2])
                mask = torch.from_numpy(labels_to_masks(small, object_ids)).to(device, dtype)
            start = time.perf_counter()
            prob = seg.step(frame, mask=mask, last=index == len(source) - 1)
            prob = resize_prob(prob, original_size) if resized.shape[:2] != original_size else prob
            labels = masks_to_labels(prob, object_ids)
            seconds += time.perf_counter() - start
            write_label_png(staging / f"{name}.png", labels, palette)
            if writer is not None:
                writer.write(rgb, labels)
            bar.update()
            bar.set_postfix(fps=f"{(index + 1) / seconds:.2f}")
    return RunSummary(frames=len(source), object_ids=object_ids, seconds=seconds)
