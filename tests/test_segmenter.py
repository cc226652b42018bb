"""The frame loop's published semantics: memory schedule, FIFO eviction, new objects, bad input.

None of it depends on the widths or the weights: the tests run on the tiny model.
"""

from __future__ import annotations

import pytest
import torch

import jfdeploy
from conftest import step_at_model_size

H, W = 40, 56  # padded to 48 x 64: a 3 x 4 token grid, quick on the CPU


def clip(num_frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_frames, 3, H, W, generator=torch.Generator().manual_seed(seed))


def box_mask(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    mask = torch.zeros(len(boxes), H, W)
    for row, (top, left, bottom, right) in enumerate(boxes):
        mask[row, top:bottom, left:right] = 1
    return mask


def memory_times(seg: jfdeploy.Segmenter):
    backend = seg.backend
    permanent = [[e.time for e in entries] for entries in backend.permanent]
    temporary = [None if e is None else e.time for e in backend.temporary]
    return permanent, temporary


def run_schedule(model, mem_every, max_memory_frames, num_frames=10):
    seg = jfdeploy.Segmenter(model, mem_every=mem_every, max_memory_frames=max_memory_frames)
    frames, states = clip(num_frames), []
    for t in range(num_frames):
        mask = box_mask((5, 5, 20, 30)) if t == 0 else None
        step_at_model_size(seg, frames[t], mask=mask, last=t == num_frames - 1)
        states.append(memory_times(seg))
    return states


def test_fifo_schedule_of_the_golden_configuration(tiny_model):
    states = run_schedule(tiny_model, mem_every=3, max_memory_frames=2)
    assert [s[0][0] for s in states] == [
        [0],
        [0],
        [0],
        [0, 3],
        [0, 3],
        [0, 3],
        [0, 6],
        [0, 6],
        [0, 6],
        [0, 6],
    ]
    assert [s[1][0] for s in states] == [None, 1, 2, 2, 4, 5, 5, 7, 8, 8]  # memory frames are not temporary


def test_fifo_keeps_the_first_frame(tiny_model):
    states = run_schedule(tiny_model, mem_every=2, max_memory_frames=3)
    assert states[8][0][0] == [0, 6, 8]


def test_one_memory_frame_keeps_only_the_first(tiny_model):
    states = run_schedule(tiny_model, mem_every=3, max_memory_frames=1)
    assert all(s[0][0] == [0] for s in states)
    assert [s[1][0] for s in states][:5] == [None, 1, 2, 3, 4]


def test_object_appearing_later(tiny_model):
    seg = jfdeploy.Segmenter(tiny_model, mem_every=100, max_memory_frames=3)
    frames = clip(6, seed=1)
    first = box_mask((5, 5, 20, 30))
    assert step_at_model_size(seg, frames[0], mask=first).shape == (2, H, W)
    assert step_at_model_size(seg, frames[1]).shape == (2, H, W)
    predicted = step_at_model_size(seg, frames[2])
    new = box_mask((5, 5, 20, 30), (22, 30, 38, 50))  # row 0 not valid here: only label 2 is new
    prob = step_at_model_size(seg, frames[3], mask=new, labels=[2])
    assert prob.shape == (3, H, W)
    inside_new = new[1].bool()
    assert prob[2][inside_new].min() > 0.99  # the given mask wins where it is set
    assert prob[1][inside_new].max() < 1e-6  # the old object is cleared there
    assert memory_times(seg) == ([[0, 3], [3]], [2, None])
    assert seg.backend.memory_token.shape == (2, 1, tiny_model.config.embed_dims[2])
    assert step_at_model_size(seg, frames[4]).shape == (3, H, W)
    assert memory_times(seg) == ([[0, 3], [3]], [4, 4])
    assert not torch.equal(predicted, prob[:2])


def test_frames_before_the_first_mask_are_background(tiny_model):
    seg = jfdeploy.Segmenter(tiny_model, mem_every=3, max_memory_frames=2)
    frames = clip(2)
    empty = step_at_model_size(seg, frames[0])
    assert empty.shape == (1, H, W) and torch.all(empty == 1)
    assert seg.time == -1
    step_at_model_size(seg, frames[1], mask=box_mask((5, 5, 20, 30)))
    assert seg.time == 0 and memory_times(seg)[0] == [[0]]


def test_bad_input_is_refused(tiny_model):
    seg = jfdeploy.Segmenter(tiny_model, mem_every=3, max_memory_frames=2)
    frame = clip(1)[0]
    with pytest.raises(jfdeploy.InputError, match="3 x H x W"):
        step_at_model_size(seg, frame[:2])
    with pytest.raises(jfdeploy.InputError, match="multiples of 16"):
        seg.step(seg.runtime.zeros((1, 3, H, W), "float32"))  # the frame loop takes padded frames
    with pytest.raises(jfdeploy.InputError, match="masks must be"):
        step_at_model_size(seg, frame, mask=torch.zeros(1, H + 20, W))
    with pytest.raises(jfdeploy.InputError, match="labels"):
        step_at_model_size(seg, frame, mask=box_mask((1, 1, 5, 5)), labels=[2])
    step_at_model_size(seg, frame, mask=box_mask((1, 1, 5, 5), (10, 10, 20, 20)))
    with pytest.raises(jfdeploy.InputError, match="all 2 objects"):
        step_at_model_size(seg, frame, mask=box_mask((1, 1, 5, 5)))
    with pytest.raises(jfdeploy.InputError, match="new objects"):
        step_at_model_size(seg, frame, mask=box_mask((1, 1, 5, 5), (10, 10, 20, 20), (30, 30, 35, 35)), labels=[1])
    step_at_model_size(seg, frame, last=True)
    with pytest.raises(jfdeploy.InputError, match="after the last frame"):
        step_at_model_size(seg, frame)
    with pytest.raises(jfdeploy.InputError, match="unknown backend"):
        jfdeploy.Segmenter(tiny_model, backend="tensorflow")
    with pytest.raises(jfdeploy.InputError, match="mem_every"):
        jfdeploy.Segmenter(tiny_model, mem_every=0)
