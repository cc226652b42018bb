"""The stage runtime of the PyTorch backends: the stage modules, torch tensors on the model's device.

Backends "eager" (the published loop, which uses only the frame loop's stages from here) and "torch"
(every stage) run on it. The model's stages run under the backend's precision (autocast), the frame
loop's stages in float32 (float64 for a float64 model); every call runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from jfdeploy import specs
from jfdeploy.backends.runtime import StageRuntime, dtype_name
from jfdeploy.backends.staged import StagedBackend
from jfdeploy.errors import InputError
from jfdeploy.loop_stages import build_loop_stages
from jfdeploy.model import JointFormer
from jfdeploy.model.attention import ATTENTION_IMPLS, AttentionImpl, joint_attention_impl
from jfdeploy.stages import MemoryReader, build_stages

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "bool": torch.bool,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}


def torch_dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, known in TORCH_DTYPES.items() if known == dtype)


class TorchRuntime(StageRuntime):
    """Stage modules by name, run in PyTorch on ``device``.

    model_dtype: the model's float type (frames are made in it); memory_dtype: the reference memory's
    (autocast's when the stages run under autocast); precision: the context the model's stages run in.
    """

    name = "torch"

    def __init__(
        self,
        stages: Mapping[str, nn.Module],
        device: torch.device,
        *,
        model_dtype: torch.dtype = torch.float32,
        memory_dtype: torch.dtype | None = None,
        precision: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.stages = dict(stages)
        self._device = torch.device(device)
        self.model_float = torch_dtype_name(model_dtype)
        self.memory_float = torch_dtype_name(memory_dtype or model_dtype)
        self.loop_float = "float64" if model_dtype == torch.float64 else "float32"
        self.precision = precision or contextlib.nullcontext

    @property
    def device(self) -> str:
        return str(self._device)

    def run(self, stage: str, *inputs, into: Sequence | None = None) -> tuple:
        context = self.precision() if stage in specs.MODEL_STAGES else contextlib.nullcontext()
        with torch.inference_mode(), context:
            outputs = self.stages[stage](*inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, copy=True)).to(self._device)  # decoders hand out read-only arrays

    def download(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().float().cpu().numpy() if array.dtype == torch.bfloat16 else array.detach().cpu().numpy()

    def zeros(self, shape: Sequence[int], dtype: str) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=TORCH_DTYPES[dtype_name(dtype, self.model_float)], device=self._device)

    def shape(self, array: torch.Tensor) -> tuple[int, ...]:
        return tuple(array.shape)

    def view(self, array: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return array.view(tuple(shape))

    def rows(self, array: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        return array[start:stop]

    batches = True

    def concat(self, arrays: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)

    def take(self, array: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return array.index_select(0, index)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def loop_runtime(model: JointFormer, stages: Mapping[str, nn.Module] | None = None, **options) -> TorchRuntime:
    """A TorchRuntime on ``model``'s device with the frame loop's stages (and ``stages``, e.g. the model's)."""
    device, dtype = model_device_dtype(model)
    float_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    loop = {name: stage.to(device) for name, stage in build_loop_stages(float_dtype, dtype).items()}
    return TorchRuntime({**loop, **(stages or {})}, device, model_dtype=dtype, **options)


def torch_backend(
    model: JointFormer,
    *,
    max_memory_frames: int,
    autocast: torch.dtype | None = None,
    attention: AttentionImpl = "torch",
    runtime: TorchRuntime | None = None,
) -> StagedBackend:
    """Backend "torch": the stage modules of ``model`` run by PyTorch on the model's device.

    autocast: torch.float16 / torch.bfloat16 to run the stages under autocast (the cache then
    holds that dtype); attention: "triton" for the fused top-k attention kernel in the readout;
    runtime: one already made for the same model and options (test-time augmentations share one).
    On a CPU the stages run on a copy whose linear and convolution weights are cast once (autocast
    would cast them at every call, which on a CPU costs about as much as the product): ~1.5x faster,
    the same error against fp32 (the last bit of bf16 rounding may fall differently).
    """
    if autocast not in (None, torch.float16, torch.bfloat16):
        raise InputError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast}")
    if attention not in ATTENTION_IMPLS:
        raise InputError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {attention!r}")
    _, dtype = model_device_dtype(model)
    if attention == "triton" and dtype == torch.float64:
        raise InputError("attention='triton' runs fp32/fp16/bf16 models, not float64")
    if runtime is None:
        runtime = _model_runtime(model, autocast, attention)
    backend = StagedBackend(
        runtime,
        model.convmae.cls_token.detach(),
        specs.Widths.of(model.config),
        max_memory_frames=max_memory_frames,
        skip_full_validity=True,
    )
    backend.name = "torch"
    return backend


def _model_runtime(model: JointFormer, autocast: torch.dtype | None, attention: AttentionImpl) -> TorchRuntime:
    device, _ = model_device_dtype(model)
    staged_model = _with_cast_weights(model, autocast) if autocast is not None and device.type == "cpu" else model
    stages = build_stages(staged_model)
    memory_reader = stages["memory_reader"]
    assert isinstance(memory_reader, MemoryReader)
    memory_reader.attention = joint_attention_impl(attention)

    def precision() -> contextlib.AbstractContextManager:
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast)

    return loop_runtime(model, dict(stages.items()), memory_dtype=autocast, precision=precision)


def _with_cast_weights(model: JointFormer, dtype: torch.dtype) -> JointFormer:
    """A copy of ``model`` whose Linear / Conv2d weights and biases are ``dtype``, as autocast would cast them."""
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.to(dtype)
    return cast
