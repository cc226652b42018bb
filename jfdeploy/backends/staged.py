"""Backend "torch": the exportable stages run by PyTorch, all objects of a frame in one batch.

Against the published loop ("eager") it saves: the current frame's convolutional stages run once
per frame instead of once per object; reference keys/values are computed once when a frame is
memorized and read from a fixed-capacity cache (``jfdeploy.memory``) instead of being recomputed
for every query frame; objects go through every stage together. Every buffer stays on the model's
device; with ``autocast`` (torch.float16 / torch.bfloat16) the stages run under autocast and the
cache is kept in that dtype. ``attention="triton"`` runs the joint-block readout with the fused
top-k attention kernel (``jfdeploy.kernels.topk_attention``) instead of the PyTorch formulation.
"""

from __future__ import annotations

import contextlib

import torch

from jfdeploy.backends.base import Backend
from jfdeploy.errors import InputError
from jfdeploy.memory import ReferenceMemory
from jfdeploy.model import JointFormer, soft_aggregate
from jfdeploy.model.attention import ATTENTION_IMPLS, AttentionImpl
from jfdeploy.stages import build_stages


class StagedBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model: JointFormer,
        *,
        max_memory_frames: int,
        autocast: torch.dtype | None = None,
        attention: AttentionImpl = "torch",
    ) -> None:
        super().__init__(model)
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise InputError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast}")
        if attention not in ATTENTION_IMPLS:
            raise InputError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {attention!r}")
        if attention == "triton" and next(model.parameters()).dtype == torch.float64:
            raise InputError("attention='triton' runs fp32/fp16/bf16 models, not float64")
        self.stages = build_stages(model)
        self.stages["memory_reader"].attention = attention
        self.memory = ReferenceMemory(max_memory_frames=max_memory_frames)
        self.autocast = autocast

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        memory, stages = self.memory, self.stages
        assert self.memory_token is not None and memory.num_objects == self.num_objects
        with self._precision(image.device):
            tokens, f8, f4 = stages["frame_encoder"](image)
            f16 = stages["memory_reader"](tokens, memory.keys, memory.values, memory.valid_or_none)
            enhanced = stages["enhancer"](f16, self.memory_token)
            logits, decoder_tokens = stages["decoder"](f16, f8, f4, enhanced)
            memory_token = stages["memory_token_update"](decoder_tokens, self.memory_token)
        self.memory_token = memory_token.to(self.memory_token.dtype)
        self.record("read.f16", f16)
        self.record("enhance.f16", enhanced)
        self.record("decode.tokens", decoder_tokens)
        aggregated_logits, prob = soft_aggregate(torch.sigmoid(logits[:, 0].to(image.dtype)), dim=0)
        self.record("decode.logits", aggregated_logits)
        self.record("update.memory_token", self.memory_token)
        return prob

    def memorize(self, image: torch.Tensor, object_prob: torch.Tensor, *, permanent: bool, time: int) -> None:
        assert self.memory_token is not None and object_prob.shape[0] == self.num_objects
        with self._precision(image.device):
            keys, values, memory_token = self.stages["reference_encoder"](image, object_prob, self.memory_token)
        self.memory_token = memory_token.to(self.memory_token.dtype)
        self.record("memorize.memory_token", self.memory_token)
        self.memory.write(keys, values, permanent=permanent, time=time)
