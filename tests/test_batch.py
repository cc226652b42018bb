"""run-many's engine (jfdeploy.batch): jobs, a pool of worker processes, failures, resume, dead workers.

Small generated clips (64x96, 4-6 frames, no resize), the golden-rule weights saved once as a checkpoint
that every worker loads; the reference of each video is ``segment_video`` run alone in this process
with the workers' thread count, so the PNG bytes must be equal.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_TOPK
from jfdeploy.batch import (
    SLOW_FRAMES_ENV,
    Job,
    WorkerSpec,
    _Driver,
    jobs_from_manifest,
    jobs_from_videos,
    remove_stale_staging,
    run_many,
)
from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.io import make_clip, open_frames, write_clip_folder, write_clip_video, write_label_png
from jfdeploy.model.checkpoint import save_checkpoint
from jfdeploy.pipeline import RunOptions, segment_video

pytest.importorskip("av", reason="the clips are mp4s: pip install 'jfdeploy[video]'")

HEIGHT, WIDTH = 64, 96
OPTIONS = RunOptions(backend="torch", sizes=(None,))  # no resize: the clips are small already
THREADS = 1
GOOD = {"alpha": 5, "beta": 6, "gamma": 4}  # name -> frames; alpha and beta are mp4s, gamma a folder of frames
BROKEN = "broken"  # a folder of frames whose fourth frame is a truncated JPEG: fails mid-way


def make_spec(model, folder: Path) -> WorkerSpec:
    """The workers' spec: ``model``'s weights saved as a checkpoint in ``folder``."""
    save_checkpoint(model, folder / "model.pth")  # the workers read the architecture from its shapes
    return WorkerSpec(
        checkpoint=folder / "model.pth", model_kwargs={"topk": model.config.topk}, options=OPTIONS, threads=THREADS
    )


def make_clips(root: Path) -> tuple[Path, Path]:
    """(videos folder, masks folder) with the GOOD videos and the BROKEN one."""
    videos, masks = root / "videos", root / "masks"
    masks.mkdir()
    for seed, (name, frames) in enumerate(GOOD.items()):
        rgb, labels = make_clip(frames, HEIGHT, WIDTH, num_objects=2, seed=seed)
        if name == "gamma":
            write_clip_folder(videos / name, rgb, labels)
        else:
            write_clip_video(videos / f"{name}.mp4", rgb)
        write_label_png(masks / f"{name}.png", labels[0])
    rgb, labels = make_clip(5, HEIGHT, WIDTH, num_objects=1, seed=9)
    image_dir, _ = write_clip_folder(videos / BROKEN, rgb, labels)
    frame = image_dir / "00003.jpg"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])  # the header (size) reads, the pixels do not
    write_label_png(masks / f"{BROKEN}.png", labels[0])
    return videos, masks


def good_jobs(clips) -> list[Job]:
    videos, masks = clips
    return jobs_from_videos([videos / ("gamma" if n == "gamma" else f"{n}.mp4") for n in GOOD], masks)


def all_jobs(clips) -> list[Job]:
    return [*good_jobs(clips), *jobs_from_videos([clips[0] / BROKEN], clips[1])]


def pngs(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def make_reference(model, clips, out: Path) -> dict[str, dict[str, bytes]]:
    """Each good video segmented alone, in this process, by segment_video (name -> PNG name -> bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for job in good_jobs(clips):
            segment_video(model, open_frames(job.video), job.mask, out / job.name, options=OPTIONS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {name: pngs(out / name) for name in GOOD}


@pytest.fixture(scope="module")
def spec(tiny_model, tmp_path_factory) -> WorkerSpec:
    return make_spec(tiny_model, tmp_path_factory.mktemp("batch_ckpt"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    return make_clips(tmp_path_factory.mktemp("batch_clips"))


@pytest.fixture(scope="module")
def reference(tiny_model, clips, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    return make_reference(tiny_model, clips, tmp_path_factory.mktemp("batch_reference"))


@pytest.fixture(scope="module")
def two_workers(clips, spec, tmp_path_factory):
    """The four videos by 2 worker processes: (summary, output folder)."""
    out = tmp_path_factory.mktemp("batch_out") / "out"
    return run_many(all_jobs(clips), out, spec, workers=2, progress=False), out


def statuses(summary) -> dict[str, str]:
    return {r.name: r.status for r in summary.results}


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------- jobs


def test_jobs_from_videos_names_masks_and_refuses_missing_or_duplicate(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "clip.mov").write_bytes(b"x")
    (tmp_path / "frames_dir.v2").mkdir()
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("clip", "frames_dir.v2"):
        (masks / f"{name}.png").write_bytes(b"x")
    jobs = jobs_from_videos([tmp_path / "a" / "clip.mp4", tmp_path / "frames_dir.v2"], masks)
    assert [(j.name, j.mask.name) for j in jobs] == [("clip", "clip.png"), ("frames_dir.v2", "frames_dir.v2.png")]
    with pytest.raises(InputError, match=r"a/clip\.mp4 and .*b/clip\.mov"):
        jobs_from_videos([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mov"], masks)
    (tmp_path / "other.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match=r"masks/other\.png not found"):
        jobs_from_videos([tmp_path / "other.mp4"], masks)
    with pytest.raises(InputError, match="input not found"):
        jobs_from_videos([tmp_path / "missing.mp4"], masks)


def test_jobs_from_manifest_resolves_relative_paths_and_names_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "one.mp4").write_bytes(b"x")
    (tmp_path / "m.png").write_bytes(b"x")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        '{"video": "v/one.mp4", "mask": "m.png"}\n\n' + json.dumps({"video": str(tmp_path / "v"), "mask": "m.png"})
    )
    jobs = jobs_from_manifest(manifest)
    assert [(j.video, j.mask, j.name) for j in jobs] == [
        (tmp_path / "v" / "one.mp4", tmp_path / "m.png", "one"),
        (tmp_path / "v", tmp_path / "m.png", "v"),
    ]
    manifest.write_text('{"video": "v/one.mp4", "mask": "m.png"}\n{"video": "v/one.mp4", "mask": \n')
    with pytest.raises(InputError, match=r"list\.jsonl:2: not valid JSON"):
        jobs_from_manifest(manifest)
    manifest.write_text('{"video": "v/one.mp4", "mask": "nope.png"}\n')
    with pytest.raises(InputError, match=r"list\.jsonl:1: mask not found"):
        jobs_from_manifest(manifest)
    manifest.write_text('{"video": "v/one.mp4", "mask": "m.png"}\n{"video": "v/one.mp4", "mask": "m.png"}\n')
    with pytest.raises(InputError, match="two videos have the output name 'one'"):
        jobs_from_manifest(manifest)


def test_remove_stale_staging_removes_only_the_named_videos_staging(tmp_path: Path) -> None:
    for name in (".a.partial-abcd1234", ".a.partial-x", ".ab.partial-abcd1234", "a", ".b.partial-abcd1234"):
        (tmp_path / name).mkdir()
    remove_stale_staging([tmp_path / "a"])
    kept = [".a.partial-x", ".ab.partial-abcd1234", ".b.partial-abcd1234", "a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept


def test_video_committed_by_a_worker_that_died_is_not_run_again(tmp_path: Path) -> None:
    """With overwrite, an old folder is recomputed, but a folder committed in this batch (new inode) is kept."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "old.png").write_bytes(b"")
    jobs = [Job(tmp_path / "a.mp4", tmp_path / "a.png", "a"), Job(tmp_path / "b.mp4", tmp_path / "b.png", "b")]
    driver = _Driver(jobs, out, overwrite=True, retries=2, progress=False)
    job = driver.next_job()
    assert job is not None and job.name == "a"  # the folder from before the batch does not count
    staging = out / ".a.partial-abcd1234"  # the worker's commit: staging made, old folder removed, renamed
    staging.mkdir()
    for name in ("00000.png", "00001.png"):
        (staging / name).write_bytes(b"")
    shutil.rmtree(out / "a")
    staging.rename(out / "a")
    (out / ".a.partial-efgh5678").mkdir()  # and it had started writing again? (stale: removed)
    driver.worker_died(job, "local-0 (pid 1)", "worker died (exit code -9, SIGKILL)")
    assert not (out / ".a.partial-efgh5678").exists()
    job = driver.next_job()
    assert job is not None and job.name == "b"
    result = driver.results["a"]
    assert (result.status, result.frames, result.attempts, result.worker) == ("done", 2, 1, "local-0 (pid 1)")


# ---------------------------------------------------------------------------------------- workers


@pytest.mark.slow
def test_two_workers_write_what_one_process_writes(two_workers, reference) -> None:
    summary, out = two_workers
    for name in GOOD:
        assert pngs(out / name) == reference[name], name
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD, "summary.json"])  # nothing half-written
    assert summary.workers == 2 and summary.workers_started == 2
    assert {r.worker.split(" ")[0] for r in summary.results} <= {"local-0", "local-1"}


@pytest.mark.slow
def test_failed_video_is_one_line_and_the_others_are_done(two_workers) -> None:
    summary, out = two_workers
    assert statuses(summary) == {**dict.fromkeys(GOOD, "done"), BROKEN: "failed"}
    (broken,) = summary.failed
    assert "00003.jpg" in broken.error and "\n" not in broken.error
    written = json.loads((out / "summary.json").read_text())
    assert written["totals"] == {
        "videos": 4,
        "done": 3,
        "skipped": 0,
        "failed": 1,
        "frames": sum(GOOD.values()),
        "seconds": pytest.approx(sum(r.seconds for r in summary.results if r.seconds)),
        "fps": pytest.approx(summary.totals["fps"]),
    }
    assert written["videos"]["alpha"]["frames"] == GOOD["alpha"] and written["videos"]["alpha"]["attempts"] == 1
    assert written["videos"][BROKEN]["error"] == broken.error
    assert written["engine"] == "local" and written["workers"] == 2


@pytest.mark.slow
def test_resume_recomputes_only_the_missing_video(two_workers, clips, spec, reference, tmp_path: Path) -> None:
    _, first_out = two_workers
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    shutil.rmtree(out / "beta")
    kept = {name: (out / name / "00000.png").stat().st_mtime_ns for name in ("alpha", "gamma")}
    summary = run_many(all_jobs(clips), out, spec, workers=1, progress=False)
    assert statuses(summary) == {"alpha": "skipped", "beta": "done", "gamma": "skipped", BROKEN: "failed"}
    assert {name: (out / name / "00000.png").stat().st_mtime_ns for name in kept} == kept
    assert pngs(out / "beta") == reference["beta"]
    assert summary.results[0].frames == GOOD["alpha"]  # counted on disk
    assert summary.totals["frames"] == GOOD["beta"]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_in_thread(*args, **kwargs):
    """Start run_many in a thread; returns (thread, box) where box gets "summary" or "error"."""
    box: dict = {}

    def target() -> None:
        try:
            box["summary"] = run_many(*args, **kwargs)
        except BaseException as error:  # handed to the test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def busy_staging(out: Path) -> list[Path]:
    """Staging folders that hold at least one mask: a worker is mid-video."""
    if not out.exists():
        return []
    return [p for p in out.glob(".*.partial-*") if any(p.glob("*.png"))]


def worker_processes() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("jfdeploy-worker-")]


@pytest.mark.slow
def test_killed_worker_video_is_retried_once_and_written_once(clips, spec, reference, tmp_path, monkeypatch) -> None:
    # A second per frame: each video lasts seconds, so both workers are mid-video at once even when one
    # of them starts seconds after the other on a loaded machine.
    monkeypatch.setenv(SLOW_FRAMES_ENV, "1.0")
    out = tmp_path / "out"
    jobs = [job for job in good_jobs(clips) if job.name != "beta"]  # two videos: both workers busy at once
    thread, box = run_in_thread(jobs, out, spec, workers=2, progress=False)
    wait_for(lambda: len(busy_staging(out)) == 2, 120, "both workers mid-video")
    victim = worker_processes()[0]
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    summary = box["summary"]
    assert statuses(summary) == {"alpha": "done", "gamma": "done"}
    assert sorted(r.attempts for r in summary.results) == [1, 2]  # the killed worker's video, retried once
    for job in jobs:
        assert pngs(out / job.name) == reference[job.name], job.name
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "gamma", "summary.json"]  # no staging folder left
    assert not worker_processes()


@pytest.mark.slow
def test_video_fails_when_its_worker_dies_and_no_retry_is_left(clips, spec, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(SLOW_FRAMES_ENV, "0.15")
    out = tmp_path / "out"
    jobs = good_jobs(clips)[:1]
    thread, box = run_in_thread(jobs, out, spec, workers=1, retries=0, progress=False)
    wait_for(lambda: len(busy_staging(out)) == 1, 120, "the worker mid-video")
    os.kill(worker_processes()[0].pid, signal.SIGKILL)
    thread.join(60)
    (result,) = box["summary"].results
    assert (result.status, result.error, result.attempts) == ("failed", "worker died (exit code -9, SIGKILL)", 1)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_leaves_no_partial_folder(clips, spec, tmp_path: Path) -> None:
    """The driver gets SIGTERM mid-batch: its workers stop, their staging folders go, no summary is written."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from jfdeploy.batch import WorkerSpec, jobs_from_videos, run_many
        from jfdeploy.errors import exit_status
        from jfdeploy.pipeline import RunOptions
        spec = WorkerSpec(checkpoint=Path({str(spec.checkpoint)!r}), model_kwargs={{"topk": {TINY_TOPK}}},
                          options=RunOptions(backend="torch", sizes=(None,)), threads=1)
        jobs = jobs_from_videos([Path(p) for p in {[str(j.video) for j in good_jobs(clips)[:2]]!r}], {str(clips[1])!r})
        try:
            run_many(jobs, {str(out)!r}, spec, workers=2, progress=False)
        except BaseException as error:
            sys.exit(exit_status(error)[0])
        """
    )
    env = {**os.environ, SLOW_FRAMES_ENV: "0.15", "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_for(lambda: len(busy_staging(out)) == 2, 120, "both workers mid-video")
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(60) == 128 + signal.SIGTERM
    finally:
        if driver.poll() is None:
            driver.kill()
    time.sleep(0.5)  # a worker that survived would still be writing
    if out.exists():  # removed if no video was complete: the driver created it
        assert hidden(out) == [] and not (out / "summary.json").exists()
        assert {p.name for p in out.iterdir()} <= set(GOOD)  # only complete videos


@pytest.mark.slow
def test_bad_checkpoint_stops_the_batch_with_the_workers_error(clips, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    spec = WorkerSpec(checkpoint=bad, options=OPTIONS, threads=1)
    with pytest.raises(JfDeployError) as caught:
        run_many(good_jobs(clips)[:1], tmp_path / "out", spec, workers=1, progress=False)
    assert "bad.pth" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_missing_ray_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    job = Job(tmp_path / "clip.mp4", tmp_path / "clip.png", "clip")
    with pytest.raises(InputError, match=r"jfdeploy\[ray\]"):
        run_many([job], tmp_path / "out", WorkerSpec(options=OPTIONS), ray_address="local", progress=False)


@pytest.mark.slow
def test_truncated_jpeg_header_still_reads(clips) -> None:
    """The broken clip fails mid-way (at its fourth frame), not when it is opened."""
    with Image.open(clips[0] / BROKEN / "JPEGImages" / "00003.jpg") as image:
        assert image.size == (WIDTH, HEIGHT)


@pytest.mark.slow
def test_run_many_command_completes_the_good_videos_and_exits_1(clips, spec, tmp_path) -> None:
    """The installed command: the broken video fails with one line, the others complete, exit 1; a configuration
    error is exit 2 before anything is written; a rerun skips the complete videos."""
    videos, masks = clips
    inputs = [videos / "alpha.mp4", videos / "gamma", videos / BROKEN]
    out = tmp_path / "out"
    command = ["jfdeploy", "run-many", *map(str, inputs), "--masks", str(masks), "--out", str(out), "--workers", "2",
               "--threads", "1", "--checkpoint", str(spec.checkpoint), "--topk", str(TINY_TOPK), "--size", "0",
               "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if BROKEN in line and "Traceback" not in line]
    assert failures and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "gamma", "summary.json"]
    statuses = {n: v["status"] for n, v in json.loads((out / "summary.json").read_text())["videos"].items()}
    assert statuses == {"alpha": "done", "gamma": "done", BROKEN: "failed"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    statuses = {n: v["status"] for n, v in json.loads((out / "summary.json").read_text())["videos"].items()}
    assert again.returncode == 1 and statuses == {"alpha": "skipped", "gamma": "skipped", BROKEN: "failed"}
    for bad in (["--preset", "kitti"], ["--workers", "0"]):
        config = subprocess.run([*command[:-1], *bad], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert config.returncode == 2 and len(config.stderr.splitlines()) == 1, config.stderr
    missing = subprocess.run(["jfdeploy", "run-many", str(videos / "alpha.mp4"), "--out", str(tmp_path / "o2")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "--masks" in missing.stderr and not (tmp_path / "o2").exists()
