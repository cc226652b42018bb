"""`jfdeploy eval --workers N`: a dataset's sequences on run-many's pool of workers (jfdeploy.batch.SequenceJob).

A generated DAVIS 2017 mini dataset (24x32 frames: 'car' and 'bike' from test_datasets, and 'broken', whose
third frame is a truncated JPEG) segmented by the tiny model. The reference is ``evaluate_dataset`` in this
process with one thread; the workers (one thread each) load the same weights from a checkpoint, so the PNG
bytes must be equal. Quick tier: the jobs, ``evaluate_sequence``'s staging and the driver's resume decisions;
the worker pools are in the slow tier (each spawned worker imports torch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from test_batch import hidden, pngs
from test_datasets import _make_davis2017, _make_youtube

from conftest import TINY_TOPK
from jfdeploy.batch import SLOW_FRAMES_ENV, SequenceJob, WorkerSpec, _Driver, jobs_from_sequences, run_many
from jfdeploy.cli import main
from jfdeploy.datasets import Sequence, davis, sequence_complete, write_sequence_masks, youtube_vos
from jfdeploy.errors import InputError
from jfdeploy.evaluate import evaluate_dataset, evaluate_sequence
from jfdeploy.model.checkpoint import save_checkpoint
from jfdeploy.predictor import RunOptions, VideoPredictor
from jfdeploy.scoring import compare_folders

OPTIONS = RunOptions(backend="torch", sizes=(None,))  # the frames' own size: --size 0
FRAMES = 5
GOOD = ("car", "bike")
BROKEN = "broken"


def make_dataset(root: Path) -> Path:
    """DAVIS 2017 layout listing car, bike and BROKEN (car's frames and masks, its frame 00002 truncated)."""
    _make_davis2017(root, frames=FRAMES)
    for kind in ("JPEGImages", "Annotations"):
        shutil.copytree(root / kind / "480p" / "car", root / kind / "480p" / BROKEN)
    frame = root / "JPEGImages" / "480p" / BROKEN / "00002.jpg"
    frame.write_bytes(frame.read_bytes()[:100])
    (root / "ImageSets" / "2017" / "val.txt").write_text("car\nbike\nbroken\n")
    return root


def statuses(summary) -> dict[str, str]:
    return {r.name: r.status for r in summary.results}


# ------------------------------------------------------------------------------------ quick tier


def test_sequence_job_output_and_completeness_follow_the_layout(tmp_path: Path) -> None:
    car = davis(_make_davis2017(tmp_path / "DAVIS", frames=3), sequences=["car"])[0]
    vid = youtube_vos(_make_youtube(tmp_path / "YTVOS"), sequences=["vidA"])[0]
    out = tmp_path / "out"
    car_job, vid_job = SequenceJob(car), SequenceJob(vid)
    assert (car_job.name, car_job.kind) == ("car", "sequence")
    assert car_job.output(out) == out / "car"
    assert vid_job.output(out) == out / "Annotations" / "vidA"
    assert not car_job.complete(out)
    for index in range(len(car)):
        write_sequence_masks(out, car, index, car.load_annotation(0))
    assert car_job.complete(out)
    (out / "car" / "00001.png").unlink()  # a folder with a mask missing is not complete (a video's would be)
    assert not car_job.complete(out)


def test_jobs_from_sequences_refuses_a_name_twice(tmp_path: Path) -> None:
    car = davis(_make_davis2017(tmp_path / "DAVIS", frames=2), sequences=["car"])[0]
    assert [job.name for job in jobs_from_sequences([car])] == ["car"]
    with pytest.raises(InputError, match="two sequences have the output name 'car'"):
        jobs_from_sequences([car, dataclasses.replace(car)])
    with pytest.raises(InputError, match="cannot name an output folder"):
        jobs_from_sequences([dataclasses.replace(car, name=".hidden")])


@dataclasses.dataclass
class _Watched(Sequence):
    """A sequence that lists its output's parent folder when its last frame is read (mid-sequence)."""

    out_root: Path | None = None
    seen: list[str] = dataclasses.field(default_factory=list)

    def read_frame(self, index: int):
        if index == len(self.frames) - 1 and self.out_root is not None:
            self.seen.extend(sorted(p.name for p in self.out_root.iterdir()))
        return super().read_frame(index)


def test_evaluate_sequence_stages_next_to_the_folder_and_replaces_it_whole(tiny_model, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "DAVIS")
    car, broken = davis(root, sequences=["car", BROKEN])
    out = tmp_path / "out"
    (out / "car").mkdir(parents=True)
    (out / "car" / "stale.png").write_bytes(b"old")
    watched = _Watched(**{f.name: getattr(car, f.name) for f in dataclasses.fields(car)}, out_root=out)
    predictor = VideoPredictor(tiny_model, OPTIONS)
    assert evaluate_sequence(predictor, watched, out) == FRAMES
    assert len(watched.seen) == 2 and watched.seen[0].startswith(".car.partial-") and watched.seen[1] == "car"
    assert sorted(p.name for p in (out / "car").iterdir()) == [f"{t:05d}.png" for t in range(FRAMES)]
    assert sequence_complete(out, car)

    (out / BROKEN).mkdir()
    (out / BROKEN / "00000.png").write_bytes(b"kept")
    with pytest.raises(InputError, match=r"00002\.jpg"):
        evaluate_sequence(predictor, broken, out)
    assert sorted(p.name for p in out.iterdir()) == [BROKEN, "car"]  # no staging folder left
    assert pngs(out / BROKEN) == {"00000.png": b"kept"}  # the old folder as it was


def test_driver_skips_complete_sequences_and_reruns_incomplete_ones(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS", frames=3)
    car, bike = davis(root)
    vid = youtube_vos(_make_youtube(tmp_path / "YTVOS"), sequences=["vidA"])[0]
    out = tmp_path / "out"
    for sequence in (car, bike):
        for index in range(len(sequence)):
            write_sequence_masks(out, sequence, index, sequence.load_annotation(0))
    (out / "bike" / "00002.png").unlink()
    jobs = jobs_from_sequences([car, bike, vid])
    driver = _Driver(jobs, out, overwrite=False, retries=0, progress=False)
    assert [job.name for job in driver.to_run] == ["bike", "vidA"]
    assert (driver.results["car"].status, driver.results["car"].frames) == ("skipped", 3)
    assert [job.name for job in _Driver(jobs, out, overwrite=True, retries=0, progress=False).to_run] == [
        "car",
        "bike",
        "vidA",
    ]
    job = driver.next_job()
    assert job is not None and job.name == "bike"
    job = driver.next_job()
    assert job is not None and job.name == "vidA"
    stale = out / "Annotations" / ".vidA.partial-abcd1234"  # a dead worker's staging: next to its folder
    stale.mkdir(parents=True)
    driver.worker_died(job, "local-0 (pid 1)", "worker died (exit code -9, SIGKILL)")
    assert not stale.exists()
    assert (driver.results["vidA"].status, driver.results["vidA"].error) == (
        "failed",
        "worker died (exit code -9, SIGKILL)",
    )


def test_worker_options_without_workers_are_refused(tmp_path: Path, capsys) -> None:
    root = _make_davis2017(tmp_path / "DAVIS", frames=2)
    base = ["eval", "--dataset", "davis2017", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"]
    for option in (["--threads", "1"], ["--retries", "2"]):
        assert main([*base, *option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{option[0]} does not apply without --workers or --ray" in err[0]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- slow tier


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("eval_workers") / "DAVIS")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval_workers_ckpt") / "tiny.pth"
    save_checkpoint(tiny_model, path)
    return path


@pytest.fixture(scope="module")
def spec(checkpoint) -> WorkerSpec:
    return WorkerSpec(checkpoint=checkpoint, model_kwargs={"topk": TINY_TOPK}, options=OPTIONS, threads=1)


@pytest.fixture(scope="module")
def reference(tiny_model, dataset, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The dataset by ``evaluate_dataset`` in this process, one thread: (masks root, failures)."""
    import torch

    out = tmp_path_factory.mktemp("eval_reference") / "masks"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done, failed = evaluate_dataset(VideoPredictor(tiny_model, OPTIONS), davis(dataset), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert done == list(GOOD)
    return out, failed


@pytest.fixture(scope="module")
def two_workers(dataset, spec, tmp_path_factory):
    """The dataset's sequences on 2 worker processes: (summary, masks root)."""
    out = tmp_path_factory.mktemp("eval_workers_out") / "masks"
    return run_many(jobs_from_sequences(davis(dataset)), out, spec, workers=2, progress=False), out


@pytest.mark.slow
def test_two_workers_write_what_evaluate_dataset_writes(two_workers, reference) -> None:
    summary, out = two_workers
    ref_out, ref_failed = reference
    for name in GOOD:
        assert pngs(out / name) == pngs(ref_out / name), name
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD, "summary.json"])  # nothing half-written
    assert statuses(summary) == {"car": "done", "bike": "done", BROKEN: "failed"}
    (failed,) = summary.failed
    assert failed.error == ref_failed[BROKEN] and "00002.jpg" in failed.error and "\n" not in failed.error
    assert {r.name: r.frames for r in summary.results if r.status == "done"} == dict.fromkeys(GOOD, FRAMES)
    assert summary.workers == 2 and summary.workers_started == 2


@pytest.mark.slow
def test_resume_reruns_only_the_incomplete_sequence(two_workers, dataset, spec, reference, tmp_path: Path) -> None:
    _, first_out = two_workers
    out = tmp_path / "masks"
    shutil.copytree(first_out, out)
    (out / "car" / "00003.png").unlink()  # the folder exists, but a mask is missing
    kept = (out / "bike" / "00000.png").stat().st_mtime_ns
    summary = run_many(jobs_from_sequences(davis(dataset)), out, spec, workers=1, progress=False)
    assert statuses(summary) == {"car": "done", "bike": "skipped", BROKEN: "failed"}
    assert (out / "bike" / "00000.png").stat().st_mtime_ns == kept
    assert pngs(out / "car") == pngs(reference[0] / "car")
    assert hidden(out) == []


@pytest.mark.slow
def test_eval_command_on_workers_fails_the_broken_sequence_then_scores(
    two_workers, dataset, checkpoint, tmp_path, capsys
) -> None:
    """Through the command: the broken sequence fails with one line (exit 1, no scores), the others complete
    as run_many writes them; a rerun without it skips them and scores them; workers.json is the pool's."""
    out = tmp_path / "out"
    command = ["eval", "--dataset", "davis2017", "--root", str(dataset), "--out", str(out), "--checkpoint",
               str(checkpoint), "--topk", str(TINY_TOPK), "--size", "0", "--quiet", "--workers", "2",
               "--threads", "1"]  # fmt: skip
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("jfdeploy eval: error: 1 of 3 sequences failed (first: broken: ") and "00002.jpg" in last
    assert last.endswith("no scores written")
    assert sorted(p.name for p in out.iterdir()) == ["masks", "workers.json"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(GOOD)
    for name in GOOD:
        assert pngs(out / "masks" / name) == pngs(two_workers[1] / name), name
    report = json.loads((out / "workers.json").read_text())
    assert {n: v["status"] for n, v in report["videos"].items()} == {"car": "done", "bike": "done", BROKEN: "failed"}

    assert main([*command, "--sequences", "car,bike"]) == 0
    printed = capsys.readouterr().out
    assert "0 done, 2 already complete, 0 failed" in printed and "J&F" in printed
    scores = json.loads((out / "summary.json").read_text())
    expected = compare_folders(two_workers[1], dataset / "Annotations" / "480p", list(GOOD))
    assert scores["J&F"] == pytest.approx(expected["J&F"])
    report = json.loads((out / "workers.json").read_text())
    assert {n: v["status"] for n, v in report["videos"].items()} == {"car": "skipped", "bike": "skipped"}


def _busy_staging(out: Path) -> list[Path]:
    """Staging folders holding at least one mask: a worker is mid-sequence."""
    return [p for p in out.glob(".*.partial-*") if any(p.glob("*.png"))] if out.exists() else []


def _worker_processes():
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("jfdeploy-worker-")]


@pytest.mark.slow
def test_killed_worker_sequence_is_retried_and_written_once(dataset, spec, reference, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(SLOW_FRAMES_ENV, "0.3")
    out = tmp_path / "masks"
    jobs = jobs_from_sequences(davis(dataset, sequences=list(GOOD)))
    box: dict = {}

    def target() -> None:
        try:
            box["summary"] = run_many(jobs, out, spec, workers=2, progress=False)
        except BaseException as error:  # handed to the test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(_busy_staging(out)) < 2:
        assert time.monotonic() < deadline, "timed out waiting for both workers mid-sequence"
        time.sleep(0.05)
    os.kill(_worker_processes()[0].pid, signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    summary = box["summary"]
    assert statuses(summary) == dict.fromkeys(GOOD, "done")
    assert sorted(r.attempts for r in summary.results) == [1, 2]  # the killed worker's sequence, retried once
    for name in GOOD:
        assert pngs(out / name) == pngs(reference[0] / name), name
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD, "summary.json"])  # no staging folder left
    assert not _worker_processes()
