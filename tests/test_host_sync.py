"""The staged frame loop never waits for the device: no host synchronization in steady state.

A host sync (``.item()``, ``.cpu()``, ``.tolist()``, ``bool(tensor)``, ``nonzero``, boolean indexing
that sizes its output from data) stalls the GPU pipeline once per call. On ``torch.device("meta")``
tensors have shapes but no data, so every such read raises: running the whole ``torch`` backend
with the model and the frames on meta proves that no frame of the loop reads device data on the
host. Meta does not see the other direction, host data copied to the device (``torch.tensor(list,
device=...)``, ``cpu_tensor.to(device)``: a synchronizing copy from pageable memory on CUDA), so a
``TorchFunctionMode`` refuses those on every frame without a mask. Paths that cannot run on meta are
skipped with the reason; on a CUDA machine the last test runs them under
``torch.cuda.set_sync_debug_mode("error")`` instead. The meta runs use the tiny configuration (3 joint
blocks, so that "all", "half" and "last" top-k blocks differ): the loop's code does not depend on the widths.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import pytest
import torch
from torch.overrides import TorchFunctionMode

import jfdeploy
from jfdeploy import ModelConfig

H, W = 96, 160  # 6 x 10 tokens per frame: >= k = 20 tokens for every top-k candidate set below
FRAMES = 7  # default options (mem_every 2, 2 memory frames): memory full after frame 2, frames 3..6 read it full


class MetaPath(NamedTuple):
    config: ModelConfig
    options: dict[str, Any] | None = None  # Segmenter options over mem_every=2, max_memory_frames=2
    dtype: torch.dtype = torch.float32  # weights and frames
    appearances: dict[int, int] | None = None  # frame -> objects after the mask given at that frame
    frames: int = FRAMES


META_PATHS = {
    "default_topk_all_frames": MetaPath(ModelConfig.tiny(topk=20)),
    "topk_every_frame": MetaPath(ModelConfig.tiny(topk=20, topk_range="every_frame")),
    "topk_half_of_the_blocks": MetaPath(ModelConfig.tiny(topk=20, topk_blocks="half")),
    "topk_last_block_and_memory_token": MetaPath(ModelConfig.tiny(topk=20, topk_blocks="last", topk_memory_token=True)),
    "no_topk": MetaPath(ModelConfig.tiny(topk=None)),
    "object_added_at_frame_3": MetaPath(ModelConfig.tiny(topk=20), appearances={3: 3}),
    "one_memory_frame_every_frame": MetaPath(ModelConfig.tiny(topk=20), {"mem_every": 1, "max_memory_frames": 1}),
    "float16_weights": MetaPath(ModelConfig.tiny(topk=20), dtype=torch.float16),
    # 3 memory frames, a third object at frame 1: its FIFO ring is out of phase with the others' for ever
    "object_added_fifo_out_of_phase": MetaPath(
        ModelConfig.tiny(topk=20), {"max_memory_frames": 3}, appearances={1: 3}, frames=9
    ),
}


class HostToDeviceCopyError(AssertionError):
    """Host data copied to a device inside the frame loop."""


class HostToDeviceGuard(TorchFunctionMode):
    """Raises HostToDeviceCopyError on a copy of host data (Python lists / numbers, CPU tensors) to another device."""

    FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            data, device = args[0], kwargs.get("device")
            from_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
            if device is not None and torch.device(device).type != "cpu" and from_host:
                raise HostToDeviceCopyError(f"host data copied to {device} by torch.{func.__name__}")
        elif func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_):
            source = args[1] if func is torch.Tensor.copy_ else args[0]
            if func is torch.Tensor.copy_:
                target = args[0].device
            elif func is torch.Tensor.cuda:
                target = torch.device("cuda")
            else:
                target = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            if source.device.type == "cpu" and target is not None and target.type != "cpu":
                raise HostToDeviceCopyError(f"a CPU tensor {tuple(source.shape)} copied to {target} by {func.__name__}")
        return func(*args, **kwargs)


NOT_ON_META = {
    "autocast": "torch.autocast refuses device_type 'meta' (and CPU autocast does not apply to meta tensors); "
    "covered on CUDA by test_steady_state_has_no_host_sync_on_cuda",
    "attention_triton": "a Triton kernel launch needs a GPU driver (the CPU interpreter needs real data); "
    "covered on CUDA by test_steady_state_has_no_host_sync_on_cuda",
    "onnxruntime_and_tensorrt": "engine runners hand buffers to onnxruntime / TensorRT, which need real memory",
}


HOST_READS = {
    "item": lambda x: x[0].item(),
    "bool": lambda x: bool(x[0] > 0),
    "cpu": lambda x: x.cpu(),
    "tolist": lambda x: x.tolist(),
    "nonzero": lambda x: x.nonzero(),
    "boolean_index": lambda x: x[x > 0],
}


@pytest.mark.parametrize("read", sorted(HOST_READS))
def test_meta_tensors_refuse_host_reads(read):
    """The premise: on meta, each kind of host sync raises instead of returning a value."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        HOST_READS[read](torch.ones(3, device="meta"))


