"""What every backend shares: the per-object compressed-memory tokens and the optional trace."""

from __future__ import annotations

import torch


class Backend:
    """Interface of a backend, driven by ``jfdeploy.Segmenter``.

    ``segment(image)``: 1 x 3 x H x W padded frame -> (1+O) x H x W probabilities, background first;
    also updates the memory tokens from the decoder tokens.
    ``memorize(image, object_prob, permanent=, time=)``: encode the frame with O x H x W object
    probabilities as a reference (a memory frame, or the temporary reference).
    ``check_frame_size(height, width)``: raise InputError for a padded size the backend cannot run.
    """

    name = "base"

    def __init__(self, initial_memory_token: torch.Tensor) -> None:
        self.initial_memory_token = initial_memory_token  # 1 x 1 x C, the learned start of every object
        self.memory_token: torch.Tensor | None = None  # O x 1 x C
        # when a dict, intermediates of the next calls are recorded into it (tests, debugging)
        self.trace: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget every object and reference (a new video); subclasses clear their memory too."""
        self.memory_token = None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype frames and masks must have."""
        return self.initial_memory_token.dtype

    @property
    def device(self) -> torch.device:
        """The device frames and masks must be on."""
        return self.initial_memory_token.device

    @property
    def num_objects(self) -> int:
        """Objects tracked: the one count every part of the runtime reads (rows of ``memory_token``)."""
        return 0 if self.memory_token is None else self.memory_token.shape[0]

    def add_objects(self, count: int) -> None:
        """Give ``count`` new objects the initial memory token."""
        if count <= 0:
            return
        new = self.initial_memory_token.expand(count, -1, -1).clone()
        self.memory_token = new if self.memory_token is None else torch.cat([self.memory_token, new])

    def record(self, name: str, value: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace[name] = value.detach().clone()

    def check_frame_size(self, height: int, width: int) -> None:
        """Every size (a multiple of 16) works unless a backend says otherwise."""

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def memorize(self, image: torch.Tensor, object_prob: torch.Tensor, *, permanent: bool, time: int) -> None:
        raise NotImplementedError
