"""The device pool of the TensorRT runtime, on host memory (ctypes buffers stand in for cudaMalloc: the pool
only sees objects with an address): reuse by size, views keeping their block, a steady frame allocating
nothing, a failed allocation retried after releasing the free blocks, close."""

from __future__ import annotations

import ctypes
import dataclasses
import gc

import numpy as np
import pytest

from jfdeploy.backends.device_pool import DevicePool
from jfdeploy.backends.trt_runtime import TrtArray


class HostMemory:
    """``nbytes`` of host memory with an address, allocated from a budget (None: unlimited)."""

    def __init__(self, allocator: HostAllocator, nbytes: int) -> None:
        if allocator.budget is not None and allocator.in_use + nbytes > allocator.budget:
            raise MemoryError(f"{nbytes} bytes more than the budget")
        self.buffer = ctypes.create_string_buffer(nbytes)
        self.ptr = ctypes.addressof(self.buffer)
        self.nbytes = nbytes
        allocator.in_use += nbytes


class HostAllocator:
    def __init__(self, budget: int | None = None) -> None:
        self.budget, self.in_use, self.released = budget, 0, 0

    def allocate(self, nbytes: int) -> HostMemory:
        return HostMemory(self, nbytes)

    def release(self, memory: HostMemory) -> None:
        self.in_use -= memory.nbytes
        self.released += 1


def make_pool(budget: int | None = None) -> tuple[DevicePool, HostAllocator]:
    allocator = HostAllocator(budget)
    return DevicePool(allocator.allocate, allocator.release, granularity=256), allocator


def array(pool: DevicePool, shape: tuple[int, ...], dtype=np.float32) -> TrtArray:
    block = pool.take(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return TrtArray(block.ptr, shape, np.dtype(dtype), block)


def test_a_dropped_block_is_handed_out_again_for_the_same_size():
    pool, allocator = make_pool()
    first = array(pool, (4, 100))  # 1600 bytes -> 1792
    address = first.address
    del first
    gc.collect()
    assert pool.free_sizes() == {1792: 1}
    again = array(pool, (1700,), np.uint8)  # rounds to the same size
    assert again.address == address
    other = array(pool, (4, 200))  # another size: a new block
    assert other.address != address
    assert (pool.stats.allocations, pool.stats.reuses) == (2, 1)
    assert allocator.in_use == pool.stats.held_bytes == 1792 + 3328


def test_views_keep_their_block_out_of_the_pool():
    pool, _ = make_pool()
    memory = array(pool, (2, 3, 8))
    rows = dataclasses.replace(memory, shape=(1, 3, 8), offset=3 * 8 * 4)  # what AddressedRuntime.rows makes
    address = memory.address
    del memory
    gc.collect()
    assert pool.free_sizes() == {}  # the view still reads it
    assert array(pool, (2, 3, 8)).address != address
    del rows
    gc.collect()
    assert array(pool, (2, 3, 8)).address == address


def test_a_steady_frame_allocates_nothing():
    """Each frame takes the same outputs; the previous frame's stay alive until the next one's exist (the
    frame loop hands the memory and the memory token on), then go back."""
    pool, _ = make_pool()
    shapes = [(1, 3, 48, 64), (2, 12, 96), (2, 1, 96), (3, 48, 64), (48, 64)]
    previous: list[TrtArray] = []
    allocations = []
    for _ in range(6):
        current = [array(pool, shape) for shape in shapes]
        previous = current
        allocations.append(pool.stats.allocations)
    assert previous
    assert allocations[1] == 2 * len(shapes)  # two frames' worth: the previous frame's are alive
    assert allocations[-1] == allocations[1]
    assert pool.stats.reuses == 4 * len(shapes)


def test_a_failed_allocation_releases_the_free_blocks_and_tries_again():
    pool, allocator = make_pool(budget=4096)
    small = array(pool, (512,))  # 2048 bytes
    del small
    gc.collect()
    assert pool.stats.free_bytes == 2048
    large = array(pool, (800,))  # 3200 -> 3328: only fits once the free 2048 are released
    assert large.nbytes == 3200 and allocator.released == 1 and pool.free_sizes() == {}
    with pytest.raises(MemoryError):
        array(pool, (800,))  # nothing free to release: the error stands


def test_close_releases_free_blocks_now_and_blocks_in_use_when_dropped():
    pool, allocator = make_pool()
    kept = array(pool, (64,))
    dropped = array(pool, (128,))
    del dropped
    gc.collect()
    pool.close()
    assert allocator.released == 1 and allocator.in_use == 256
    with pytest.raises(RuntimeError, match="closed"):
        pool.take(16)
    del kept
    gc.collect()
    assert allocator.released == 2 and allocator.in_use == 0 and pool.stats.held_bytes == 0


def test_an_empty_array_still_gets_an_address():
    pool, _ = make_pool()
    empty = array(pool, (0, 96))
    assert empty.nbytes == 0 and empty.address != 0 and pool.size(0) == 256
