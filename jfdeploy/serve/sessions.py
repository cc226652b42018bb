"""Sessions: the options a client may set, one VideoPredictor per session, the table with its limits and TTL.

Everything here runs on the server's event loop thread (the predictors themselves are built and stepped on
the scheduler's worker thread), so the table needs no lock.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jfdeploy.errors import InputError
from jfdeploy.predictor import ENGINE_BACKENDS, RunOptions
from jfdeploy.presets import PRESETS, get_preset
from jfdeploy.serve.errors import ServerFullError, SessionNotFoundError

# the options of POST /sessions: name -> (JSON type, description); the OpenAPI schema is made from this table
OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "variant": ("string", "backend variant BACKEND[-PRECISION][-triton], as in the CLI: torch, torch-bf16, "
                "torch-fp16 (CUDA), torch-triton, eager, eager-fp16; onnxruntime / tensorrt on a server started "
                "with --engines (default: the server's)"),
    "size": ("integer", "shorter side fed to the model, 0 = the frame's own size (default: the server's --size)"),
    "preset": ("string", "a dataset's published evaluation setting: " + ", ".join(PRESETS) + "; sets mem_every, "
               "max_memory_frames and top-k (its top-k must be the server model's); options given explicitly win"),
    "mem_every": ("integer", "a memory frame every N frames (default: the server's --mem-every)"),
    "max_memory_frames": ("integer", "memory frames kept per object (default: the server's --max-memory-frames)"),
    "topk": ("integer", "top-k of the joint attention; the model is shared by all sessions, so it must equal the "
             "server's (--topk); any other value is refused"),
    "max_objects": ("integer", "refuse masks with more objects; at most the server's --max-objects"),
}  # fmt: skip
EVICTED_REMEMBERED = 4096  # ids of evicted sessions kept to say "evicted" rather than "unknown"


@dataclass(frozen=True)
class SessionPolicy:
    """What a session may ask of this server.

    defaults: the RunOptions of the server's command line (a session's options start from them).
    model_topk: the top-k of the shared model or engine directory (None: no top-k).
    device_type: "cpu" or "cuda", where the model runs.
    max_objects: the largest ``max_objects`` a session may set.
    """

    defaults: RunOptions
    model_topk: int | None
    device_type: str
    max_objects: int


def _integer(options: dict[str, Any], name: str, minimum: int) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"option {name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"option {name} must be >= {minimum}, got {value}")
    return value


def session_options(body: Any, policy: SessionPolicy) -> RunOptions:
    """The RunOptions of a POST /sessions body (a JSON object of OPTION_FIELDS); InputError for an option
    that is unknown, of the wrong type, or cannot apply on this server."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InputError("the session options must be a JSON object")
    unknown = sorted(set(body) - set(OPTION_FIELDS))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_FIELDS)}")
    defaults = policy.defaults
    mem_every, max_memory_frames = _integer(body, "mem_every", 1), _integer(body, "max_memory_frames", 1)
    topk = _integer(body, "topk", 1)
    if body.get("preset") is not None:
        if not isinstance(body["preset"], str):
            raise InputError(f"option preset must be a string, got {body['preset']!r}")
        preset = get_preset(body["preset"])
        mem_every = preset.mem_every if mem_every is None else mem_every
        max_memory_frames = preset.max_memory_frames if max_memory_frames is None else max_memory_frames
        if topk is None and preset.topk != policy.model_topk:
            raise InputError(
                f"preset {preset.name} uses top-k {preset.topk}, this server's model top-k {policy.model_topk} "
                f"(start the server with --topk {preset.topk}, or give mem_every / max_memory_frames instead)"
            )
    if topk is not None and topk != policy.model_topk:
        raise InputError(
            f"topk {topk} cannot apply: all sessions share the server's model, whose top-k is {policy.model_topk}"
        )
    max_objects = _integer(body, "max_objects", 1)
    if max_objects is not None and max_objects > policy.max_objects:
        raise InputError(f"max_objects {max_objects} is above this server's limit of {policy.max_objects}")
    size = _integer(body, "size", 0)
    variant = body.get("variant", defaults.variant)
    if not isinstance(variant, str):
        raise InputError(f"option variant must be a string, got {variant!r}")
    fields: dict[str, Any] = {
        "mem_every": defaults.mem_every if mem_every is None else mem_every,
        "max_memory_frames": defaults.max_memory_frames if max_memory_frames is None else max_memory_frames,
        "sizes": defaults.sizes if size is None else (size,),
        "max_objects": defaults.max_objects if max_objects is None else max_objects,
    }
    engines = defaults.backend in ENGINE_BACKENDS
    if engines:
        if variant != defaults.backend:
            raise InputError(
                f"variant {variant} cannot apply: this server runs the engine directory on {defaults.backend}"
            )
        fields.update(engines=defaults.engines, device=defaults.device)
    elif variant.split("-")[0] in ENGINE_BACKENDS:
        raise InputError(f"variant {variant} needs a server started with --engines DIR")
    options = RunOptions.from_variant(variant, **fields)
    if options.precision == "fp16" and policy.device_type != "cuda":
        raise InputError(f"variant {variant}: fp16 runs on CUDA devices; this server runs on the CPU (use bf16)")
    if options.attention == "triton" and policy.device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(f"variant {variant}: the Triton attention kernel runs on CUDA devices, not on this CPU")
    return options


