"""What frame sizes graphs with a constant top-k accept: shared by the exporter and the engine runtime.

Tracing fixes k (the reference clamps k to the candidates at trace time), so every top-k candidate set
of an exported graph must hold >= k tokens: the reference tokens (slots * tokens per frame) with top-k
over all frames; each frame's tokens with ``every_frame`` or with top-k on the memory token.
"""

from __future__ import annotations

from typing import Any

from jfdeploy.model import ModelConfig


def token_limits(config: ModelConfig) -> dict[str, Any]:
    """The manifest's ``limits``: {"topk": k or None, "per_frame": whether k applies within one frame}."""
    topk = config.topk if config.topk_block_indices else None
    return {"topk": topk, "per_frame": config.topk_range == "every_frame" or config.topk_memory_token}


def frame_tokens_needed(limits: dict[str, Any], slots: int) -> int:
    """Fewest tokens per frame ((H/16) * (W/16)) the graphs can run with ``slots`` memory slots."""
    topk = limits["topk"]
    if topk is None:
        return 1
    return topk if limits["per_frame"] else -(-topk // slots)
