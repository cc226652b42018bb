"""Model options: the top-k settings of the joint attention and the depths read from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TopkBlocks = Literal["all", "half", "last", "none"]
NUM_JOINT_BLOCKS = 11  # ConvMAE-Base transformer stage


@dataclass(frozen=True)
class ModelConfig:
    """Inference options of JointFormer.

    topk: reference scores kept per current-token row (None: no top-k anywhere).
    topk_range: "all_frames" (k over all reference tokens of a row jointly) or "every_frame"
        (k per reference frame).
    topk_blocks: joint blocks that filter: all 11, the second half (5..10), the last, or none.
    topk_memory_token: also filter the memory token's attention over frame/decoder tokens.
    update_depth / enhance_depth: memory-token update blocks and enhance blocks (from the checkpoint).
    """

    topk: int | None = 120
    topk_range: Literal["all_frames", "every_frame"] = "all_frames"
    topk_blocks: TopkBlocks = "all"
    topk_memory_token: bool = False
    update_depth: int = 2
    enhance_depth: int = 1

    def __post_init__(self) -> None:
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be a positive integer or None, got {self.topk}")
        if self.topk_range not in ("all_frames", "every_frame"):
            raise ValueError(f"topk_range must be 'all_frames' or 'every_frame', got {self.topk_range!r}")
        if self.topk_blocks not in ("all", "half", "last", "none"):
            raise ValueError(f"topk_blocks must be all/half/last/none, got {self.topk_blocks!r}")
        if self.update_depth < 1 or self.enhance_depth < 1:
            raise ValueError("update_depth and enhance_depth must be >= 1")

    @property
    def topk_block_indices(self) -> tuple[int, ...]:
        if self.topk is None or self.topk_blocks == "none":
            return ()
        n = NUM_JOINT_BLOCKS
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
