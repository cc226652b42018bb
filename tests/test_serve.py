"""``jfdeploy serve`` as clients use it: the real server in a subprocess on a real socket, the Python client
(``jfdeploy.client.Session``) and raw requests; every session's masks are compared with ``jfdeploy run`` on the
same frames and options. The limits, the drain and the API key are in test_serve_limits.py; the scheduler's
unit tests are at the end.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image
from serve_support import (
    SESSION_ARGS,
    ServerProcess,
    assert_one_line_error,
    clip_folder,
    metric,
    run_masks,
    server_env,
)

from jfdeploy.client import ServerError, Session, encode_image, encode_mask
from jfdeploy.io import write_label_png
from jfdeploy.serve.metrics import METRIC_NAMES
from jfdeploy.serve.scheduler import Scheduler, WorkItem

MAX_BODY_MB = 0.05  # 52 kB: a 48 x 64 frame is a few kB, an oversize body is easy to send


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """One server for this file's tests (sessions are independent of each other)."""
    process = ServerProcess("--checkpoint", str(tiny_checkpoint), *SESSION_ARGS, "--threads", "1", "--max-batch", "8",
                            "--max-body-mb", str(MAX_BODY_MB), env=server_env())  # fmt: skip
    try:
        yield process
    finally:
        process.stop()


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------------ fast tier


def test_a_session_equals_jfdeploy_run_over_raw_multipart_and_probabilities(server, tiny_checkpoint, tmp_path):
    clip = clip_folder(tmp_path / "clip", seed=5)
    expected = run_masks(tiny_checkpoint, clip["folder"], clip["mask"], tmp_path / "run")
    frames, first = clip["frames"], clip["labels"][0]
    with Session.create(server.url, size=0, mem_every=2) as session:
        assert session.options["size"] == 0 and session.options["mem_every"] == 2
        assert session.options["max_memory_frames"] == 2  # the server's default
        got = [session.step(frames[0], mask=first)]
        raw = requests.post(f"{server.url}/sessions/{session.id}/frames", data=encode_image(frames[1]),
                            headers={"Content-Type": "image/png"}, timeout=30)  # fmt: skip
        assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
        assert raw.headers["X-Frame-Index"] == "1" and raw.headers["X-Object-Ids"] == "3,7"
        with Image.open(io.BytesIO(raw.content)) as image:
            assert image.mode == "P"  # a palette PNG, as `jfdeploy run` writes
            got.append(np.array(image))
        got += [session.step(rgb) for rgb in frames[2:-1]]
        last = session.step_probabilities(frames[-1])
        got.append(last["labels"])
        session_id = session.id
    for t, (labels, reference) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(labels, reference), f"frame {t}"
    np.testing.assert_array_equal(got[0], first)  # the given mask comes back as is
    assert (got[-1] == 3).any() and (got[-1] == 7).any()
    assert list(last["object_ids"]) == [3, 7]
    probabilities = last["probabilities"]
    assert probabilities.shape == (3, 48, 64) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-4)
    np.testing.assert_array_equal(np.array([0, 3, 7], np.uint8)[probabilities.argmax(0)], last["labels"])
    gone = requests.post(f"{server.url}/sessions/{session_id}/frames", data=encode_image(frames[0]), timeout=10)
    assert_one_line_error(gone, 404, "no session")  # closed by the context manager