@dataclass(eq=False)
class Session:
    """One client's video: its options, its VideoPredictor (None once released), and its bookkeeping.

    frame_size: (H, W) of its first frame; later frames must match. frames: frames accepted.
    pending: frames queued or running (at most --max-queue). last_used: monotonic seconds.
    """

    id: str
    options: RunOptions
    predictor: Any
    last_used: float
    frame_size: tuple[int, int] | None = None
    frames: int = 0
    pending: int = 0
    closed: bool = False
    created: float = field(default_factory=time.time)

    def release_if_done(self) -> None:
        """Drop the predictor (its memory) once the session is closed and nothing of it is running."""
        if self.closed and self.pending == 0:
            self.predictor = None


class SessionTable:
    """The open sessions, at most ``max_sessions``; a session idle (nothing pending) for ``ttl`` seconds is
    evicted by ``evict_idle``."""

    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._reserved = 0  # sessions being created (their predictor is being built)

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def reserve(self) -> None:
        """Hold a place for a session being created; ServerFullError when --max-sessions are open."""
        if len(self._sessions) + self._reserved >= self.max_sessions:
            raise ServerFullError(f"{self.max_sessions} sessions are open, the server's limit (--max-sessions)")
        self._reserved += 1

    def unreserve(self) -> None:
        self._reserved -= 1

    def add(self, options: RunOptions, predictor: Any) -> Session:
        """A new session in a reserved place."""
        session_id = secrets.token_urlsafe(12)
        session = Session(session_id, options, predictor, last_used=self.clock())
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str) -> Session:
        """The open session ``session_id`` (its idle time restarts); SessionNotFoundError otherwise."""
        session = self._sessions.get(session_id)
        if session is None:
            if session_id in self._evicted:
                raise SessionNotFoundError(
                    f"session {session_id} was evicted after {self.ttl:g} s idle (--session-ttl)"
                )
            raise SessionNotFoundError(f"no session {session_id} (never opened, or closed)")
        session.last_used = self.clock()
        return session

    def remove(self, session_id: str) -> Session:
        session = self.get(session_id)
        del self._sessions[session_id]
        session.closed = True
        session.release_if_done()
        return session

    def evict_idle(self) -> list[Session]:
        """Close every session with nothing pending whose last frame is more than ``ttl`` seconds old."""
        now = self.clock()
        idle = [s for s in self._sessions.values() if s.pending == 0 and now - s.last_used > self.ttl]
        for session in idle:
            del self._sessions[session.id]
            session.closed = True
            session.release_if_done()
            self._evicted[session.id] = None
            while len(self._evicted) > EVICTED_REMEMBERED:
                self._evicted.popitem(last=False)
        return idle


def replace_options(options: RunOptions, **fields: Any) -> RunOptions:
    """``dataclasses.replace`` that validates (for the server's defaults)."""
    options = dataclasses.replace(options, **fields)
    options.validate()
    return options
