"""Many videos (or a dataset's sequences) at once: a pool of workers (local processes or Ray actors),
retries, resume, a summary.

What ``jfdeploy run-many`` does, as functions::

    jobs = jobs_from_videos(["a.mp4", "b.mp4"], masks_dir="masks/")   # or jobs_from_manifest("list.jsonl")
    spec = WorkerSpec(checkpoint="jointformer_s02.pth", model_kwargs={"topk": 120}, options=RunOptions(), device="cpu")
    summary = run_many(jobs, "out/", spec, workers=2)                   # out/NAME/*.png, out/summary.json
    summary.failed                                                      # the videos that failed (exit status 1)

and ``jfdeploy eval --workers N`` (the scores are computed afterwards, in the calling process)::

    jobs = jobs_from_sequences(datasets.davis("DAVIS", year=2017))     # one SequenceJob per sequence
    summary = run_many(jobs, "out/masks", spec, workers=2, summary_path="out/workers.json")

A job knows its output folder (``job.output(out_root)``: ``out/NAME/`` for a video, the dataset's layout
for a sequence, ``datasets.sequence_folder``), when it is complete (``job.complete``) and how to run on
a worker (``job.run``: ``jfdeploy.pipeline.segment_video`` for a video,
``jfdeploy.evaluate.evaluate_sequence`` for a sequence). Each worker (a process of ``multiprocessing``'s
spawn context, or a Ray actor) loads the model once and then runs one job at a time; both commit the
output folder atomically (a staging folder ``.NAME.partial-*`` next to it, named by
``jfdeploy.fsutil.new_staging_dir``, renamed onto it when complete). That makes the batch

- resumable: a job whose output is complete is skipped (unless ``overwrite``);
- safe to retry: when a worker dies (killed, segfault, out of memory, a lost Ray node) its job is
  given to another worker, up to ``retries`` times, after the dead worker's staging folder is removed;
  a job whose folder was committed by the dead worker just before it died is not run again (the
  folder's inode tells a folder committed during this batch from one that was there before), so no
  job is ever completed twice.

Local workers are always processes, even for ``workers=1``: one code path, and a crash in the model
(or a SIGKILL) costs one job, not the batch. A worker process runs inside ``fsutil.command_scope``:
SIGTERM / SIGINT remove its staging folder before it exits; after SIGKILL the driver removes it.

Errors a user can cause inside one job (``JfDeployError``: a corrupt video or frame, a mask of another
size; out of memory) make that job "failed" with a one-line message; the others go on. An unexpected
exception (a bug) makes the job "failed" too, with "internal error" in the message and the
traceback in the summary. An error while a worker loads the model (a bad checkpoint) stops the batch.

Test-only hook: the environment variable ``JFDEPLOY_TEST_SLOW_FRAMES`` (seconds, float) makes every
worker sleep that long before each frame it reads (videos and sequences), so that tests can kill a
worker while it is mid-job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import traceback
import uuid
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jfdeploy import datasets
from jfdeploy.errors import InputError, JfDeployError, exit_status
from jfdeploy.fsutil import command_scope, make_dirs, write_text_atomic
from jfdeploy.io.video import FrameSource
from jfdeploy.pipeline import RunOptions

SUMMARY_NAME = "summary.json"
SLOW_FRAMES_ENV = "JFDEPLOY_TEST_SLOW_FRAMES"
RAY_INSTALL_HINT = "pip install 'jfdeploy[ray]'"
_JOIN_SECONDS = 10.0  # how long a stopped worker may take to clean up before it is killed
_WAIT_SECONDS = 1.0  # longest wait of the driver loop between checks


# ------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One video to segment: its frames (file or folder), its first-frame mask, its output name."""

    video: Path
    mask: Path
    name: str  # output folder <out>/<name>/; the video's stem (a folder's name)
    kind: ClassVar[str] = "video"

    @property
    def source(self) -> str:
        return str(self.video)

    def output(self, out_root: str | os.PathLike) -> Path:
        """The folder the job commits: ``out_root/NAME``."""
        return Path(out_root) / self.name

    def complete(self, out_root: str | os.PathLike) -> bool:
        """Whether its output exists (``segment_video`` commits a folder only when it is complete)."""
        return self.output(out_root).is_dir()

    def run(self, worker: Worker, out_root: str | os.PathLike, overwrite: bool) -> tuple[int, float]:
        """Segment the video with ``worker``'s predictor; (frames, model seconds). Errors propagate."""
        from jfdeploy.io import open_frames
        from jfdeploy.pipeline import segment_video

        source = open_frames(self.video)
        delay = _test_frame_delay()
        if delay:
            source = _SlowFrames(source, delay)
        summary = segment_video(
            worker.model,
            source,
            self.mask,
            self.output(out_root),
            options=worker.spec.options,
            overwrite=overwrite,
            progress=False,
            predictor=worker.predictor,
        )
        return summary.frames, summary.seconds


