"""Live frame sources: an mp4 streamed by a local HTTP server, realtime dropping, timeouts, cleanup.

The clip is written with its ``moov`` atom first (``Mp4Encoder(faststart=True)``): Python's
``http.server`` answers no range requests, so FFmpeg cannot seek to an index at the end of a file.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jfdeploy.errors import InputError
from jfdeploy.io import open_frames
from jfdeploy.io.video import LIVE_READER_THREAD_NAME, LiveFrames, Mp4Encoder, is_live_spec

av = pytest.importorskip("av", reason="live sources need PyAV (pip install 'jfdeploy[video]')")

NUM_FRAMES = 12
HEIGHT, WIDTH = 64, 96
FPS = 12


def _moving_square_clip() -> np.ndarray:
    """uint8 [T, H, W, 3]: a white 16x16 square moving right 6 px per frame over a noisy gradient.

    The noise makes every frame cost about the same number of bytes (~1.7 KB in H.264), so half the file
    holds about half the frames (the connection-cut test relies on it).
    """
    rows = np.linspace(40, 200, HEIGHT, dtype=np.float32)[:, None]
    cols = np.linspace(0, 60, WIDTH, dtype=np.float32)[None, :]
    background = np.stack([rows + cols, np.full((HEIGHT, WIDTH), 90.0), 255 - rows - cols], axis=-1)
    noise = np.random.default_rng(0).normal(0.0, 12.0, (NUM_FRAMES, HEIGHT, WIDTH, 3))
    frames = np.clip(background[None] + noise, 0, 255).astype(np.uint8)
    for t in range(NUM_FRAMES):
        frames[t, 24:40, 6 * t : 6 * t + 16] = 255
    return frames


def _decode_file(path: Path) -> list[np.ndarray]:
    """Every frame of a local video, decoded with PyAV alone (the reference for the streamed frames)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/cut/<file>`` sends half the file and closes, ``/stall/<file>`` half and waits."""

    stall_released: threading.Event

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        for prefix in ("/cut/", "/stall/"):
            if self.path.startswith(prefix):
                data = (Path(self.directory) / self.path[len(prefix) :]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(data)))  # promises the whole file
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if prefix == "/stall/":
                    self.stall_released.wait(30)
                self.close_connection = True
                return
        super().do_GET()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """(folder served, reference frames of ``clip.mp4``); the folder also has ``audio.m4a`` and ``noise.mp4``."""
    folder = tmp_path_factory.mktemp("served")
    encoder = Mp4Encoder(folder / "clip.mp4", FPS, (HEIGHT, WIDTH), faststart=True)
    for rgb in _moving_square_clip():
        encoder.write(rgb)
    path = encoder.finish()
    with av.open(str(folder / "audio.m4a"), "w", format="mp4") as container:  # sound, no picture
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            silence.sample_rate, silence.pts = 8000, i * 1024
            container.mux(stream.encode(silence))
        container.mux(stream.encode(None))
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return folder, _decode_file(path)


@pytest.fixture(scope="module")
def base_url(clip: tuple[Path, list[np.ndarray]]) -> Iterator[str]:
    """http://127.0.0.1:PORT of a threaded server on a free port, serving the clip's folder."""
    released = threading.Event()
    handler = type("Handler", (_Handler,), {"stall_released": released})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(clip[0])))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LIVE_READER_THREAD_NAME and t.is_alive()]


def test_http_stream_is_live_and_yields_the_files_frames(base_url: str, clip: tuple[Path, list[np.ndarray]]) -> None:
    reference = clip[1]
    assert len(reference) == NUM_FRAMES
    source = open_frames(f"{base_url}/clip.mp4")
    assert isinstance(source, LiveFrames) and source.live and source.frame_count is None
    assert source.size == (HEIGHT, WIDTH) and source.fps == pytest.approx(FPS)
    with pytest.raises(TypeError, match="no length"):
        len(source)
    got = list(source)
    assert [name for name, _ in got] == [f"{i:05d}" for i in range(NUM_FRAMES)] == source.names
    for (_, rgb), expected in zip(got, reference, strict=True):
        assert rgb.dtype == np.uint8 and np.array_equal(rgb, expected)
    assert source.dropped == 0 and source.ended_by == "end of stream"
    with pytest.raises(RuntimeError, match="read once"):
        iter(source)


