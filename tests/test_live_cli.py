"""`jfdeploy run` on an http:// stream, as a user runs the installed command."""

from __future__ import annotations

import functools
import http.server
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jfdeploy.io import write_label_png
from jfdeploy.io.video import Mp4Encoder

pytest.importorskip("av", reason="live sources need PyAV (pip install 'jfdeploy[video]')")
JFDEPLOY = shutil.which("jfdeploy")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve_clip(tmp_path: Path, num_frames: int, height: int = 64, width: int = 96):
    """An mp4 of a white square moving right, served over HTTP on 127.0.0.1; the first frame's mask."""
    served = tmp_path / "served"
    served.mkdir()
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 2] = 120
    labels = np.zeros((height, width), np.uint8)
    labels[24:40, 0:16] = 1  # the square of the first frame
    for t in range(num_frames):
        x = (6 * t) % (width - 16)
        frames[t, 24:40, x : x + 16] = 255
    encoder = Mp4Encoder(served / "clip.mp4", 12, (height, width), faststart=True)  # moov first: streams over HTTP
    for rgb in frames:
        encoder.write(rgb)
    encoder.finish()
    mask = write_label_png(tmp_path / "first.png", labels)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}/clip.mp4", mask


@pytest.mark.slow
def test_run_on_an_http_stream_writes_max_frames_masks(tmp_path: Path) -> None:
    height, width = 64, 96
    server, thread, url, mask = _serve_clip(tmp_path, 12, height, width)
    try:
        out = tmp_path / "masks"
        command = [JFDEPLOY, "run", url, "--mask", str(mask), "--out", str(out), "--max-frames", "6", "--size", "0",
                   "--quiet"]  # fmt: skip
        result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        unreachable = subprocess.run(
            [JFDEPLOY, "run", "http://127.0.0.1:9/none.mp4", "--mask", str(mask), "--out", str(tmp_path / "x")],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(6)]
    for path in out.iterdir():
        image = Image.open(path)
        assert image.mode == "P" and image.size == (width, height)
        assert set(np.unique(np.array(image))) <= {0, 1}
    assert unreachable.returncode == 2 and len(unreachable.stderr.splitlines()) == 1, unreachable.stderr
    assert "127.0.0.1:9" in unreachable.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ctrl_c_on_a_live_run_keeps_every_mask_written_so_far(tmp_path: Path) -> None:
    server, thread, url, mask = _serve_clip(tmp_path, 200)
    out = tmp_path / "masks"
    command = [JFDEPLOY, "run", url, "--mask", str(mask), "--out", str(out), "--size", "0", "--quiet"]
    try:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 3 and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert process.returncode == 130, stderr
    written = sorted(p.name for p in out.iterdir())
    assert len(written) >= 3 and written == [f"{i:05d}.png" for i in range(len(written))]  # no temporary files
    for name in written:
        image = Image.open(out / name)
        image.load()  # a complete PNG
        assert image.mode == "P" and image.size == (96, 64)