def test_bad_inputs_are_one_line_4xx_and_harm_neither_session_nor_server(server, tiny_checkpoint, tmp_path):
    clip = clip_folder(tmp_path / "clip", seed=6)
    expected = run_masks(tiny_checkpoint, clip["folder"], clip["mask"], tmp_path / "run")
    frames, first = clip["frames"], clip["labels"][0]
    url = server.url
    with Session.create(url, max_objects=3) as session:
        frames_url = f"{url}/sessions/{session.id}/frames"
        got = [session.step(frames[0], mask=first)]

        response = requests.post(frames_url, data=b"certainly not a PNG", timeout=10)
        assert_one_line_error(response, 400, "not an image")
        response = requests.post(frames_url, data=b"", timeout=10)
        assert_one_line_error(response, 400, "empty")
        got.append(session.step(frames[1]))

        with pytest.raises(ServerError) as error:
            session.step(np.zeros((40, 60, 3), np.uint8))  # another size mid-session
        assert error.value.status == 400 and "40x60" in error.value.message and "48x64" in error.value.message
        rgb_mask = np.zeros((48, 64, 3), np.uint8)
        rgb_mask[10:20, 10:20] = (1, 2, 3)  # a colour outside the DAVIS palette
        files = {"image": ("f.png", encode_image(frames[2]), "image/png"), "mask": ("m.png", png(rgb_mask))}
        assert_one_line_error(requests.post(frames_url, files=files, timeout=10), 400, "palette")
        many = first.copy()
        many[:4, :4], many[-4:, -4:] = 20, 21  # 4 objects, the session allows 3
        files = {"image": ("f.png", encode_image(frames[2]), "image/png"), "mask": ("m.png", encode_mask(many))}
        assert_one_line_error(requests.post(frames_url, files=files, timeout=10), 400, "more than the limit of 3")
        files = {"image": ("f.png", encode_image(frames[2]), "image/png"), "mask": ("m.png", encode_mask(first[:8]))}
        assert_one_line_error(requests.post(frames_url, files=files, timeout=10), 400, "mask is 8x64")
        assert_one_line_error(requests.post(frames_url, files={"mask": ("m.png", encode_mask(first))}, timeout=10),
                              400, "'image'")  # fmt: skip
        got.append(session.step(frames[2]))

        oversize = np.random.default_rng(0).integers(0, 256, 80_000, dtype=np.uint8).tobytes()
        response = requests.post(frames_url, data=oversize, timeout=10)
        assert_one_line_error(response, 413, "limit")
        chunked = requests.post(frames_url, data=iter([oversize[i : i + 8192] for i in range(0, 80_000, 8192)]),
                                timeout=10)  # no Content-Length: the limit applies as the body arrives  # fmt: skip
        assert_one_line_error(chunked, 413, "limit")
        got.append(session.step(frames[3]))

        for body, words in ((b"{not json", ("JSON object",)), (b"[1, 2]", ("JSON object",)),
                            (b'{"bogus": 1}', ("unknown option", "bogus")), (b'{"topk": 9}', ("topk 9",)),
                            (b'{"max_objects": 1000}', ("max_objects 1000",)),
                            (b'{"size": "big"}', ("size", "integer"))):  # fmt: skip
            response = requests.post(f"{url}/sessions", data=body, timeout=10)
            assert_one_line_error(response, 400, *words)
        assert_one_line_error(requests.delete(f"{url}/sessions/nope", timeout=10), 404, "nope")
        got.append(session.step(frames[4]))
    for t, (labels, reference) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(labels, reference), f"frame {t}"
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"


def test_openapi_metrics_and_page(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert schema.status_code == 200
    paths = json.loads(schema.text)["paths"]
    assert set(paths) == {"/", "/healthz", "/openapi.json", "/metrics", "/sessions", "/sessions/{session_id}",
                          "/sessions/{session_id}/frames", "/sessions/{session_id}/stream"}  # fmt: skip
    assert "post" in paths["/sessions"] and "delete" in paths["/sessions/{session_id}"]
    options = json.loads(schema.text)["components"]["schemas"]["SessionOptions"]["properties"]
    assert {"size", "mem_every", "max_memory_frames", "max_objects", "topk", "preset", "variant"} == set(options)

    before = requests.get(f"{server.url}/metrics", timeout=10).text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in before, name
    assert metric(before, "jfdeploy_memory_bytes", 'kind="process_rss"') > 10e6
    assert metric(before, "process_resident_memory_bytes") > 10e6
    rgb = np.full((48, 64, 3), 90, np.uint8)
    with Session.create(server.url) as session:
        assert metric(requests.get(f"{server.url}/metrics", timeout=10).text, "jfdeploy_sessions") >= 1
        for _ in range(3):
            assert not session.step(rgb).any()  # no object yet: all background
    after = requests.get(f"{server.url}/metrics", timeout=10).text
    ok = 'outcome="ok"'
    assert metric(after, "jfdeploy_frames_total", ok) - metric(before, "jfdeploy_frames_total", ok) == 3
    assert metric(after, "jfdeploy_batch_size_count") - metric(before, "jfdeploy_batch_size_count") == 3
    assert metric(after, "jfdeploy_frame_latency_seconds_count") >= 3


@pytest.mark.skipif(not resources.files("jfdeploy.serve").joinpath("index.html").is_file(),
                    reason="jfdeploy/serve/index.html (the page) is not in this checkout")  # fmt: skip
def test_the_page_is_html(server):
    page = requests.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


# ------------------------------------------------------------------------------------------------ slow tier


@pytest.mark.parametrize("transport", [pytest.param("http", marks=pytest.mark.slow), "stream"])
def test_eight_concurrent_sessions_each_equal_jfdeploy_run(server, tiny_checkpoint, tmp_path, transport):
    clips = [clip_folder(tmp_path / f"clip{i}", seed=20 + i, frames=5) for i in range(8)]
    expected = [run_masks(tiny_checkpoint, c["folder"], c["mask"], tmp_path / f"run{i}") for i, c in enumerate(clips)]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=60)

    def client(i: int) -> None:
        try:
            clip = clips[i]
            with Session.create(server.url) as session:
                start.wait()
                if transport == "http":
                    first = session.step(clip["frames"][0], mask=clip["labels"][0])
                    results[i] = [first] + [session.step(rgb) for rgb in clip["frames"][1:]]
                else:
                    results[i] = list(session.stream(clip["frames"], {0: clip["labels"][0]}, window=3))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    before = requests.get(f"{server.url}/metrics", timeout=10).text
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i in range(8):
        assert len(results[i]) == 5
        for t, (labels, reference) in enumerate(zip(results[i], expected[i], strict=True)):
            assert np.array_equal(labels, reference), f"session {i} frame {t}"
    # the clips differ, so equal masks are not one session's answers sent to all
    assert not np.array_equal(expected[0][-1], expected[1][-1])
    # and frames of different sessions went through the model together (cross-stream batches)
    after = requests.get(f"{server.url}/metrics", timeout=10).text
    frames, batches = (metric(after, f"jfdeploy_batch_size_{k}") - metric(before, f"jfdeploy_batch_size_{k}")
                       for k in ("sum", "count"))  # fmt: skip
    assert frames == 8 * 5 and frames / batches > 1.5


