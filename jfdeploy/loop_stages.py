"""The frame loop's tensor ops as stages: pixels in, the model's inputs; its outputs, label maps out.

Together with the model's stages (``jfdeploy.stages``) these are every tensor op of a frame, so a runtime
that executes stage graphs needs no tensor library of its own: the Python around them keeps only integer
bookkeeping (which slot, when to memorize, which objects exist) and the resampling tables of
``jfdeploy.resample`` (computed once per frame size). The same modules run in PyTorch (backends eager and
torch) and are exported to ONNX / TensorRT with the others.

Shapes (``specs.stage_shapes``): source frame ``Hs x Ws``, padded model input ``H x W``, ``O`` objects
(``O'`` before new ones are added), ``L`` joint blocks, ``S`` memory slots of ``n`` tokens, ``K`` taps.

    preprocess:   rgb Hs x Ws x 3 uint8, row/col taps (index int64, weight int32 fixed point)
                  -> frame 1 x 3 x H x W (PIL bilinear resize, ImageNet normalization, zero padding, flip)
    label_masks:  label_map Hs x Ws uint8, object_labels O, mask_rows H, mask_cols W -> given_masks O x H x W
    aggregate:    logits O x 1 x H x W -> probabilities (1+O) x H x W (sigmoid, soft aggregation), object_prob
                  O x H x W (the object rows in the model's float type, for the reference encoder)
    merge_masks:  probabilities (1+O') x H x W, given_masks O x H x W, keep_predicted O' bool -> merged
                  (1+O) x H x W, object_prob O x H x W
    memory_grow:  memory L x O' x heads x S x n x d (keys, values), valid O' x S x n, memory_token O' x 1 x C,
                  initial_memory_token 1 x 1 x C, object_labels O -> the same with O objects (new ones empty)
    memory_write: memory, valid, reference keys / values L x O x heads x n x d, slot O int64 -> memory
                  with slot ``slot[o]`` of object o replaced (in place where the runtime binds it so)
    postprocess:  probabilities (1+O) x H x W, row/col taps (Hs x 2, Ws x 2), accumulated (1+O) x Hs x Ws
                  -> accumulated + the probabilities resized to the source (bilinear, unpadded, unflipped)
    label_map:    probabilities (1+O) x Hs x Ws, object_labels O -> labels Hs x Ws uint8 (argmax)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jfdeploy.model.jointformer import soft_aggregate
from jfdeploy.resample import PIL_ONE
from jfdeploy.specs import NamedStage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LoopStage(NamedStage, nn.Module):
    """A weightless stage. ``float_dtype``: what it computes probabilities in (float32; float64 for a
    float64 model); ``model_dtype``: the float type of the model-side tensors it takes or gives."""

    def __init__(self, float_dtype: torch.dtype = torch.float32, model_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.float_dtype = float_dtype
        self.model_dtype = model_dtype


def gather_rows(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
    """Resample ``x`` along ``axis``: output position i is ``sum_k weight[i, k] * x[index[i, k]]``.

    index, weight: out x K. The gather reads out x K positions, the weighted sum folds the K taps."""
    axis = axis % x.dim()
    gathered = torch.index_select(x, axis, index.reshape(-1))
    gathered = gathered.reshape(*x.shape[:axis], index.shape[0], index.shape[1], *x.shape[axis + 1 :])
    weight = weight.reshape(index.shape[0], index.shape[1], *([1] * (x.dim() - axis - 1)))
    return (gathered * weight).sum(axis + 1)


def _round_fixed_point(x: torch.Tensor) -> torch.Tensor:
    """A fixed-point sum (int32, weights of ``PIL_ONE``) rounded to 8 bits as PIL rounds it."""
    return torch.clamp(torch.div(x + PIL_ONE // 2, PIL_ONE, rounding_mode="floor"), 0, 255)


class Preprocess(LoopStage):
    """An RGB frame at its own size -> the model input: PIL's bilinear resize in PIL's integer arithmetic
    (columns, then rows, each rounded to 8 bits), ImageNet normalization, zero padding (rows / columns whose
    taps weigh nothing), the flip (reversed column taps) of test-time augmentation."""

    name = "preprocess"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32), persistent=False)

    def forward(
        self,
        rgb: torch.Tensor,
        row_index: torch.Tensor,
        row_weight: torch.Tensor,
        col_index: torch.Tensor,
        col_weight: torch.Tensor,
    ) -> torch.Tensor:
        x = rgb.to(torch.int32)  # Hs x Ws x 3
        x = _round_fixed_point(gather_rows(x, col_index, col_weight, 1))  # Hs x W x 3
        x = _round_fixed_point(gather_rows(x, row_index, row_weight, 0))  # H x W x 3
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        normalized = (x.to(torch.float32) / 255.0 - mean) / std  # H x W x 3
        inside = (row_weight.sum(1) > 0)[:, None, None] & (col_weight.sum(1) > 0)[None, :, None]
        frame = torch.where(inside, normalized, torch.zeros_like(normalized))
        return frame.permute(2, 0, 1)[None].to(self.model_dtype)


class LabelMasks(LoopStage):
    """A label map at the frame's size -> one mask per object at the model input: PIL's nearest-neighbour
    resize as indices (padding reads the zero row / column appended here), then one row per object label."""

    name = "label_masks"

    def forward(
        self, label_map: torch.Tensor, object_labels: torch.Tensor, mask_rows: torch.Tensor, mask_cols: torch.Tensor
    ) -> torch.Tensor:
        labels = F.pad(label_map.to(torch.int64), (0, 1, 0, 1))  # Hs+1 x Ws+1, the last row / column 0
        resized = torch.index_select(torch.index_select(labels, 0, mask_rows), 1, mask_cols)  # H x W
        return (resized[None] == object_labels[:, None, None]).to(self.float_dtype)


class Aggregate(LoopStage):
    """The decoder's logits -> probabilities over background + objects, and the objects' rows in the model's
    float type (what the reference encoder takes when the frame is memorized)."""

    name = "aggregate"

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = soft_aggregate(torch.sigmoid(logits[:, 0].to(self.float_dtype)), dim=0)[1]
        return probabilities, probabilities[1:].to(self.model_dtype)


class MergeMasks(LoopStage):
    """Masks given on a frame merged with what was predicted for it (the published semantics): where any
    given mask covers a pixel, predictions are dropped; objects with ``keep_predicted`` keep their predicted
    row (not given on this frame), the others take the given one; new objects (rows past O') are given.
    With O' = 0 (nothing predicted) this is the soft aggregation of the given masks."""

    name = "merge_masks"

    def forward(
        self, probabilities: torch.Tensor, given_masks: torch.Tensor, keep_predicted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        old = keep_predicted.shape[0]
        covered = given_masks.sum(0, keepdim=True) > 0.5
        predicted = torch.where(covered, torch.zeros_like(probabilities[1:]), probabilities[1:])  # O' x H x W
        earlier = torch.where(keep_predicted[:, None, None], predicted, given_masks[:old])
        merged = soft_aggregate(torch.cat([earlier, given_masks[old:]], dim=0), dim=0)[1]
        return merged, merged[1:].to(self.model_dtype)


class MemoryGrow(LoopStage):
    """Room for the objects of ``object_labels`` (only its length counts): the reference memory with empty
    slots for the new objects, and their memory tokens set to the learned initial one."""

    name = "memory_grow"

    def forward(
        self,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        memory_valid: torch.Tensor,
        memory_token: torch.Tensor,
        initial_memory_token: torch.Tensor,
        object_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        extra = object_labels.shape[0] - memory_keys.shape[1]
        layers, _, heads, slots, tokens, dim = memory_keys.shape
        pad = torch.zeros(
            (layers, extra, heads, slots, tokens, dim), dtype=memory_keys.dtype, device=memory_keys.device
        )
        keys = torch.cat([memory_keys, pad], dim=1)
        values = torch.cat([memory_values, pad], dim=1)
        empty = torch.zeros((extra, slots, tokens), dtype=torch.bool, device=memory_valid.device)
        valid = torch.cat([memory_valid, empty], dim=0)
        new_tokens = initial_memory_token.expand(object_labels.shape[0] - memory_token.shape[0], -1, -1)
        token = torch.cat([memory_token, new_tokens.to(memory_token.dtype)], dim=0)
        return keys, values, valid, token


class MemoryWrite(LoopStage):
    """One frame's reference keys / values into slot ``slot[o]`` of each object o, marked valid.

    ``in_place``: write into the given buffers and return them (PyTorch); exported graphs are functional
    (ScatterND over the leading axes L x O x heads x S) and write in place where the runtime binds the
    output to the input buffer."""

    name = "memory_write"

    def __init__(self, *args, in_place: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_place = in_place

    def forward(
        self,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        memory_valid: torch.Tensor,
        reference_keys: torch.Tensor,
        reference_values: torch.Tensor,
        slot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layers, objects, heads = reference_keys.shape[:3]
        device = slot.device
        layer_index = torch.arange(layers, device=device)[:, None, None].expand(layers, objects, heads)
        object_index = torch.arange(objects, device=device)[None, :, None].expand(layers, objects, heads)
        head_index = torch.arange(heads, device=device)[None, None, :].expand(layers, objects, heads)
        slot_index = slot[None, :, None].expand(layers, objects, heads)
        where = (layer_index, object_index, head_index, slot_index)
        valid_where = (torch.arange(objects, device=device), slot)
        true = torch.ones_like(memory_valid[:, 0])  # O x n
        if self.in_place:
            memory_keys.index_put_(where, reference_keys.to(memory_keys.dtype))
            memory_values.index_put_(where, reference_values.to(memory_values.dtype))
            memory_valid.index_put_(valid_where, true)
            return memory_keys, memory_values, memory_valid
        valid = memory_valid.to(torch.int32).index_put(valid_where, true.to(torch.int32))  # not every runtime
        return (  # scatters booleans (TensorRT's ScatterND); the int32 copy is O x S x n, small
            memory_keys.index_put(where, reference_keys.to(memory_keys.dtype)),
            memory_values.index_put(where, reference_values.to(memory_values.dtype)),
            valid.to(torch.bool),
        )


class Postprocess(LoopStage):
    """Probabilities at the padded model input -> resized to the source frame (bilinear as
    ``F.interpolate(align_corners=False)``, padding dropped, flip undone: all in the taps), added to
    ``accumulated`` (the sum over test-time augmentations; zeros for the first)."""

    name = "postprocess"

    def forward(
        self,
        probabilities: torch.Tensor,
        row_index: torch.Tensor,
        row_weight: torch.Tensor,
        col_index: torch.Tensor,
        col_weight: torch.Tensor,
        accumulated: torch.Tensor,
    ) -> torch.Tensor:
        x = probabilities.to(accumulated.dtype)
        x = gather_rows(x, col_index, col_weight.to(x.dtype), 2)
        x = gather_rows(x, row_index, row_weight.to(x.dtype), 1)
        return accumulated + x


class LabelMap(LoopStage):
    """Probabilities at the source size -> the caller's labels (argmax; 0 where the background wins)."""

    name = "label_map"

    def forward(self, probabilities: torch.Tensor, object_labels: torch.Tensor) -> torch.Tensor:
        lookup = torch.cat([torch.zeros_like(object_labels[:1]), object_labels])
        return lookup[probabilities.argmax(0)].to(torch.uint8)


LOOP_STAGE_TYPES: dict[str, type[LoopStage]] = {
    stage.name: stage
    for stage in (Preprocess, LabelMasks, Aggregate, MergeMasks, MemoryGrow, MemoryWrite, Postprocess, LabelMap)
}


def build_loop_stages(
    float_dtype: torch.dtype = torch.float32, model_dtype: torch.dtype = torch.float32, *, in_place: bool = True
) -> dict[str, LoopStage]:
    """Every loop stage, by name (``in_place``: the memory write's mode, see ``MemoryWrite``)."""
    stages: dict[str, LoopStage] = {}
    for name, stage in LOOP_STAGE_TYPES.items():
        stages[name] = (
            MemoryWrite(float_dtype, model_dtype, in_place=in_place) if stage is MemoryWrite
            else stage(float_dtype, model_dtype)
        )  # fmt: skip
    return stages
