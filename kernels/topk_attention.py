"""Fused top-k joint attention in OpenAI Triton.

What it computes
----------------
JointFormer's joint-block attention for current-token query rows (``jfdeploy.model.attention``,
the published formulation, re-exported here as ``topk_joint_attention_reference``): each query row
scores its *own* keys (the current frame's tokens) and the *reference* keys (T frames of R tokens);
only the k largest reference scores are kept (over all T*R, or within each frame with
``every_frame``); one softmax runs over the own scores and the kept ones; the output is the
probability-weighted sum of the matching values. Reference keys marked invalid (empty memory
slots) never count and never receive probability.

The published code materializes the whole ``[heads, N, N + T*N]`` score matrix, runs ``torch.topk``,
scatters into zeros and softmaxes. This kernel never writes a score to memory: its only outputs
are the attention results, and its state is O(1) per query row, independent of k.

Design
------
One program owns ``BLOCK_M`` query rows of one (object, head). The own keys go through a
FlashAttention-style online softmax (running max, running sum, rescaled fp32 accumulator, base 2).
The reference keys are handled one selection segment at a time (the whole reference set, or one
frame with ``every_frame``) by several *passes* over the segment's keys in tiles of ``BLOCK_N``:

1. **Statistics pass**: per row, the number of valid keys n and the min, max, mean and standard
   deviation of their scores. A row with n <= k keeps every valid key and is done.
2. **Counting passes** (exact selection, no buffer): each row keeps a bracket [lo, hi] of its k-th
   largest score, with #(s >= lo) >= k and hi a score with #(s > hi) < k. A pass counts, for 5
   candidates c in (lo, hi], #(s >= c) and the largest score below c; the bracket then shrinks to
   the tightest candidates. Candidates: 3 guesses (first pass: the normal model mean + std * z,
   z around the upper k/n quantile; later passes: linear interpolation of the wanted rank inside
   the bracket, +-1.5 sampling spreads), the midpoint of [lo, hi] in the order-preserving integer
   image of fp32 (so the bracket's integer range at least halves every pass: at most 33 passes
   for any finite scores), and hi itself (finds a k-th largest value shared by several keys). A row
   is done when some c has exactly k scores >= c (rule: keep s >= c), or when its k-th largest
   score is known to be hi (rule: keep s > hi, plus the first k - #(s > hi) keys with s == hi).
   The guesses only steer the search; the counts make it exact.
3. **Accumulation pass**: the online softmax over the segment's kept keys. Keys tied at the
   threshold are kept in key order while the row's allowance lasts; in the one tile where it runs
   out, a bisection over the tile's columns (log2 BLOCK_N + 1 masked counts) finds the cut.

Scores, exactly: the selection runs on the raw fp32 products q.k (``tl.dot`` with fp32
accumulation; fp32 inputs use IEEE precision, no TF32); the softmax scale is applied afterwards
(a positive scale keeps the order, so the kept keys are also a top k of the scaled scores).
Every pass is an iteration of the *same* loop, which branches on the pass kind *after* computing
the tile's scores with its single ``tl.dot``: the counts and the accumulation filter see the
same instruction's results, bit for bit, by construction (no second kernel, no second dot with
another tile shape or precision). The value product sits outside the branches too (it adds zero
and loads nothing outside the accumulation pass), which keeps both products of the loop in one
region: Triton then gives them one MMA layout in which each warp owns whole rows.

Exactly tied scores: ``torch.topk`` does not specify which of several keys with the same score at
the k-th position it returns; this kernel keeps the ones with the lowest key index. Any other
selection is exactly the top k of the scores the kernel computed (which may differ from PyTorch's
matmul in the last bits, as any two matmul implementations do). k larger than the valid keys of
a segment keeps them all (plain softmax over the valid keys), as the reference does.

Cost (per segment of n reference keys): 2 + P passes over the keys, each reading the keys and
recomputing q.k on the tensor cores (the value product adds one MMA per tile, on zeros outside the
accumulation pass); per score element ~6 ALU operations in the statistics pass, ~4 per candidate
(~20) in a counting pass, FlashAttention's work in the accumulation pass. No compare-exchange
network: the previous, buffer-based design merged every tile into a sorted k-wide buffer
(log K (log K + 3) / 2 compare-exchange stages per tile, K the next power of two >= k) and spilled
from k = 120 on. P, the counting passes of a program (the maximum over its 64 rows), measured with
a NumPy model of this search: 3-5 for normal-like scores (n 1620..6480, k 20..600), 4-9 for
clustered or heavy-tailed scores, 2-3 with many ties; 33 at most. The registers do not depend on k
(k is a runtime argument: one compiled kernel serves every k); the launch configuration per dtype
and GPU generation is in ``_CONFIGS``, and ``jfdeploy kernels`` (``jfdeploy.kernels.report``)
compiles it ahead of time per arch and reports registers, spills and shared memory.

In Triton's CPU interpreter every call of a ``@triton.jit`` helper costs milliseconds, so the
per-tile and per-pass steps are written as few, larger helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from jfdeploy.model.attention import TopkRange
from jfdeploy.model.attention import topk_joint_attention as topk_joint_attention_reference

__all__ = [
    "MAX_TOPK",
    "KernelConfig",
    "LaunchPlan",
    "kernel_config",
    "plan_launch",
    "topk_joint_attention",
    "topk_joint_attention_reference",
]

MAX_TOPK = (1 << 30) - 1  # the selection's state does not grow with k (below the "keep all ties" value)
MAX_COUNTING_PASSES = 48  # never reached with finite scores (at most 33); ends the search on NaN scores
_KEEP_ALL_TIES: tl.constexpr = tl.constexpr(1 << 30)  # `ties` value: every key at the threshold is kept
_LOG2E = math.log2(math.e)


# --------------------------------------------------------------------------------------------
# tiles of scores
# --------------------------------------------------------------------------------------------


@triton.jit
def _score_tile(
    q, K, VALID, k_base, valid_base, stride_kn, stride_kd, stride_valid_n, key_start, first_key, key_end,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_VALID: tl.constexpr, FP32_INPUTS: tl.constexpr,
):  # fmt: skip
    """Raw fp32 scores q.k of the query rows against keys ``key_start + [first_key, first_key + BLOCK_N)``.

    Returns (scores BLOCK_M x BLOCK_N, -inf where a key is out of range or invalid; keep BLOCK_N;
    the keys' indices BLOCK_N).
    """
    cols = key_start + first_key + tl.arange(0, BLOCK_N)
    keep = (first_key + tl.arange(0, BLOCK_N)) < key_end
    if HAS_VALID:
        keep = keep & (tl.load(VALID + valid_base + cols * stride_valid_n, mask=keep, other=0) != 0)
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(K + k_base + cols[:, None] * stride_kn + dims[None, :] * stride_kd, mask=keep[:, None], other=0.0)
    if FP32_INPUTS:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return tl.where(keep[None, :], s, float("-inf")), keep, cols


# --------------------------------------------------------------------------------------------
# exact selection by counting
# --------------------------------------------------------------------------------------------


@triton.jit
def _start_search(s_max, s_neg_min, s_sum, s_sq, n_valid, row_live, topk):
    """The search's start from the statistics pass (per row: max, -min, sum, sum of squares, valid keys).

    Returns lo, hi, count_lo, count_above, mean, std. Rows that search start with the bracket
    [min, max] (#(s >= min) = n > k, nothing above max); rows with at most k valid keys (or past M)
    get the finished state "exactly k scores >= -inf", whose rule keeps every valid key.
    """
    n = tl.maximum(n_valid, 1).to(tl.float32)
    mean = s_sum / n
    std = tl.sqrt(tl.maximum(s_sq / n - mean * mean, 0.0))
    search = row_live & (n_valid > topk)
    lo = tl.where(search, -s_neg_min, float("-inf"))
    hi = tl.where(search, s_max, 0.0)
    count_lo = tl.where(search, n_valid, topk)
    return lo, hi, count_lo, tl.zeros_like(n_valid), mean, std


@triton.jit
def _searching(lo, hi, count_lo, count_above, topk):
    """Rows whose k-th largest score is not known yet (see ``_rule``)."""
    return (count_lo != topk) & (lo != hi) & (count_above != topk - 1)


@triton.jit
def _rule(lo, hi, count_lo, count_above, topk):
    """(threshold, ties) of a finished search: keep s > threshold and the first `ties` keys (by key
    index) with s == threshold. Exactly k scores >= lo: (lo, every tie). Otherwise the k-th largest
    score is hi (the bracket holds one value, or k - 1 scores lie above hi): (hi, k - #(s > hi))."""
    exact = count_lo == topk
    return tl.where(exact, lo, hi), tl.where(exact, _KEEP_ALL_TIES, topk - count_above)


@triton.jit
def _candidates(first, lo, hi, mean, std, count_lo, count_above, topk):
    """The 5 candidates of a counting pass, each in (lo, hi] (see the module docstring).

    first: the first counting pass (count_lo is then the valid keys n; guesses from the normal model).
    """
    # the order-preserving integer image of fp32: sign-magnitude -> two's complement (-0, +0 -> 0)
    lo_bits = lo.to(tl.int32, bitcast=True)
    hi_bits = hi.to(tl.int32, bitcast=True)
    lo_key = tl.where(lo_bits < 0, -(lo_bits & 0x7FFFFFFF).to(tl.int64), (lo_bits & 0x7FFFFFFF).to(tl.int64))
    hi_key = tl.where(hi_bits < 0, -(hi_bits & 0x7FFFFFFF).to(tl.int64), (hi_bits & 0x7FFFFFFF).to(tl.int64))
    up_key = lo_key + 1  # the next float above lo
    mid_key = (lo_key + hi_key + 1) >> 1  # in (lo, hi]
    lo_up = tl.where(up_key < 0, -up_key - 2147483648, up_key).to(tl.int32).to(tl.float32, bitcast=True)
    mid = tl.where(mid_key < 0, -mid_key - 2147483648, mid_key).to(tl.int32).to(tl.float32, bitcast=True)

    # first pass: z with P(Z > z) = k / n for a standard normal Z (Abramowitz-Stegun 26.2.23, |error| < 5e-4)
    n = tl.maximum(count_lo, 1).to(tl.float32)
    p = tl.minimum(tl.maximum(topk.to(tl.float32) / n, 0.5 / n), 1.0 - 0.5 / n)
    t = tl.sqrt(-2.0 * tl.log(tl.minimum(p, 1.0 - p)))
    z = t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308)))
    z = tl.where(p < 0.5, z, -z)
    # later passes: the wanted score is the `rank`-th largest of the `within` scores in [lo, hi]
    within = tl.maximum(count_lo - count_above, 1).to(tl.float32)
    rank = (topk - count_above).to(tl.float32)
    spread = tl.maximum(tl.sqrt(tl.maximum(rank * (within - rank) / within, 0.0)), 1.0)
    step = tl.where(lo > float("-inf"), (hi - lo) / within, 0.0)  # score per rank, were they evenly spread
    g0 = tl.where(first, mean + std * (z + 0.2), hi - step * (rank + 0.5 - 1.5 * spread))
    g1 = tl.where(first, mean + std * z, hi - step * (rank + 0.5))
    g2 = tl.where(first, mean + std * (z - 0.2), hi - step * (rank + 0.5 + 1.5 * spread))
    # into (lo, hi]; NaN (inf - inf) -> hi
    c0 = tl.minimum(tl.maximum(tl.where(g0 == g0, g0, hi), lo_up), hi)
    c1 = tl.minimum(tl.maximum(tl.where(g1 == g1, g1, hi), lo_up), hi)
    c2 = tl.minimum(tl.maximum(tl.where(g2 == g2, g2, hi), lo_up), hi)
    return c0, c1, c2, mid, hi