@pytest.mark.slow
def test_an_object_added_mid_video_equals_jfdeploy_run_with_a_mask_folder(server, tiny_checkpoint, tmp_path):
    clip = clip_folder(tmp_path / "clip", seed=9, frames=5, objects=3)
    labels = clip["labels"]
    first = np.where(labels[0] == 11, 0, labels[0]).astype(np.uint8)  # object 11 starts at frame 2
    added = np.where(labels[2] == 11, 11, 0).astype(np.uint8)
    masks = tmp_path / "masks"
    write_label_png(masks / "00000.png", first)
    write_label_png(masks / "00002.png", added)
    expected = run_masks(tiny_checkpoint, clip["folder"], masks, tmp_path / "run")
    assert not (expected[1] == 11).any() and (expected[3] == 11).any()  # tracked from frame 2 on
    frames = clip["frames"]
    with Session.create(server.url) as session:
        got = [session.step(rgb, mask={0: first, 2: added}.get(t)) for t, rgb in enumerate(frames)]
    with Session.create(server.url) as session:
        streamed = list(session.stream(frames, {0: first, 2: added}))
    for t in range(len(frames)):
        assert np.array_equal(got[t], expected[t]), f"http frame {t}"
        assert np.array_equal(streamed[t], expected[t]), f"stream frame {t}"


