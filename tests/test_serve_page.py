"""The page of `jfdeploy serve` in a real browser: Debian's headless Chromium, driven by playwright-core.

A generated clip (an mp4 our own writer makes) and its first mask are picked in the page's file inputs;
the page reads the frames, streams them over the WebSocket and draws each returned mask over its frame.
The test waits for the last frame, takes a screenshot, and reads pixels of the overlays: the first frame's
mask comes back as given, so a pixel inside the object is tinted with its DAVIS colour and a background
pixel is the frame's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from serve_support import SESSION_ARGS, ServerProcess, server_env

from jfdeploy.io import make_clip, write_clip_video, write_label_png
from jfdeploy.io.masks import palette_array

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FRAMES, FPS = 6, 10


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    if shutil.which("node") is None:
        return "no node (Node.js runs the page's driver)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: npm ci --prefix tests/browser"
    return None


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser_ready():
    missing = _missing()
    if missing and os.environ.get("JFDEPLOY_REQUIRE_BROWSER"):  # set by .ci/run, which installs them
        raise AssertionError(f"the page test must run here: {missing}")
    if missing:
        pytest.skip(missing)


def test_the_page_streams_a_video_and_draws_its_masks(browser_ready, tiny_checkpoint, tmp_path):
    frames, labels = make_clip(num_frames=FRAMES, height=64, width=96, num_objects=1, seed=4)
    video = write_clip_video(tmp_path / "clip.mp4", frames, fps=FPS)
    mask = write_label_png(tmp_path / "first.png", labels[0])
    inside = np.argwhere(labels[0] == 1)[len(np.argwhere(labels[0] == 1)) // 2]  # (y, x) in the object
    outside = np.argwhere(labels[0] == 0)[0]
    points = [[int(inside[1]), int(inside[0])], [int(outside[1]), int(outside[0])]]
    server = ServerProcess("--checkpoint", str(tiny_checkpoint), *SESSION_ARGS, "--threads", "1", env=server_env())
    try:
        screenshot = tmp_path / "page.png"
        command = ["node", str(BROWSER_DIR / "page_check.mjs"), server.url + "/", str(video), str(mask),
                   str(screenshot), json.dumps(points), "60000"]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env={**os.environ, "CHROMIUM": CHROMIUM}
        )
        assert done.returncode == 0, done.stderr
        page = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    assert not page["error"], page
    assert page["frames"] == FRAMES and page["status"].startswith(f"done: {FRAMES} frames"), page
    assert page["size"] == [96, 64]
    assert screenshot.stat().st_size > 10_000  # the page with two drawn canvases
    object_pixel, background_pixel = page["first"]
    colour = palette_array()[1].astype(int)  # label 1's DAVIS colour
    frame = frames[0].astype(int)
    tinted = np.round(0.45 * frame[inside[0], inside[1]] + 0.55 * colour)
    assert np.abs(np.array(object_pixel[:3]) - tinted).max() <= 12, (object_pixel, tinted)  # codec noise
    assert np.abs(np.array(background_pixel[:3]) - frame[outside[0], outside[1]]).max() <= 12
    assert object_pixel[3] == background_pixel[3] == 255
