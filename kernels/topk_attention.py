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
are the attention results, and its only state lives in registers (workspace O(1) per row).

Design
------
One program owns ``BLOCK_M`` query rows of one (object, head) and walks the keys twice per
selection segment (the whole reference set, or one frame):

1. **Selection pass** over the segment's reference keys in tiles of ``REF_BLOCK`` keys
   (``REF_BLOCK = K_PAD``, the next power of two >= k). Each row keeps its ``K_PAD`` largest
   scores so far, sorted, in registers. A tile is merged with a bitonic network (sort the tile
   ascending, elementwise max with the buffer = Batcher's half-cleaner, one bitonic merge:
   ``log K (log K + 3) / 2`` compare-exchange stages over ``K_PAD`` columns); tiles with no score
   above any row's current k-th value are skipped. The compare-exchange is written with reshape /
   split / join rather than ``tl.sort``, whose reductions make the CPU interpreter ~100x slower.
   At the end, ``threshold`` = each row's k-th largest score and ``ties`` = how many scores equal
   to it belong to the top k.
2. **Accumulation pass**: a FlashAttention-style online softmax (running max, running sum,
   rescaled fp32 accumulator) over the own keys (tiles of ``BLOCK_N``), then over the segment's
   reference keys, recomputing the scores with the *same* helper and the *same* tile shape as the
   selection pass (so they are bit-identical) and keeping a reference score iff it is valid and
   ``> threshold``, or ``== threshold`` and among the first ``ties`` such keys (by key index).

Scores are computed in fp32 (``tl.dot`` with fp32 accumulation; fp32 inputs use IEEE precision,
no TF32), probabilities are cast to the value dtype for the second ``tl.dot``, the accumulator is
fp32. Cost: the reference scores are computed twice (two tensor-core passes) and each merge costs a
bitonic sort + merge of ``K_PAD`` elements per row; the own keys once.

Exactly tied scores: ``torch.topk`` does not specify which of several keys with the same score at
the k-th position it returns; this kernel keeps the ones with the lowest key index. Any other
selection is exactly the top k of the scores the kernel computed (which may differ from PyTorch's
matmul in the last bits, as any two matmul implementations do).

k larger than the candidates of a segment keeps them all (plain softmax over the valid keys), as
the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jfdeploy.model.attention import TopkRange
from jfdeploy.model.attention import topk_joint_attention as topk_joint_attention_reference

__all__ = ["MAX_TOPK", "topk_joint_attention", "topk_joint_attention_reference"]

MAX_TOPK = 1024  # K_PAD may not exceed this (register budget of the merge)
BLOCK_M = 16  # query rows per program (the minimum M of tl.dot)
BLOCK_N = 32  # own keys per tile in the accumulation pass


@triton.jit
def _compare_swap(
    x, ROWS: tl.constexpr, K: tl.constexpr, J: tl.constexpr, SIZE: tl.constexpr, DESCENDING: tl.constexpr
):
    """One bitonic stage along dim 1 of x (ROWS x K): element i meets i ^ J.

    Within each SIZE-long block the first half is ordered ascending and the second descending
    (SIZE > K: the whole row ascending); DESCENDING reverses both.
    """
    BLOCKS: tl.constexpr = K // (2 * J)
    a, b = tl.split(tl.permute(tl.reshape(x, [ROWS, BLOCKS, 2, J]), (0, 1, 3, 2)))  # i, i ^ J
    low, high = tl.minimum(a, b), tl.maximum(a, b)
    block = tl.arange(0, BLOCKS)[None, :, None]
    reverse = ((block * (2 * J)) & SIZE) != 0
    if DESCENDING:
        reverse = ~reverse
    first, second = tl.where(reverse, high, low), tl.where(reverse, low, high)
    return tl.reshape(tl.permute(tl.join(first, second), (0, 1, 3, 2)), [ROWS, K])


@triton.jit
def _merge_top(best, tile, ROWS: tl.constexpr, K: tl.constexpr, LOG_K: tl.constexpr):
    """Rows of ``best`` (ROWS x K, sorted descending) <- the K largest of [best; tile], sorted descending.

    Bitonic: sort the tile ascending, take the elementwise max with ``best`` (a bitonic sequence
    holding the K largest of both, Batcher's half-cleaner), then one bitonic merge.
    """
    for stage in tl.static_range(1, LOG_K + 1):
        for sub in tl.static_range(stage):
            tile = _compare_swap(tile, ROWS, K, 1 << (stage - 1 - sub), 1 << stage, False)
    top = tl.maximum(best, tile)
    for sub in tl.static_range(LOG_K):
        top = _compare_swap(top, ROWS, K, 1 << (LOG_K - 1 - sub), 2 * K, True)
    return top


