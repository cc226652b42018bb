"""Model options: the architecture (widths, depths, heads) and the top-k settings of the joint attention.

The defaults are the published JointFormer (ConvMAE-Base); ``ModelConfig.tiny()`` is the same network
with few channels and blocks, for tests that exercise the code paths rather than the published numbers.
A checkpoint's architecture is read from its tensor shapes (``jfdeploy.model.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TopkBlocks = Literal["all", "half", "last", "none"]

# ConvMAE-Base, the published shapes
EMBED_DIMS = (256, 384, 768)  # channels at 1/4, 1/8 and 1/16 (the transformer width C)
NUM_HEADS = 12
NUM_JOINT_BLOCKS = 11  # the transformer stage: the Joint Blocks
CONV_DEPTHS = (2, 2)  # convolutional blocks at 1/4 and 1/8
POS_GRID = 24  # the position embedding covers a 24 x 24 token grid
DECODER_DIM = 256  # decoder width at 1/8 and 1/4; the decoder tokens have 3 x DECODER_DIM = C channels

ARCHITECTURE_FIELDS = (
    "embed_dims",
    "num_heads",
    "num_joint_blocks",
    "conv_depths",
    "pos_grid",
    "decoder_dim",
    "update_depth",
    "enhance_depth",
)
TOPK_FIELDS = ("topk", "topk_range", "topk_blocks", "topk_memory_token")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference options of JointFormer.

    topk: reference scores kept per current-token row (None: no top-k anywhere).
    topk_range: "all_frames" (k over all reference tokens of a row jointly) or "every_frame"
        (k per reference frame).
    topk_blocks: joint blocks that filter: all of them, the second half (``L//2 .. L-1``; 5..10 of the
        published 11), the last, or none.
    topk_memory_token: also filter the memory token's attention over frame/decoder tokens.
    embed_dims: channels at 1/4, 1/8 and 1/16 (the last is the transformer width C).
    num_heads: attention heads of every transformer block (C must be a multiple).
    num_joint_blocks: L, the Joint Blocks (the transformer stage of ConvMAE).
    conv_depths: convolutional blocks at 1/4 and at 1/8.
    pos_grid: side of the learned square position-embedding grid (resized to every input).
    decoder_dim: the decoder's width at 1/8 and 1/4; its tokens (3 x decoder_dim channels) must be C wide.
    update_depth / enhance_depth: memory-token update blocks and enhance blocks (from the checkpoint).
    """

    topk: int | None = 120
    topk_range: Literal["all_frames", "every_frame"] = "all_frames"
    topk_blocks: TopkBlocks = "all"
    topk_memory_token: bool = False
    update_depth: int = 2
    enhance_depth: int = 1
    embed_dims: tuple[int, int, int] = EMBED_DIMS
    num_heads: int = NUM_HEADS
    num_joint_blocks: int = NUM_JOINT_BLOCKS
    conv_depths: tuple[int, int] = CONV_DEPTHS
    pos_grid: int = POS_GRID
    decoder_dim: int = DECODER_DIM

    def __post_init__(self) -> None:
        # tuples also when built from a saved (JSON-like) config holding lists
        object.__setattr__(self, "embed_dims", tuple(int(d) for d in self.embed_dims))
        object.__setattr__(self, "conv_depths", tuple(int(d) for d in self.conv_depths))
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be a positive integer or None, got {self.topk}")
        if self.topk_range not in ("all_frames", "every_frame"):
            raise ValueError(f"topk_range must be 'all_frames' or 'every_frame', got {self.topk_range!r}")
        if self.topk_blocks not in ("all", "half", "last", "none"):
            raise ValueError(f"topk_blocks must be all/half/last/none, got {self.topk_blocks!r}")
        if self.update_depth < 1 or self.enhance_depth < 1:
            raise ValueError("update_depth and enhance_depth must be >= 1")
        if len(self.embed_dims) != 3 or min(self.embed_dims) < 1:
            raise ValueError(f"embed_dims must be 3 positive widths (1/4, 1/8, 1/16), got {self.embed_dims}")
        if len(self.conv_depths) != 2 or min(self.conv_depths) < 0:
            raise ValueError(f"conv_depths must be 2 block counts (1/4, 1/8), got {self.conv_depths}")
        if self.num_joint_blocks < 1 or self.pos_grid < 1:
            raise ValueError("num_joint_blocks and pos_grid must be >= 1")
        width = self.embed_dims[2]
        if self.num_heads < 1 or width % self.num_heads:
            raise ValueError(f"num_heads must divide the width {width}, got {self.num_heads}")
        if 3 * self.decoder_dim != width:
            raise ValueError(f"decoder tokens (3 x decoder_dim = {3 * self.decoder_dim}) must be {width} wide")
        if self.embed_dims[1] < 16:
            raise ValueError("embed_dims[1] must be >= 16 (the decoder's channel gate divides it by 16)")

    @classmethod
    def tiny(cls, **options: Any) -> ModelConfig:
        """The same network with few channels and blocks: every code path, a fraction of the compute.

        C = 96 in 3 heads of 32 (a power of two, as the Triton kernel wants), 3 joint blocks (so that
        "all", "half" and "last" select different blocks), one convolutional block per scale, one update
        and one enhance block, an 8 x 8 position grid. ``options`` override any field (``topk=5``).
        """
        shape = dict(
            embed_dims=(32, 48, 96),
            num_heads=3,
            num_joint_blocks=3,
            conv_depths=(1, 1),
            pos_grid=8,
            decoder_dim=32,
            update_depth=1,
            enhance_depth=1,
        )
        return cls(**{**shape, **options})

    @property
    def head_dim(self) -> int:
        return self.embed_dims[2] // self.num_heads

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the tensor shapes (those of ARCHITECTURE_FIELDS)."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}

    @property
    def topk_block_indices(self) -> tuple[int, ...]:
        if self.topk is None or self.topk_blocks == "none":
            return ()
        n = self.num_joint_blocks
        return {"all": tuple(range(n)), "half": tuple(range(n // 2, n)), "last": (n - 1,)}[self.topk_blocks]

    def joint_block_topk(self, index: int) -> int | None:
        """k for the current-token rows of joint block ``index`` (None: plain softmax)."""
        return self.topk if index in self.topk_block_indices else None

    def joint_block_memory_token_topk(self, index: int) -> int | None:
        """k for the memory-token row of joint block ``index`` while a reference is encoded."""
        return self.topk if (self.topk_memory_token and index in self.topk_block_indices) else None

    @property
    def update_block_memory_token_topk(self) -> int | None:
        """k for the memory-token row of the update blocks (published: on if any joint block filters)."""
        return self.topk if (self.topk_memory_token and self.topk_block_indices) else None
