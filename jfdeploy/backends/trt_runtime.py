"""The TensorRT stage runtime: one plan per stage, executed through TensorRT's own execution contexts, with
device memory from Polygraphy's ``cuda`` module (no torch, no pycuda).

Why Polygraphy's ``cuda`` and not cuda-python or pycuda: Polygraphy is already what builds and compares
the plans (``jfdeploy build``, ``jfdeploy check``), its ``cuda`` module is a thin ctypes wrapper over the
CUDA runtime that TensorRT itself loads (no extra wheel, no compiler), and it has exactly what a stage
runtime needs: ``DeviceArray`` (allocation, host copies), ``DeviceView`` (a typed view of any address) and
``Stream``. pycuda needs a build against the local CUDA toolkit; cuda-python would add a dependency for
the same three calls.

Arrays are ``TrtArray`` (address, shape, dtype) holding the block of device memory they view. A stage call
sets the input shapes and addresses, lets the context infer the output shapes, takes each output from the
runtime's ``DevicePool`` (``jfdeploy.backends.device_pool``: blocks reused by size once their arrays are
dropped, so a steady frame allocates nothing; raw ``DeviceArray`` allocations underneath), enqueues the
plan on the runtime's stream and returns without synchronizing: the next stage runs on the same stream,
and only a download waits for it. The memory write's outputs are fresh blocks too (TensorRT does not
document an output bound to its input's memory), and the blocks of the memory it replaces go back to the
pool. Every optimization profile of a plan is one
resolution bucket (``jfdeploy.plans``); a call picks one that holds its input shapes. Not run here: this
machine has no TensorRT and no GPU; the code follows TensorRT 10 / 11's Python API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy import specs
from jfdeploy.backends.device_pool import DevicePool
from jfdeploy.backends.runtime import NUMPY_DTYPES, AddressedRuntime
from jfdeploy.devices import Device, cuda_device_name
from jfdeploy.errors import InputError
from jfdeploy.manifest import EngineError
from jfdeploy.plans import manifest_profiles, polygraphy_errors, select_profile


@dataclass
class TrtArray:
    """``shape`` elements of ``dtype`` at byte ``offset`` from ``base`` on the device; ``owner`` keeps the
    memory from being handed out again."""

    base: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: Any = None  # the pool's Block (kept alive by every view of it)
    offset: int = 0

    @property
    def address(self) -> int:
        return self.base + self.offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


class TrtStage:
    """One plan: its engine, one execution context, its profiles (input name -> (min, opt, max))."""

    def __init__(self, trt: Any, runtime: Any, path: Path, profiles: list[dict]) -> None:
        with polygraphy_errors(f"TensorRT could not load {path.name}"):
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {path.name}")
        if self.engine.num_optimization_profiles != len(profiles):
            raise EngineError(
                f"{path.name} has {self.engine.num_optimization_profiles} optimization profiles, "
                f"the manifest lists {len(profiles)}"
            )
        self.context = self.engine.create_execution_context()
        self.profiles = profiles
        self.profile = 0  # contexts start on profile 0


class TrtRuntime(AddressedRuntime):
    """The plans of an engine directory (``jfdeploy build``) on ``device`` ("cuda", "cuda:N")."""

    name = "tensorrt"

    def __init__(self, directory: Path, manifest: dict[str, Any], device: str = "cuda") -> None:
        from polygraphy import cuda

        self._cuda = cuda
        self._device = Device(device)
        if self._device.type != "cuda":
            raise InputError(f"TensorRT runs on CUDA devices only, not {device!r}")
        self.gpu_name = cuda_device_name(self._device.index or 0)
        self.directory = Path(directory)
        self.manifest = manifest
        self.model_float = manifest["stages"]["frame_encoder"]["inputs"][0]["dtype"]
        self.memory_float = self.model_float
        self.stages: dict[str, TrtStage] = {}
        self.stream: Any = None
        self.pool = DevicePool(lambda nbytes: cuda.DeviceArray.raw((nbytes,)), lambda memory: memory.free(),
                               error=_cuda_errors())  # fmt: skip

    def load(self) -> None:
        """Deserialize every plan (after the manifest's plans were checked against this TensorRT and GPU)."""
        import tensorrt as trt

        self.stream = self._cuda.Stream()
        logger = trt.Logger(trt.Logger.ERROR)
        runtime = trt.Runtime(logger)
        plans = self.manifest["tensorrt"]["plans"]
        for stage in specs.STAGES:
            path = self.directory / plans[stage]
            self.stages[stage] = TrtStage(trt, runtime, path, manifest_profiles(self.manifest, stage))

    @property
    def device(self) -> str:
        return str(self._device)

    def run(self, stage: str, *inputs: TrtArray | None, into: Sequence[TrtArray] | None = None) -> tuple[TrtArray, ...]:
        plan = self.stages[stage]
        names = specs.input_names(stage)
        if any(array is None for array in inputs):
            raise EngineError(f"stage {stage}: every input is required by the plans")
        shapes = {name: array.shape for name, array in zip(names, inputs, strict=True) if array is not None}
        index = select_profile(plan.profiles, shapes, plan.profile)
        if index < 0:
            raise InputError(
                f"stage {stage}: input shapes {shapes} fit no optimization profile of these TensorRT plans "
                "(frame sizes, objects and memory slots of `jfdeploy build --profile/--max-objects`): rebuild them"
            )
        context = plan.context
        if index != plan.profile:
            context.set_optimization_profile_async(index, self.stream.ptr)
            plan.profile = index
        for name, array in zip(names, inputs, strict=True):
            assert array is not None
            context.set_input_shape(name, array.shape)
            context.set_tensor_address(name, array.address)
        outputs = []
        for name in specs.output_names(stage):
            shape = tuple(context.get_tensor_shape(name))
            dtype = np.dtype(NUMPY_DTYPES[specs.tensor_dtype(stage, name, self.model_float)])
            array = self._allocate(shape, dtype)
            context.set_tensor_address(name, array.address)
            outputs.append(array)
        if not context.execute_async_v3(self.stream.ptr):
            raise EngineError(f"TensorRT could not run stage {stage}")
        return tuple(outputs)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> TrtArray:
        block = self.pool.take(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return TrtArray(block.ptr, tuple(shape), np.dtype(dtype), block)

    def upload(self, array: np.ndarray) -> TrtArray:
        host = np.ascontiguousarray(array)
        device = self._allocate(tuple(host.shape), host.dtype)
        if host.nbytes:
            self._cuda.wrapper().memcpy(dst=device.address, src=host.ctypes.data, nbytes=host.nbytes,
                                        kind=self._cuda.MemcpyKind.HostToDevice,
                                        stream_ptr=self.stream.ptr)  # fmt: skip
        self.stream.synchronize()  # the host buffer may go away after this call
        return device

    def download(self, array: TrtArray) -> np.ndarray:
        host = np.empty(array.shape, array.dtype)
        view = self._cuda.DeviceView(array.address, array.shape, array.dtype)
        view.copy_to(host, stream=self.stream)
        self.stream.synchronize()
        return host

    def close(self) -> None:
        self.stages.clear()
        if self.stream is not None:
            self.stream.synchronize()  # no queued work reads a block the pool releases
        self.pool.close()
        if self.stream is not None:
            self.stream.free()
            self.stream = None


def _cuda_errors() -> tuple[type[BaseException], ...]:
    """What Polygraphy raises when cudaMalloc fails: its logger's critical error (PolygraphyException)."""
    from polygraphy.exception import PolygraphyException

    return (PolygraphyException, MemoryError)
