"""JointFormer's attention: multi-head projections and the top-k joint softmax.

The joint softmax is the heart of a Joint Block. A query row scores two groups of keys: its *own*
group (the current frame's tokens, or the memory token itself) and a *reference* group (reference
frame tokens, or the tokens the memory token reads). Only the ``k`` largest reference scores of the
row are kept; one softmax runs over the own scores and those ``k`` scores together, and the
reference scores that were not kept get probability zero.

This function is the reference formulation every other implementation (stages, Triton kernel,
ONNX graph) is checked against.

Shape grammar: ``B x h x N x d`` (batch, heads, tokens, head dim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

TopkRange = Literal["all_frames", "every_frame"]
AttentionImpl = Literal["torch", "triton"]
ATTENTION_IMPLS = ("torch", "triton")
# an implementation of ``topk_joint_attention`` (same signature): the reference below, or a fused kernel
JointAttention = Callable[..., torch.Tensor]


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
    sorted_topk: bool = True,
) -> torch.Tensor:
    """Attention of ``q`` over [own; reference] keys with top-k filtering of the reference scores.

    Args:
        q: B x h x M x d query rows.
        k_own, v_own: B x h x N x d keys/values every row sees in full.
        k_ref, v_ref: B x h x (T*R) x d reference keys/values, T frames of R tokens, frame-major.
        scale: score multiplier (head_dim ** -0.5).
        topk: reference scores kept per row (over all T*R, or per frame with ``every_frame``);
            None keeps all (plain softmax). A k larger than the candidates keeps them all.
        frames: T, needed by ``every_frame``.
        ref_valid: optional B x (T*R) bool; False marks an empty memory slot, which never
            receives probability (its score is -inf before top-k and softmax).
        sorted_topk: keep the selected scores in descending order (as ``torch.topk`` does by
            default, and as TensorRT requires of an exported TopK); False skips the sort, which the
            softmax and the scatter do not need (the sums then run in another order).

    Returns:
        B x h x M x d attention output (before the output projection).
    """
    own_scores = (q @ k_own.transpose(-2, -1)) * scale  # B x h x M x N
    ref_scores = (q @ k_ref.transpose(-2, -1)) * scale  # B x h x M x TR
    if ref_valid is not None:
        ref_scores = ref_scores.masked_fill(~ref_valid[:, None, None, :], float("-inf"))
    num_own = own_scores.shape[-1]

    if topk is None:
        probs = torch.cat([own_scores, ref_scores], dim=-1).softmax(dim=-1)
        own_probs, ref_probs = probs.split([num_own, ref_scores.shape[-1]], dim=-1)
        return own_probs @ v_own + ref_probs @ v_ref

    if topk_range == "every_frame":
        b, h, m, tr = ref_scores.shape
        per_frame = ref_scores.reshape(b, h, m, frames, tr // frames)  # B x h x M x T x R
        k = min(topk, per_frame.shape[-1])
        top_values, top_index = per_frame.topk(k, dim=-1, sorted=sorted_topk)  # B x h x M x T x k
        top_values = top_values.reshape(b, h, m, frames * k)
    elif topk_range == "all_frames":
        k = min(topk, ref_scores.shape[-1])
        top_values, top_index = ref_scores.topk(k, dim=-1, sorted=sorted_topk)  # B x h x M x k
    else:
        raise ValueError(f"topk_range must be 'all_frames' or 'every_frame', got {topk_range!r}")

    probs = torch.cat([own_scores, top_values], dim=-1).softmax(dim=-1)
    own_probs, top_probs = probs.split([num_own, top_values.shape[-1]], dim=-1)
    if topk_range == "every_frame":
        dense = torch.zeros_like(per_frame).scatter_(-1, top_index, top_probs.reshape(top_index.shape))
        dense = dense.reshape(ref_scores.shape)
    else:
        dense = torch.zeros_like(ref_scores).scatter_(-1, top_index, top_probs)
    return own_probs @ v_own + dense @ v_ref


def unsorted_topk_joint_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``topk_joint_attention`` without sorting the kept scores: the PyTorch runtime's choice (~20% off
    ``torch.topk`` on a CPU); exported graphs and the published loop keep the sorted reference."""
    return topk_joint_attention(*args, sorted_topk=False, **kwargs)


def joint_attention_impl(name: AttentionImpl) -> Callable[..., torch.Tensor]:
    """The top-k joint attention the runtime calls for ``name``: "torch" the reference formulation without
    sorting the kept scores, "triton" the fused kernel (imported lazily)."""
    if name == "torch":
        return unsorted_topk_joint_attention
    if name == "triton":
        from jfdeploy.kernels.topk_attention import topk_joint_attention as fused

        return fused
    raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {name!r}")


class Attention(nn.Module):
    """Multi-head projections of a Joint Block (``qkv`` in, ``proj`` out); the mixing lives in the block."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B x N x C (already normalized) -> q, k, v, each B x h x N x d."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x B x h x N x d
        return q, k, v

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """B x h x N x d -> output projection of B x N x C."""
        b, h, n, d = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, h * d))