def test_max_frames_caps_live_and_file_sources(
    base_url: str, clip: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    live = open_frames(f"{base_url}/clip.mp4", max_frames=5)
    got = list(live)
    assert [name for name, _ in got] == ["00000", "00001", "00002", "00003", "00004"]
    assert all(np.array_equal(rgb, clip[1][i]) for i, (_, rgb) in enumerate(got))
    assert live.ended_by is not None and "max_frames" in live.ended_by

    video = open_frames(clip[0] / "clip.mp4", max_frames=5)
    assert not video.live and video.frame_count == 5 == len(video) and video.ended_by is None
    assert [name for name, _ in video] == ["00000", "00001", "00002", "00003", "00004"]
    assert open_frames(clip[0] / "clip.mp4", max_frames=100).frame_count == NUM_FRAMES

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, rgb in enumerate(clip[1][:3]):
        Image.fromarray(rgb).save(folder / f"{i:05d}.png")
    frames = open_frames(folder, max_frames=2)
    assert frames.frame_count == 2 and [name for name, _ in frames] == ["00000", "00001"]
    with pytest.raises(InputError, match="max_frames"):
        open_frames(folder, max_frames=0)


def test_realtime_with_a_slow_consumer_drops_and_names_show_the_gaps(
    base_url: str, clip: tuple[Path, list[np.ndarray]]
) -> None:
    source = open_frames(f"{base_url}/clip.mp4", realtime=True)
    got: list[tuple[str, np.ndarray]] = []
    for name, rgb in source:
        got.append((name, rgb))
        time.sleep(0.1)  # the server and the decoder are far faster: frames pile up and get overwritten
    indices = [int(name) for name, _ in got]
    assert indices[0] == 0 and indices == sorted(set(indices)) and indices[-1] == NUM_FRAMES - 1
    assert source.dropped > 0 and len(got) + source.dropped == NUM_FRAMES
    assert any(b - a > 1 for a, b in itertools.pairwise(indices))  # gaps in the names
    for index, rgb in zip(indices, (rgb for _, rgb in got), strict=True):
        assert np.array_equal(rgb, clip[1][index])
    assert source.ended_by == "end of stream"
    assert not _reader_threads()


def test_leaving_a_realtime_loop_stops_the_reader_thread(base_url: str) -> None:
    # /stall/ sends half the clip and then nothing: the reader thread is blocked in FFmpeg's read when
    # the loop ends, the hardest case to stop (it returns when the 1 s read timeout fires)
    source = open_frames(f"{base_url}/stall/clip.mp4", realtime=True, timeout=1.0)
    start = time.monotonic()
    for index, _ in enumerate(source):
        assert _reader_threads()  # decoding on its own thread while the loop runs
        time.sleep(0.2)  # the reader decodes what came and blocks waiting for more
        if index == 1:
            break
    assert not _reader_threads() and time.monotonic() - start < 4
    assert source.ended_by is None  # the consumer stopped, not the stream

    source = open_frames(f"{base_url}/stall/clip.mp4", realtime=True, timeout=1.0)
    with pytest.raises(KeyboardInterrupt):
        for _ in source:
            raise KeyboardInterrupt
    assert not _reader_threads()

    with open_frames(f"{base_url}/clip.mp4", realtime=True) as source:  # never iterated: close() still runs
        assert source.size == (HEIGHT, WIDTH)
    assert not _reader_threads()


def test_unreachable_url_is_a_quick_one_line_input_error() -> None:
    port = _closed_port()
    url = f"http://user:secret@127.0.0.1:{port}/x.mp4"
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        open_frames(url)
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert "\n" not in message and "refused" in message.lower()
    assert f"http://user:***@127.0.0.1:{port}/x.mp4" in message and "secret" not in message


def test_silent_server_times_out() -> None:
    with socket.socket() as listening:  # accepts connections (backlog) but never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}/clip.mp4"
        start = time.monotonic()
        with pytest.raises(InputError, match="timed out") as info:
            open_frames(url, timeout=1.0)
        assert time.monotonic() - start < 4
    assert url in str(info.value) and "\n" not in str(info.value)


def test_missing_file_no_video_and_noise_are_input_errors(base_url: str) -> None:
    with pytest.raises(InputError, match="404") as info:
        open_frames(f"{base_url}/missing.mp4")
    assert f"{base_url}/missing.mp4" in str(info.value)
    with pytest.raises(InputError, match=r"audio\.m4a: no video stream \(streams: audio\)"):
        open_frames(f"{base_url}/audio.m4a")
    with pytest.raises(InputError, match=r"noise\.mp4: cannot open the stream \(Invalid data") as info:
        open_frames(f"{base_url}/noise.mp4")
    assert "\n" not in str(info.value)


def test_connection_closed_mid_file_ends_the_iteration(base_url: str, clip: tuple[Path, list[np.ndarray]]) -> None:
    source = open_frames(f"{base_url}/cut/clip.mp4")
    got = [rgb for _, rgb in source]  # no exception: the stream just ends
    assert 1 <= len(got) < NUM_FRAMES
    assert all(np.array_equal(rgb, clip[1][i]) for i, rgb in enumerate(got))
    assert source.ended_by is not None and source.ended_by != "end of stream"


def test_stalled_stream_ends_after_the_read_timeout(base_url: str) -> None:
    source = open_frames(f"{base_url}/stall/clip.mp4", timeout=1.0)
    start = time.monotonic()
    got = list(source)
    assert 1 <= len(got) < NUM_FRAMES and time.monotonic() - start < 5
    assert source.ended_by is not None and "timed out" in source.ended_by


def test_spec_forms(tmp_path: Path) -> None:
    assert is_live_spec("rtsp://cam/stream") and is_live_spec("HTTPS://host/x.mp4") and is_live_spec("0")
    assert is_live_spec(3) and is_live_spec("/dev/video2")
    assert not is_live_spec("clip.mp4") and not is_live_spec(tmp_path) and not is_live_spec("10")
    with pytest.raises(InputError, match="unsupported URL scheme udp://"):
        open_frames("udp://127.0.0.1:1234")
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="realtime needs a live source"):
        open_frames(tmp_path / "clip.mp4", realtime=True)


@pytest.mark.skipif(Path("/dev/video9").exists(), reason="this machine has a /dev/video9")
def test_missing_camera_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"/dev/video9: no such video device \(camera index 9\)"):
        open_frames("9")
    with pytest.raises(InputError, match="/dev/video9: no such video device"):
        open_frames("/dev/video9")


@pytest.mark.skipif(not Path("/dev/video0").exists(), reason="no camera: /dev/video0 does not exist on this machine")
def test_camera_zero_reads_frames() -> None:
    source = open_frames("0", max_frames=2)
    assert source.live and source.size[0] > 0
    assert [name for name, _ in source] == ["00000", "00001"]