@triton.jit
def _scores(q, k_ptrs, key_mask, scale, FP32_INPUTS: tl.constexpr):
    """BLOCK_M x TILE fp32 scores of q (BLOCK_M x HEAD_DIM) against one tile of keys."""
    k = tl.load(k_ptrs, mask=key_mask[:, None], other=0.0)  # TILE x HEAD_DIM
    if FP32_INPUTS:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s * scale


@triton.jit
def _online_softmax_update(s, v, m_i, l_i, acc, FP32_INPUTS: tl.constexpr):
    """Fold a BLOCK_M x TILE tile of scores (-inf = excluded) and its values into the running state."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if FP32_INPUTS:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


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
    NUM_HEADS, M, N_OWN, SEGMENT_LEN, NUM_SEGMENTS, TOPK, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    REF_BLOCK: tl.constexpr, LOG_REF_BLOCK: tl.constexpr,
    SELECT: tl.constexpr, HAS_VALID: tl.constexpr, FP32_INPUTS: tl.constexpr,
):
    """Q: Z x heads x M x HEAD_DIM; K_OWN/V_OWN: Z x heads x N_OWN x HEAD_DIM;
    K_REF/V_REF: Z x heads x (NUM_SEGMENTS*SEGMENT_LEN) x HEAD_DIM; VALID: Z x keys (int8, if HAS_VALID).
    Grid: (cdiv(M, BLOCK_M), Z * heads)."""
    # fmt: on
    tl.static_assert(BLOCK_M >= 16, "tl.dot needs at least 16 rows")
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
    z = pid_zh // NUM_HEADS
    h = pid_zh % NUM_HEADS

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + z * stride_qz + h * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(rows < M)[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # own keys: every score counts
    own_cols = tl.arange(0, BLOCK_N)
    for start in range(0, N_OWN, BLOCK_N):
        cols = start + own_cols
        in_range = cols < N_OWN
        k_ptrs = K_OWN + z * stride_kz + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd
        s = _scores(q, k_ptrs, in_range, scale, FP32_INPUTS)
        s = tl.where(in_range[None, :], s, float("-inf"))
        v_ptrs = V_OWN + z * stride_vz + h * stride_vh + cols[:, None] * stride_vn + dims[None, :] * stride_vd
        v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        m_i, l_i, acc = _online_softmax_update(s, v, m_i, l_i, acc, FP32_INPUTS)

    ref_cols = tl.arange(0, REF_BLOCK)
    for segment in range(0, NUM_SEGMENTS):
        seg_start = segment * SEGMENT_LEN
        threshold = tl.full([BLOCK_M], float("-inf"), tl.float32)
        ties = tl.zeros([BLOCK_M], tl.int32)
        if SELECT:
            # pass 1: each row's k-th largest valid score of the segment
            best = tl.full([BLOCK_M, REF_BLOCK], float("-inf"), tl.float32)  # sorted, descending
            for start in range(0, SEGMENT_LEN, REF_BLOCK):
                cols = seg_start + start + ref_cols
                keep = (start + ref_cols) < SEGMENT_LEN
                if HAS_VALID:
                    keep = keep & (tl.load(VALID + z * stride_valid_z + cols * stride_valid_n, mask=keep, other=0) != 0)
                k_ptrs = (K_REF + z * stride_rkz + h * stride_rkh
                          + cols[:, None] * stride_rkn + dims[None, :] * stride_rkd)  # fmt: skip
                s = tl.where(keep[None, :], _scores(q, k_ptrs, keep, scale, FP32_INPUTS), float("-inf"))
                if tl.sum(tl.sum((s > threshold[:, None]).to(tl.int32), axis=1), axis=0) > 0:
                    best = _merge_top(best, s, BLOCK_M, REF_BLOCK, LOG_REF_BLOCK)
                    threshold = tl.sum(tl.where(ref_cols[None, :] == TOPK - 1, best, 0.0), axis=1)
            above = tl.sum((best > threshold[:, None]).to(tl.int32), axis=1)
            ties = TOPK - above  # keys equal to the threshold that belong to the top k

        # pass 2: accumulate the kept reference keys
        ties_seen = tl.zeros([BLOCK_M], tl.int32)
        for start in range(0, SEGMENT_LEN, REF_BLOCK):
            cols = seg_start + start + ref_cols
            keep = (start + ref_cols) < SEGMENT_LEN
            if HAS_VALID:
                keep = keep & (tl.load(VALID + z * stride_valid_z + cols * stride_valid_n, mask=keep, other=0) != 0)
            k_ptrs = K_REF + z * stride_rkz + h * stride_rkh + cols[:, None] * stride_rkn + dims[None, :] * stride_rkd
            s = tl.where(keep[None, :], _scores(q, k_ptrs, keep, scale, FP32_INPUTS), float("-inf"))
            if SELECT:
                tied = (s == threshold[:, None]) & keep[None, :]
                rank = tl.cumsum(tied.to(tl.int32), axis=1) + ties_seen[:, None]  # 1-based among ties
                ties_seen += tl.sum(tied.to(tl.int32), axis=1)
                selected = (s > threshold[:, None]) | (tied & (rank <= ties[:, None]))
                s = tl.where(selected & keep[None, :], s, float("-inf"))
            v_ptrs = V_REF + z * stride_rvz + h * stride_rvh + cols[:, None] * stride_rvn + dims[None, :] * stride_rvd
            v = tl.load(v_ptrs, mask=keep[:, None], other=0.0)
            m_i, l_i, acc = _online_softmax_update(s, v, m_i, l_i, acc, FP32_INPUTS)

    out = acc / l_i[:, None]
    o_ptrs = OUT + z * stride_oz + h * stride_oh + rows[:, None] * stride_om + dims[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(rows < M)[:, None])


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
) -> torch.Tensor:
    """Same contract as ``topk_joint_attention_reference`` (B x heads x rows x d tensors), fused.

    fp32/fp16/bf16 inputs (one dtype for all), head dim a power of two in 16..256, k up to
    ``MAX_TOPK``; the output has the inputs' dtype.
    """
    b, heads, m, d = q.shape
    num_ref = k_ref.shape[2]
    dtypes = {t.dtype for t in (q, k_own, v_own, k_ref, v_ref)}
    assert len(dtypes) == 1 and q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"dtypes {dtypes}"
    assert d in (16, 32, 64, 128, 256), f"head dim must be a power of two in 16..256, got {d}"
    assert k_own.shape[:2] == v_own.shape[:2] == k_ref.shape[:2] == v_ref.shape[:2] == (b, heads), "batch/heads"
    assert topk_range in ("all_frames", "every_frame"), f"topk_range {topk_range!r}"
    if topk_range == "every_frame":
        assert num_ref % frames == 0, f"{num_ref} reference keys do not split into {frames} frames"
        segments, segment_len = frames, num_ref // frames
    else:
        segments, segment_len = 1, num_ref
    select = topk is not None and topk < segment_len
    if select:
        assert 1 <= topk <= MAX_TOPK, f"k must be in 1..{MAX_TOPK}, got {topk}"
    ref_block = max(triton.next_power_of_2(topk), 16) if select else BLOCK_N
    if ref_valid is not None:
        assert ref_valid.shape == (b, num_ref), f"ref_valid {tuple(ref_valid.shape)} != {(b, num_ref)}"
        valid = ref_valid.to(torch.int8)
    else:
        valid = torch.ones(1, 1, dtype=torch.int8, device=q.device)  # unused
    out = torch.empty_like(q)
    grid = (triton.cdiv(m, BLOCK_M), b * heads)
    # fmt: off
    _topk_joint_attention_kernel[grid](
        q, k_own, v_own, k_ref, v_ref, valid, out,
        *q.stride(), *k_own.stride(), *v_own.stride(), *k_ref.stride(), *v_ref.stride(),
        *valid.stride(), *out.stride(),
        heads, m, k_own.shape[2], segment_len, segments, topk if select else 0, scale,
        HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, REF_BLOCK=ref_block, LOG_REF_BLOCK=ref_block.bit_length() - 1,
        SELECT=select, HAS_VALID=ref_valid is not None, FP32_INPUTS=q.dtype == torch.float32,
        num_warps=4 if ref_block <= 128 else 8,
    )
    # fmt: on
    return out
