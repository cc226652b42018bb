"""Prometheus metrics of the server (prometheus_client, one registry per app), served at GET /metrics::

jfdeploy_sessions                    open sessions
jfdeploy_frames_total{outcome}       frames answered: ok, or error (bad input, failures)
jfdeploy_rejected_total{reason}      requests refused before queueing: sessions_full, queue_full, too_large, ...
jfdeploy_sessions_evicted_total      sessions closed by --session-ttl
jfdeploy_queue_depth                 frames waiting for the worker
jfdeploy_batch_size                  histogram: frames per run_batch call
jfdeploy_frame_latency_seconds       histogram: submit to result, per frame (queueing + model)
jfdeploy_memory_bytes{kind}          cuda_allocated / cuda_reserved where torch.cuda is in use, else process_rss
process_*                            the standard process collector (RSS, CPU seconds, open fds)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRIC_NAMES = (
    "jfdeploy_sessions",
    "jfdeploy_frames_total",
    "jfdeploy_rejected_total",
    "jfdeploy_sessions_evicted_total",
    "jfdeploy_queue_depth",
    "jfdeploy_batch_size",
    "jfdeploy_frame_latency_seconds",
    "jfdeploy_memory_bytes",
)


def process_rss_bytes() -> float:
    """Resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak if sys.platform == "darwin" else peak * 1024)


def _cuda() -> object | None:
    """torch.cuda if torch is already loaded (the model's backend) and CUDA is available, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


class ServeMetrics:
    """The server's metrics in their own registry; ``render()`` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, max_batch: int, sessions: Callable[[], int], queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        registry = self.registry
        Gauge("jfdeploy_sessions", "open sessions", registry=registry).set_function(sessions)
        self.frames = Counter("jfdeploy_frames", "frames answered", ["outcome"], registry=registry)
        self.rejected = Counter("jfdeploy_rejected", "requests refused before queueing", ["reason"], registry=registry)
        self.evicted = Counter("jfdeploy_sessions_evicted", "sessions closed by --session-ttl", registry=registry)
        Gauge("jfdeploy_queue_depth", "frames waiting for the worker", registry=registry).set_function(queue_depth)
        buckets = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, max_batch})
        self.batch_size = Histogram("jfdeploy_batch_size", "frames per run_batch call", buckets=buckets,
                                    registry=registry)  # fmt: skip
        self.latency = Histogram("jfdeploy_frame_latency_seconds", "submit to result, per frame",
                                 buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        memory = Gauge("jfdeploy_memory_bytes", "device memory (CUDA) or process RSS", ["kind"], registry=registry)
        cuda = _cuda()
        if cuda is not None:
            memory.labels("cuda_allocated").set_function(lambda: float(cuda.memory_allocated()))  # type: ignore[attr-defined]
            memory.labels("cuda_reserved").set_function(lambda: float(cuda.memory_reserved()))  # type: ignore[attr-defined]
        memory.labels("process_rss").set_function(process_rss_bytes)

    def on_batch(self, size: int, seconds: list[float]) -> None:
        """The scheduler's callback: one run_batch call of ``size`` frames and each frame's latency."""
        self.batch_size.observe(size)
        for value in seconds:
            self.latency.observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
