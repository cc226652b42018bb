"""What the tests of ``jfdeploy serve`` share: the real server in a subprocess, generated clips, and the masks of
``jfdeploy run`` on the same frames (the reference every session must equal).

The server binds 127.0.0.1 with ``--port 0``; its port is read from the line it prints on stderr. Every wait is
bounded; ``ServerProcess.stop`` (called by the fixtures' finalizers) kills what is left.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

from jfdeploy.cli import main
from jfdeploy.io import make_clip, open_frames, read_label_png, write_clip_folder, write_label_png

TOPK = 5  # conftest.TINY_TOPK
MEM_EVERY, MAX_MEMORY_FRAMES = 2, 2
# the options a session has on the servers of these tests, and `jfdeploy run`'s equivalents
SESSION_ARGS = ["--topk", str(TOPK), "--size", "0", "--mem-every", str(MEM_EVERY),
                "--max-memory-frames", str(MAX_MEMORY_FRAMES)]  # fmt: skip
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT = 90.0  # seconds: importing torch and starlette on a busy 2-core machine


class ServerProcess:
    """``jfdeploy serve ARGS --port 0`` in a subprocess (one torch thread, like the tiny model's tests)."""

    def __init__(self, *args: str, python: str = sys.executable, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:  # fmt: skip
        command = [python, "-m", "jfdeploy.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.stderr: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start (exit {self.process.returncode}):\n{self.log()}")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            match = LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._listening.set()

    def log(self) -> str:
        return "".join(self.stderr)

    def wait(self, timeout: float) -> int:
        """The exit status within ``timeout`` seconds (subprocess.TimeoutExpired otherwise)."""
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._reader.join(5)


def clip_folder(root: Path, seed: int, *, frames: int = 5, height: int = 48, width: int = 64,
                objects: int = 2) -> dict:  # fmt: skip
    """A generated clip written as a JPEG folder, its first mask (labels 3, 7, ...: labels must survive), and
    the frames as ``jfdeploy run`` decodes them (the pixels a client sends)."""
    rgb, labels = make_clip(num_frames=frames, height=height, width=width, num_objects=objects, seed=seed)
    labels = np.where(labels > 0, labels * 4 - 1, 0).astype(np.uint8)  # 1, 2, 3 -> 3, 7, 11
    images, _ = write_clip_folder(root, rgb, labels)
    mask = write_label_png(root / "first.png", labels[0])
    decoded = [frame for _, frame in open_frames(images)]
    return {"root": root, "folder": images, "mask": mask, "frames": decoded, "labels": labels}


def run_masks(checkpoint: Path, folder: Path, mask: Path, out: Path, *extra: str) -> list[np.ndarray]:
    """``jfdeploy run FOLDER --mask MASK`` with the servers' options, in this process on one torch thread
    (the servers run with ``--threads 1``): its label maps in frame order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["run", str(folder), "--mask", str(mask), "--out", str(out), "--checkpoint", str(checkpoint),
                     *SESSION_ARGS, "--quiet", *extra])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return [read_label_png(path)[0] for path in sorted(out.glob("*.png"))]


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of ``name{labels}`` in a Prometheus text body (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def assert_one_line_error(response: requests.Response, status: int, *words: str) -> str:
    """``response`` is ``status`` with a one-line JSON body ``{"error": ...}`` mentioning ``words``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.text.count("\n") == 0
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert message and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def wait_until(predicate, *, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def server_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}