@triton.jit
def _count_tile(s, c0, c1, c2, c3, c4, n0, b0, n1, b1, n2, b2, n3, b3, n4, b4):
    """Per row and candidate c_j: n_j += #(s >= c_j) and b_j = max(b_j, largest s < c_j) over one tile."""
    above = s >= c0[:, None]
    n0 += tl.sum(above.to(tl.int32), axis=1)
    b0 = tl.maximum(b0, tl.max(tl.where(above, float("-inf"), s), axis=1))
    above = s >= c1[:, None]
    n1 += tl.sum(above.to(tl.int32), axis=1)
    b1 = tl.maximum(b1, tl.max(tl.where(above, float("-inf"), s), axis=1))
    above = s >= c2[:, None]
    n2 += tl.sum(above.to(tl.int32), axis=1)
    b2 = tl.maximum(b2, tl.max(tl.where(above, float("-inf"), s), axis=1))
    above = s >= c3[:, None]
    n3 += tl.sum(above.to(tl.int32), axis=1)
    b3 = tl.maximum(b3, tl.max(tl.where(above, float("-inf"), s), axis=1))
    above = s >= c4[:, None]
    n4 += tl.sum(above.to(tl.int32), axis=1)
    b4 = tl.maximum(b4, tl.max(tl.where(above, float("-inf"), s), axis=1))
    return n0, b0, n1, b1, n2, b2, n3, b3, n4, b4


