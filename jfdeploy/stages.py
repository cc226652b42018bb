"""Exportable stages: JointFormer split into tensor-in, tensor-out modules.

The same modules run in eager PyTorch (backend "torch"), become ONNX graphs and TensorRT engines
(``jfdeploy.export``). They hold no state and no data-dependent Python control flow; tensor ranks
are fixed, batch = objects. Feature maps are ``B x C x h x w`` (the current tokens too, laid out on
their grid, so every stage can read the grid size from its inputs).

Shapes: ``O`` objects, ``H x W`` padded frame (multiple of 16), ``h x w = H/16 x W/16``, ``n = h*w``,
``C = 768``, ``L = 11`` joint blocks, ``heads = 12``, ``d = 64``, ``S`` memory slots.

Data flow of a frame (see README "Data flow"):

    frame_encoder:      frame 1x3xHxW -> tokens 1xCxhxw, f8 1x384xH/8xW/8, f4 1x256xH/4xW/4
    memory_reader:      tokens, reference_keys/values LxOxheadsx(S*n)xd, reference_valid Ox(S*n)
                        -> f16 OxCxhxw
    enhancer:           f16, memory_token Ox1xC -> enhanced_f16 OxCxhxw
    decoder:            f16, f8, f4, enhanced_f16 -> logits Ox1xHxW, decoder_tokens OxCxhxw
    memory_token_update: decoder_tokens, memory_token -> memory_token
    reference_encoder:  frame, object_prob OxHxW, memory_token -> keys/values LxOxheadsxnxd, memory_token

The frame loop's tensor ops around them (preprocessing, aggregation, the memory write, postprocessing)
are stages too: ``jfdeploy.loop_stages``.
"""

from __future__ import annotations

import torch
from torch import nn

from jfdeploy.model import JointFormer
from jfdeploy.model.attention import JointAttention, topk_joint_attention
from jfdeploy.model.jointformer import to_map, to_tokens
from jfdeploy.specs import MODEL_STAGES, NamedStage


class Stage(NamedStage, nn.Module):
    """A stage: a view of a JointFormer's weights with fixed input/output names (``specs.STAGE_IO``)."""

    def __init__(self, model: JointFormer) -> None:
        super().__init__()
        self.model = model


class FrameEncoder(Stage):
    """Current frame -> tokens (after the patch embeds and position), f8, f4. Once per frame."""

    name = "frame_encoder"

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, f8, f4 = self.model.encode_current(frame)
        h, w = frame.shape[-2] // 16, frame.shape[-1] // 16
        return to_map(tokens, h, w), f8, f4


class ReferenceEncoder(Stage):
    """A frame with its object probabilities -> per-block reference keys/values, new memory token.

    Reference tokens never change after encoding, so their keys/values are computed here once
    (they are this pass's own attention keys/values) and cached by the runtime.
    """

    name = "reference_encoder"

    def forward(
        self, frame: torch.Tensor, object_prob: torch.Tensor, memory_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference = self.model.reference_input(frame, object_prob)  # O x 5 x H x W
        _, block_kv, _, memory_token = self.model.encode_reference(reference, memory_token)
        keys = torch.stack([k for k, _ in block_kv])  # L x O x heads x n x d
        values = torch.stack([v for _, v in block_kv])
        return keys, values, memory_token


class MemoryReader(Stage):
    """The Joint Block stack readout: every object's current tokens read its cached references.

    ``attention``: the top-k joint attention it calls, ``topk_joint_attention`` (the reference, exportable)
    by default; the runtime may give a fused kernel of the same signature (``joint_attention_impl``).
    """

    name = "memory_reader"

    def __init__(self, model: JointFormer, attention: JointAttention = topk_joint_attention) -> None:
        super().__init__(model)
        self.attention = attention

    def forward(
        self,
        tokens: torch.Tensor,
        reference_keys: torch.Tensor,
        reference_values: torch.Tensor,
        reference_valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """reference_valid None: every slot is valid (skips the masking)."""
        num_objects = reference_keys.shape[1]
        h, w = tokens.shape[-2:]
        current = to_tokens(tokens).expand(num_objects, -1, -1)  # O x n x C
        frames = reference_keys.shape[3] // (h * w)  # memory slots S
        kv = list(zip(reference_keys.unbind(0), reference_values.unbind(0), strict=True))
        return self.model.read_memory(current, kv, frames, (h, w), reference_valid, self.attention)


class Enhancer(Stage):
    name = "enhancer"

    def forward(self, f16: torch.Tensor, memory_token: torch.Tensor) -> torch.Tensor:
        return self.model.enhance(f16, memory_token)


class MaskDecoder(Stage):
    """Per-object logits and decoder tokens; the frame's f8/f4 are shared by all objects."""

    name = "decoder"

    def forward(
        self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, enhanced_f16: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_objects = f16.shape[0]
        return self.model.decode(
            f16, f8.expand(num_objects, -1, -1, -1), f4.expand(num_objects, -1, -1, -1), enhanced_f16
        )


class MemoryTokenUpdate(Stage):
    name = "memory_token_update"

    def forward(self, decoder_tokens: torch.Tensor, memory_token: torch.Tensor) -> torch.Tensor:
        return self.model.update_memory_token(decoder_tokens, memory_token)


STAGE_TYPES: dict[str, type[Stage]] = {
    stage.name: stage
    for stage in (FrameEncoder, ReferenceEncoder, MemoryReader, Enhancer, MaskDecoder, MemoryTokenUpdate)
}
assert tuple(STAGE_TYPES) == MODEL_STAGES


def build_stages(model: JointFormer) -> nn.ModuleDict:
    """The model's stages of ``model`` (sharing its weights), by name (the frame loop's: ``loop_stages``)."""
    return nn.ModuleDict({name: stage(model) for name, stage in STAGE_TYPES.items()})
