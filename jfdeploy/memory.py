"""Fixed-capacity reference memory: per-object key/value caches in preallocated device buffers.

Layout (``L`` joint blocks, ``O`` objects, ``S = max_memory_frames + 1`` slots of ``n`` tokens):

    keys, values:  L x O x heads x (S*n) x d     slot s holds tokens [s*n, (s+1)*n)
    valid:         O x (S*n) bool                 False where a slot is empty (never attended)

Slots of one object, with the published eviction order:

    slot 0            the object's first memory frame (kept for ever)
    slots 1..M-1      later memory frames, a FIFO ring (the oldest is overwritten when full)
    slot M            the temporary reference: the latest frame that was not a memory frame
                      (with M = 1, memory frames after the first land here too)

The buffers are written in place; shapes change only when objects are added (the O axis grows
once per appearance) so the stage shapes stay constant once memory is full. The logical order of
the references (first, FIFO oldest..newest, temporary) is not the physical one; attention is a sum
over the selected references, so only the floating-point summation order differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ObjectSlots:
    """Bookkeeping of one object's slots (host side, a few integers)."""

    times: list[int | None]  # frame index held by each slot, None if empty
    permanent: int = 0  # memory frames held (slot 0 + FIFO)
    fifo_oldest: int = 0  # ring position (0..M-2) of the oldest FIFO frame once the ring is full


class ReferenceMemory:
    def __init__(self, *, max_memory_frames: int) -> None:
        if max_memory_frames < 1:
            raise ValueError(f"max_memory_frames must be >= 1, got {max_memory_frames}")
        self.max_memory_frames = max_memory_frames
        self.num_slots = max_memory_frames + 1
        self.temporary_slot = max_memory_frames
        self.keys: torch.Tensor | None = None  # L x O x heads x (S*n) x d
        self.values: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None  # O x (S*n)
        self.objects: list[ObjectSlots] = []
        self.tokens_per_frame = 0

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def full(self) -> bool:
        """Every slot of every object holds a frame (the validity mask is all True)."""
        return all(t is not None for slots in self.objects for t in slots.times)

    @property
    def valid_or_none(self) -> torch.Tensor | None:
        """The validity mask, or None when it is all True (lets the attention skip masking)."""
        return None if self.full else self.valid

    def _grow(self, keys: torch.Tensor) -> None:
        """Allocate (first write) or extend the object axis (new objects) to ``keys.shape[1]``."""
        layers, objects, heads, n, d = keys.shape
        if self.keys is None:
            self.tokens_per_frame = n
            shape = (layers, objects, heads, self.num_slots * n, d)
            self.keys = keys.new_zeros(shape)
            self.values = keys.new_zeros(shape)
            self.valid = torch.zeros(objects, self.num_slots * n, dtype=torch.bool, device=keys.device)
        elif n != self.tokens_per_frame:
            raise ValueError(f"frame has {n} tokens, memory holds frames of {self.tokens_per_frame}")
        elif objects > self.num_objects:  # once per appearance of new objects, never per frame
            assert self.values is not None and self.valid is not None  # allocated together with self.keys
            extra = objects - self.num_objects
            pad = keys.new_zeros((layers, extra, *self.keys.shape[2:]))
            self.keys = torch.cat([self.keys, pad], dim=1)
            self.values = torch.cat([self.values, pad], dim=1)
            self.valid = torch.cat([self.valid, self.valid.new_zeros((extra, self.valid.shape[1]))])
        self.objects += [ObjectSlots([None] * self.num_slots) for _ in range(objects - self.num_objects)]

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

    def write(self, keys: torch.Tensor, values: torch.Tensor, *, permanent: bool, time: int) -> None:
        """Store one frame's keys/values (L x O x heads x n x d) for all O objects.

        Objects new to the memory get the frame as their first memory frame.
        """
        self._grow(keys)
        assert self.keys is not None and self.values is not None and self.valid is not None  # allocated by _grow
        by_slot: dict[int, list[int]] = {}
        for obj, slots in enumerate(self.objects):
            slot = self._slot_for(slots, permanent)
            slots.times[slot] = time
            by_slot.setdefault(slot, []).append(obj)
        n = self.tokens_per_frame
        for slot, objs in by_slot.items():
            span = slice(slot * n, (slot + 1) * n)
            # runs of consecutive objects as slices: an index tensor would be a host-to-device copy per frame
            for index in _runs(objs):
                self.keys[:, index, :, span] = keys[:, index]
                self.values[:, index, :, span] = values[:, index]
                self.valid[index, span] = True

    def reference_times(self) -> list[list[int]]:
        """Per object, the frames it currently reads, in the published order (first, FIFO, temporary)."""
        result = []
        for slots in self.objects:
            fifo = [t for t in slots.times[1 : self.temporary_slot] if t is not None]
            ordered = [slots.times[0], *sorted(fifo), slots.times[self.temporary_slot]]
            result.append([t for t in ordered if t is not None])
        return result


def _runs(indices: list[int]) -> list[slice]:
    """Ascending indices as slices of consecutive runs: [0, 1, 3] -> [slice(0, 2), slice(3, 4)]."""
    runs: list[slice] = []
    for i in indices:
        if runs and runs[-1].stop == i:
            runs[-1] = slice(runs[-1].start, i + 1)
        else:
            runs.append(slice(i, i + 1))
    return runs