@triton.jit
def _fold_counts(lo, count_lo, hi, count_above, topk, c0, c1, c2, c3, c4, n0, b0, n1, b1, n2, b2, n3, b3, n4, b4):
    """Tighten the bracket with a pass's counts (n_j = #(s >= c_j), b_j = largest s < c_j).

    #(s >= c) does not grow with c, so: lo = the largest c_j with n_j >= k (count_lo its count,
    the smallest such); hi = the largest score below the smallest c_j with n_j < k (the smallest
    such b_j; count_above its count, the largest such).
    """
    lo = tl.maximum(lo, tl.where(n0 >= topk, c0, lo))
    lo = tl.maximum(lo, tl.where(n1 >= topk, c1, lo))
    lo = tl.maximum(lo, tl.where(n2 >= topk, c2, lo))
    lo = tl.maximum(lo, tl.where(n3 >= topk, c3, lo))
    lo = tl.maximum(lo, tl.where(n4 >= topk, c4, lo))
    count_lo = tl.minimum(count_lo, tl.where(n0 >= topk, n0, count_lo))
    count_lo = tl.minimum(count_lo, tl.where(n1 >= topk, n1, count_lo))
    count_lo = tl.minimum(count_lo, tl.where(n2 >= topk, n2, count_lo))
    count_lo = tl.minimum(count_lo, tl.where(n3 >= topk, n3, count_lo))
    count_lo = tl.minimum(count_lo, tl.where(n4 >= topk, n4, count_lo))
    hi = tl.minimum(hi, tl.where(n0 < topk, b0, hi))
    hi = tl.minimum(hi, tl.where(n1 < topk, b1, hi))
    hi = tl.minimum(hi, tl.where(n2 < topk, b2, hi))
    hi = tl.minimum(hi, tl.where(n3 < topk, b3, hi))
    hi = tl.minimum(hi, tl.where(n4 < topk, b4, hi))
    count_above = tl.maximum(count_above, tl.where(n0 < topk, n0, count_above))
    count_above = tl.maximum(count_above, tl.where(n1 < topk, n1, count_above))
    count_above = tl.maximum(count_above, tl.where(n2 < topk, n2, count_above))
    count_above = tl.maximum(count_above, tl.where(n3 < topk, n3, count_above))
    count_above = tl.maximum(count_above, tl.where(n4 < topk, n4, count_above))
    return lo, count_lo, hi, count_above


