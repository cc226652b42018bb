"""run-many on Ray: two actors on a local Ray instance, one killed mid-video; every video written exactly once.

Shares the clips, checkpoint and single-process references of tests/test_batch.py.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import test_batch as shared

import jfdeploy
from jfdeploy.batch import SLOW_FRAMES_ENV

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'jfdeploy[ray]'")

pytestmark = pytest.mark.slow  # starting Ray and its actors takes more than 20 s on a 2-core CPU


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return shared.make_clips(tmp_path_factory.mktemp("ray_clips"))


@pytest.fixture(scope="module")
def spec(tiny_model, tmp_path_factory):
    return shared.make_spec(tiny_model, tmp_path_factory.mktemp("ray_ckpt"))


@pytest.fixture(scope="module")
def reference(tiny_model, clips, tmp_path_factory):
    return shared.make_reference(tiny_model, clips, tmp_path_factory.mktemp("ray_reference"))


@pytest.fixture
def local_ray(monkeypatch):
    """A 2-CPU Ray instance whose workers import this jfdeploy and run the slow-frame test hook."""
    monkeypatch.setenv(SLOW_FRAMES_ENV, "0.15")  # Ray's processes inherit the environment of ray.init
    source_root = str(Path(jfdeploy.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        for signum, handler in handlers.items():  # Ray's driver installs its own; later tests expect the defaults
            signal.signal(signum, handler)


def test_killed_actor_video_is_retried_and_written_once(local_ray, clips, spec, reference, tmp_path) -> None:
    out = tmp_path / "out"
    jobs = shared.good_jobs(clips)
    thread, box = shared.run_in_thread(jobs, out, spec, workers=2, ray_address="local", progress=False)
    shared.wait_for(lambda: len(shared.busy_staging(out)) == 2, 180, "both actors mid-video")
    actors = sorted(name for name in ray.util.list_named_actors() if name.startswith("jfdeploy-worker-"))
    assert len(actors) == 2
    ray.kill(ray.get_actor(actors[0]))
    thread.join(240)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    summary = box["summary"]
    assert summary.engine == "ray" and summary.workers == 2 and summary.threads == 1
    assert shared.statuses(summary) == dict.fromkeys(shared.GOOD, "done")
    assert sum(r.attempts for r in summary.results) == len(shared.GOOD) + 1  # the killed actor's video, once more
    assert summary.workers_started == 3  # the dead actor was replaced
    for name in shared.GOOD:
        assert shared.pngs(out / name) == reference[name], name
    assert sorted(p.name for p in out.iterdir()) == sorted([*shared.GOOD, "summary.json"])  # no staging left