@dataclass(frozen=True, eq=False)
class SequenceJob:
    """One sequence of a VOS dataset to segment as ``jfdeploy eval`` does (``evaluate.evaluate_sequence``)."""

    sequence: datasets.Sequence
    kind: ClassVar[str] = "sequence"

    @property
    def name(self) -> str:
        return self.sequence.name

    @property
    def source(self) -> str:
        return str(self.sequence.frames[0].parent)

    def output(self, out_root: str | os.PathLike) -> Path:
        """The folder the job commits (``datasets.sequence_folder``): ``out_root/<seq>`` (davis),
        ``out_root/Annotations/<vid>`` (youtube)."""
        return datasets.sequence_folder(out_root, self.sequence)

    def complete(self, out_root: str | os.PathLike) -> bool:
        """Whether every frame to save has its mask (``datasets.sequence_complete``)."""
        return datasets.sequence_complete(out_root, self.sequence)

    def run(self, worker: Worker, out_root: str | os.PathLike, overwrite: bool) -> tuple[int, float]:
        """Segment the sequence into its folder, replacing it (the driver runs only incomplete ones, or
        every one with ``overwrite``); (frames segmented, seconds, reading and writing included)."""
        from jfdeploy.evaluate import evaluate_sequence

        sequence = self.sequence
        delay = _test_frame_delay()
        if delay:
            sequence = _slow_sequence(sequence, delay)
        start = time.perf_counter()
        frames = evaluate_sequence(worker.predictor, sequence, out_root)
        return frames, time.perf_counter() - start


AnyJob = Job | SequenceJob


def video_name(video: str | os.PathLike) -> str:
    """The output name of a video: the file's stem (``clip.mp4`` -> ``clip``), or a folder's name."""
    path = Path(video)
    return path.name if path.is_dir() else path.stem


def _check_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise InputError(f"{where}: {name!r} cannot name an output folder (no slashes, no leading dot)")
    return name


def check_unique_names(jobs: Sequence[AnyJob]) -> None:
    """InputError naming both inputs if two jobs would write the same output folder."""
    seen: dict[str, AnyJob] = {}
    for job in jobs:
        if job.name in seen:
            raise InputError(
                f"two {job.kind}s have the output name {job.name!r}: {seen[job.name].source} and {job.source} "
                "(outputs go to OUT/NAME/; rename one, or give names in a manifest)"
            )
        seen[job.name] = job