@triton.jit
def _tie_cut(tied, allowed, BLOCK_N: tl.constexpr, LOG_BLOCK_N: tl.constexpr):
    """Per row, the smallest column cut in [0, BLOCK_N] with #(tied keys at columns < cut) >= allowed
    (bisection; allowed <= 0 gives 0). Keeping the tied keys left of the cut keeps the first
    `allowed` of them, in key order."""
    columns = tl.arange(0, BLOCK_N)[None, :]
    low = tl.zeros_like(allowed)
    high = tl.zeros_like(allowed) + BLOCK_N
    for _ in tl.static_range(LOG_BLOCK_N + 1):
        middle = (low + high) // 2
        enough = tl.sum((tied & (columns < middle[:, None])).to(tl.int32), axis=1) >= allowed
        high = tl.where(enough, middle, high)
        low = tl.where(enough, low, middle + 1)
    return high


# fmt: off
@triton.jit
def _topk_joint_attention_kernel(
    Q, K_OWN, V_OWN, K_REF, V_REF, VALID, OUT,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_rkz, stride_rkh, stride_rkn, stride_rkd,
    stride_rvz, stride_rvh, stride_rvn, stride_rvd,
    stride_valid_z, stride_valid_n,
    stride_oz, stride_oh, stride_om, stride_od,
    NUM_HEADS, M, N_OWN, SEGMENT_LEN, NUM_SEGMENTS, TOPK, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SELECT: tl.constexpr, HAS_VALID: tl.constexpr, FP32_INPUTS: tl.constexpr, MAX_PASSES: tl.constexpr,
    LOG_BLOCK_N: tl.constexpr,
):
    """Q: Z x heads x M x HEAD_DIM; K_OWN/V_OWN: Z x heads x N_OWN x HEAD_DIM;
    K_REF/V_REF: Z x heads x (NUM_SEGMENTS*SEGMENT_LEN) x HEAD_DIM; VALID: Z x keys (int8, if HAS_VALID).
    qk_scale = scale * log2(e). Grid: (cdiv(M, BLOCK_M), Z * heads)."""
    # fmt: on
    tl.static_assert(BLOCK_M >= 16, "tl.dot needs at least 16 rows")
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
    z = pid_zh // NUM_HEADS
    h = pid_zh % NUM_HEADS

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_live = rows < M
    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + z * stride_qz + h * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_live[:, None], other=0.0)
    v_dtype = V_REF.dtype.element_ty

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of kept score * qk_scale
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of 2^(score * qk_scale - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # own keys: every score counts
    own_k_base = z * stride_kz + h * stride_kh
    own_v_base = z * stride_vz + h * stride_vh
    for first_key in range(0, N_OWN, BLOCK_N):
        s, keep, cols = _score_tile(
            q, K_OWN, VALID, own_k_base, 0, stride_kn, stride_kd, 0, 0, first_key, N_OWN,
            HEAD_DIM, BLOCK_N, False, FP32_INPUTS,
        )
        s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        v = tl.load(V_OWN + own_v_base + cols[:, None] * stride_vn + dims[None, :] * stride_vd,
                    mask=keep[:, None], other=0.0)
        if FP32_INPUTS:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v_dtype), v)

    # reference keys, one selection segment at a time; every pass over a segment is an iteration
    # of the `while` below, and all of them run the same tile loop (one tl.dot for every reference
    # score), branching on `phase`: 0 statistics, 1 counting, 2 accumulation (3: done)
    ref_k_base = z * stride_rkz + h * stride_rkh
    ref_v_base = z * stride_rvz + h * stride_rvh
    valid_base = z * stride_valid_z
    minus_inf = tl.full([BLOCK_M], float("-inf"), tl.float32)
    zero_f = tl.zeros([BLOCK_M], tl.float32)
    zero = tl.zeros([BLOCK_M], tl.int32)
    for segment in range(0, NUM_SEGMENTS):
        key_start = segment * SEGMENT_LEN
        # the search, per row: the bracket [lo, hi] of the k-th largest score, #(s >= lo) = count_lo
        # >= k and hi a score with #(s > hi) = count_above < k; mean, std: the first pass's normal model.
        # The start state "exactly k scores >= -inf" means: keep every valid key (no selection).
        lo, hi, mean, std = minus_inf, zero_f, zero_f, zero_f
        count_lo, count_above = zero + TOPK, zero
        if SELECT:
            phase = tl.full((), 0, tl.int32)
        else:
            phase = tl.full((), 2, tl.int32)
        passes = 0
        while phase < 3:
            c0, c1, c2, c3, c4 = _candidates(passes == 0, lo, hi, mean, std, count_lo, count_above, TOPK)
            threshold, ties = _rule(lo, hi, count_lo, count_above, TOPK)
            # per-pass accumulators; phase 0 uses n0 = valid keys, b0 = max, b1 = -min, b2 = sum,
            # b3 = sum of squares; phase 2 uses n0 = tied keys kept so far
            n0, b0, n1, b1, n2, b2 = zero, minus_inf, zero, minus_inf, zero, minus_inf
            n3, b3, n4, b4 = zero, minus_inf, zero, minus_inf
            if phase == 0:
                b2, b3 = zero_f, zero_f
            for first_key in range(0, SEGMENT_LEN, BLOCK_N):
                s, keep, cols = _score_tile(
                    q, K_REF, VALID, ref_k_base, valid_base, stride_rkn, stride_rkd, stride_valid_n, key_start,
                    first_key, SEGMENT_LEN, HEAD_DIM, BLOCK_N, HAS_VALID, FP32_INPUTS,
                )
                p = tl.zeros([BLOCK_M, BLOCK_N], v_dtype)
                alpha = tl.full([BLOCK_M], 1.0, tl.float32)
                if phase == 2:  # accumulation of the kept keys
                    tied = (s == threshold[:, None]) & keep[None, :]
                    tied_here = tl.sum(tied.to(tl.int32), axis=1)
                    allowed = ties - n0  # tied keys this row may still keep
                    cut = tl.full([BLOCK_M], BLOCK_N, tl.int32)  # keep the tied keys at columns < cut
                    if tl.max((tied_here > allowed).to(tl.int32), axis=0) > 0:  # the tile where ties run out
                        cut = tl.where(tied_here > allowed, _tie_cut(tied, allowed, BLOCK_N, LOG_BLOCK_N), cut)
                    n0 += tl.minimum(tied_here, tl.maximum(allowed, 0))
                    chosen = (s > threshold[:, None]) | (tied & (tl.arange(0, BLOCK_N)[None, :] < cut[:, None]))
                    s_kept = tl.where(chosen & keep[None, :], s * qk_scale, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s_kept, axis=1))
                    alpha = tl.exp2(m_i - m_new)
                    p_f32 = tl.exp2(s_kept - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p_f32, axis=1)
                    m_i = m_new
                    p = p_f32.to(v_dtype)
                elif phase == 1:  # counting
                    n0, b0, n1, b1, n2, b2, n3, b3, n4, b4 = _count_tile(
                        s, c0, c1, c2, c3, c4, n0, b0, n1, b1, n2, b2, n3, b3, n4, b4
                    )
                else:  # statistics
                    b0 = tl.maximum(b0, tl.max(s, axis=1))
                    b1 = tl.maximum(b1, tl.max(tl.where(keep[None, :], -s, float("-inf")), axis=1))
                    s_valid = tl.where(keep[None, :], s, 0.0)
                    b2 += tl.sum(s_valid, axis=1)
                    b3 += tl.sum(s_valid * s_valid, axis=1)
                    n0 += tl.sum(keep.to(tl.int32), axis=0)
                # the value product, outside the branches (see the module docstring): adds 0 and
                # loads nothing (masked) outside phase 2. (The load mask is built as a vector: the
                # interpreter cannot mask a load with a tensor & scalar.)
                load_v = keep & ((tl.zeros([BLOCK_N], tl.int32) + phase) == 2)
                v = tl.load(V_REF + ref_v_base + cols[:, None] * stride_rvn + dims[None, :] * stride_rvd,
                            mask=load_v[:, None], other=0.0)
                if FP32_INPUTS:
                    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
                else:
                    acc = acc * alpha[:, None] + tl.dot(p, v)
            if phase == 0:
                lo, hi, count_lo, count_above, mean, std = _start_search(b0, b1, b2, b3, n0, row_live, TOPK)
                phase = tl.where(tl.max(_searching(lo, hi, count_lo, count_above, TOPK).to(tl.int32), axis=0) > 0, 1, 2)
            elif phase == 1:
                searching = _searching(lo, hi, count_lo, count_above, TOPK)
                new_lo, new_count_lo, new_hi, new_count_above = _fold_counts(
                    lo, count_lo, hi, count_above, TOPK, c0, c1, c2, c3, c4, n0, b0, n1, b1, n2, b2, n3, b3, n4, b4
                )
                lo = tl.where(searching, new_lo, lo)
                count_lo = tl.where(searching, new_count_lo, count_lo)
                hi = tl.where(searching, new_hi, hi)
                count_above = tl.where(searching, new_count_above, count_above)
                passes += 1
                # done when no row searches; MAX_PASSES only ends a search on NaN scores (no exactness claim)
                if (tl.max(_searching(lo, hi, count_lo, count_above, TOPK).to(tl.int32), axis=0) == 0) | (
                    passes >= MAX_PASSES
                ):
                    phase = 2
            else:
                phase = 3

    out = acc / l_i[:, None]
    o_ptrs = OUT + z * stride_oz + h * stride_oh + rows[:, None] * stride_om + dims[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_live[:, None])


