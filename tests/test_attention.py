"""The top-k joint softmax against a row-by-row reading of its definition."""

from __future__ import annotations

import pytest
import torch

from jfdeploy.model.attention import topk_joint_attention

B, HEADS, M, N, T, R, D = 2, 3, 5, 4, 3, 6, 8


def naive(q, k_own, v_own, k_ref, v_ref, scale, topk, frames, topk_range):
    """Row by row: keep the k best reference scores (per frame or overall), one softmax, weighted sum."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for m in range(q.shape[2]):
                own = k_own[b, h] @ q[b, h, m] * scale
                ref = k_ref[b, h] @ q[b, h, m] * scale
                groups = ref.reshape(frames, -1) if topk_range == "every_frame" else ref[None]
                kept = []
                for f, scores in enumerate(groups):
                    idx = scores.topk(min(topk, scores.numel())).indices + f * scores.numel()
                    kept.extend(idx.tolist())
                w = torch.cat([own, ref[kept]]).softmax(0)
                out[b, h, m] = w[: own.numel()] @ v_own[b, h] + w[own.numel() :] @ v_ref[b, h, kept]
    return out


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [
        (B, HEADS, M, D),
        (B, HEADS, N, D),
        (B, HEADS, N, D),
        (B, HEADS, T * R, D),
        (B, HEADS, T * R, D),
    ]
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("topk_range", ["all_frames", "every_frame"])
@pytest.mark.parametrize("topk", [1, 4, 7])
def test_matches_row_by_row_definition(inputs, topk, topk_range):
    got = topk_joint_attention(*inputs, scale=0.3, topk=topk, frames=T, topk_range=topk_range)
    torch.testing.assert_close(got, naive(*inputs, 0.3, topk, T, topk_range), rtol=0, atol=1e-12)


def test_k_beyond_the_candidates_is_plain_softmax(inputs):
    plain = topk_joint_attention(*inputs, scale=0.3, topk=None)
    for topk_range in ("all_frames", "every_frame"):
        got = topk_joint_attention(*inputs, scale=0.3, topk=1000, frames=T, topk_range=topk_range)
        torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("topk_range", ["all_frames", "every_frame"])
@pytest.mark.parametrize("topk", [3, 100, None])
def test_invalid_slots_are_never_read(inputs, topk, topk_range):
    """An invalid slot gets probability exactly 0: huge garbage keys do not win the top-k, and huge
    (finite) garbage values do not move the output, which equals attention over the valid frames alone."""
    q, k_own, v_own, k_ref, v_ref = inputs
    valid = torch.ones(B, T * R, dtype=torch.bool)
    valid[:, R : 2 * R] = False  # an empty middle frame
    garbage_k, garbage_v = k_ref.clone(), v_ref.clone()
    garbage_k[:, :, R : 2 * R] = 1e3  # would win every top-k if it were read
    garbage_v[:, :, R : 2 * R] = 1e30  # any probability above 0 on them shows in the output
    keep = valid[0]
    expected = topk_joint_attention(
        q,
        k_own,
        v_own,
        k_ref[:, :, keep],
        v_ref[:, :, keep],
        scale=0.3,
        topk=topk,
        frames=T - 1,
        topk_range=topk_range,
    )
    got = topk_joint_attention(
        q, k_own, v_own, garbage_k, garbage_v, scale=0.3, topk=topk, frames=T, topk_range=topk_range, ref_valid=valid
    )
    assert torch.isfinite(got).all()  # no NaN from an all -inf candidate set, no overflow from the garbage
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_invalid_slots_beyond_k_leave_a_row_finite(inputs):
    """k larger than the valid candidates: the top-k holds -inf scores, which get probability 0, not NaN."""
    q, k_own, v_own, k_ref, v_ref = inputs
    valid = torch.zeros(B, T * R, dtype=torch.bool)
    valid[:, :2] = True  # two valid reference tokens, k = 5
    got = topk_joint_attention(q, k_own, v_own, k_ref, v_ref, scale=0.3, topk=5, ref_valid=valid)
    expected = topk_joint_attention(q, k_own, v_own, k_ref[:, :, :2], v_ref[:, :, :2], scale=0.3, topk=None)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_unknown_range_is_refused(inputs):
    with pytest.raises(ValueError, match="topk_range"):
        topk_joint_attention(*inputs, scale=0.3, topk=2, topk_range="some_frames")  # type: ignore[arg-type]
