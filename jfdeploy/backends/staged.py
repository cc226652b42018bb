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