def jobs_from_videos(videos: Iterable[str | os.PathLike], masks_dir: str | os.PathLike) -> list[Job]:
    """One job per video with the mask ``masks_dir/<video stem>.png``; InputError for a missing file."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise InputError(f"masks folder not found: {masks_dir}")
    jobs = []
    for video in map(Path, videos):
        if not video.exists():
            raise InputError(f"input not found: {video}")
        name = _check_name(video_name(video), str(video))
        mask = masks_dir / f"{name}.png"
        if not mask.is_file():
            raise InputError(f"no first-frame mask for {video}: {mask} not found")
        jobs.append(Job(video=video, mask=mask, name=name))
    if not jobs:
        raise InputError("no videos given")
    check_unique_names(jobs)
    return jobs


def jobs_from_manifest(path: str | os.PathLike) -> list[Job]:
    """Jobs from a JSON-lines file: one ``{"video": ..., "mask": ...}`` (optionally ``"name"``) per line.

    Relative paths are relative to the manifest's folder; blank lines are skipped. InputError with the
    line number for a line that is not a JSON object with those keys, or names a missing file.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"manifest {path}: cannot read it ({error})") from None
    jobs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(entry, dict):
            raise InputError(f'{where}: expected an object {{"video": ..., "mask": ...}}, got {line.strip()[:60]}')
        unknown = sorted(set(entry) - {"video", "mask", "name"})
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected video, mask, name)")
        for key in ("video", "mask"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise InputError(f"{where}: {key!r} must be a path (a non-empty string)")
        video, mask = (path.parent / entry["video"], path.parent / entry["mask"])  # absolute paths stay absolute
        if not video.exists():
            raise InputError(f"{where}: input not found: {video}")
        if not mask.is_file():
            raise InputError(f"{where}: mask not found: {mask}")
        name = entry.get("name", video_name(video))
        if not isinstance(name, str):
            raise InputError(f"{where}: 'name' must be a string")
        jobs.append(Job(video=video, mask=mask, name=_check_name(name, where)))
    if not jobs:
        raise InputError(f"manifest {path} lists no videos")
    check_unique_names(jobs)
    return jobs


def jobs_from_sequences(sequences: Iterable[datasets.Sequence]) -> list[SequenceJob]:
    """One job per sequence of a dataset (``jfdeploy.datasets``); InputError for a name that cannot name a
    folder or is given twice."""
    jobs = [SequenceJob(_check_sequence_name(sequence)) for sequence in sequences]
    check_unique_names(jobs)
    return jobs


def _check_sequence_name(sequence: datasets.Sequence) -> datasets.Sequence:
    _check_name(sequence.name, f"sequence {sequence.name!r}")
    return sequence


# ----------------------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its model (picklable: it travels to processes and Ray actors).

    ``options`` builds the worker's ``VideoPredictor`` (and is passed to ``segment_video`` as is). With
    ``options.engines`` set (backends onnxruntime / tensorrt) no PyTorch model is loaded and ``checkpoint``
    must be None.
    ``device``: where the PyTorch model runs ("cpu", "cuda", "cuda:1"); local workers given plain
    "cuda" are spread over the visible GPUs, Ray actors get one GPU each. ``threads``: PyTorch
    threads (and Ray CPUs) per worker; None: the CPUs divided among the workers.
    """

    checkpoint: str | os.PathLike | None = None  # None: deterministic random weights
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # load_model's topk, topk_range, ...
    options: RunOptions = field(default_factory=RunOptions)
    device: str = "cpu"
    threads: int | None = None

    @property
    def uses_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class VideoResult:
    """What became of one job (a video or a sequence). ``frames``/``seconds``/``fps`` are None where unknown
    (failed, skipped)."""

    name: str
    frames: int | None
    seconds: float | None  # videos: model time (segment_video's RunSummary.seconds); sequences: the worker's time
    fps: float | None
    status: str  # "done", "failed" or "skipped"
    error: str | None = None  # one line, for "failed"
    worker: str = ""
    attempts: int = 0  # how many workers were given the video (filled in by run_many)
    traceback: str | None = None  # for an internal error (a bug), the worker's traceback

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        del entry["name"]
        if entry["traceback"] is None:
            del entry["traceback"]
        return entry


class _SlowFrames(FrameSource):
    """The frames of another source, each after a sleep (the ``JFDEPLOY_TEST_SLOW_FRAMES`` test hook)."""

    def __init__(self, inner: FrameSource, delay: float) -> None:
        super().__init__(inner.path, inner.names, inner.size, inner.fps)
        self._inner, self._delay = inner, delay

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for item in self._inner:
            time.sleep(self._delay)
            yield item


@dataclass
class _SlowSequence(datasets.Sequence):
    """A sequence whose frames are each read after a sleep (the ``JFDEPLOY_TEST_SLOW_FRAMES`` test hook)."""

    delay: float = 0.0

    def read_frame(self, index: int) -> np.ndarray:
        time.sleep(self.delay)
        return super().read_frame(index)


def _slow_sequence(sequence: datasets.Sequence, delay: float) -> _SlowSequence:
    fields = {f.name: getattr(sequence, f.name) for f in dataclasses.fields(sequence)}
    return _SlowSequence(**fields, delay=delay)


def _test_frame_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(SLOW_FRAMES_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class Worker:
    """Loads the model and builds its predictor once (in ``__init__``), then runs jobs (videos, sequences)
    one at a time."""

    def __init__(self, spec: WorkerSpec, name: str = "worker") -> None:
        from jfdeploy.predictor import VideoPredictor

        self.spec = spec
        self.name = name
        options = spec.options
        if getattr(options, "engines", None) is not None:  # no torch needed: the engine runtime
            if spec.checkpoint is not None:
                raise InputError("a checkpoint does not apply with engines: the engine directory fixed the weights")
            self.model = None
            if spec.threads:
                options = dataclasses.replace(options, threads=spec.threads)
        else:
            import torch

            from jfdeploy.model.checkpoint import load_model

            if spec.threads:
                torch.set_num_threads(spec.threads)
            with warnings.catch_warnings():  # the driver (the command line) warns about random weights once
                warnings.filterwarnings("ignore", message="NO CHECKPOINT GIVEN")
                model = load_model(spec.checkpoint, **dict(spec.model_kwargs))
            self.model = model.to(torch.device(spec.device))
        self.predictor = VideoPredictor(self.model, options)  # engines and segmenters built once, too

    def run(self, job: AnyJob, out_root: str | os.PathLike, *, overwrite: bool = False) -> VideoResult:
        """Run ``job`` into ``job.output(out_root)``; a failure becomes a "failed" result, not an exception.

        KeyboardInterrupt (and ``jfdeploy.errors.Interrupted``) still propagates: the batch stops.
        """
        try:
            frames, seconds = job.run(self, out_root, overwrite)
        except Exception as exc:
            status = exit_status(exc)
            trace = None
            if status is None:  # a bug: keep going with the other videos, but keep the traceback
                message = f"internal error: {type(exc).__name__}: {_one_line(str(exc))}"
                trace = traceback.format_exc()
            else:
                message = status[1]
            self._release_memory()
            return VideoResult(job.name, None, None, None, "failed", message, self.name, traceback=trace)
        fps = frames / seconds if seconds > 0 else None
        return VideoResult(job.name, frames, seconds, fps, "done", None, self.name)

    def _release_memory(self) -> None:
        torch = sys.modules.get("torch")  # only a torch model holds torch's cached device memory
        if self.spec.uses_cuda and torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory video must not starve the next one


def _portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (JfDeployError subclasses do), else a RuntimeError with its traceback."""
    import pickle

    if isinstance(exc, JfDeployError):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(exc))
            return exc
        return JfDeployError(_one_line(str(exc)))
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RuntimeError(f"worker could not start: {type(exc).__name__}: {exc}\n{text}")


