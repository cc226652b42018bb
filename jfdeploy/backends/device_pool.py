"""Device blocks reused by size, for runtimes that allocate their stage outputs themselves (TensorRT).

A stage call needs fresh outputs (the next stage reads them while the caller may still hold the previous
ones), but a steady frame asks for the same sizes every time: the pool hands out a free block of the
size asked for (rounded up to ``granularity`` bytes) and allocates only when it has none. A block goes
back to the free list when the last array viewing it is dropped (``weakref.finalize`` on the ``Block``
the arrays hold), so after the first frames of a video a frame allocates nothing.

Reuse is safe without synchronizing because every user of a runtime's blocks works on that runtime's one
stream: a block given back while a kernel that reads it is still queued is written next by work queued
after that kernel. When an allocation fails, the free blocks are released and the allocation tried once
more (the memory of other sizes may be what is missing).
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Block:
    """``nbytes`` of device memory at ``ptr``; while this object lives, its memory is not handed out again."""

    __slots__ = ("__weakref__", "nbytes", "ptr")

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.ptr = ptr
        self.nbytes = nbytes


@dataclass
class PoolStats:
    allocations: int = 0  # blocks allocated from the device
    reuses: int = 0  # blocks handed out again from the free list
    held_bytes: int = 0  # bytes allocated and not released (in use or free)
    free_bytes: int = 0  # bytes on the free list
    released: int = 0  # blocks given back to the device (trim, a failed allocation, close)


class DevicePool:
    """Blocks from ``allocate(nbytes) -> memory`` (an object with an integer ``ptr``), given back to the
    device with ``release(memory)``; ``error``: the exception type(s) a failed allocation raises."""

    def __init__(
        self,
        allocate: Callable[[int], Any],
        release: Callable[[Any], None],
        *,
        granularity: int = 512,
        error: type[BaseException] | tuple[type[BaseException], ...] = MemoryError,
    ) -> None:
        self._allocate, self._release, self._error = allocate, release, error
        self.granularity = granularity
        self._free: dict[int, list[Any]] = defaultdict(list)  # size -> memory objects not in use
        self._lock = threading.Lock()  # blocks are given back from finalizers, on any thread
        self._closed = False
        self.stats = PoolStats()

    def size(self, nbytes: int) -> int:
        """The size a request of ``nbytes`` is served with (at least one granule: empty arrays get an address)."""
        return max(1, -(-nbytes // self.granularity)) * self.granularity

    def take(self, nbytes: int) -> Block:
        if self._closed:
            raise RuntimeError("the device pool is closed")
        size = self.size(nbytes)
        with self._lock:
            free = self._free.get(size)
            memory = free.pop() if free else None
            if memory is not None:
                self.stats.reuses += 1
                self.stats.free_bytes -= size
        if memory is None:
            memory = self._new(size)
        block = Block(int(memory.ptr), size)
        weakref.finalize(block, self._give_back, memory, size)
        return block

    def _new(self, size: int) -> Any:
        try:
            memory = self._allocate(size)
        except self._error:
            if not self.trim():
                raise
            memory = self._allocate(size)
        with self._lock:
            self.stats.allocations += 1
            self.stats.held_bytes += size
        return memory

    def _give_back(self, memory: Any, size: int) -> None:
        with self._lock:
            if not self._closed:
                self._free[size].append(memory)
                self.stats.free_bytes += size
                return
        self._drop(memory, size)

    def _drop(self, memory: Any, size: int) -> None:
        self._release(memory)
        with self._lock:
            self.stats.released += 1
            self.stats.held_bytes -= size

    def trim(self) -> int:
        """Release every free block to the device; the number released."""
        with self._lock:
            free = [(memory, size) for size, memories in self._free.items() for memory in memories]
            self._free.clear()
            self.stats.free_bytes = 0
        for memory, size in free:
            self._drop(memory, size)
        return len(free)

    def free_sizes(self) -> dict[int, int]:
        with self._lock:
            return {size: len(memories) for size, memories in self._free.items() if memories}

    def close(self) -> None:
        """Release the free blocks now and every block in use when its arrays are dropped."""
        with self._lock:
            self._closed = True
        self.trim()
