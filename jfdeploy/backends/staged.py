"""The staged runtime: one frame loop over the exportable stages, whoever executes them.

Backend "torch" runs the stage modules in PyTorch; "onnxruntime" and "tensorrt" run the same stages
exported to ONNX graphs / TensorRT engines. They differ only in the ``runtime``
(``jfdeploy.backends.runtime``): who executes a stage by name and owns the arrays. This module imports
no tensor library.

Against the published loop ("eager") it saves: the current frame's convolutional stages run once
per frame instead of once per object; reference keys/values are computed once when a frame is
memorized and read from a fixed-capacity cache (``jfdeploy.memory``) instead of being recomputed
for every query frame; objects go through every stage together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jfdeploy import specs
from jfdeploy.backends.base import Backend
from jfdeploy.backends.runtime import Array, StageRuntime
from jfdeploy.memory import ReferenceMemory


class StagedBackend(Backend):
    """The model's stages and the reference memory on a runtime.

    Args:
        runtime: executes every stage of ``specs.STAGES``.
        initial_memory_token: 1 x 1 x C, on the runtime.
        widths: the model's static widths (the memory's shape).
        max_memory_frames: memory frames kept per object (the reference memory's capacity).
        skip_full_validity: pass None as ``reference_valid`` once every slot is valid (torch stages
            then skip the masking; exported graphs always take the mask).
    """

    name = "staged"

    def __init__(
        self,
        runtime: StageRuntime,
        initial_memory_token: Array,
        widths: specs.Widths,
        *,
        max_memory_frames: int,
        skip_full_validity: bool = False,
    ) -> None:
        super().__init__(runtime, initial_memory_token)
        self.widths = widths
        self.max_memory_frames = max_memory_frames
        self.skip_full_validity = skip_full_validity
        self.memory = ReferenceMemory(runtime, widths, max_memory_frames=max_memory_frames)

    def reset(self) -> None:
        super().reset()
        self.memory = ReferenceMemory(self.runtime, self.widths, max_memory_frames=self.max_memory_frames)

    def add_objects(self, count: int, tokens_per_frame: int) -> None:
        if count <= 0:
            return
        token = self.memory_token
        if token is None:
            token = self.runtime.zeros((0, 1, self.widths.c16), self.runtime.memory_float)
        self.num_objects += count
        self.memory_token = self.memory.grow(token, self.initial_memory_token, self.num_objects, tokens_per_frame)

    def batch_key(self, frame: Array) -> tuple:
        """Frames of backends with equal keys can be segmented as one batch (``segment_together``): the same
        runtime, frame size and memory layout (slots x tokens)."""
        assert self.memory.keys is not None
        runtime = self.runtime
        return (id(runtime), runtime.shape(frame), runtime.shape(self.memory.keys)[3:])

    def segment(self, frame: Array) -> Array:
        run = self.runtime.run
        assert self.memory_token is not None and self.memory.num_objects == self.num_objects
        keys, values, valid = self.memory.reader_inputs(self.skip_full_validity)
        tokens, f8, f4 = run("frame_encoder", frame)
        (f16,) = run("memory_reader", tokens, keys, values, valid)
        (enhanced,) = run("enhancer", f16, self.memory_token)
        logits, decoder_tokens = run("decoder", f16, f8, f4, enhanced)
        (self.memory_token,) = run("memory_token_update", decoder_tokens, self.memory_token)
        self.record("read.f16", f16)
        self.record("enhance.f16", enhanced)
        self.record("decode.tokens", decoder_tokens)
        self.record("decode.object_logits", logits)
        self.record("update.memory_token", self.memory_token)
        return logits

    def memorize(self, frame: Array, object_prob: Array, *, permanent: bool, time: int) -> None:
        assert self.memory_token is not None
        keys, values, self.memory_token = self.runtime.run("reference_encoder", frame, object_prob, self.memory_token)
        self.record("memorize.memory_token", self.memory_token)
        self.memory.write(keys, values, permanent=permanent, time=time)


def segment_together(backends: Sequence[Backend], frames: Sequence[Array]) -> list[Array]:
    """``[b.segment(f) for b, f in zip(backends, frames)]``, computed in one batch per ``batch_key``.

    The frames of different videos (1 x 3 x H x W each) go through the frame encoder as one B x 3 x H x W
    batch; the memory reader, enhancer, decoder and memory token update run once over every (video,
    object) pair: the pairs' current tokens, f8 and f4 are their frame's rows, their keys / values /
    validity the videos' memories joined along the object axis, so every pair reads its own video's slots
    only, as it would alone. Each backend's memory tokens and logits are its rows of the results.
    Runtimes that cannot batch (``runtime.batches`` False: TensorRT and onnxruntime on CUDA, which would
    need the joins as graphs of their own) segment each frame in turn.
    """
    results: list[Array | None] = [None] * len(backends)
    groups: dict[tuple, list[int]] = {}
    for index, (backend, frame) in enumerate(zip(backends, frames, strict=True)):
        batches = isinstance(backend, StagedBackend) and backend.runtime.batches
        key = backend.batch_key(frame) if batches and isinstance(backend, StagedBackend) else ("alone", index)
        groups.setdefault(key, []).append(index)
    for members in groups.values():
        if len(members) == 1:
            results[members[0]] = backends[members[0]].segment(frames[members[0]])
            continue
        group = [b for b in (backends[i] for i in members) if isinstance(b, StagedBackend)]  # all: by the key
        for i, logits in zip(members, _segment_batch(group, [frames[i] for i in members]), strict=True):
            results[i] = logits
    return results


def _segment_batch(backends: Sequence[StagedBackend], frames: Sequence[Array]) -> list[Array]:
    runtime = backends[0].runtime
    run = runtime.run
    counts = [backend.num_objects for backend in backends]
    assert all(b.memory_token is not None and b.memory.num_objects == b.num_objects for b in backends)
    skip_validity = all(b.skip_full_validity and b.memory.full for b in backends)
    memories = [backend.memory.reader_inputs() for backend in backends]
    keys = runtime.concat([keys for keys, _, _ in memories], 1)  # L x sum(O) x heads x (S*n) x d
    values = runtime.concat([values for _, values, _ in memories], 1)
    valid = None if skip_validity else runtime.concat([valid for _, _, valid in memories], 0)
    pair_frame = runtime.upload(np.repeat(np.arange(len(backends)), counts))  # the frame of each pair
    tokens, f8, f4 = (runtime.take(a, pair_frame) for a in run("frame_encoder", runtime.concat(frames, 0)))
    (f16,) = run("memory_reader", tokens, keys, values, valid)
    memory_token = runtime.concat([backend.memory_token for backend in backends], 0)
    (enhanced,) = run("enhancer", f16, memory_token)
    logits, decoder_tokens = run("decoder", f16, f8, f4, enhanced)
    (memory_token,) = run("memory_token_update", decoder_tokens, memory_token)
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    result = []
    for backend, start, stop in zip(backends, starts[:-1], starts[1:], strict=True):
        backend.memory_token = runtime.rows(memory_token, start, stop)
        result.append(runtime.rows(logits, start, stop))
    return result