# --------------------------------------------------------------------------- local worker processes


def _local_device(device: str, index: int) -> str:
    """Plain "cuda" for the ``index``-th local worker: the GPUs in turn."""
    if device != "cuda":
        return device
    from jfdeploy.devices import cuda_device_count

    count = cuda_device_count()
    return f"cuda:{index % count}" if count > 1 else device


def _local_worker_main(spec: WorkerSpec, index: int, conn: Connection, out_root: str, overwrite: bool) -> None:
    """A worker process: load the model, say "ready", then run the jobs the driver sends until it sends None.

    Messages to the driver: ("ready", name), ("fatal", exception), ("result", VideoResult).
    """
    try:
        with command_scope():  # SIGTERM / SIGINT: the job's staging folder is removed on the way out
            try:
                spec = dataclasses.replace(spec, device=_local_device(spec.device, index))
                worker = Worker(spec, name=f"local-{index} (pid {os.getpid()})")
            except Exception as exc:
                conn.send(("fatal", _portable_error(exc)))
                return
            conn.send(("ready", worker.name))
            while (job := conn.recv()) is not None:
                conn.send(("result", worker.run(job, out_root, overwrite=overwrite)))
    except KeyboardInterrupt as exc:  # Interrupted (SIGTERM) or Ctrl-C: exit quietly with 128 + signal
        sys.exit(128 + getattr(exc, "signum", signal.SIGINT))
    except (EOFError, BrokenPipeError):  # the driver is gone: nothing left to do
        sys.exit(1)


@dataclass
class _Slot:
    """One worker as the driver sees it."""

    index: int
    name: str
    handle: Any  # local: (Process, Connection); Ray: the actor handle
    ready: bool = False
    job: AnyJob | None = None


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


_Event = tuple["_Slot", VideoResult | None, str]  # (worker, its result, "") or (worker, None, why it died)


