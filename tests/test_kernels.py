"""The fused Triton top-k attention against the PyTorch reference (the published formulation).

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set in conftest).
Tolerances: fp32 inputs 2e-5 (fp32 accumulation, IEEE dot, vs a float64 reference); fp16/bf16 inputs
1e-2 / 3e-2 (the probabilities are rounded to the input dtype before the value product, as in
FlashAttention; bf16 keeps 8 mantissa bits).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'jfdeploy[triton]')")

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY
from jfdeploy.kernels.topk_attention import topk_joint_attention, topk_joint_attention_reference

TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(batch, heads, rows, own, frames, per_frame, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(n):
        return torch.randn(batch, heads, n, dim, generator=g).to(DEVICE, dtype)

    return randn(rows), randn(own), randn(own), randn(frames * per_frame), randn(frames * per_frame)


def check(inputs, *, topk, frames=1, topk_range="all_frames", valid=None, scale=0.125):
    dtype = inputs[0].dtype
    got = topk_joint_attention(*inputs, scale=scale, topk=topk, frames=frames, topk_range=topk_range, ref_valid=valid)
    expected = topk_joint_attention_reference(
        *(t.double() for t in inputs), scale=scale, topk=topk, frames=frames, topk_range=topk_range, ref_valid=valid
    )
    assert got.dtype == dtype and got.shape == inputs[0].shape
    error = (got.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype], f"max error {error:.2e}"


# (batch, heads, rows, own keys, frames, keys per frame, head dim, k, range)
SWEEP = [
    (1, 1, 16, 16, 1, 16, 16, 1, "all_frames"),  # k = 1, one reference frame
    (2, 3, 37, 37, 3, 37, 64, 20, "all_frames"),
    (2, 3, 37, 37, 3, 37, 64, 20, "every_frame"),
    (1, 12, 35, 35, 2, 35, 64, 69, "all_frames"),  # k = all but one
    (1, 12, 35, 35, 2, 35, 64, 70, "all_frames"),  # k = all: plain softmax
    (2, 4, 24, 24, 5, 24, 32, 500, "all_frames"),  # k > available
    (1, 2, 100, 100, 4, 100, 64, 120, "all_frames"),  # the paper's k over T*N = 400
    (1, 2, 100, 100, 5, 100, 64, 60, "every_frame"),
    (1, 1, 20, 20, 5, 128, 64, 600, "all_frames"),  # the largest k: 1024-wide buffer
    (3, 2, 1, 30, 1, 30, 64, 8, "all_frames"),  # a single query row (the memory token's)
]


@pytest.mark.parametrize("case", SWEEP, ids=[f"{c[-1]}-k{c[-2]}-T{c[4]}-h{c[1]}" for c in SWEEP])
def test_matches_reference_fp32(case):
    *shape, topk, topk_range = case
    check(make_inputs(*shape, torch.float32), topk=topk, frames=shape[4], topk_range=topk_range)


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        INTERPRETED, reason="Triton's CPU interpreter computes tl.dot wrongly on bfloat16 (numpy has no bf16); GPU only"
    ),
)


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
@pytest.mark.parametrize("topk_range", ["all_frames", "every_frame"])
def test_matches_reference_half_precision(dtype, topk_range):
    check(make_inputs(2, 4, 40, 40, 3, 40, 64, dtype, seed=1), topk=30, frames=3, topk_range=topk_range)


def test_empty_slots_and_padded_objects():
    inputs = make_inputs(3, 2, 30, 30, 4, 30, 64, torch.float32, seed=2)
    valid = torch.ones(3, 120, dtype=torch.bool, device=DEVICE)
    valid[0, 60:] = False  # two empty memory slots
    valid[1, 30:60] = False  # an empty slot in the middle
    valid[2] = False  # a padded object: no reference at all
    check(inputs, topk=40, frames=4, valid=valid)
    check(inputs, topk=10, frames=4, topk_range="every_frame", valid=valid)


def test_strided_views_as_the_model_passes_them():
    qkv = torch.randn(2, 37, 3, 12, 64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # B x heads x N x d views, not contiguous
    refs = torch.randn(2, 2, 12, 74, 64, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    check((q, k, v, refs[0], refs[1]), topk=20, frames=2)


def test_exact_ties_keep_the_lowest_key_indices():
    """Scores exactly equal at the k-th place: the kernel keeps the lowest key indices."""
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-1, 2, (1, 1, 16, 16), generator=g).float() * 0.5
    k_own = torch.randint(-1, 2, (1, 1, 16, 16), generator=g).float() * 0.5
    v_own = torch.randn(1, 1, 16, 16, generator=g)
    k_ref = torch.randint(-1, 2, (1, 1, 4, 16), generator=g).float().repeat(1, 1, 16, 1) * 0.5  # 4 keys x 16 copies
    v_ref = torch.randn(1, 1, 64, 16, generator=g)
    got = topk_joint_attention(*(t.to(DEVICE) for t in (q, k_own, v_own, k_ref, v_ref)), scale=0.25, topk=10)
    # expected: a stable descending sort (ties in index order), first k, one softmax
    scores_own, scores_ref = (q @ k_own.mT) * 0.25, (q @ k_ref.mT) * 0.25
    order = scores_ref.sort(dim=-1, descending=True, stable=True).indices[..., :10]
    kept = torch.full_like(scores_ref, float("-inf")).scatter(-1, order, scores_ref.gather(-1, order))
    probs = torch.cat([scores_own, kept], dim=-1).softmax(-1)
    expected = probs[..., :16] @ v_own + probs[..., 16:] @ v_ref
    assert (got.cpu() - expected).abs().max().item() < 1e-5


def test_golden_clip_with_triton_attention(model32, golden):
    model = model32 if DEVICE == "cpu" else copy.deepcopy(model32).to(DEVICE)
    seg = jfdeploy.Segmenter(
        model,
        mem_every=GOLDEN_MEM_EVERY,
        max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
        backend="torch",
        attention="triton",
    )
    seg.step(torch.from_numpy(golden["frames"][0]).to(DEVICE), mask=torch.from_numpy(golden["mask_t0"]).to(DEVICE))
    prob = seg.step(torch.from_numpy(golden["frames"][1]).to(DEVICE))
    assert np.abs(prob.cpu().numpy() - golden["prob_t1"]).max() <= 1e-4


def test_float64_is_refused_with_triton(model64):
    with pytest.raises(jfdeploy.InputError, match="float64"):
        jfdeploy.Segmenter(model64, backend="torch", attention="triton")