@pytest.mark.slow
def test_stream_reports_a_bad_frame_in_order_and_goes_on(server, tiny_checkpoint, tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    clip = clip_folder(tmp_path / "clip", seed=12, frames=4)
    expected = run_masks(tiny_checkpoint, clip["folder"], clip["mask"], tmp_path / "run")
    frames = clip["frames"]
    with Session.create(server.url) as session:
        ws_url = "ws" + server.url[4:] + f"/sessions/{session.id}/stream"
        with connect(ws_url, open_timeout=30) as ws:
            ws.send(json.dumps({"mask": base64.b64encode(encode_mask(clip["labels"][0])).decode()}))
            ws.send(encode_image(frames[0]))
            ws.send(encode_image(frames[1]))
            ws.send(b"junk")
            ws.send("{not json")  # a bad mask message fails the next frame only
            ws.send(encode_image(frames[2]))
            ws.send(encode_image(frames[2]))
            ws.send(encode_image(frames[3]))
            replies = [ws.recv(timeout=30) for _ in range(6)]
            assert requests.delete(f"{server.url}/sessions/{session.id}", timeout=10).json()["frames"] == 4
            ws.send(encode_image(frames[0]))  # the session is gone while its stream is open
            deleted = json.loads(ws.recv(timeout=30))
            assert deleted["status"] == 404 and "no session" in deleted["error"], deleted
        with connect("ws" + server.url[4:] + "/sessions/nope/stream", open_timeout=30) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            assert ws.close_code == 4404
    assert isinstance(replies[2], str) and isinstance(replies[3], str)
    junk, bad_mask = json.loads(replies[2]), json.loads(replies[3])
    assert junk["status"] == 400 and "not an image" in junk["error"] and junk["frame"] == 2
    assert bad_mask["status"] == 400 and "mask" in bad_mask["error"] and bad_mask["frame"] == 2
    good = [replies[0], replies[1], replies[4], replies[5]]
    assert all(isinstance(r, bytes) for r in good)
    decoded = [np.array(Image.open(io.BytesIO(r))) for r in good]
    for labels, reference in zip(decoded, expected, strict=True):
        assert np.array_equal(labels, reference)


# ------------------------------------------------------------------------------------------------ Scheduler


def _item(session, height: int = 4, width: int = 4, tag: object = None) -> WorkItem:
    item = WorkItem(session, np.zeros((height, width, 3), np.uint8))
    item.mask = tag  # carried through to the run function
    return item


def _session(name: str, variant: str = "torch"):
    return SimpleNamespace(name=name, options=SimpleNamespace(sizes=(None,), variant=variant))


def test_scheduler_takes_one_frame_per_session_per_batch_in_order():
    batches: list[list[tuple[str, int]]] = []

    def run(items):
        batches.append([(item.session.name, item.mask) for item in items])
        return [(item.session.name, item.mask) for item in items]

    sessions = [_session(name) for name in "abc"]
    scheduler = Scheduler(max_batch=2, max_wait=0.05, active_sessions=lambda: 3, run=run)
    futures = [scheduler.submit(_item(s, tag=i)) for i in range(4) for s in sessions]  # all queued before start
    scheduler.start()
    try:
        results = [future.result(timeout=10) for future in futures]
    finally:
        scheduler.stop(10)
    assert results == [(s.name, i) for i in range(4) for s in sessions]
    assert sum(len(b) for b in batches) == 12
    for batch in batches:
        assert len(batch) <= 2  # max_batch
        names = [name for name, _ in batch]
        assert len(names) == len(set(names)), batch  # at most one frame of a session
    for name in "abc":
        order = [index for batch in batches for n, index in batch if n == name]
        assert order == [0, 1, 2, 3]  # a session's frames run in the order they came


def test_scheduler_a_failed_group_fails_only_its_own_frames():
    def run(items):
        if items[0].rgb.shape[0] == 8:  # the group of 8 x 8 frames
            raise RuntimeError("this group's stage failed")
        return [item.mask if item.mask != "bad" else ValueError("this frame failed") for item in items]

    calls: list[int] = []
    scheduler = Scheduler(max_batch=8, max_wait=0.2, active_sessions=lambda: 4, run=run,
                          on_batch=lambda size, seconds: calls.append(size))  # fmt: skip
    s = [_session(name) for name in "abcd"]
    futures = [scheduler.submit(_item(s[0], tag="a")), scheduler.submit(_item(s[1], 8, 8, tag="b")),
               scheduler.submit(_item(s[2], 8, 8, tag="c")), scheduler.submit(_item(s[3], tag="bad"))]  # fmt: skip
    scheduler.start()
    try:
        assert futures[0].result(timeout=10) == "a"
        for future in futures[1:3]:
            with pytest.raises(RuntimeError, match="this group's stage failed"):
                future.result(timeout=10)
        with pytest.raises(ValueError, match="this frame failed"):
            futures[3].result(timeout=10)
        later = scheduler.submit(_item(s[1], 4, 8, tag="later"))  # the worker goes on
        assert later.result(timeout=10) == "later"
    finally:
        scheduler.stop(10)
    assert sorted(calls[:2]) == [2, 2]  # one batch of 4 frames, two groups of one input size each


def test_scheduler_runs_calls_between_batches_and_stops_after_the_queued_frames():
    ran: list[str] = []
    scheduler = Scheduler(max_batch=4, max_wait=0.0, run=lambda items: [ran.append("frame") or 1 for _ in items])
    frame = scheduler.submit(_item(_session("a")))
    call = scheduler.call(lambda: ran.append("call") or "built")
    scheduler.start()
    assert call.result(timeout=10) == "built" and frame.result(timeout=10) == 1
    scheduler.stop(10)
    assert ran == ["call", "frame"]  # calls first: a session's predictor is built before its frames
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.submit(_item(_session("b")))


@pytest.mark.slow
def test_the_load_benchmark_reports_a_row_per_client_count(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(script), "--tiny", "--threads", "1", "--clients", "1,3", "--frames",
                             "4", "--fps", "20", "--json", str(out)], capture_output=True, text=True, timeout=300,
                            env=server_env(), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| clients | frames/s per session" in result.stdout and "exit 0" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["clients"] for row in rows] == [1, 3]
    for row in rows:
        assert row["errors"] == 0 and row["failures"] == []
        assert 0 < row["session_fps_mean"] and 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert 1 <= row["mean_batch"] <= row["clients"] and row["batches"] >= 4
        assert row["memory_mb_before"]["process_rss"] > 50
    assert rows[0]["mean_batch"] == 1
