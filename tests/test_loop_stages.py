"""The frame loop's stages against what they replace: PIL's resizes (bit for bit), ``F.interpolate``, the
published aggregation and mask merge, the memory write, the argmax; and their tables (``resample``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jfdeploy.loop_stages import IMAGENET_MEAN, IMAGENET_STD, build_loop_stages
from jfdeploy.model import soft_aggregate
from jfdeploy.resample import Geometry, padding, pil_nearest_index, shorter_side_size

STAGES = build_loop_stages()
SIZES = [((72, 104), 48), ((1080, 1920), 480), ((100, 130), 480), ((91, 77), 40), ((48, 64), None), ((60, 60), 60)]


def run(stage: str, *arrays) -> tuple:
    outputs = STAGES[stage](*(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
                              for a in arrays))  # fmt: skip
    return outputs if isinstance(outputs, tuple) else (outputs,)


def pil_reference(rgb: np.ndarray, where: Geometry) -> torch.Tensor:
    """What the published evaluation feeds the model: PIL bilinear resize, normalize, flip, zero-pad evenly."""
    height, width = where.resized
    resized = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = x.flip(-1) if where.flipped else x
    (top, bottom), (left, right) = padding(height), padding(width)
    return F.pad(x, (left, right, top, bottom))[None]


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize(("source", "side"), SIZES)
def test_preprocess_is_pil_bit_for_bit(source, side, flipped):
    rgb = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    where = Geometry(source, side, flipped)
    (frame,) = run("preprocess", rgb, *where.input_taps()[0], *where.input_taps()[1])
    assert frame.shape == (1, 3, *where.padded) and frame.dtype == torch.float32
    assert torch.equal(frame, pil_reference(rgb, where))


@pytest.mark.parametrize(("source", "side"), SIZES)
def test_label_masks_are_pil_nearest(source, side):
    labels = np.random.default_rng(1).choice(np.array([0, 3, 7], np.uint8), source)
    where = Geometry(source, side, flipped=True)
    (masks,) = run("label_masks", labels, np.array([7, 3]), *where.mask_index())
    height, width = where.resized
    resized = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))[:, ::-1]
    (top, bottom), (left, right) = padding(height), padding(width)
    expected = np.pad(np.stack([resized == 7, resized == 3]), ((0, 0), (top, bottom), (left, right)))
    assert masks.shape == (2, *where.padded) and np.array_equal(masks.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize(("source", "side"), SIZES)
def test_postprocess_is_bilinear_interpolation_back_to_the_source(source, side):
    where = Geometry(source, side, flipped=True)
    model_out = torch.softmax(torch.randn(3, *where.resized, generator=torch.Generator().manual_seed(0)), 0)
    (top, bottom), (left, right) = padding(where.resized[0]), padding(where.resized[1])
    padded = F.pad(model_out.flip(-1), (left, right, top, bottom), value=0.5)  # padding must not leak
    accumulated = torch.full((3, *source), 0.25)
    (out,) = run("postprocess", padded, *where.output_taps(scale=0.5)[0], *where.output_taps(scale=0.5)[1], accumulated)
    expected = F.interpolate(model_out[None], size=source, mode="bilinear", align_corners=False)[0]
    assert out.shape == (3, *source)
    torch.testing.assert_close(out, 0.25 + 0.5 * expected, rtol=0, atol=3e-5)


def test_label_map_is_the_argmax_in_the_callers_labels():
    prob = torch.softmax(torch.randn(4, 30, 40, generator=torch.Generator().manual_seed(2)), 0)
    (labels,) = run("label_map", prob, np.array([9, 4, 200]))
    assert labels.dtype == torch.uint8
    assert np.array_equal(labels.numpy(), np.array([0, 9, 4, 200], np.uint8)[prob.numpy().argmax(0)])


def test_aggregate_and_merge_follow_the_published_loop():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 16, 32, generator=g)
    prob, object_prob = run("aggregate", logits)
    torch.testing.assert_close(prob, soft_aggregate(torch.sigmoid(logits[:, 0]), dim=0)[1], rtol=0, atol=0)
    assert torch.equal(object_prob, prob[1:])
    # a mask for object 2 (corrected) and a new object 3; object 1 keeps its prediction outside the given area
    given = torch.zeros(3, 16, 32)
    given[1, :8, :8] = 1
    given[2, 8:, 20:] = 1
    merged, _ = run("merge_masks", prob, given, np.array([True, False]))
    predicted = prob[1:].clone()
    predicted[:, given.sum(0) > 0.5] = 0
    expected = soft_aggregate(torch.stack([predicted[0], given[1], given[2]]), dim=0)[1]
    torch.testing.assert_close(merged, expected, rtol=0, atol=0)
    nothing_predicted, _ = run("merge_masks", torch.zeros(1, 16, 32), given, np.zeros(0, np.bool_))
    torch.testing.assert_close(nothing_predicted, soft_aggregate(given, dim=0)[1], rtol=0, atol=0)


def test_memory_write_functional_and_in_place_agree():
    g = torch.Generator().manual_seed(4)
    memory = [torch.randn(2, 3, 2, 4, 5, 8, generator=g), torch.randn(2, 3, 2, 4, 5, 8, generator=g),
              torch.rand(3, 4, 5, generator=g) > 0.5]  # fmt: skip
    reference = [torch.randn(2, 3, 2, 5, 8, generator=g), torch.randn(2, 3, 2, 5, 8, generator=g)]
    slot = torch.tensor([3, 0, 2])
    functional = build_loop_stages(in_place=False)["memory_write"](*memory, *reference, slot)
    copies = [m.clone() for m in memory]
    in_place = STAGES["memory_write"](*copies, *reference, slot)
    assert all(a is b for a, b in zip(in_place, copies, strict=True))  # the buffers themselves
    for a, b in zip(functional, in_place, strict=True):
        assert torch.equal(a, b)
    keys, _, valid = in_place
    for o, s in enumerate(slot.tolist()):
        assert torch.equal(keys[:, o, :, s], reference[0][:, o]) and valid[o, s].all()
        others = [t for t in range(4) if t != s]
        assert torch.equal(keys[:, o, :, others], memory[0][:, o, :, others])


def test_geometry_tables():
    assert shorter_side_size(480, 854, 480) == (480, 854) and shorter_side_size(1080, 1920, 480) == (480, 853)
    where = Geometry((1080, 1920), 480)
    assert where.resized == (480, 853) and where.padded == (480, 864)
    (row_index, row_weight), (_, col_weight) = where.input_taps()
    assert row_weight.dtype == np.int32 and row_index.shape == (480, 7)
    assert (col_weight[:5] == 0).all() and (col_weight[-6:] == 0).all()  # 11 padding columns, split 5 / 6
    assert pil_nearest_index(10, 10).tolist() == list(range(10))
    rows, cols = where.mask_index()
    assert rows.shape == (480,) and cols[0] == 1920 and cols[-1] == 1920  # padding reads the zero column
