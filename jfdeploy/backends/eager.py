"""Backend "eager": the published inference loop, object by object, in plain PyTorch.

This is the reference every other backend is compared with, and the baseline of the benchmarks.
It keeps the published memory layout and compute: per object, a list of memory frames (first
frame kept, FIFO after it) plus one temporary frame; each memory entry stores every joint block's
*input* tokens, and at every query frame the keys/values of all reference tokens are recomputed,
the current frame's convolutional stages are rerun for each object, and objects are processed
one at a time. (The published loop also pushes the reference tokens through each block's MLP
and drops the result; that changes no output and is not repeated here.)

Shapes: O objects, H x W padded frame, n tokens per frame, C = 768.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from jfdeploy.backends.base import Backend
from jfdeploy.backends.torch_runtime import TorchRuntime, loop_runtime
from jfdeploy.model import JointFormer


@dataclass
class MemoryEntry:
    """One reference frame of one object."""

    time: int  # frame index (Segmenter.time)
    block_inputs: list[torch.Tensor]  # per joint block: the block's input tokens, n x C


class EagerBackend(Backend):
    name = "eager"

    def __init__(
        self,
        model: JointFormer,
        *,
        max_memory_frames: int,
        autocast: torch.dtype | None = None,
        runtime: TorchRuntime | None = None,
    ) -> None:
        """autocast: torch.float16 / torch.bfloat16 to run the loop under autocast (the published
        evaluation's ``--amp``), None for the model's own dtype; runtime: the frame loop's stages
        (one is made on the model's device when None)."""
        super().__init__(runtime or loop_runtime(model), model.convmae.cls_token.detach())
        self.model = model
        self.max_memory_frames = max_memory_frames
        self.autocast = autocast
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.permanent: list[list[MemoryEntry]] = []  # per object: memory frames, first frame first
        self.temporary: list[MemoryEntry | None] = []  # per object: the temporary (previous) frame

    def _precision(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.initial_memory_token.device.type, dtype=self.autocast)

    def add_objects(self, count: int, tokens_per_frame: int) -> None:
        """Give ``count`` new objects the initial memory token (their memory starts with the next memorize)."""
        if count <= 0:
            return
        new = self.initial_memory_token.expand(count, -1, -1).clone()
        self.memory_token = new if self.memory_token is None else torch.cat([self.memory_token, new])
        self.num_objects += count

    @torch.inference_mode()
    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Predict the objects in ``image`` (1 x 3 x H x W) -> logits O x 1 x H x W.

        Also updates each object's memory token from the decoder tokens.
        """
        with self._precision():
            logits = self._segment(image)
        return logits.to(image.dtype)

    def _segment(self, image: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert self.memory_token is not None and len(self.permanent) == self.num_objects
        f16s, f8s, f4s = [], [], []
        for obj in range(self.num_objects):
            temporary = self.temporary[obj]
            references = self.permanent[obj] + ([temporary] if temporary is not None else [])
            frames = len(references)
            block_inputs = [
                torch.cat([ref.block_inputs[i] for ref in references])[None]  # 1 x T*n x C
                for i in range(len(model.joint_blocks))
            ]
            tokens, f8, f4 = model.encode_current(image)  # once per object, as the published loop does
            grid = (f8.shape[-2] // 2, f8.shape[-1] // 2)
            f16s.append(model.read_memory(tokens, model.reference_kv(block_inputs), frames, grid))
            f8s.append(f8)
            f4s.append(f4)
        f16, f8, f4 = torch.cat(f16s), torch.cat(f8s), torch.cat(f4s)
        self.record("read.f16", f16)
        self.record("read.f8", f8)
        self.record("read.f4", f4)
        enhanced = model.enhance(f16, self.memory_token)
        self.record("enhance.f16", enhanced)
        logits, decoder_tokens = model.decode(f16, f8, f4, enhanced)
        self.record("decode.tokens", decoder_tokens)
        self.record("decode.object_logits", logits)
        self.memory_token = model.update_memory_token(decoder_tokens, self.memory_token).to(self.memory_token.dtype)
        self.record("update.memory_token", self.memory_token)
        return logits

    @torch.inference_mode()
    def memorize(self, image: torch.Tensor, object_prob: torch.Tensor, *, permanent: bool, time: int) -> None:
        """Encode ``image`` (1 x 3 x H x W) with ``object_prob`` (O x H x W) as a reference.

        permanent: a memory frame (first kept, FIFO after it); otherwise the temporary frame.
        New objects (beyond those already in memory) start their memory with this frame.
        """
        assert self.memory_token is not None and object_prob.shape[0] == self.num_objects
        with self._precision():
            reference = self.model.reference_input(image, object_prob)
            block_inputs, _, f16, memory_token = self.model.encode_reference(reference, self.memory_token)
        self.memory_token = memory_token.to(self.memory_token.dtype)
        self.record("memorize.f16", f16)
        self.record("memorize.memory_token", self.memory_token)
        for obj in range(self.num_objects):
            entry = MemoryEntry(time, [x[obj] for x in block_inputs])
            if obj >= len(self.permanent):  # a new object: this frame is its first memory frame
                assert permanent, "a frame that brings new objects is always a memory frame"
                self.permanent.append([entry])
                self.temporary.append(None)
            elif not permanent:
                self.temporary[obj] = entry
            elif self.max_memory_frames == 1:  # only the first frame is kept; newer ones are temporary
                self.temporary[obj] = entry
            else:
                if len(self.permanent[obj]) == self.max_memory_frames:
                    del self.permanent[obj][1]  # FIFO after the first frame
                self.permanent[obj].append(entry)
