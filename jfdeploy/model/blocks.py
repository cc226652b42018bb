"""The transformer block of JointFormer and the four ways the model uses it.

One set of weights (norm1, attn, norm2, mlp) per block; what changes between uses is who attends
to whom:

- ``read``: current-frame tokens attend to themselves and to the reference tokens (top-k joint
  softmax). The reference side is given as keys/values, so a caller can cache them.
- ``with_memory_token``: tokens of one frame attend only among themselves; the compressed memory
  token attends to itself and to those tokens. Used when a frame is encoded as a reference (the
  joint blocks) and when decoder tokens update the memory token (the update blocks).
- ``enhance``: current tokens attend to the memory token alone, with a sigmoid instead of a softmax.

Shape grammar: ``B x N x C`` tokens, ``B x 1 x C`` memory token, ``B x h x N x d`` heads.
"""

from __future__ import annotations

import torch
from torch import nn

from jfdeploy.model.attention import Attention, JointAttention, TopkRange, topk_joint_attention
from jfdeploy.model.backbone import TRANSFORMER_NORM_EPS, Mlp


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain attention: B x h x M x d queries over B x h x N x d keys/values."""
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


class JointBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        topk: int | None = None,
        topk_range: TopkRange = "all_frames",
        memory_token_topk: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.topk = topk  # reference scores kept per current-token row; None: all
        self.topk_range: TopkRange = topk_range
        self.memory_token_topk = memory_token_topk  # token scores kept for the memory-token row

    def reference_kv(self, reference_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of reference tokens (B x R x C, the block's input) -> 2 x (B x h x R x d)."""
        _, k, v = self.attn.heads(self.norm1(reference_tokens))
        return k, v

    def read(
        self,
        current: torch.Tensor,
        reference_k: torch.Tensor,
        reference_v: torch.Tensor,
        frames: int,
        reference_valid: torch.Tensor | None = None,
        attention: JointAttention = topk_joint_attention,
    ) -> torch.Tensor:
        """Current tokens (B x N x C) read T reference frames (keys/values B x h x T*R x d).

        attention: the top-k joint attention to use (``topk_joint_attention``, or a fused kernel with
        its signature: ``joint_attention_impl("triton")``).
        """
        q, k, v = self.attn.heads(self.norm1(current))
        mixed = attention(
            q,
            k,
            v,
            reference_k,
            reference_v,
            scale=self.attn.scale,
            topk=self.topk,
            frames=frames,
            topk_range=self.topk_range,
            ref_valid=reference_valid,
        )
        x = current + self.attn.merge(mixed)
        return x + self.mlp(self.norm2(x))

    def with_memory_token(
        self, memory_token: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame tokens self-attend; the memory token attends to [itself; tokens].

        memory_token: B x 1 x C; tokens: B x N x C (the block's inputs).
        Returns the updated memory token and tokens, and the tokens' keys/values (B x h x N x d),
        which are exactly what ``read`` needs when these tokens later serve as a reference.
        """
        n = tokens.shape[1]
        q, k, v = self.attn.heads(self.norm1(torch.cat([memory_token, tokens], dim=1)))
        q_mem, q_tok = q.split([1, n], dim=2)
        k_mem, k_tok = k.split([1, n], dim=2)
        v_mem, v_tok = v.split([1, n], dim=2)
        token_mix = softmax_attention(q_tok, k_tok, v_tok, self.attn.scale)
        memory_mix = topk_joint_attention(
            q_mem, k_mem, v_mem, k_tok, v_tok, scale=self.attn.scale, topk=self.memory_token_topk
        )
        x = torch.cat([memory_token, tokens], dim=1) + torch.cat(
            [self.attn.merge(memory_mix), self.attn.merge(token_mix)], dim=1
        )
        x = x + self.mlp(self.norm2(x))
        memory_token, tokens = x.split([1, n], dim=1)
        return memory_token, tokens, k_tok, v_tok

    def enhance(self, memory_token: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Current tokens (B x N x C) attend to the memory token (B x 1 x C) with a sigmoid.

        As in the published block, the memory token's attention residual is its own normalized
        input (it attends to nothing); this matters only with more than one enhance block.
        """
        n = current.shape[1]
        normed = self.norm1(torch.cat([memory_token, current], dim=1))
        q, k, v = self.attn.heads(normed)
        gate = torch.sigmoid((q[:, :, 1:] @ k[:, :, :1].transpose(-2, -1)) * self.attn.scale)  # B x h x N x 1
        enhanced = self.attn.merge(gate @ v[:, :, :1])  # B x N x C
        x = torch.cat([memory_token + normed[:, :1], current + enhanced], dim=1)
        x = x + self.mlp(self.norm2(x))
        memory_token, current = x.split([1, n], dim=1)
        return memory_token, current
