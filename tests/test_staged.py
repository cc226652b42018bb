"""Backend "torch" (stages + key/value cache, objects batched) against backend "eager" (the published loop).

Float64, ≤ 1e-9 on every frame, on clips that exercise FIFO eviction, the temporary reference,
objects appearing mid-video and 1–5 objects, with a small k so that top-k selection matters. The
equivalence holds for any weights, so it runs on the tiny model; golden parity of the torch backend
stays on the published shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, TINY_TOPK, step_at_model_size
from jfdeploy import specs
from jfdeploy.backends.torch_runtime import TorchRuntime
from jfdeploy.loop_stages import build_loop_stages
from jfdeploy.memory import ReferenceMemory

H, W = 40, 56  # 3 x 4 tokens per frame after padding to 48 x 64


def boxes_mask(num_objects: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(num_objects, H, W, dtype=torch.float64)
    for row in range(num_objects):
        top, left = (
            torch.randint(0, H - 12, (1,), generator=g).item(),
            torch.randint(0, W - 16, (1,), generator=g).item(),
        )
        mask[row, top : top + 12, left : left + 16] = 1
    return mask.clamp(max=1)


def run(model, backend, frames, masks, labels, mem_every, max_memory_frames):
    seg = jfdeploy.Segmenter(model, mem_every=mem_every, max_memory_frames=max_memory_frames, backend=backend)
    probs = [
        step_at_model_size(seg, frame, mask=masks.get(t), labels=labels.get(t), last=t == len(frames) - 1).numpy()
        for t, frame in enumerate(frames)
    ]
    return probs, seg


def eager_reference_times(seg):
    return [
        [e.time for e in perm] + ([tmp.time] if tmp is not None else [])
        for perm, tmp in zip(seg.backend.permanent, seg.backend.temporary, strict=True)
    ]


SCENARIOS = {
    # name: (objects at t0, frames, mem_every, max_memory_frames, {t: objects after a mask at t})
    "one_object_fifo": (1, 8, 2, 2, {}),
    "three_objects_every_frame_memory": (3, 7, 1, 3, {}),
    "five_objects_single_memory_frame": (5, 5, 3, 1, {}),
    "new_object_mid_video": (2, 8, 2, 2, {3: 3}),
    "two_new_objects_late": (1, 7, 3, 3, {2: 2, 5: 4}),
}


def clip_inputs(objects: int, num_frames: int, appearances: dict[int, int]) -> tuple[dict, dict, list[int]]:
    """Masks and labels of a scenario, and the number of objects on every frame.

    At a frame t in ``appearances`` the mask holds all ``appearances[t]`` objects so far and only the
    new labels are valid there.
    """
    masks, labels, counts, current = {0: boxes_mask(objects, seed=0)}, {}, [], objects
    for t in range(num_frames):
        if t in appearances:
            masks[t] = boxes_mask(appearances[t], seed=t)
            labels[t] = list(range(current + 1, appearances[t] + 1))
            current = appearances[t]
        counts.append(current)
    return masks, labels, counts


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_torch_backend_matches_eager(tiny_model64, scenario):
    objects, num_frames, mem_every, max_memory_frames, appearances = SCENARIOS[scenario]
    assert tiny_model64.config.topk == TINY_TOPK < 12  # k below the 12 tokens of a frame: selection matters
    frames = torch.randn(num_frames, 3, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    masks, labels, counts = clip_inputs(objects, num_frames, appearances)
    assert sorted(labels) == sorted(appearances) and all(labels.values())  # every appearance adds objects
    eager, eager_seg = run(tiny_model64, "eager", frames, masks, labels, mem_every, max_memory_frames)
    staged, staged_seg = run(tiny_model64, "torch", frames, masks, labels, mem_every, max_memory_frames)
    for t, (a, b) in enumerate(zip(eager, staged, strict=True)):
        assert a.shape == b.shape == (1 + counts[t], H, W), t
        assert np.abs(a - b).max() <= 1e-9, f"frame {t}: {np.abs(a - b).max():.2e}"
    reference_times = eager_reference_times(eager_seg)
    assert staged_seg.backend.memory.reference_times() == reference_times
    assert len(reference_times) == counts[-1]
    for t in appearances:  # the objects added at t have t as their first reference frame
        added = reference_times[counts[t - 1] : counts[t]]
        assert added and all(times[0] == t for times in added), (t, reference_times)


@pytest.mark.parametrize(
    "options",
    [dict(topk_range="every_frame"), dict(topk_blocks="half", topk_memory_token=True), dict(topk=None)],
    ids=["every_frame", "half_blocks_memory_token_topk", "no_topk"],
)
def test_torch_backend_matches_eager_across_options(tiny_model, options):
    model = jfdeploy.load_model(tiny_model.state_dict(), config=tiny_model.config, **options).double()
    assert all(getattr(model.config, k) == v for k, v in options.items())
    frames = torch.randn(5, 3, H, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    masks = {0: boxes_mask(2, seed=1)}
    eager, _ = run(model, "eager", frames, masks, {}, 2, 2)
    staged, _ = run(model, "torch", frames, masks, {}, 2, 2)
    assert max(np.abs(a - b).max() for a, b in zip(eager, staged, strict=True)) <= 1e-9


def test_golden_clip_float64(model64, golden):
    seg = jfdeploy.Segmenter(
        model64, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, backend="torch"
    )
    for t in range(10):
        mask = torch.from_numpy(golden["mask_t0"]).double() if t == 0 else None
        prob = step_at_model_size(seg, torch.from_numpy(golden["frames"][t]).double(), mask=mask, last=t == 9)
        np.testing.assert_allclose(prob.numpy(), golden[f"prob_t{t}"], rtol=0, atol=1e-9)


def test_golden_frame1_float32(model32, golden):
    seg = jfdeploy.Segmenter(
        model32, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, backend="torch"
    )
    step_at_model_size(seg, torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = step_at_model_size(seg, torch.from_numpy(golden["frames"][1]))
    assert np.abs(prob.numpy() - golden["prob_t1"]).max() <= 1e-4


def test_bfloat16_autocast_runs_close(model32, golden):
    """Autocast (bf16 on the CPU here; fp16/bf16 on a GPU) keeps the float32 interface."""
    seg = jfdeploy.Segmenter(
        model32,
        mem_every=GOLDEN_MEM_EVERY,
        max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
        backend="torch",
        autocast=torch.bfloat16,
    )
    step_at_model_size(seg, torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = step_at_model_size(seg, torch.from_numpy(golden["frames"][1]))
    assert prob.dtype == torch.float32
    assert seg.backend.memory.keys.dtype == torch.bfloat16
    assert np.abs(prob.numpy() - golden["prob_t1"]).max() < 0.1


class TestReferenceMemory:
    """The memory's bookkeeping and the memory_grow / memory_write stages, run by PyTorch."""

    widths = specs.Widths(c4=4, c8=4, c16=4, layers=2, heads=1)  # L=2, heads=1, d=4

    def memory(self, max_memory_frames):
        runtime = TorchRuntime(build_loop_stages(), torch.device("cpu"))
        return ReferenceMemory(runtime, self.widths, max_memory_frames=max_memory_frames), runtime

    def keys(self, objects, value):
        return torch.full((2, objects, 1, 3, 4), float(value))  # n=3 tokens

    def grow(self, memory, runtime, objects, token=None):
        token = runtime.zeros((0, 1, 4), "float32") if token is None else token
        return memory.grow(token, torch.ones(1, 1, 4), objects, tokens_per_frame=3)

    def test_slots_evictions_and_validity(self):
        memory, runtime = self.memory(3)  # slots: first, 2 FIFO, temporary
        token = self.grow(memory, runtime, 2)
        assert token.shape == (2, 1, 4) and torch.all(token == 1)  # new objects start from the initial token
        memory.write(self.keys(2, 0), self.keys(2, 0), permanent=True, time=0)
        assert memory.keys.shape == (2, 2, 1, 4, 3, 4)
        assert memory.valid[:, 0].all() and not memory.valid[:, 1:].any()
        buffer = memory.keys
        for t in range(1, 8):
            memory.write(self.keys(2, t), self.keys(2, t), permanent=t % 2 == 0, time=t)
        assert memory.keys is buffer  # written in place, never reallocated
        assert memory.reference_times() == [[0, 4, 6, 7], [0, 4, 6, 7]]
        # slot contents follow the ring: 6 overwrote 2 in slot 1, 4 sits in slot 2, 7 is temporary
        assert [memory.keys[0, 0, 0, s, 0, 0].item() for s in range(4)] == [0, 6, 4, 7]
        keys, _, valid = memory.reader_inputs()
        assert keys.shape == (2, 2, 1, 4 * 3, 4) and keys.data_ptr() == buffer.data_ptr()  # a view, no copy
        assert valid.all() and memory.reader_inputs(skip_full_validity=True)[2] is None

    def test_new_objects_start_with_their_first_frame(self):
        memory, runtime = self.memory(2)
        token = self.grow(memory, runtime, 1)
        memory.write(self.keys(1, 0), self.keys(1, 0), permanent=True, time=0)
        memory.write(self.keys(1, 1), self.keys(1, 1), permanent=False, time=1)
        token = self.grow(memory, runtime, 2, token * 5)
        assert token[:, 0, 0].tolist() == [5, 1]  # the old object keeps its token
        memory.write(self.keys(2, 2), self.keys(2, 2), permanent=True, time=2)
        assert memory.reference_times() == [[0, 2, 1], [2]]
        assert memory.valid[1].flatten().tolist() == [True] * 3 + [False] * 6
        assert memory.keys[0, 0, 0, :, 0, 0].tolist() == [0, 2, 1]  # growing kept the first object's slots

    def test_future_slot_lists_are_on_the_device_before_they_are_written(self):
        memory, runtime = self.memory(3)
        token = self.grow(memory, runtime, 1)
        memory.write(self.keys(1, 0), self.keys(1, 0), permanent=True, time=0)
        self.grow(memory, runtime, 2, token)  # the second object's ring is out of phase with the first's
        uploaded = set(memory._slot_arrays)
        for t in range(1, 12):
            memory.write(self.keys(2, t), self.keys(2, t), permanent=t % 3 != 0, time=t)
        assert set(memory._slot_arrays) == uploaded  # nothing uploaded between the two growths

    def test_temporary_frame_cannot_start_an_object(self):
        memory, runtime = self.memory(2)
        self.grow(memory, runtime, 1)
        with pytest.raises(ValueError, match="first reference"):
            memory.write(self.keys(1, 0), self.keys(1, 0), permanent=False, time=0)
