"""``jfdeploy serve``'s limits, each on its own real server: TTL eviction and --max-sessions, the per-session queue
(429), the drain on SIGTERM, the API key. Frames that are accepted must still give the masks of ``jfdeploy run``
(or of VideoPredictor on the frames the server accepted, in the order it took them)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import numpy as np
import pytest
import requests
from serve_support import (
    MAX_MEMORY_FRAMES,
    MEM_EVERY,
    SESSION_ARGS,
    ServerProcess,
    assert_one_line_error,
    clip_folder,
    metric,
    run_masks,
    server_env,
    wait_until,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from jfdeploy.client import ServerError, Session, decode_labels, encode_image, encode_mask
from jfdeploy.predictor import VideoPredictor

pytestmark = pytest.mark.slow  # each test starts its own server (seconds on 2 cores)


@pytest.fixture
def start_server(tiny_checkpoint):
    """start_server(*options): a server of the tiny model with the tests' session options; killed at the end."""
    started: list[ServerProcess] = []

    def start(*options: str) -> ServerProcess:
        process = ServerProcess("--checkpoint", str(tiny_checkpoint), *SESSION_ARGS, "--threads", "1", *options,
                                env=server_env())  # fmt: skip
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def metrics_of(url: str, **headers: str) -> str:
    response = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200
    return response.text


def ws_url(url: str, session_id: str, query: str = "") -> str:
    return "ws" + url[len("http") :] + f"/sessions/{session_id}/stream" + query


def test_idle_sessions_are_evicted_and_max_sessions_answers_503(start_server, tiny_checkpoint, tmp_path):
    server = start_server("--session-ttl", "1", "--max-sessions", "2")
    url = server.url
    clip = clip_folder(tmp_path / "clip", seed=31, frames=4)
    expected = run_masks(tiny_checkpoint, clip["folder"], clip["mask"], tmp_path / "run")
    frames = clip["frames"]

    idle = Session.create(url)
    busy = Session.create(url)
    full = requests.post(f"{url}/sessions", json={}, timeout=10)
    assert_one_line_error(full, 503, "--max-sessions")
    assert full.headers["Retry-After"] == "5"
    assert metric(metrics_of(url), "jfdeploy_rejected_total", 'reason="sessions_full"') == 1

    got = [busy.step(frames[0], mask=clip["labels"][0])]
    began = time.monotonic()
    while time.monotonic() - began < 2.5:  # a session in use stays open past the TTL ...
        time.sleep(0.3)
        assert busy.step(np.full((48, 64, 3), 0, np.uint8)).shape == (48, 64)
    # ... and the idle one is gone (the sweeper runs every quarter TTL)
    assert wait_until(lambda: metric(metrics_of(url), "jfdeploy_sessions_evicted_total") >= 1, timeout=10)
    response = requests.post(f"{url}/sessions/{idle.id}/frames", data=encode_image(frames[0]), timeout=10)
    assert_one_line_error(response, 404, "evicted", "--session-ttl")
    with pytest.raises(ServerError) as error:
        idle.step(frames[0])
    assert error.value.status == 404 and "evicted" in error.value.message
    assert metric(metrics_of(url), "jfdeploy_sessions") == 1
    idle.close()  # already gone: no error

    # a stream left open but idle is evicted too: its next frame is answered 404, not run on a freed predictor
    busy.close()
    with Session.create(url) as streamed, connect(ws_url(url, streamed.id), open_timeout=30) as ws:
        ws.send(encode_image(frames[0]))
        assert isinstance(ws.recv(timeout=30), bytes)
        evicted = metric(metrics_of(url), "jfdeploy_sessions_evicted_total")
        assert wait_until(lambda: metric(metrics_of(url), "jfdeploy_sessions_evicted_total") > evicted, timeout=10)
        ws.send(encode_image(frames[1]))
        reply = json.loads(ws.recv(timeout=30))
        assert reply["status"] == 404 and "evicted" in reply["error"], reply

    # the evicted sessions' places are free again; a new session equals jfdeploy run
    with Session.create(url) as fresh:
        got = [fresh.step(frames[0], mask=clip["labels"][0])] + [fresh.step(rgb) for rgb in frames[1:]]
    for t, (labels, reference) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(labels, reference), f"frame {t}"
    assert wait_until(lambda: requests.get(f"{url}/healthz", timeout=10).json()["sessions"] == 0, timeout=5)


def test_a_full_queue_answers_429_and_the_accepted_frames_stay_correct(start_server, tiny_model, tmp_path):
    # --max-wait-ms 400 with a second (idle) session open: each batch waits 400 ms for it, so the session's one
    # queued frame is still pending when the burst's other requests arrive
    server = start_server("--max-queue", "1", "--max-batch", "8", "--max-wait-ms", "400")
    url = server.url
    clip = clip_folder(tmp_path / "clip", seed=32, frames=9)
    frames, first = clip["frames"], clip["labels"][0]
    other = Session.create(url)
    session = Session.create(url)
    assert np.array_equal(session.step(frames[0], mask=first), first)

    burst = frames[1:6]
    answers: dict[int, requests.Response] = {}
    barrier = threading.Barrier(len(burst), timeout=30)

    def post(i: int) -> None:
        body = encode_image(burst[i])
        barrier.wait()
        answers[i] = requests.post(f"{url}/sessions/{session.id}/frames", data=body, timeout=30)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(burst))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == list(range(len(burst)))
    refused = [i for i, r in answers.items() if r.status_code == 429]
    accepted = sorted((int(r.headers["X-Frame-Index"]), i) for i, r in answers.items() if r.status_code == 200)
    assert refused and accepted and len(refused) + len(accepted) == len(burst), {
        i: r.status_code for i, r in answers.items()
    }
    for i in refused:
        assert_one_line_error(answers[i], 429, "--max-queue")
        assert answers[i].headers["Retry-After"] == "1"
    assert [index for index, _ in accepted] == list(range(1, 1 + len(accepted)))
    assert metric(metrics_of(url), "jfdeploy_rejected_total", 'reason="queue_full"') == len(refused)

    # the session goes on: the frames after the burst, one at a time
    later = [session.step(rgb) for rgb in frames[6:]]
    sequence = [frames[0]] + [burst[i] for _, i in accepted] + list(frames[6:])
    answered = [first] + [decode_labels(answers[i].content) for _, i in accepted] + later
    predictor = VideoPredictor(tiny_model, sizes=(None,), mem_every=MEM_EVERY, max_memory_frames=MAX_MEMORY_FRAMES)
    expected = [predictor.step(rgb, first if t == 0 else None).labels for t, rgb in enumerate(sequence)]
    for t, (labels, reference) in enumerate(zip(answered, expected, strict=True)):
        assert np.array_equal(labels, reference), f"frame {t}"
    assert (expected[-1] == 3).any()
    session.close()
    other.close()


