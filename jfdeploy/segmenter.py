"""Segmenter: the frame loop of JointFormer with the published evaluation semantics, at the model's size.

Independent of the backend that executes the model, and of any tensor library: frames, masks and
probabilities are the backend runtime's arrays, every tensor op is a stage. Per frame it decides (as
the published inference core does):

- ``is_memory_frame``: a mask was given, or ``mem_every`` frames passed since the last memory
  frame, and the frame is not the last one;
- ``need_segment``: not the first frame, and the given mask (if any) does not cover every object;
- every frame except the last is encoded as a reference: as a memory frame, or else as the
  temporary reference that the next frames also read (the "previous frame").

Frames come padded to multiples of 16 (the ``preprocess`` stage pads; ``jfdeploy.resample`` says where
the frame sits) and probabilities go out at that size. Frames before the first mask are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jfdeploy.backends import make_backend
from jfdeploy.backends.runtime import Array
from jfdeploy.errors import InputError
from jfdeploy.resample import PAD_MULTIPLE


@dataclass(frozen=True)
class FramePlan:
    """What one frame needs (``Segmenter.plan``): its inputs, padded ``size`` (H, W), ``total_objects`` once
    its masks' new objects join, whether it becomes a memory frame and whether the model segments it."""

    frame: Array
    masks: Array | None
    labels: list[int] | None
    last: bool
    size: tuple[int, int]
    total_objects: int
    is_memory_frame: bool
    need_segment: bool