def test_the_guard_sees_host_to_device_copies():
    x = torch.empty(3, device="meta")
    with HostToDeviceGuard():
        x[torch.zeros(1, dtype=torch.long, device="meta")] = 1.0  # on the device: allowed
        for copy in (lambda: torch.tensor([0, 2], device="meta"), lambda: torch.ones(2).to(x.device),
                     lambda: x.copy_(torch.ones(3)), lambda: torch.as_tensor(0.5, device=x.device)):  # fmt: skip
            with pytest.raises(HostToDeviceCopyError, match="copied to meta"):
                copy()


@pytest.mark.parametrize("path", sorted(META_PATHS))
def test_staged_loop_runs_on_meta_without_host_sync(path):
    spec = META_PATHS[path]
    with torch.device("meta"):
        model = jfdeploy.JointFormer(spec.config).eval().to(spec.dtype)
    seg = jfdeploy.Segmenter(model, backend="torch", **{"mem_every": 2, "max_memory_frames": 2, **(spec.options or {})})
    frames = torch.empty(spec.frames, 3, H, W, device="meta", dtype=spec.dtype)
    objects, appearances = 2, spec.appearances or {}
    full_at = None
    for t in range(spec.frames):
        mask, labels = None, None
        if t == 0:
            mask = torch.empty(objects, H, W, device="meta", dtype=spec.dtype)
        elif t in appearances:  # a mask holding every object so far; only the new ones are valid
            mask = torch.empty(appearances[t], H, W, device="meta", dtype=spec.dtype)
            labels = list(range(objects + 1, appearances[t] + 1))
            objects = appearances[t]
        with HostToDeviceGuard() if mask is None else contextlib.nullcontext():  # a new object may copy once
            prob = seg.step(frames[t][None], mask, labels, last=t == spec.frames - 1)
        assert prob.device.type == "meta" and prob.shape == (1 + objects, H, W), t
        if full_at is None and seg.backend.memory.full:
            full_at = t
    memory = seg.backend.memory
    assert memory.keys.device.type == "meta" and memory.num_objects == objects
    # the steady state was reached: every slot valid (the attention runs unmasked), frames ran after it
    assert full_at is not None and spec.frames - 1 - full_at >= 2, full_at
    assert memory.reader_inputs(skip_full_validity=True)[2] is None


@pytest.mark.parametrize("path", sorted(NOT_ON_META))
def test_paths_that_cannot_run_on_meta(path):
    pytest.skip(NOT_ON_META[path])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize(
    ("autocast", "attention"), [(None, "torch"), (torch.float16, "torch"), (None, "triton"), (torch.float16, "triton")]
)
def test_steady_state_has_no_host_sync_on_cuda(autocast, attention, golden_state_dict):
    """The paths meta cannot run: CUDA raises on any synchronizing call once memory is full."""
    if attention == "triton":
        pytest.importorskip("triton", reason="attention='triton' needs Triton")
    model = jfdeploy.load_model(golden_state_dict, topk=20).cuda()
    seg = jfdeploy.Segmenter(model, mem_every=2, max_memory_frames=2, backend="torch",
                             autocast=autocast, attention=attention)  # fmt: skip
    frames = torch.randn(FRAMES, 3, H, W, device="cuda")
    mask = torch.zeros(2, H, W, device="cuda")
    mask[0, :40, :60], mask[1, 50:, 80:] = 1, 1
    for t in range(4):  # warm-up: allocation, compilation; frame 3 is the first one read with a full memory
        seg.step(frames[t][None], mask if t == 0 else None)
    assert seg.backend.memory.full
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for t in range(4, FRAMES):
            seg.step(frames[t][None], last=t == FRAMES - 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