def test_sigterm_drains_requests_in_flight_then_exits_0(start_server, tiny_checkpoint, tmp_path):
    # a batch waits up to 2.5 s for the frames of every open session: with an idle session open, the frames sent
    # below are all in flight when SIGTERM comes
    server = start_server("--max-batch", "8", "--max-wait-ms", "2500", "--drain-timeout", "30")
    url = server.url
    clip = clip_folder(tmp_path / "clip", seed=33, frames=5)
    expected = run_masks(tiny_checkpoint, clip["folder"], clip["mask"], tmp_path / "run")
    frames, first = clip["frames"], clip["labels"][0]
    Session.create(url)  # idle
    streamed = Session.create(url)
    posted = Session.create(url)
    http_answer: dict[str, object] = {}

    def post_first_frame() -> None:
        try:
            http_answer["labels"] = posted.step(frames[0], mask=first)
        except BaseException as error:
            http_answer["error"] = error

    with connect(ws_url(url, streamed.id), open_timeout=30) as ws:
        ws.send(json.dumps({"mask": base64.b64encode(encode_mask(first)).decode("ascii")}))
        for rgb in frames:
            ws.send(encode_image(rgb))
        poster = threading.Thread(target=post_first_frame)
        poster.start()
        assert wait_until(lambda: metric(metrics_of(url), "jfdeploy_queue_depth") == 6, timeout=2)
        assert metric(metrics_of(url), "jfdeploy_frames_total", 'outcome="ok"') == 0  # none answered yet
        server.process.send_signal(signal.SIGTERM)

        assert wait_until(lambda: requests.get(f"{url}/healthz", timeout=10).status_code == 503, timeout=5)
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.json() == {"status": "draining"} and health.headers["Retry-After"] == "5"
        refused = requests.post(f"{url}/sessions", json={}, timeout=10)
        assert_one_line_error(refused, 503, "SIGTERM")
        assert refused.headers["Retry-After"] == "5"
        with connect(ws_url(url, streamed.id), open_timeout=10) as late:  # a new stream is turned away
            with pytest.raises(ConnectionClosed):
                late.recv(timeout=10)
            assert late.close_code == 1013

        replies = [ws.recv(timeout=30) for _ in frames]  # the frames in flight are all answered
        with pytest.raises(ConnectionClosed):  # and the stream ends
            ws.send(encode_image(frames[0]))
            ws.recv(timeout=30)
    poster.join(30)
    assert "error" not in http_answer, http_answer
    assert np.array_equal(http_answer["labels"], first)
    for t, (reply, reference) in enumerate(zip(replies, expected, strict=True)):
        assert isinstance(reply, bytes), reply
        assert np.array_equal(decode_labels(reply), reference), f"frame {t}"
    assert server.wait(40) == 0, server.log()
    assert "drained, stopped" in server.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_the_api_key_guards_everything_but_the_open_paths(start_server):
    server = start_server("--api-key", "s3cret")
    url = server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = requests.post(f"{url}/sessions", json={}, headers=headers, timeout=10)
        assert_one_line_error(response, 401, "API key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert requests.get(f"{url}/metrics", headers=headers, timeout=10).status_code == 401
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(f"{url}/openapi.json", timeout=10).status_code == 200
    assert (
        metric(metrics_of(url, Authorization="Bearer s3cret"), "jfdeploy_rejected_total", 'reason="unauthorized"') >= 6
    )

    with pytest.raises(ServerError) as error:
        Session.create(url, api_key="wrong")
    assert error.value.status == 401
    rgb = np.full((48, 64, 3), 128, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 5
    with Session.create(url, api_key="s3cret") as session:
        assert np.array_equal(session.step(rgb, mask=mask), mask)
        assert session.step(rgb).shape == (48, 64)
        assert len(list(session.stream([rgb, rgb]))) == 2  # the stream with the header
        stolen = requests.post(f"{url}/sessions/{session.id}/frames", data=encode_image(rgb), timeout=10)
        assert_one_line_error(stolen, 401, "API key")  # knowing the id is not enough
        with connect(ws_url(url, session.id, "?access_token=s3cret"), open_timeout=10) as ws:
            ws.send(encode_image(rgb))
            assert decode_labels(ws.recv(timeout=30)).shape == (48, 64)
        for query in ("", "?access_token=wrong"):
            with connect(ws_url(url, session.id, query), open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=10)
                assert ws.close_code == 4401
