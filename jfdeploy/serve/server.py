"""Uvicorn running the app, with a drain on SIGTERM / SIGINT.

The first signal starts the drain: new requests are answered 503 (``/healthz`` too, so a balancer stops
sending), requests and stream frames already in flight complete, then uvicorn shuts down and the process
exits 0. If the drain takes more than ``drain_timeout`` seconds the server stops anyway; a second signal
stops it at once (then the command exits as interrupted, 128 + the signal).
"""

from __future__ import annotations

import logging
import socket
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from jfdeploy.serve.app import ServeState

LOG = logging.getLogger("jfdeploy.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the app (``ServeState.draining``) before stopping."""

    def __init__(self, config: uvicorn.Config, state: ServeState) -> None:
        super().__init__(config)
        self.state = state
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None:
            self.state.draining = True
            self.drain_deadline = time.monotonic() + self.state.config.drain_timeout
            LOG.warning("draining: finishing %d request(s) in flight, refusing new ones", self.state.inflight)
            return
        super().handle_exit(sig, frame)  # a second signal: stop now (and exit as interrupted)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.idle() or time.monotonic() > self.drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, sock: socket.socket, *, log_level: str = "warning", access_log: bool = False) -> None:
    """Run ``app`` on the bound ``sock`` until SIGTERM / SIGINT has drained it."""
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=5)  # fmt: skip
    DrainingServer(config, app.state.serve).run(sockets=[sock])