class _LocalPool:
    """Worker processes (spawn context), each with its own pipe: the driver knows what each one runs."""

    engine = "local"

    def __init__(self, spec: WorkerSpec, out_root: Path, overwrite: bool) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._spec, self._out_root, self._overwrite = spec, out_root, overwrite
        self.slots: list[_Slot] = []
        self.started = 0

    def start_worker(self) -> None:
        index = self.started
        self.started += 1
        driver_end, worker_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_local_worker_main,
            args=(self._spec, index, worker_end, str(self._out_root), self._overwrite),
            name=f"jfdeploy-worker-{index}",
            daemon=True,  # never outlives the driver
        )
        process.start()
        worker_end.close()
        self.slots.append(_Slot(index, f"local-{index}", (process, driver_end)))

    def submit(self, slot: _Slot, job: AnyJob) -> None:
        slot.job = job
        slot.handle[1].send(job)

    def events(self, timeout: float) -> list[_Event]:
        """Results and deaths: (slot, result, "") or (slot, None, why it died); the dead slot is dropped."""
        waitables = [s.handle[1] for s in self.slots] + [s.handle[0].sentinel for s in self.slots]
        if not waitables:
            return []
        wait_for_any(waitables, timeout)
        events: list[_Event] = []
        for slot in list(self.slots):
            process, conn = slot.handle
            messages = []
            with contextlib.suppress(EOFError, OSError):  # a dead worker's pipe: handled below
                while conn.poll():
                    messages.append(conn.recv())
            for kind, payload in messages:
                if kind == "fatal":
                    raise payload
                if kind == "ready":
                    slot.ready, slot.name = True, payload
                else:
                    slot.job = None
                    events.append((slot, payload, ""))
            if not process.is_alive():
                process.join()
                exit_text = _exit_description(process.exitcode)
                if not slot.ready:
                    raise JfDeployError(f"worker {slot.name} died while loading the model ({exit_text})")
                self.slots.remove(slot)
                conn.close()
                events.append((slot, None, f"worker died ({exit_text})"))  # slot.job: the video it was running
        return events

    def close(self, *, force: bool) -> None:
        """Stop every worker: politely when the batch is done, by SIGTERM (then SIGKILL) when ``force``."""
        for slot in self.slots:
            process, conn = slot.handle
            if force or not slot.ready:  # one still loading its model holds nothing: no need to wait for it
                process.terminate()
            else:
                with contextlib.suppress(OSError):
                    conn.send(None)
        deadline = time.monotonic() + _JOIN_SECONDS
        for slot in self.slots:
            process, conn = slot.handle
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self.slots.clear()


# ------------------------------------------------------------------------------------------- Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray: {RAY_INSTALL_HINT}") from None
    return ray


class RayWorker:
    """The Ray actor: a ``Worker`` whose load error is kept for ``ready`` to report (not an actor death)."""

    def __init__(self, spec: WorkerSpec, index: int) -> None:
        import ray

        if spec.uses_cuda:  # Ray gives the actor one GPU, visible as cuda:0
            spec = dataclasses.replace(spec, device="cuda")
        name = f"ray-{index} ({ray.util.get_node_ip_address()}, pid {os.getpid()})"
        self._error: BaseException | None = None
        try:
            self._worker: Worker | None = Worker(spec, name=name)
        except Exception as exc:
            self._worker, self._error = None, _portable_error(exc)
        self._name = name

    def ready(self) -> tuple[str, Any]:
        return ("fatal", self._error) if self._error is not None else ("ready", self._name)

    def run(self, job: AnyJob, out_root: str, overwrite: bool) -> VideoResult:
        assert self._worker is not None
        return self._worker.run(job, out_root, overwrite=overwrite)


class _RayPool:
    """Ray actors, one video at a time each; the driver waits on their calls' object refs."""

    engine = "ray"

    def __init__(
        self, ray, spec: WorkerSpec, out_root: Path, overwrite: bool, resources: dict[str, float], owns_ray: bool
    ) -> None:
        self._ray, self._owns_ray = ray, owns_ray  # owns_ray: ray.init was called for this batch, shut it down
        self._actor_class = ray.remote(RayWorker)
        names = ("RayActorError", "ActorUnschedulableError")  # the second one is absent from older Ray releases
        self._death_errors = tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))
        self._spec, self._out_root, self._overwrite, self._resources = spec, out_root, overwrite, resources
        self._prefix = f"jfdeploy-worker-{uuid.uuid4().hex[:8]}"  # actor names: PREFIX-INDEX
        self._calls: dict[Any, tuple[_Slot, AnyJob | None]] = {}  # object ref -> (slot, job; None for ready())
        self.slots: list[_Slot] = []
        self.started = 0

    def start_worker(self) -> None:
        index = self.started
        self.started += 1
        name = f"{self._prefix}-{index}"
        actor = self._actor_class.options(name=name, max_restarts=0, max_task_retries=0, **self._resources).remote(
            self._spec, index
        )
        slot = _Slot(index, name, actor)
        self.slots.append(slot)
        self._calls[actor.ready.remote()] = (slot, None)

    def submit(self, slot: _Slot, job: AnyJob) -> None:
        slot.job = job
        self._calls[slot.handle.run.remote(job, str(self._out_root), self._overwrite)] = (slot, job)

    def events(self, timeout: float) -> list[_Event]:
        ray = self._ray
        if not self._calls:
            return []
        ready, _ = ray.wait(list(self._calls), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
        events: list[_Event] = []
        for ref in ready:
            slot, job = self._calls.pop(ref)
            try:
                value = ray.get(ref)
            except self._death_errors as error:
                ray.kill(slot.handle)  # an unavailable actor might still run: make sure it does not
                self.slots.remove(slot)
                if job is None:
                    raise JfDeployError(
                        f"Ray actor {slot.name} died while loading the model: {_one_line(str(error))[:300]}"
                    ) from None
                events.append((slot, None, f"worker died ({type(error).__name__})"))  # slot.job: its video
                continue
            except ray.exceptions.RayTaskError as error:  # Worker.run catches everything: a bug here
                if job is None:
                    raise
                slot.job = None
                message = f"internal error: {_one_line(str(error))[:300]}"
                events.append((slot, VideoResult(job.name, None, None, None, "failed", message, slot.name), ""))
                continue
            if job is None:
                kind, payload = value
                if kind == "fatal":
                    raise payload
                slot.ready, slot.name = True, payload
            else:
                slot.job = None
                events.append((slot, value, ""))
        return events

    def close(self, *, force: bool) -> None:
        """Kill every actor, then wait (briefly) until their calls end, so no write of theirs lands later."""
        ray = self._ray
        for slot in self.slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.handle)
        if self._calls:
            with contextlib.suppress(Exception):
                ray.wait(list(self._calls), num_returns=len(self._calls), timeout=_JOIN_SECONDS)
        self._calls.clear()
        self.slots.clear()
        if self._owns_ray:
            ray.shutdown()


