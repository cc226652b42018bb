"""The batching window: one worker thread owns the model; frames of all sessions queue here and run in batches.

    scheduler = Scheduler(max_batch=8, max_wait=0.005, active_sessions=lambda: len(table))
    scheduler.start()
    future = scheduler.submit(WorkItem(session, rgb, mask, probabilities=False))   # concurrent.futures.Future
    prediction = future.result()                                                   # a jfdeploy Prediction

A batch is collected from the frames that arrive within ``max_wait`` seconds of its oldest one, up to
``max_batch`` frames, at most one per session (the oldest of each, so that a session's frames run in the
order they came); it starts early once every open session has a frame in it. The batch is split into
groups of one model input size and variant, and each group goes through ``run_batch``: the one seam where
frames of several streams meet the model. A failed frame fails its own request; a failed ``run_batch``
fails the requests of its group only.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jfdeploy.backends.staged import segment_together
from jfdeploy.resample import shorter_side_size

WORKER_THREAD_NAME = "jfdeploy-serve-worker"


def input_key(options: Any, height: int, width: int) -> tuple[str, int, int]:
    """(variant, model input H, W) of an H x W frame: frames of one key can share a batched stage run."""
    side = options.sizes[0]
    size = (height, width) if side is None or min(height, width) == side else shorter_side_size(height, width, side)
    return options.variant, size[0], size[1]


@dataclass(eq=False)
class WorkItem:
    """One frame of one session: ``rgb`` uint8 H x W x 3, ``mask`` uint8 H x W label map or None."""

    session: Any  # jfdeploy.serve.sessions.Session
    rgb: Any
    mask: Any = None
    probabilities: bool = False
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    key: tuple[str, int, int] = ("", 0, 0)
    seq: int = 0

    def __post_init__(self) -> None:
        self.key = input_key(self.session.options, self.rgb.shape[0], self.rgb.shape[1])


def run_batch(items: Sequence[WorkItem]) -> list[Any]:
    """Run one group of frames (one per session, one input size and variant): a Prediction or the exception
    per item, in order.

    Each session's ``VideoPredictor`` begins its frame (preprocessing, objects, the segmenters' plans); the
    plans that need the model go through ``segment_together`` as one batch (sessions sharing a runtime:
    the frame encoder over the frames, the rest over every (session, object) pair); each predictor then
    finishes its frame. A frame that fails to begin or finish fails alone; a failed batch fails the frames
    in it.
    """
    results: list[Any] = [None] * len(items)
    pending: dict[int, Any] = {}
    for index, item in enumerate(items):
        try:
            pending[index] = item.session.predictor.begin(item.rgb, item.mask, probabilities=item.probabilities)
        except Exception as error:  # this frame's request fails, the others go on
            results[index] = error
    units = [(index, segment) for index in pending for segment in range(len(pending[index].plans))]
    todo = [(i, k) for i, k in units if pending[i].plans[k].need_segment]
    logits: dict[tuple[int, int], Any] = {}
    try:
        backends = [items[i].session.predictor.segmenters[k].backend for i, k in todo]
        computed = segment_together(backends, [pending[i].plans[k].frame for i, k in todo])
        logits = dict(zip(todo, computed, strict=True))
    except Exception as error:  # the batch fails: every frame that was in it
        for i in {i for i, _ in todo}:
            results[i] = error
            del pending[i]
    for index, frame in pending.items():
        try:
            plan_logits = [logits.get((index, k)) for k in range(len(frame.plans))]
            results[index] = items[index].session.predictor.finish(frame, plan_logits)
        except Exception as error:
            results[index] = error
    return results


class Scheduler:
    """The worker thread and the per-session queues of frames waiting for it.

    Args:
        max_batch: frames per batch at most.
        max_wait: seconds a batch waits, from its oldest frame, for frames of other sessions.
        active_sessions: the number of open sessions (a batch holding a frame of each starts at once).
        run: the batch function (``run_batch``).
        on_batch: called on the worker with each group's size and the seconds each of its frames took
            from submit to result (metrics).
    """

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait: float,
        active_sessions: Callable[[], int] = lambda: 1,
        run: Callable[[Sequence[WorkItem]], list[Any]] = run_batch,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.active_sessions = active_sessions
        self.run = run
        self.on_batch = on_batch
        self._queues: dict[int, deque[WorkItem]] = {}  # id(session) -> its frames, oldest first
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ the event loop's side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name=WORKER_THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every frame and call already queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, item: WorkItem) -> concurrent.futures.Future:
        """Queue one frame behind its session's earlier ones; its future gets the Prediction or the error."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            item.seq = next(self._seq)
            item.future.set_running_or_notify_cancel()  # a running future cannot be cancelled under the worker
            self._queues.setdefault(id(item.session), deque()).append(item)
            self._cond.notify_all()
        return item.future

    def call(self, function: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``function`` on the worker thread between batches (building a predictor, freeing memory)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._calls.append((function, future))
            self._cond.notify_all()
        return future

    def depth(self) -> int:
        """Frames waiting (not yet running)."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    # --------------------------------------------------------------------------------- the worker's side

    def _ready(self) -> int:
        return sum(1 for q in self._queues.values() if q)

    def _collect(self) -> list[WorkItem] | None:
        """The next batch (None: stopping and nothing left); runs queued calls while it waits."""
        with self._cond:
            while True:
                while self._calls:
                    function, future = self._calls.popleft()
                    self._cond.release()
                    try:
                        if future.set_running_or_notify_cancel():
                            future.set_result(function())
                    except BaseException as error:
                        future.set_exception(error)
                    finally:
                        self._cond.acquire()
                if self._ready():
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            oldest = min(q[0].enqueued for q in self._queues.values() if q)
            while not self._calls and not self._stopping:
                ready = self._ready()
                remaining = oldest + self.max_wait - time.perf_counter()
                if ready >= self.max_batch or ready >= self.active_sessions() or remaining <= 0:
                    break
                self._cond.wait(remaining)
            heads = sorted((q for q in self._queues.values() if q), key=lambda q: q[0].seq)[: self.max_batch]
            batch = [q.popleft() for q in heads]
            for key in [k for k, q in self._queues.items() if not q]:
                del self._queues[key]
            return batch

    def _work(self) -> None:
        while (batch := self._collect()) is not None:
            groups: dict[tuple[str, int, int], list[WorkItem]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[WorkItem]) -> None:
        try:
            results = self.run(group)
            if len(results) != len(group):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(group)} frames")
        except Exception as error:  # the whole group fails, nothing else
            results = [error] * len(group)
        done = time.perf_counter()
        for item, result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(len(group), [done - item.enqueued for item in group])
