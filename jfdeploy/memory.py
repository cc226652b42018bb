"""Fixed-capacity reference memory: per-object key/value caches in preallocated device buffers.

Layout (``L`` joint blocks, ``O`` objects, ``S = max_memory_frames + 1`` slots of ``n`` tokens):

    keys, values:  L x O x heads x S x n x d     (the memory reader reads them as L x O x heads x (S*n) x d)
    valid:         O x S x n bool                 False where a slot is empty (never attended)

Slots of one object, with the published eviction order:

    slot 0            the object's first memory frame (kept for ever)
    slots 1..M-1      later memory frames, a FIFO ring (the oldest is overwritten when full)
    slot M            the temporary reference: the latest frame that was not a memory frame
                      (with M = 1, memory frames after the first land here too)

The buffers are written by the ``memory_write`` stage (in place where the runtime binds its outputs to
its inputs) and grown by ``memory_grow`` when objects are added (the O axis grows once per appearance),
so the stage shapes stay constant once memory is full. This module keeps the host side: which slot each
object's next frame goes to (a few integers), and the arrays the runtime returned. The logical order of
the references (first, FIFO oldest..newest, temporary) is not the physical one; attention is a sum over
the selected references, so only the floating-point summation order differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jfdeploy.backends.runtime import Array, StageRuntime
from jfdeploy.specs import Widths


@dataclass
class ObjectSlots:
    """Bookkeeping of one object's slots (host side, a few integers)."""

    times: list[int | None]  # frame index held by each slot, None if empty
    permanent: int = 0  # memory frames held (slot 0 + FIFO)
    fifo_oldest: int = 0  # ring position (0..M-2) of the oldest FIFO frame once the ring is full


class ReferenceMemory:
    """The memory of one video on ``runtime``; ``widths``: the model's (joint blocks, heads, head size)."""

    def __init__(self, runtime: StageRuntime, widths: Widths, *, max_memory_frames: int) -> None:
        if max_memory_frames < 1:
            raise ValueError(f"max_memory_frames must be >= 1, got {max_memory_frames}")
        self.runtime = runtime
        self.widths = widths
        self.max_memory_frames = max_memory_frames
        self.num_slots = max_memory_frames + 1
        self.temporary_slot = max_memory_frames
        self.keys: Array | None = None  # L x O x heads x S x n x d
        self.values: Array | None = None
        self.valid: Array | None = None  # O x S x n
        self.objects: list[ObjectSlots] = []
        self.tokens_per_frame = 0
        self._slot_arrays: dict[tuple[int, ...], Array] = {}  # device copies of the slot lists seen

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def full(self) -> bool:
        """Every slot of every object holds a frame (the validity mask is all True)."""
        return all(t is not None for slots in self.objects for t in slots.times)

    def reader_inputs(self, skip_full_validity: bool = False) -> tuple[Array, Array, Array | None]:
        """(keys, values, valid) as the memory reader takes them: L x O x heads x (S*n) x d and O x (S*n);
        valid None once every slot is valid when ``skip_full_validity`` (the attention then skips masking)."""
        assert self.keys is not None and self.values is not None and self.valid is not None
        layers, objects, heads, slots, n, d = self.runtime.shape(self.keys)
        flat = (layers, objects, heads, slots * n, d)
        valid = None if skip_full_validity and self.full else self.runtime.view(self.valid, (objects, slots * n))
        return self.runtime.view(self.keys, flat), self.runtime.view(self.values, flat), valid

    def grow(self, memory_token: Array, initial_memory_token: Array, objects: int, tokens_per_frame: int) -> Array:
        """Room for ``objects`` objects (new ones empty) in frames of ``tokens_per_frame`` tokens; returns
        the memory tokens of all objects (new ones start from ``initial_memory_token``)."""
        runtime = self.runtime
        if self.keys is None:
            self.tokens_per_frame = tokens_per_frame
            w = self.widths
            empty = (w.layers, 0, w.heads, self.num_slots, tokens_per_frame, w.head_dim)
            self.keys = runtime.zeros(empty, runtime.memory_float)
            self.values = runtime.zeros(empty, runtime.memory_float)
            self.valid = runtime.zeros((0, self.num_slots, tokens_per_frame), "bool")
        elif tokens_per_frame != self.tokens_per_frame:
            raise ValueError(f"frame has {tokens_per_frame} tokens, memory holds frames of {self.tokens_per_frame}")
        count = runtime.upload(np.zeros(objects, np.int64))  # only its length counts
        self.keys, self.values, self.valid, memory_token = runtime.run(
            "memory_grow", self.keys, self.values, self.valid, memory_token, initial_memory_token, count
        )
        self.objects += [ObjectSlots([None] * self.num_slots) for _ in range(objects - self.num_objects)]
        self._upload_future_slots()
        return memory_token

    def _upload_future_slots(self) -> None:
        """Upload now every slot list the next writes can use, so that writes between two growths copy
        nothing to the device (objects only change on frames that bring a mask, which upload anyway).

        Temporary writes leave the slots' state unchanged; memory writes advance it through the FIFO ring,
        which repeats after M - 1 writes once full: 2 M simulated memory writes see every list."""
        simulated = [ObjectSlots(list(o.times), o.permanent, o.fifo_oldest) for o in self.objects]
        lists = {(self.temporary_slot,) * len(simulated)}  # a temporary write, once every object has a memory frame
        for _ in range(2 * self.num_slots):
            lists.add(tuple(self._slot_for(o, True) for o in simulated))
        for slots in lists - set(self._slot_arrays):
            self._slot_arrays[slots] = self.runtime.upload(np.asarray(slots, np.int64))

    def _slot_for(self, slots: ObjectSlots, permanent: bool) -> int:
        if slots.permanent == 0:
            if not permanent:
                raise ValueError("an object's first reference must be a memory frame")
            slots.permanent = 1
            return 0
        if not permanent or self.max_memory_frames == 1:
            return self.temporary_slot
        if slots.permanent < self.max_memory_frames:
            slots.permanent += 1
            return slots.permanent - 1
        slot = 1 + slots.fifo_oldest  # evict the oldest FIFO frame
        slots.fifo_oldest = (slots.fifo_oldest + 1) % (self.max_memory_frames - 1)
        return slot

    def write(self, keys: Array, values: Array, *, permanent: bool, time: int) -> None:
        """Store one frame's keys/values (L x O x heads x n x d) for all O objects (``grow`` first for new
        ones: their first reference is this frame, a memory frame)."""
        assert self.keys is not None and self.values is not None and self.valid is not None  # allocated by grow
        slots = []
        for object_slots in self.objects:
            slot = self._slot_for(object_slots, permanent)
            object_slots.times[slot] = time
            slots.append(slot)
        key = tuple(slots)
        if key not in self._slot_arrays:  # uploaded by grow; kept for any sequence it did not foresee
            self._slot_arrays[key] = self.runtime.upload(np.asarray(slots, np.int64))
        memory = (self.keys, self.values, self.valid)
        self.keys, self.values, self.valid = self.runtime.run(
            "memory_write", *memory, keys, values, self._slot_arrays[key], into=memory
        )

    def reference_times(self) -> list[list[int]]:
        """Per object, the frames it currently reads, in the published order (first, FIFO, temporary)."""
        result = []
        for slots in self.objects:
            fifo = [t for t in slots.times[1 : self.temporary_slot] if t is not None]
            ordered = [slots.times[0], *sorted(fifo), slots.times[self.temporary_slot]]
            result.append([t for t in ordered if t is not None])
        return result
