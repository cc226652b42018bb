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
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, TINY_TOPK
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
        seg.step(frame, mask=masks.get(t), labels=labels.get(t), last=t == len(frames) - 1).numpy()
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
        prob = seg.step(torch.from_numpy(golden["frames"][t]).double(), mask=mask, last=t == 9)
        np.testing.assert_allclose(prob.numpy(), golden[f"prob_t{t}"], rtol=0, atol=1e-9)


def test_golden_frame1_float32(model32, golden):
    seg = jfdeploy.Segmenter(
        model32, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, backend="torch"
    )
    seg.step(torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = seg.step(torch.from_numpy(golden["frames"][1]))
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
    seg.step(torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = seg.step(torch.from_numpy(golden["frames"][1]))
    assert prob.dtype == torch.float32
    assert seg.backend.memory.keys.dtype == torch.bfloat16
    assert np.abs(prob.numpy() - golden["prob_t1"]).max() < 0.1


class TestReferenceMemory:
    def keys(self, objects, value):
        return torch.full((2, objects, 1, 3, 4), float(value))  # L=2, heads=1, n=3, d=4

    def test_slots_evictions_and_validity(self):
        memory = ReferenceMemory(max_memory_frames=3)  # slots: first, 2 FIFO, temporary
        memory.write(self.keys(2, 0), self.keys(2, 0), permanent=True, time=0)
        assert memory.keys.shape == (2, 2, 1, 4 * 3, 4)
        assert memory.valid[:, :3].all() and not memory.valid[:, 3:].any()
        buffer = memory.keys
        for t in range(1, 8):
            memory.write(self.keys(2, t), self.keys(2, t), permanent=t % 2 == 0, time=t)
        assert memory.keys is buffer  # written in place, never reallocated
        assert memory.reference_times() == [[0, 4, 6, 7], [0, 4, 6, 7]]
        # slot contents follow the ring: 6 overwrote 2 in slot 1, 4 sits in slot 2, 7 is temporary
        assert [memory.keys[0, 0, 0, s * 3, 0].item() for s in range(4)] == [0, 6, 4, 7]

    def test_new_objects_start_with_their_first_frame(self):
        memory = ReferenceMemory(max_memory_frames=2)
        memory.write(self.keys(1, 0), self.keys(1, 0), permanent=True, time=0)
        memory.write(self.keys(1, 1), self.keys(1, 1), permanent=False, time=1)
        memory.write(self.keys(2, 2), self.keys(2, 2), permanent=True, time=2)
        assert memory.reference_times() == [[0, 2, 1], [2]]
        assert memory.valid[1].tolist() == [True] * 3 + [False] * 6

    def test_temporary_frame_cannot_start_an_object(self):
        with pytest.raises(ValueError, match="first reference"):
            ReferenceMemory(max_memory_frames=2).write(self.keys(1, 0), self.keys(1, 0), permanent=False, time=0)
