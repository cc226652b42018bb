"""Engine directories run where torch is not installed: a second virtual environment with the runtime extra.

``.ci/run`` builds it (``pip install --no-deps .`` plus the runtime, video and serve packages, see the README) and
names its Python in ``JFDEPLOY_TORCH_FREE_PYTHON``. The engine directory is exported here, with torch; the
commands run there, in subprocesses, and their masks are compared with the torch backend's run of the same
stages in this process. Graphs are float32 (export refuses other models), so the comparison is float32's:
probabilities within 1e-4, label maps equal (argmax ties aside: at most 0.1% of pixels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDEN_MAX_MEMORY_FRAMES
from jfdeploy.io import make_clip, open_frames, read_label_png, write_clip_folder, write_clip_video, write_label_png
from jfdeploy.predictor import VideoPredictor

PYTHON = os.environ.get("JFDEPLOY_TORCH_FREE_PYTHON")
if PYTHON is None and os.environ.get("CI"):
    raise RuntimeError("CI builds the torch-free environment: .ci/run sets JFDEPLOY_TORCH_FREE_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PYTHON is None, reason="no torch-free environment: set JFDEPLOY_TORCH_FREE_PYTHON (.ci/run)"),
]
FRAMES, HEIGHT, WIDTH = 6, 64, 96
OPTIONS = ["--size", "0", "--mem-every", "2", "--max-memory-frames", str(GOLDEN_MAX_MEMORY_FRAMES)]
PROBABILITY_ATOL = 1e-4
LABEL_DISAGREEMENT = 1e-3


def torch_free(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in the torch-free environment (its own ``jfdeploy`` on PATH first)."""
    assert PYTHON is not None
    bin_dir = str(Path(PYTHON).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    cwd = cwd or Path(PYTHON).parent  # not the checkout: `-m jfdeploy.cli` there would import the source folder
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def jfdeploy_free(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return torch_free("-m", "jfdeploy.cli", *args, **kwargs)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A generated clip as an mp4 and as a JPEG folder, the first mask, and a mask folder adding an object at 3."""
    root = tmp_path_factory.mktemp("torch-free")
    frames, labels = make_clip(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_objects=3, seed=7)
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)  # object 3 starts at frame 3
    write_clip_video(root / "clip.mp4", frames)
    write_clip_folder(root / "jpegs", frames, labels)
    write_label_png(root / "first.png", first)
    (root / "masks").mkdir()
    write_label_png(root / "masks" / "00000.png", first)
    write_label_png(root / "masks" / "00003.png", np.where(labels[3] == 3, 3, 0).astype(np.uint8))
    return root, frames, labels, first


def test_the_environment_has_no_torch_and_imports_jfdeploy():
    result = torch_free("-c", "import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    result = torch_free("-c", "import jfdeploy, jfdeploy.predictor, jfdeploy.backends.ort_runtime; print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _torch_labels(tiny_model, frames, prompts) -> list[np.ndarray]:
    predictor = VideoPredictor(tiny_model, sizes=(None,), mem_every=2, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES)
    return [predictor.step(rgb, prompts.get(t), last=t == len(frames) - 1).labels for t, rgb in enumerate(frames)]


def _assert_masks_match(out: Path, expected: list[np.ndarray]) -> None:
    written = sorted(out.glob("*.png"))
    assert len(written) == len(expected)
    for path, labels in zip(written, expected, strict=True):
        got, _ = read_label_png(path)
        assert np.mean(got != labels) <= LABEL_DISAGREEMENT, path.name


def run_engines(source: Path, mask: Path, engines: Path, out: Path) -> list[np.ndarray]:
    """``jfdeploy run SOURCE --mask MASK --engines ENGINES`` in the torch-free venv; the frames as decoded here."""
    result = jfdeploy_free("run", str(source), "--mask", str(mask), "--engines", str(engines), "--out", str(out),
                           *OPTIONS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "backend onnxruntime on cpu" in result.stderr
    return [rgb for _, rgb in open_frames(source)]


def test_run_on_an_mp4_equals_the_torch_backend(clip, tiny_model, tiny_engines32, tmp_path):
    root, _, _, first = clip
    decoded = run_engines(root / "clip.mp4", root / "first.png", tiny_engines32, tmp_path / "mp4")
    _assert_masks_match(tmp_path / "mp4", _torch_labels(tiny_model, decoded, {0: first}))


def test_run_on_a_jpeg_folder_with_an_object_added_equals_the_torch_backend(clip, tiny_model, tiny_engines32, tmp_path):
    root, _, labels, first = clip
    out = tmp_path / "jpegs"
    decoded = run_engines(root / "jpegs", root / "masks", tiny_engines32, out)
    expected = _torch_labels(tiny_model, decoded, {0: first, 3: np.where(labels[3] == 3, 3, 0).astype(np.uint8)})
    assert (expected[4] == 3).any()  # the added object is tracked
    _assert_masks_match(out, expected)


PROBABILITIES = """
import sys, numpy as np
from jfdeploy.io import open_frames, read_label_png
from jfdeploy.predictor import VideoPredictor
frames = [rgb for _, rgb in open_frames(sys.argv[1])]
first, _ = read_label_png(sys.argv[2])
predictor = VideoPredictor(engines=sys.argv[3], sizes=(None,), mem_every=2, max_memory_frames=int(sys.argv[5]))
out = [predictor.step(rgb, first if t == 0 else None, probabilities=True).probabilities for t, rgb in enumerate(frames)]
np.save(sys.argv[4], np.stack(out))
"""


def test_predictor_probabilities_equal_the_torch_backend_within_float32(clip, tiny_model, tiny_engines32, tmp_path):
    root, _, _, first = clip
    saved = tmp_path / "prob.npy"
    result = torch_free("-c", PROBABILITIES, str(root / "jpegs"), str(root / "first.png"), str(tiny_engines32),
                        str(saved), str(GOLDEN_MAX_MEMORY_FRAMES))  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = [rgb for _, rgb in open_frames(root / "jpegs")]
    predictor = VideoPredictor(tiny_model, sizes=(None,), mem_every=2, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES)
    expected = [predictor.step(rgb, first if t == 0 else None, probabilities=True).probabilities
                for t, rgb in enumerate(frames)]  # fmt: skip
    np.testing.assert_allclose(np.load(saved), np.stack(expected), rtol=0, atol=PROBABILITY_ATOL)


def test_run_many_and_eval_run_without_torch(clip, tiny_engines32, tmp_path):
    root, _, _, _ = clip
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        shutil.copytree(root / "jpegs", tmp_path / name)
        shutil.copy(root / "first.png", tmp_path / "masks" / f"{name}.png")
    out = tmp_path / "many"
    result = jfdeploy_free("run-many", str(tmp_path / "a"), str(tmp_path / "b"), "--masks", str(tmp_path / "masks"),
                           "--engines", str(tiny_engines32), "--out", str(out), "--workers", "1", *OPTIONS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {name: v["status"] for name, v in summary["videos"].items()} == {"a": "done", "b": "done"}
    assert sorted(p.name for p in (out / "a").glob("*.png")) == sorted(p.name for p in (out / "b").glob("*.png"))

    from test_datasets import _make_davis2017

    dataset = _make_davis2017(tmp_path / "DAVIS", frames=3)
    result = jfdeploy_free("eval", "--dataset", "davis2017", "--root", str(dataset), "--out", str(tmp_path / "eval"),
                           "--engines", str(tiny_engines32), "--size", "0", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0 <= scores["J&F"] <= 1


def test_errors_are_one_line_with_the_usual_exit_codes(clip, tiny_engines32, tmp_path):
    root, _, _, _ = clip
    base = ["run", str(root / "clip.mp4"), "--engines", str(tiny_engines32), "--out", str(tmp_path / "x")]
    missing = jfdeploy_free(*base, "--mask", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "nope.png" in missing.stderr
    refused = jfdeploy_free(*base, "--mask", str(root / "first.png"), "--checkpoint", "x.pth")
    assert refused.returncode == 2 and "--checkpoint" in refused.stderr
    old = tmp_path / "old-engines"
    shutil.copytree(tiny_engines32, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    stale = jfdeploy_free("run", str(root / "clip.mp4"), "--mask", str(root / "first.png"), "--engines", str(old),
                          "--out", str(tmp_path / "y"))  # fmt: skip
    assert stale.returncode == 2 and "jfdeploy export" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1, stale.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing half-written
    for verb in (["demo", "--out", str(tmp_path / "d")], ["export", "--out", str(tmp_path / "e")]):
        needs = jfdeploy_free(*verb)  # the verbs that need the model say so
        assert needs.returncode == 2 and len(needs.stderr.strip().splitlines()) <= 2, needs.stderr
        assert "needs PyTorch" in needs.stderr.strip().splitlines()[-1]
    info = jfdeploy_free("info")
    assert info.returncode == 0 and "torch not installed" in info.stdout and "onnxruntime" in info.stdout


def test_serve_an_engine_directory_without_torch_equals_the_torch_backend(clip, tiny_model, tiny_engines32):
    """``jfdeploy serve --engines DIR`` in the torch-free environment: a session over HTTP (an object added at
    frame 3) and one over the WebSocket stream give the torch backend's masks of the same frames."""
    from serve_support import ServerProcess

    from jfdeploy.client import Session

    root, _, labels, first = clip
    added = np.where(labels[3] == 3, 3, 0).astype(np.uint8)
    frames = [rgb for _, rgb in open_frames(root / "jpegs")]
    assert PYTHON is not None
    env = {**os.environ, "PATH": str(Path(PYTHON).parent) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    server = ServerProcess("--engines", str(tiny_engines32), "--threads", "1", *OPTIONS, python=PYTHON, env=env,
                           cwd=Path(PYTHON).parent)  # fmt: skip
    try:
        assert "backend onnxruntime on cpu" in server.log()
        with Session.create(server.url) as session:
            assert session.options["variant"] == "onnxruntime"
            got = [session.step(rgb, {0: first, 3: added}.get(t)) for t, rgb in enumerate(frames)]
        with Session.create(server.url) as session:
            streamed = list(session.stream(frames, {0: first}))
    finally:
        server.stop()
    expected = _torch_labels(tiny_model, frames, {0: first, 3: added})
    assert (expected[4] == 3).any()  # the added object is tracked
    for t, (labels_t, reference) in enumerate(zip(got, expected, strict=True)):
        assert np.mean(labels_t != reference) <= LABEL_DISAGREEMENT, f"http frame {t}"
    for t, (labels_t, reference) in enumerate(
        zip(streamed, _torch_labels(tiny_model, frames, {0: first}), strict=True)
    ):
        assert np.mean(labels_t != reference) <= LABEL_DISAGREEMENT, f"stream frame {t}"