# --------------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one compiled kernel."""

    block_m: int  # query rows per program
    block_n: int  # keys per tile (own and reference keys, every pass)
    num_warps: int
    num_stages: int
    # ptxas's register cap (.maxnreg). Without one, ptxas may aim at a higher occupancy and spill
    # (seen: fp32 on sm_86 capped at 168 registers with 8 spill bytes; with the cap 255: 194, none).
    maxnreg: int | None = 255


# (dtype, arch family) -> config; "sm80": sm_80/86/89 (mma.sync), "sm90": Hopper, None: the CPU
# interpreter (large tiles: fewer interpreted steps). k does not enter: the registers do not depend
# on it. 64 x 32 tiles with 4 warps give each warp 16 whole rows (row reductions within the warp);
# fp32 (IEEE, FMA dot) holds whole operand rows per thread, hence its small tiles.
# ``jfdeploy kernels`` compiles these for every arch: 0 spill bytes, <= 32 KB shared memory.
_CONFIGS: dict[tuple[torch.dtype, str | None], KernelConfig] = {
    (torch.float16, "sm80"): KernelConfig(64, 32, 4, 2),
    (torch.bfloat16, "sm80"): KernelConfig(64, 32, 4, 2),
    (torch.float32, "sm80"): KernelConfig(16, 16, 4, 2),
    (torch.float16, "sm90"): KernelConfig(64, 32, 4, 2),
    (torch.bfloat16, "sm90"): KernelConfig(64, 32, 4, 2),
    (torch.float32, "sm90"): KernelConfig(16, 16, 4, 2),
    (torch.float16, None): KernelConfig(64, 64, 4, 2),
    (torch.bfloat16, None): KernelConfig(64, 64, 4, 2),
    (torch.float32, None): KernelConfig(64, 64, 4, 2),
}


