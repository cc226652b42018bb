"""``jfdeploy serve --ray``: two Ray Serve replicas of the tiny model behind the ingress.

Four sessions spread over both replicas, their masks equal VideoPredictor's; one replica killed: its
sessions get 410 with a one-line JSON error, the other replica's go on unharmed, new sessions open. The
command line: --replicas without --ray, Ray Serve missing, and a smoke test of the command as a process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

import jfdeploy
from conftest import TINY_TOPK
from jfdeploy.io import make_clip

serve = pytest.importorskip("ray.serve", reason="Ray Serve is optional: pip install 'jfdeploy[ray-serve]'")
pytest.importorskip("starlette", reason="jfdeploy serve needs: pip install 'jfdeploy[serve]'")
import ray  # noqa: E402

from jfdeploy.batch import WorkerSpec  # noqa: E402
from jfdeploy.client import ServerError, Session  # noqa: E402
from jfdeploy.predictor import RunOptions, VideoPredictor  # noqa: E402
from jfdeploy.serve import ray_serve  # noqa: E402
from jfdeploy.serve.app import ServeConfig  # noqa: E402
from jfdeploy.serve.sessions import SessionPolicy, session_options  # noqa: E402

pytestmark = pytest.mark.slow  # Ray, Serve's controller and proxy, three replicas: a minute on a 2-core CPU

SOURCE_ROOT = str(Path(jfdeploy.__file__).resolve().parents[1])
FRAMES = 5


def _policy() -> SessionPolicy:
    return SessionPolicy(defaults=RunOptions(sizes=(None,)), model_topk=None, device_type="cpu", max_objects=8)


@pytest.fixture(scope="module")
def clips():
    return [make_clip(num_frames=FRAMES, height=48, width=64, num_objects=2, seed=seed) for seed in range(5)]


@pytest.fixture(scope="module")
def reference(tiny_model, clips):
    """Each clip's masks from VideoPredictor with the sessions' options, one thread."""
    options = session_options({}, dataclass_replace_topk(_policy()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for frames, labels in clips:
            predictor = VideoPredictor(tiny_model, options=options)
            out.append([predictor.step(frames[0], labels[0]).labels] +
                       [predictor.step(frame).labels for frame in frames[1:]])  # fmt: skip
        return out
    finally:
        torch.set_num_threads(threads)


def dataclass_replace_topk(policy: SessionPolicy) -> SessionPolicy:
    import dataclasses

    return dataclasses.replace(policy, model_topk=TINY_TOPK)


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint):
    """Two replicas (0.5 CPU each) and the ingress on a 2-CPU Ray instance: (ingress handle, URL)."""
    kept_env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, kept_env]))  # Ray's workers inherit it
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False,
             logging_level=logging.WARNING)  # fmt: skip
    try:
        spec = WorkerSpec(checkpoint=str(tiny_checkpoint), model_kwargs={"topk": TINY_TOPK},
                          options=_policy().defaults, threads=1)  # fmt: skip
        config = ServeConfig(policy=_policy(), max_sessions=8, max_wait_ms=0.0)
        app = ray_serve.build_app(config, spec, replicas=2, replica_cpus=0.5)
        handle, url = ray_serve.deploy(app, "127.0.0.1", ray_serve.free_port("127.0.0.1"))
        yield handle, url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if kept_env is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = kept_env


def _open(url: str) -> tuple[Session, int]:
    response = requests.post(f"{url}/sessions", json={}, timeout=120)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert response.headers["X-Replica"] == str(answer["replica"])
    session = Session(url, answer["session"], timeout=120)
    return session, int(answer["replica"])


def _error(response: requests.Response) -> str:
    text = response.text
    assert "\n" not in text.strip(), text
    return json.loads(text)["error"]


def test_sessions_spread_match_and_survive_a_replica_death(cluster, clips, reference) -> None:
    handle, url = cluster
    assert requests.get(f"{url}/healthz", timeout=30).json()["replicas"] == 2
    opened = [_open(url) for _ in range(4)]
    assert sorted(slot for _, slot in opened) == [0, 0, 1, 1]
    half = 2
    for index, (session, _) in enumerate(opened):  # the first frames of every session
        frames, labels = clips[index]
        assert np.array_equal(session.step(frames[0], labels[0]), reference[index][0])
        for t in range(1, half):
            assert np.array_equal(session.step(frames[t]), reference[index][t]), (index, t)

    # errors map as in one process: one line of JSON, 4xx, the session unharmed
    first = opened[0][0]
    bad = requests.post(f"{url}/sessions/{first.id}/frames", data=b"not an image", timeout=60)
    assert bad.status_code == 400 and _error(bad)
    assert requests.post(f"{url}/sessions/nope/frames", data=b"x", timeout=60).status_code == 404
    wrong = requests.post(f"{url}/sessions", json={"topk": 99}, timeout=60)
    assert wrong.status_code == 400 and "topk" in _error(wrong)
    metrics = requests.get(f"{url}/metrics", timeout=60).text
    assert 'replica="0"' in metrics and 'replica="1"' in metrics

    table = handle.table.remote().result()
    victim_slot = 0
    victim_replica = next(replica for slot, replica in table["sessions"].values() if slot == victim_slot)
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if victim_replica in a["name"]]  # fmt: skip
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)

    started = time.monotonic()
    for index, (session, slot) in enumerate(opened):
        frames, _ = clips[index]
        if slot == victim_slot:
            response = requests.post(f"{url}/sessions/{session.id}/frames", data=jfdeploy.client.encode_image(
                frames[half]), timeout=180)  # fmt: skip
            assert response.status_code == 410, response.text
            assert "must restart" in _error(response)
            with pytest.raises(ServerError) as lost:  # and so on: the session stays lost
                session.step(frames[half])
            assert lost.value.status == 410
        else:
            for t in range(half, FRAMES):
                assert np.array_equal(session.step(frames[t]), reference[index][t]), (index, t)
            session.close()
    assert time.monotonic() - started < 170

    fresh, _ = _open(url)  # a new session still opens (on either slot, the restarted one included)
    frames, labels = clips[4]
    got = [fresh.step(frames[0], labels[0])] + [fresh.step(frame) for frame in frames[1:]]
    assert all(np.array_equal(a, b) for a, b in zip(got, reference[4], strict=True))
    fresh.close()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SOURCE_ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "jfdeploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_replicas_without_ray_exits_2_with_one_line() -> None:
    done = _cli("serve", "--replicas", "2")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--ray" in lines[0], done.stderr


def test_ray_serve_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(jfdeploy.errors.InputError, match=r"jfdeploy\[ray-serve\]"):
        ray_serve.import_serve()
