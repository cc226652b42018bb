"""JointFormer (inference): ConvMAE-Base with Joint Blocks, compressed memory token, enhancer, decoder.

The model is a set of explicit stage methods, batch = objects unless said otherwise; the frame loop
that calls them lives in ``jfdeploy.segmenter`` and the backends. Shape grammar: ``O`` objects,
``H x W`` padded input size (multiple of 16), ``h x w = H/16 x W/16`` token grid, ``n = h*w``,
``C`` = ``config.embed_dims[2]`` (768 published), ``C8, C4`` = the 1/8 and 1/4 widths (384, 256),
``T`` reference frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from jfdeploy.model.attention import JointAttention, topk_joint_attention
from jfdeploy.model.backbone import (
    TRANSFORMER_NORM_EPS,
    ConvBlock,
    PatchEmbed,
    resized_position_embedding,
)
from jfdeploy.model.blocks import JointBlock
from jfdeploy.model.config import EMBED_DIMS, NUM_HEADS, NUM_JOINT_BLOCKS, POS_GRID, ModelConfig
from jfdeploy.model.decoder import Decoder

# the published shapes (ModelConfig's defaults), importable from here as before
__all__ = ["EMBED_DIMS", "NUM_HEADS", "NUM_JOINT_BLOCKS", "POS_GRID", "JointFormer", "soft_aggregate"]

REFERENCE_CHANNELS = 5  # RGB + object mask + sum of the other objects' masks

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: O x heads x (T*n) x d each


class ConvMAE(nn.Module):
    """The backbone and every transformer block of JointFormer (checkpoint prefix ``convmae.``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d4, d8, d16 = config.embed_dims
        heads = config.num_heads
        self.patch_embed1_query = PatchEmbed(3, d4, 4)  # current frame
        self.patch_embed1_memory = PatchEmbed(REFERENCE_CHANNELS, d4, 4)  # reference frame + masks
        self.patch_embed2 = PatchEmbed(d4, d8, 2)
        self.patch_embed3 = PatchEmbed(d8, d16, 2)
        self.patch_embed4 = nn.Linear(d16, d16)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid * config.pos_grid, d16))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d16))  # initial compressed-memory token
        self.blocks1 = nn.ModuleList([ConvBlock(d4) for _ in range(config.conv_depths[0])])
        self.blocks2 = nn.ModuleList([ConvBlock(d8) for _ in range(config.conv_depths[1])])
        self.blocks3 = nn.ModuleList(  # the Joint Blocks
            JointBlock(
                d16,
                heads,
                topk=config.joint_block_topk(i),
                topk_range=config.topk_range,
                memory_token_topk=config.joint_block_memory_token_topk(i),
            )
            for i in range(config.num_joint_blocks)
        )
        self.patch_embed4_block4 = nn.Linear(d16, d16)
        self.blocks4 = nn.ModuleList(  # memory-token update blocks (decoder tokens)
            JointBlock(d16, heads, memory_token_topk=config.update_block_memory_token_topk)
            for _ in range(config.update_depth)
        )
        self.patch_embed4_block5 = nn.Linear(d16, d16)
        self.blocks5 = nn.ModuleList(JointBlock(d16, heads) for _ in range(config.enhance_depth))
        self.norm = nn.LayerNorm(d16, eps=TRANSFORMER_NORM_EPS)


def to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h*w) x C."""
    return feature.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B x (h*w) x C -> B x C x h x w."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


def soft_aggregate(prob: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft aggregation (STM): per-object probabilities -> (logits, probabilities), background first.

    prob: ... x O x ... along ``dim``; returns tensors with O+1 entries along ``dim``.
    """
    background = torch.prod(1 - prob, dim=dim, keepdim=True)
    with_background = torch.cat([background, prob], dim=dim).clamp(1e-7, 1 - 1e-7)
    logits = torch.log(with_background / (1 - with_background))
    return logits, F.softmax(logits, dim=dim)