def _arch_family(capability: int | None) -> str | None:
    if capability is None:
        return None
    return "sm90" if capability >= 90 else "sm80"


def kernel_config(dtype: torch.dtype, head_dim: int, capability: int | None) -> KernelConfig:
    """The configuration the wrapper launches for ``dtype`` on compute capability ``capability``
    (e.g. 86 for sm_86; None: the CPU interpreter)."""
    config = _CONFIGS[(dtype, _arch_family(capability))]
    if head_dim >= 128 and config.block_m > 32:
        config = replace(config, block_m=32, block_n=min(config.block_n, 32))
    return config


@dataclass(frozen=True)
class LaunchPlan:
    """Everything one launch passes to the kernel: what ``topk_joint_attention`` launches and what
    ``jfdeploy.kernels.report`` compiles ahead of time."""

    grid: tuple[int, int]
    args: tuple  # runtime arguments, in the kernel's order
    constexprs: dict[str, int | bool]
    config: KernelConfig

    @property
    def options(self) -> dict[str, int]:
        """The compile options of the launch (num_warps, num_stages, maxnreg when set)."""
        options = {"num_warps": self.config.num_warps, "num_stages": self.config.num_stages}
        if self.config.maxnreg is not None:
            options["maxnreg"] = self.config.maxnreg
        return options