class Segmenter:
    """Segments a video frame by frame. One Segmenter per video.

    Args:
        model: a loaded JointFormer (``jfdeploy.load_model``) on the device and in the dtype to run;
            None for the engine backends ("onnxruntime", "tensorrt"), which read ``engines=DIR``.
        mem_every: a new memory frame every this many frames.
        max_memory_frames: memory frames kept per object (the first, then FIFO).
        backend: who runs the model: "eager" (the published loop in PyTorch, the reference) or
            "torch" (the exportable stages, key/value cache, objects batched), or "onnxruntime" /
            "tensorrt" (the same stages as exported engines).
        backend_options: passed to the backend, e.g. ``autocast=torch.float16`` or
            ``attention="triton"`` for "torch", ``engines=DIR`` for "onnxruntime" / "tensorrt".
    """

    def __init__(
        self,
        model: Any,
        *,
        mem_every: int = 5,
        max_memory_frames: int = 3,
        backend: str = "eager",
        **backend_options: Any,
    ) -> None:
        if mem_every < 1:
            raise InputError(f"mem_every must be >= 1, got {mem_every}")
        if max_memory_frames < 1:
            raise InputError(f"max_memory_frames must be >= 1, got {max_memory_frames}")
        self.mem_every = mem_every
        self.max_memory_frames = max_memory_frames
        self.backend = make_backend(backend, model, max_memory_frames=max_memory_frames, **backend_options)
        self.reset()

    def reset(self) -> None:
        """Forget the objects and the memory (a new video); the backend's weights and engines stay loaded."""
        self.backend.reset()
        self.time = -1  # index of the current frame, counted from the first mask
        self.last_memory_time = 0
        self.finished = False

    @property
    def num_objects(self) -> int:
        """Objects tracked so far (the backend owns the count: one memory token per object)."""
        return self.backend.num_objects

    @property
    def runtime(self):
        """The backend's stage runtime: frames and masks must be its arrays."""
        return self.backend.runtime

    def _check(self, frame: Array, masks: Array | None, labels: list[int] | None) -> tuple[int, int]:
        shape = self.runtime.shape(frame)
        if len(shape) != 4 or shape[:2] != (1, 3) or shape[2] % PAD_MULTIPLE or shape[3] % PAD_MULTIPLE:
            raise InputError(f"frame must be 1 x 3 x H x W with H, W multiples of {PAD_MULTIPLE}, got {shape}")
        height, width = shape[2:]
        if masks is None:
            return height, width
        mask_shape = self.runtime.shape(masks)
        if len(mask_shape) != 3 or mask_shape[1:] != (height, width):
            raise InputError(f"masks must be objects x {height} x {width}, got {mask_shape}")
        rows = mask_shape[0]
        if rows < max(self.num_objects, 1):
            raise InputError(
                f"masks have {rows} object rows; they must hold all {max(self.num_objects, 1)} objects so far"
            )
        if labels is not None:
            bad = [label for label in labels if not 1 <= label <= rows]
            if bad or not labels:
                raise InputError(f"labels must be 1-based rows of the masks (1..{rows}), got {labels}")
            missing_new = [r + 1 for r in range(self.num_objects, rows) if r + 1 not in labels]
            if missing_new:
                raise InputError(f"new objects {missing_new} must be among the valid labels {labels}")
        return height, width

    def plan(
        self,
        frame: Array,
        masks: Array | None = None,
        labels: Sequence[int] | None = None,
        last: bool = False,
    ) -> FramePlan | None:
        """Check one frame and decide what it needs (the frame counter advances); None before the first
        mask (nothing to track: the frame is all background). Arguments as ``step``; the model runs on
        ``plan.frame`` (``backend.segment``, alone or batched with other videos' frames) only where
        ``plan.need_segment``, then ``complete`` finishes the frame."""
        if self.finished:
            raise InputError("step() after the last frame: reset() (or a new Segmenter) for a new video")
        label_list = None if labels is None else [int(label) for label in labels]
        height, width = self._check(frame, masks, label_list)
        if masks is None and self.num_objects == 0:
            return None
        self.backend.check_frame_size(height, width)
        self.finished = last
        self.time += 1
        total_objects = self.runtime.shape(masks)[0] if masks is not None else self.num_objects
        return FramePlan(
            frame=frame,
            masks=masks,
            labels=label_list,
            last=last,
            size=(height, width),
            total_objects=total_objects,
            is_memory_frame=(self.time - self.last_memory_time >= self.mem_every or masks is not None) and not last,
            need_segment=self.time > 0 and (label_list is None or len(label_list) != total_objects),
        )

    def complete(self, plan: FramePlan, logits: Array | None) -> Array:
        """The frame's probabilities from the model's ``logits`` (O x 1 x H x W; None where the plan needs
        no segmentation) and the given masks; new objects join and the frame is memorized."""
        runtime, backend = self.runtime, self.backend
        height, width = plan.size
        prob = object_prob = None  # (1+O) x H x W; O x H x W in the model's float type
        if plan.need_segment:
            assert logits is not None
            prob, object_prob = runtime.run("aggregate", logits)
        if plan.masks is not None:
            keep = np.zeros(self.num_objects if prob is not None else 0, np.bool_)  # rows that keep the prediction
            if plan.labels is not None:
                keep[:] = [row + 1 not in plan.labels for row in range(keep.shape[0])]
            if prob is None:
                prob = runtime.zeros((1, height, width), runtime.loop_float)  # nothing predicted
            prob, object_prob = runtime.run("merge_masks", prob, plan.masks, runtime.upload(keep))
            backend.add_objects(plan.total_objects - self.num_objects, (height // 16) * (width // 16))
        assert prob is not None and object_prob is not None
        if not plan.last:
            backend.memorize(plan.frame, object_prob, permanent=plan.is_memory_frame, time=self.time)
            if plan.is_memory_frame:
                self.last_memory_time = self.time
        return prob

    def step(
        self,
        frame: Array,
        masks: Array | None = None,
        labels: Sequence[int] | None = None,
        last: bool = False,
    ) -> Array | None:
        """Segment one frame.

        Args:
            frame: 1 x 3 x H x W, normalized and padded (the ``preprocess`` stage's output).
            masks: objects_so_far x H x W (new objects appended as rows; ``label_masks``), or None.
            labels: 1-based rows of ``masks`` that are valid (None: all rows); the other rows are
                taken from the prediction.
            last: the last frame of the video (not memorized).

        Returns:
            (1 + objects) x H x W probabilities, background first; None before the first mask (nothing
            to track yet: the frame is all background).
        """
        plan = self.plan(frame, masks, labels, last)
        if plan is None:
            return None
        return self.complete(plan, self.backend.segment(frame) if plan.need_segment else None)
