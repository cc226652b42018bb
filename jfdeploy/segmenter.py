"""Segmenter: the frame loop of JointFormer with the published evaluation semantics.

Independent of the backend that executes the model. Per frame it decides (as the published
inference core does):

- ``is_memory_frame``: a mask was given, or ``mem_every`` frames passed since the last memory
  frame, and the frame is not the last one;
- ``need_segment``: not the first frame, and the given mask (if any) does not cover every object;
- every frame except the last is encoded as a reference: as a memory frame, or else as the
  temporary reference that the next frames also read (the "previous frame").

Frames are zero-padded to a multiple of 16 (the odd pixel at the bottom/right) and outputs are
cropped back. Frames before the first mask are not counted (background is returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from jfdeploy.backends import make_backend
from jfdeploy.errors import InputError
from jfdeploy.model import JointFormer, soft_aggregate

PAD_MULTIPLE = 16
Padding = tuple[int, int, int, int]  # left, right, top, bottom


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, Padding]:
    """Zero-pad the last two dims of ``x`` up to multiples of ``multiple``, split evenly."""
    h, w = x.shape[-2:]
    extra_h, extra_w = -h % multiple, -w % multiple
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: Padding) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class Segmenter:
    """Segments a video frame by frame. One Segmenter per video.

    Args:
        model: a loaded JointFormer (``jfdeploy.load_model``), in the dtype/device of the frames;
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
        model: JointFormer | None,
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

    def _check_frame(self, frame: torch.Tensor) -> None:
        dtype, device = self.backend.dtype, self.backend.device
        if not isinstance(frame, torch.Tensor) or frame.dim() != 3 or frame.shape[0] != 3:
            got = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise InputError(f"frame must be a 3 x H x W tensor, got {got}")
        if frame.dtype != dtype or frame.device != device:
            raise InputError(f"frame is {frame.dtype} on {frame.device}; the backend runs {dtype} on {device}")

    def _check_mask(self, frame: torch.Tensor, mask: torch.Tensor, labels: list[int] | None) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
            raise InputError("mask must be an objects x H x W tensor")
        if mask.shape[-2:] != frame.shape[-2:]:
            raise InputError(f"mask is {tuple(mask.shape[-2:])}, frame is {tuple(frame.shape[-2:])}")
        if mask.shape[0] < max(self.num_objects, 1):
            raise InputError(
                f"mask has {mask.shape[0]} object rows; it must hold all {max(self.num_objects, 1)} objects so far"
            )
        if labels is not None:
            bad = [label for label in labels if not 1 <= label <= mask.shape[0]]
            if bad or not labels:
                raise InputError(f"labels must be 1-based rows of the mask (1..{mask.shape[0]}), got {labels}")
            missing_new = [r + 1 for r in range(self.num_objects, mask.shape[0]) if r + 1 not in labels]
            if missing_new:
                raise InputError(f"new objects {missing_new} must be among the valid labels {labels}")

    @torch.inference_mode()
    def step(
        self,
        frame: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: Sequence[int] | None = None,
        last: bool = False,
    ) -> torch.Tensor:
        """Segment one frame.

        Args:
            frame: 3 x H x W, normalized, on the model's device and dtype.
            mask: objects_so_far x H x W (new objects appended as rows), or None.
            labels: 1-based rows of ``mask`` that are valid (None: all rows); the other rows are
                taken from the prediction.
            last: the last frame of the video (not memorized).

        Returns:
            (1 + objects) x H x W probabilities, background first.
        """
        if self.finished:
            raise InputError("step() after the last frame: reset() (or a new Segmenter) for a new video")
        self._check_frame(frame)
        label_list = None if labels is None else [int(label) for label in labels]
        if mask is not None:
            self._check_mask(frame, mask, label_list)
        elif self.num_objects == 0:  # nothing to track yet: frames before the first mask don't count
            return torch.ones((1, *frame.shape[-2:]), dtype=frame.dtype, device=frame.device)
        self.finished = last

        self.time += 1
        image, pad = pad_to_multiple(frame)
        self.backend.check_frame_size(*image.shape[-2:])
        image = image[None]  # 1 x 3 x H x W
        total_objects = mask.shape[0] if mask is not None else self.num_objects
        is_memory_frame = (self.time - self.last_memory_time >= self.mem_every or mask is not None) and not last
        need_segment = self.time > 0 and (label_list is None or len(label_list) != total_objects)

        prob = self.backend.segment(image) if need_segment else None  # (1+O) x H x W
        if mask is not None:
            given = pad_to_multiple(mask.to(frame.dtype))[0].clone()
            if prob is not None:
                predicted = prob[1:].clone()  # the earlier objects
                predicted[:, given.sum(0) > 0.5] = 0
                if label_list is not None:
                    for row in range(predicted.shape[0]):
                        if row + 1 not in label_list:
                            given[row] = predicted[row]
            _, prob = soft_aggregate(given, dim=0)
            self.backend.add_objects(total_objects - self.backend.num_objects)
        assert prob is not None  # without a mask: time > 0 and no labels (they come with a mask), so segmented

        if not last:
            self.backend.memorize(image, prob[1:], permanent=is_memory_frame, time=self.time)
            if is_memory_frame:
                self.last_memory_time = self.time
        return unpad(prob, pad)