def _device_capability(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def plan_launch(
    q: torch.Tensor,
    k_own: torch.Tensor,
    v_own: torch.Tensor,
    k_ref: torch.Tensor,
    v_ref: torch.Tensor,
    out: torch.Tensor,
    *,
    scale: float,
    topk: int | None,
    frames: int = 1,
    topk_range: TopkRange = "all_frames",
    ref_valid: torch.Tensor | None = None,
    capability: int | None = None,
    config: KernelConfig | None = None,
) -> LaunchPlan:
    """Check the inputs and build the launch (see ``topk_joint_attention``); ``ref_valid`` already int8."""
    b, heads, m, d = q.shape
    num_ref = k_ref.shape[2]
    dtypes = {t.dtype for t in (q, k_own, v_own, k_ref, v_ref)}
    assert len(dtypes) == 1 and q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"dtypes {dtypes}"
    assert d in (16, 32, 64, 128, 256), f"head dim must be a power of two in 16..256, got {d}"
    assert k_own.shape[:2] == v_own.shape[:2] == k_ref.shape[:2] == v_ref.shape[:2] == (b, heads), "batch/heads"
    assert k_own.shape[2] >= 1, "at least one own key"
    assert topk_range in ("all_frames", "every_frame"), f"topk_range {topk_range!r}"
    if topk_range == "every_frame":
        assert num_ref % frames == 0, f"{num_ref} reference keys do not split into {frames} frames"
        segments, segment_len = frames, num_ref // frames
    else:
        segments, segment_len = 1, num_ref
    select = topk is not None and topk < segment_len
    if select:
        assert topk is not None and 1 <= topk <= MAX_TOPK, f"k must be in 1..{MAX_TOPK}, got {topk}"
    if ref_valid is not None:
        assert ref_valid.shape == (b, num_ref) and ref_valid.dtype == torch.int8, "ref_valid: B x keys int8"
        valid = ref_valid
    else:
        valid = torch.ones(1, 1, dtype=torch.int8, device=q.device)  # unused
    if config is None:
        config = kernel_config(q.dtype, d, capability)
    grid = (triton.cdiv(m, config.block_m), b * heads)
    args = (
        q, k_own, v_own, k_ref, v_ref, valid, out,
        *q.stride(), *k_own.stride(), *v_own.stride(), *k_ref.stride(), *v_ref.stride(), *valid.stride(), *out.stride(),
        heads, m, k_own.shape[2], segment_len, segments, topk if select else 0, scale * _LOG2E,
    )  # fmt: skip
    constexprs = dict(
        HEAD_DIM=d,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        SELECT=select,
        HAS_VALID=ref_valid is not None,
        FP32_INPUTS=q.dtype == torch.float32,
        MAX_PASSES=MAX_COUNTING_PASSES,
        LOG_BLOCK_N=config.block_n.bit_length() - 1,
    )
    return LaunchPlan(grid, args, constexprs, config)


def topk_joint_attention(
    q: torch.Tensor,
    k_own: torch.Tensor,
    v_own: torch.Tensor,
    k_ref: torch.Tensor,
    v_ref: torch.Tensor,
    *,
    scale: float,
    topk: int | None,
    frames: int = 1,
    topk_range: TopkRange = "all_frames",
    ref_valid: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``topk_joint_attention_reference`` (B x heads x rows x d tensors), fused.

    fp32/fp16/bf16 inputs (one dtype for all), head dim a power of two in 16..256, any k; the output
    has the inputs' dtype. ``config`` overrides the tile sizes (tests and benchmarks).
    """
    out = torch.empty_like(q)
    valid = ref_valid.to(torch.int8) if ref_valid is not None else None
    plan = plan_launch(
        q, k_own, v_own, k_ref, v_ref, out, scale=scale, topk=topk, frames=frames, topk_range=topk_range,
        ref_valid=valid, capability=_device_capability(q.device), config=config,
    )  # fmt: skip
    _topk_joint_attention_kernel[plan.grid](*plan.args, **plan.constexprs, **plan.options)
    return out
