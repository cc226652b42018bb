"""What every backend shares: the stage runtime, the per-object compressed-memory tokens, the trace."""

from __future__ import annotations

import numpy as np

from jfdeploy.backends.runtime import Array, StageRuntime


class Backend:
    """Interface of a backend, driven by ``jfdeploy.Segmenter``; arrays are its runtime's.

    ``segment(frame)``: 1 x 3 x H x W padded frame -> O x 1 x H x W logits (the ``aggregate`` stage turns
    them into probabilities); also updates the memory tokens from the decoder tokens.
    ``memorize(frame, object_prob, permanent=, time=)``: encode the frame with O x H x W object
    probabilities as a reference (a memory frame, or the temporary reference).
    ``add_objects(count, tokens_per_frame)``: room for ``count`` new objects (memory tokens, memory).
    ``check_frame_size(height, width)``: raise InputError for a padded size the backend cannot run.
    ``runtime``: runs the frame loop's stages (``jfdeploy.loop_stages``) on the backend's device.
    """

    name = "base"

    def __init__(self, runtime: StageRuntime, initial_memory_token: Array) -> None:
        self.runtime = runtime
        self.initial_memory_token = initial_memory_token  # 1 x 1 x C, the learned start of every object
        self.memory_token: Array | None = None  # O x 1 x C
        self.num_objects = 0  # objects tracked: the one count every part of the frame loop reads
        # when a dict, intermediates of the next calls are recorded into it (numpy; tests, debugging)
        self.trace: dict[str, np.ndarray] | None = None

    def reset(self) -> None:
        """Forget every object and reference (a new video); subclasses clear their memory too."""
        self.memory_token = None
        self.num_objects = 0

    @property
    def device(self) -> str:
        return self.runtime.device

    def record(self, name: str, value: Array) -> None:
        if self.trace is not None:
            self.trace[name] = self.runtime.download(value)

    def check_frame_size(self, height: int, width: int) -> None:
        """Every size (a multiple of 16) works unless a backend says otherwise."""

    def add_objects(self, count: int, tokens_per_frame: int) -> None:
        raise NotImplementedError

    def segment(self, frame: Array) -> Array:
        raise NotImplementedError

    def memorize(self, frame: Array, object_prob: Array, *, permanent: bool, time: int) -> None:
        raise NotImplementedError