class JointFormer(nn.Module):
    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.convmae = ConvMAE(self.config)
        d4, d8, d16 = self.config.embed_dims
        self.decoder = Decoder(d16, d8, d4, hidden_dim=self.config.decoder_dim)

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def joint_blocks(self) -> list[JointBlock]:
        """The Joint Blocks (the transformer stage the current and reference frames share)."""
        return cast(list[JointBlock], list(self.convmae.blocks3))

    @property
    def update_blocks(self) -> list[JointBlock]:
        """The memory-token update blocks (the memory token reads the decoder tokens)."""
        return cast(list[JointBlock], list(self.convmae.blocks4))

    @property
    def enhance_blocks(self) -> list[JointBlock]:
        """The enhance blocks (current tokens read the memory token)."""
        return cast(list[JointBlock], list(self.convmae.blocks5))

    def grid_position(self, height: int, width: int) -> torch.Tensor:
        """Position embedding of an h x w token grid: 1 x n x C."""
        return resized_position_embedding(self.convmae.pos_embed, height, width)

    def _stem(self, embed: PatchEmbed, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolutional stages: B x Cin x H x W -> tokens B x n x C (with position), f8, f4, (h, w)."""
        x = embed(image)
        for blk in self.convmae.blocks1:
            x = blk(x)
        f4 = x  # B x C4 x H/4 x W/4
        x = self.convmae.patch_embed2(x)
        for blk in self.convmae.blocks2:
            x = blk(x)
        f8 = x  # B x C8 x H/8 x W/8
        x = self.convmae.patch_embed3(x)  # B x C x h x w
        h, w = x.shape[-2:]
        tokens = self.convmae.patch_embed4(to_tokens(x)) + self.grid_position(h, w)
        return tokens, f8, f4

    # -- stages -----------------------------------------------------------------------------------
    def encode_current(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame B x 3 x H x W -> (tokens B x n x C, f8 B x C8 x H/8 x W/8, f4 B x C4 x H/4 x W/4)."""
        return self._stem(self.convmae.patch_embed1_query, frame)

    @staticmethod
    def reference_input(frame: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Frame 1 x 3 x H x W and object probabilities O x H x W -> O x 5 x H x W.

        Channels: RGB, the object's mask, the sum of the other objects' masks (zeros for one object).
        """
        others = masks.sum(dim=0, keepdim=True) - masks  # O x H x W
        frames = frame.expand(masks.shape[0], -1, -1, -1)
        return torch.cat([frames, masks[:, None], others[:, None]], dim=1)

    def encode_reference(
        self, reference: torch.Tensor, memory_token: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[KV], torch.Tensor, torch.Tensor]:
        """Encode a frame with its object masks as a reference; update the memory token.

        reference: O x 5 x H x W; memory_token: O x 1 x C.
        Returns per joint block the block's input tokens (O x n x C) and keys/values
        (O x heads x n x d), the reference f16 (O x C x h x w) and the new memory token (O x 1 x C).
        """
        tokens, _, _ = self._stem(self.convmae.patch_embed1_memory, reference)
        h, w = reference.shape[-2] // 16, reference.shape[-1] // 16
        memory_token = memory_token + self.convmae.pos_embed[:, :1]
        block_inputs, block_kv = [], []
        for blk in self.joint_blocks:
            block_inputs.append(tokens)
            memory_token, tokens, k, v = blk.with_memory_token(memory_token, tokens)
            block_kv.append((k, v))
        f16 = to_map(self.convmae.norm(tokens), h, w)
        return block_inputs, block_kv, f16, self.convmae.norm(memory_token)

    def reference_kv(self, block_inputs: Sequence[torch.Tensor]) -> list[KV]:
        """Keys/values of reference tokens from each joint block's input (B x T*n x C per block)."""
        return [blk.reference_kv(x) for blk, x in zip(self.joint_blocks, block_inputs, strict=True)]

    def read_memory(
        self,
        tokens: torch.Tensor,
        reference_kv: Sequence[KV],
        frames: int,
        grid: tuple[int, int],
        reference_valid: torch.Tensor | None = None,
        attention: JointAttention = topk_joint_attention,
    ) -> torch.Tensor:
        """Current tokens B x n x C read T reference frames through the joint blocks -> f16 B x C x h x w.

        reference_kv: per block (keys, values), each B x heads x (T*n) x d.
        reference_valid: optional B x (T*n) bool, False for empty memory slots.
        attention: the top-k joint attention (``topk_joint_attention`` or a fused kernel of its signature).
        """
        for blk, (k, v) in zip(self.joint_blocks, reference_kv, strict=True):
            tokens = blk.read(tokens, k, v, frames, reference_valid, attention)
        return to_map(self.convmae.norm(tokens), *grid)

    def enhance(self, f16: torch.Tensor, memory_token: torch.Tensor) -> torch.Tensor:
        """Inject the memory token (O x 1 x C) into f16 (O x C x h x w) -> enhanced f16 (O x C x h x w)."""
        h, w = f16.shape[-2:]
        embed = self.convmae.patch_embed4_block5
        memory_token = embed(memory_token) + self.convmae.pos_embed[:, :1]
        tokens = embed(to_tokens(f16)) + self.grid_position(h, w)
        for blk in self.enhance_blocks:
            memory_token, tokens = blk.enhance(memory_token, tokens)
        return to_map(self.convmae.norm(tokens), h, w)

    def decode(
        self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, enhanced_f16: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (object logits O x 1 x H x W, decoder tokens O x C x h x w)."""
        return self.decoder(f16, f8, f4, enhanced_f16)

    def update_memory_token(self, decoder_tokens: torch.Tensor, memory_token: torch.Tensor) -> torch.Tensor:
        """Memory token (O x 1 x C) attends to the decoder tokens (O x C x h x w) -> O x 1 x C."""
        h, w = decoder_tokens.shape[-2:]
        embed = self.convmae.patch_embed4_block4
        memory_token = embed(memory_token) + self.convmae.pos_embed[:, :1]
        tokens = embed(to_tokens(decoder_tokens)) + self.grid_position(h, w)
        for blk in self.update_blocks:
            memory_token, tokens, _, _ = blk.with_memory_token(memory_token, tokens)
        return self.convmae.norm(memory_token)