def _init_keeping_signal_handlers(ray, address: str | None) -> None:
    """``ray.init``, then the SIGINT / SIGTERM handlers as they were: the driver installs its own, and the
    command's (remove what it was writing, exit 130 / 143) must stay in charge."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address=address)
    for signum, handler in kept.items():
        if handler is not None:
            signal.signal(signum, handler)


def _ray_resources(ray, spec: WorkerSpec, workers: int | None) -> tuple[dict[str, float], int, int]:
    """Per-actor resources, number of actors, threads per actor, from the cluster's resources."""
    cluster = ray.cluster_resources()
    cpus = int(cluster.get("CPU", 0))
    if spec.uses_cuda:
        gpus = int(cluster.get("GPU", 0))
        if gpus == 0:
            raise InputError(f"device {spec.device}: the Ray cluster has no GPU (use a CPU device, or add GPU nodes)")
        threads = spec.threads or 1
        return {"num_gpus": 1, "num_cpus": threads}, workers or gpus, threads
    if spec.threads:
        threads = spec.threads
    elif workers:
        threads = max(1, cpus // workers)
    else:
        threads = 1
    if threads > cpus:
        raise InputError(f"{threads} threads per worker: the Ray cluster has only {cpus} CPUs")
    return {"num_cpus": threads}, workers or max(1, cpus // threads), threads


# ------------------------------------------------------------------------------------------ driver


@dataclass
class BatchSummary:
    """The outcome of ``run_many``; ``path`` is the summary.json written."""

    results: list[VideoResult]
    wall_seconds: float
    workers: int
    engine: str  # "local" or "ray"
    threads: int
    device: str
    workers_started: int  # workers plus replacements of dead ones
    path: Path

    def with_status(self, status: str) -> list[VideoResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[VideoResult]:
        return self.with_status("failed")

    @property
    def totals(self) -> dict[str, Any]:
        timed = [r for r in self.with_status("done") if r.seconds is not None]
        counts = Counter(r.status for r in self.results)
        seconds = sum(r.seconds or 0.0 for r in timed)
        frames = sum(r.frames or 0 for r in timed)
        return {
            "videos": len(self.results),
            "done": counts["done"],
            "skipped": counts["skipped"],
            "failed": counts["failed"],
            "frames": frames,  # segmented and timed in this run
            "seconds": seconds,  # their model time, summed over the workers
            "fps": frames / seconds if seconds > 0 else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "videos": {r.name: r.to_json() for r in self.results},
            "totals": self.totals,
            "wall_seconds": self.wall_seconds,
            "workers": self.workers,
            "engine": self.engine,
            "threads_per_worker": self.threads,
            "device": self.device,
            "workers_started": self.workers_started,
        }


def _staging_pattern(name: str) -> re.Pattern[str]:
    """``fsutil.new_staging_dir``'s folder for ``parent/name``: ``.NAME.partial-`` + tempfile's 8 characters."""
    return re.compile(rf"\.{re.escape(name)}\.partial-[a-z0-9_]{{8}}")


def remove_stale_staging(outputs: Iterable[Path]) -> list[Path]:
    """Remove the staging folders of the output folders ``outputs`` (``job.output(out_root)``), which lie next
    to them in their parent folders (call only when no worker is writing them)."""
    by_parent: dict[Path, list[re.Pattern[str]]] = {}
    for output in outputs:
        by_parent.setdefault(Path(output).parent, []).append(_staging_pattern(Path(output).name))
    removed = []
    for parent, patterns in by_parent.items():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in parent.iterdir():
                if entry.name.startswith(".") and any(p.fullmatch(entry.name) for p in patterns):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


def _folder_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an output folder, None if there is none: a commit makes a new inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def _frames_on_disk(folder: Path) -> int:
    """The masks in a committed output folder (a sequence's: the frames the benchmark saves)."""
    return sum(1 for f in folder.iterdir() if f.suffix == ".png")


def _cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Driver:
    """The bookkeeping of one batch: what is pending, how often each job was handed out, what came of it."""

    def __init__(self, jobs: list[AnyJob], out_root: Path, overwrite: bool, retries: int, progress: bool) -> None:
        from tqdm import tqdm

        self.out_root, self.retries = out_root, retries
        self.kinds = {job.name: job.kind for job in jobs}
        self.results: dict[str, VideoResult] = {}
        self.attempts: Counter[str] = Counter()
        self.died_on: dict[str, str] = {}  # job -> the worker that died running it last
        # (device, inode) of each output folder at the start: a folder committed during the batch differs
        self.initial_ids = {job.name: _folder_id(job.output(out_root)) for job in jobs}
        self.to_run = []
        for job in jobs:
            if self.initial_ids[job.name] is not None and not overwrite and job.complete(out_root):
                frames = _frames_on_disk(job.output(out_root))
                self.results[job.name] = VideoResult(job.name, frames, None, None, "skipped")
            else:
                self.to_run.append(job)
        self.pending = deque(self.to_run)
        kinds = sorted(set(self.kinds.values()))
        unit = kinds[0] if len(kinds) == 1 else "job"
        self.bar = tqdm(total=len(jobs), initial=len(self.results), unit=unit, desc=f"{unit}s", disable=not progress)

    def finish(self, result: VideoResult) -> None:
        from tqdm import tqdm

        result = dataclasses.replace(result, attempts=self.attempts[result.name])
        self.results[result.name] = result
        if result.status == "failed":
            tqdm.write(f"{self.kinds[result.name]} {result.name} failed: {result.error}", file=sys.stderr)
        self.bar.update()

    def next_job(self) -> AnyJob | None:
        """The next job to hand out; one whose folder appeared since the start is not run again."""
        while self.pending:
            job = self.pending.popleft()
            folder = job.output(self.out_root)
            if _folder_id(folder) == self.initial_ids[job.name]:
                self.attempts[job.name] += 1
                return job
            frames = _frames_on_disk(folder)
            if self.attempts[job.name]:  # committed by a worker that died before it could report
                self.finish(VideoResult(job.name, frames, None, None, "done", worker=self.died_on[job.name]))
            else:  # written by someone else meanwhile
                self.finish(VideoResult(job.name, frames, None, None, "skipped"))
        return None

    def worker_died(self, job: AnyJob, worker: str, why: str) -> None:
        """``job``'s worker is dead: remove its staging folder, then hand the job out again or fail it."""
        self.died_on[job.name] = worker
        remove_stale_staging([job.output(self.out_root)])  # its worker is dead: nobody writes it any more
        if self.attempts[job.name] <= self.retries:
            self.pending.appendleft(job)
        else:
            self.finish(VideoResult(job.name, None, None, None, "failed", why, worker))

    def run(self, pool: _LocalPool | _RayPool, count: int) -> None:
        """Hand the jobs to ``count`` workers of ``pool`` until every one has a result; replace dead workers."""
        max_starts = count + len(self.to_run) * (self.retries + 1)
        for _ in range(count):
            pool.start_worker()
        while self.pending or any(slot.job is not None for slot in pool.slots):
            for slot in [s for s in pool.slots if s.ready and s.job is None]:
                job = self.next_job()
                if job is None:
                    break
                pool.submit(slot, job)
            if not self.pending and not any(slot.job is not None for slot in pool.slots):
                break
            for slot, result, why in pool.events(_WAIT_SECONDS):
                if result is not None:
                    self.finish(result)
                    continue
                dead_job, slot.job = slot.job, None
                if dead_job is not None:
                    self.worker_died(dead_job, slot.name, why)
                if self.pending and len(pool.slots) < count:
                    if pool.started >= max_starts:
                        raise JfDeployError(f"workers keep dying ({pool.started} started); the last: {why}")
                    pool.start_worker()


def _make_pool(
    spec: WorkerSpec, workers: int | None, ray_address: str | None, out_root: Path, overwrite: bool
) -> tuple[_LocalPool | _RayPool, int, WorkerSpec]:
    """(the pool, its number of workers, the spec with its threads)."""
    if ray_address is None:
        if spec.uses_cuda:
            from jfdeploy.devices import cuda_device_count

            if not cuda_device_count():
                raise InputError(f"device {spec.device}: CUDA is not available on this machine")
        count = workers or 1
        spec = dataclasses.replace(spec, threads=spec.threads or max(1, _cpu_count() // count))
        return _LocalPool(spec, out_root, overwrite), count, spec
    ray = _import_ray()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        _init_keeping_signal_handlers(ray, None if ray_address == "local" else ray_address)
    try:
        resources, count, threads = _ray_resources(ray, spec, workers)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    spec = dataclasses.replace(spec, threads=threads)
    return _RayPool(ray, spec, out_root, overwrite, resources, owns_ray), count, spec


def run_many(
    jobs: Sequence[AnyJob],
    out_root: str | os.PathLike,
    spec: WorkerSpec,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    summary_path: str | os.PathLike | None = None,
) -> BatchSummary:
    """Run every job into its output folder under ``out_root`` (``job.output``) with a pool of workers; write
    the summary JSON (``summary_path``, default ``out_root/summary.json``).

    Args:
        jobs: videos (``jobs_from_videos`` / ``jobs_from_manifest``: ``out_root/NAME/``) or dataset
            sequences (``jobs_from_sequences``: the dataset's layout under ``out_root``); names must be unique.
        spec: the model every worker loads once.
        workers: how many workers. Local default 1; with Ray, default as many as the cluster fits
            (one per GPU for a CUDA device, else one per ``spec.threads`` CPUs). Never more than jobs to run.
        ray_address: None: local processes. "local": a Ray instance started here (or the one this
            process already initialized); else the address of a Ray cluster (``ray.init(address)``;
            the output folder must be visible at the same path on every node).
        retries: how often a job whose worker died is given to another worker.
        overwrite: recompute jobs whose output is complete (default: skip them, i.e. resume).
        progress: a progress bar over jobs on stderr. Failed jobs get a line on stderr regardless.
        summary_path: where the summary JSON goes (``jfdeploy eval`` puts it beside the scores, as
            ``workers.json``).

    Returns the summary; the command line exits with 1 if ``summary.failed``. A KeyboardInterrupt or
    ``jfdeploy.errors.Interrupted`` (SIGTERM) stops the workers, removes their unfinished folders and
    propagates; completed output folders stay, and no summary is written. An error while a worker
    loads the model (or its death then) stops the batch the same way, with that error.
    """
    jobs = list(jobs)
    check_unique_names(jobs)
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise InputError(f"retries must be >= 0, got {retries}")
    if spec.threads is not None and spec.threads < 1:
        raise InputError(f"threads per worker must be >= 1, got {spec.threads}")
    start_time = time.perf_counter()
    out_root = Path(out_root)
    with command_scope():  # SIGTERM raises Interrupted here too (main thread), so the cleanup below runs
        make_dirs(out_root)
        driver = _Driver(jobs, out_root, overwrite, retries, progress)
        count, engine, started = 0, "ray" if ray_address is not None else "local", 0
        try:
            if driver.to_run:
                outputs = [job.output(out_root) for job in driver.to_run]
                remove_stale_staging(outputs)  # an earlier, killed batch's
                pool, count, spec = _make_pool(spec, workers, ray_address, out_root, overwrite)
                count = min(count, len(driver.to_run))
                finished = False
                try:
                    driver.run(pool, count)
                    finished = True
                finally:
                    pool.close(force=not finished)
                    started = pool.started
                    remove_stale_staging(outputs)
        finally:
            driver.bar.close()
        summary = BatchSummary(
            results=[driver.results[job.name] for job in jobs],
            wall_seconds=time.perf_counter() - start_time,
            workers=count,
            engine=engine,
            threads=spec.threads or 0,
            device=spec.device,
            workers_started=started,
            path=Path(summary_path) if summary_path is not None else out_root / SUMMARY_NAME,
        )
        write_text_atomic(summary.path, json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
