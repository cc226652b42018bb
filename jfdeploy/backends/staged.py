"""The staged runtime: one frame loop over the exportable stages, whoever executes them.

Backend "torch" runs the stage modules in PyTorch; "onnxruntime" and "tensorrt" run the same
stages exported to ONNX graphs / TensorRT engines. They differ only in the ``runners``: a mapping
from stage name (``jfdeploy.stages.STAGE_TYPES``) to a callable taking the stage's input tensors
and returning its output tensors, on the backend's device.

Against the published loop ("eager") it saves: the current frame's convolutional stages run once
per frame instead of once per object; reference keys/values are computed once when a frame is
memorized and read from a fixed-capacity cache (``jfdeploy.memory``) instead of being recomputed
for every query frame; objects go through every stage together.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from jfdeploy.backends.base import Backend
from jfdeploy.errors import InputError
from jfdeploy.memory import ReferenceMemory
from jfdeploy.model import JointFormer, soft_aggregate
from jfdeploy.model.attention import ATTENTION_IMPLS, AttentionImpl, joint_attention_impl
from jfdeploy.stages import STAGE_TYPES, MemoryReader, build_stages

StageRunner = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]


class StagedBackend(Backend):
    """The frame loop over stage runners.

    Args:
        runners: stage name -> callable (inputs in ``Stage.input_names`` order -> outputs).
        initial_memory_token: 1 x 1 x C, in the dtype/device frames will come in.
        max_memory_frames: memory frames kept per object (the reference memory's capacity).
        precision: context entered around the stage calls (e.g. torch.autocast), or None.
        skip_full_validity: pass None as ``reference_valid`` once every slot is valid (torch stages
            then skip the masking; exported graphs always take the mask).
    """

    name = "staged"

    def __init__(
        self,
        runners: Mapping[str, StageRunner],
        initial_memory_token: torch.Tensor,
        *,
        max_memory_frames: int,
        precision: Callable[[], contextlib.AbstractContextManager] | None = None,
        skip_full_validity: bool = False,
    ) -> None:
        super().__init__(initial_memory_token)
        missing = sorted(set(STAGE_TYPES) - set(runners))
        if missing:
            raise InputError(f"no runner for stages {missing}")
        self.runners = runners
        self.max_memory_frames = max_memory_frames
        self.memory = ReferenceMemory(max_memory_frames=max_memory_frames)
        self.precision = precision or contextlib.nullcontext
        self.skip_full_validity = skip_full_validity

    def reset(self) -> None:
        super().reset()
        self.memory = ReferenceMemory(max_memory_frames=self.max_memory_frames)

    def run(self, stage: str, *inputs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        outputs = self.runners[stage](*inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        memory = self.memory
        assert self.memory_token is not None and memory.num_objects == self.num_objects
        valid = memory.valid_or_none if self.skip_full_validity else memory.valid
        with self.precision():
            tokens, f8, f4 = self.run("frame_encoder", image)
            (f16,) = self.run("memory_reader", tokens, memory.keys, memory.values, valid)
            (enhanced,) = self.run("enhancer", f16, self.memory_token)
            logits, decoder_tokens = self.run("decoder", f16, f8, f4, enhanced)
            (memory_token,) = self.run("memory_token_update", decoder_tokens, self.memory_token)
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
        with self.precision():
            keys, values, memory_token = self.run("reference_encoder", image, object_prob, self.memory_token)
        self.memory_token = memory_token.to(self.memory_token.dtype)
        self.record("memorize.memory_token", self.memory_token)
        self.memory.write(keys, values, permanent=permanent, time=time)


def torch_backend(
    model: JointFormer,
    *,
    max_memory_frames: int,
    autocast: torch.dtype | None = None,
    attention: AttentionImpl = "torch",
) -> StagedBackend:
    """Backend "torch": the stage modules of ``model`` run by PyTorch on the model's device.

    autocast: torch.float16 / torch.bfloat16 to run the stages under autocast (the cache then
    holds that dtype); attention: "triton" for the fused top-k attention kernel in the readout.
    On a CPU the stages run on a copy whose linear and convolution weights are cast once (autocast
    would cast them at every call, which on a CPU costs about as much as the product): ~1.5x faster,
    the same error against fp32 (the last bit of bf16 rounding may fall differently).
    """
    if autocast not in (None, torch.float16, torch.bfloat16):
        raise InputError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast}")
    if attention not in ATTENTION_IMPLS:
        raise InputError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {attention!r}")
    param = next(model.parameters())
    if attention == "triton" and param.dtype == torch.float64:
        raise InputError("attention='triton' runs fp32/fp16/bf16 models, not float64")
    if autocast is not None and param.device.type == "cpu":
        model = _with_cast_weights(model, autocast)
    stages = build_stages(model)
    memory_reader = stages["memory_reader"]
    assert isinstance(memory_reader, MemoryReader)
    memory_reader.attention = joint_attention_impl(attention)

    def precision() -> contextlib.AbstractContextManager:
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=param.device.type, dtype=autocast)

    backend = StagedBackend(
        dict(stages.items()),
        model.convmae.cls_token.detach(),
        max_memory_frames=max_memory_frames,
        precision=precision,
        skip_full_validity=True,
    )
    backend.name = "torch"
    return backend


def _with_cast_weights(model: JointFormer, dtype: torch.dtype) -> JointFormer:
    """A copy of ``model`` whose Linear / Conv2d weights and biases are ``dtype``, as autocast would cast them."""
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.to(dtype)
    return cast
