"""The jfdeploy command as a user runs it: entry point, demo, run on a video and a folder, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jfdeploy
from jfdeploy.cli import main
from jfdeploy.io import make_clip, write_clip_folder, write_clip_video, write_label_png


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 4-frame clip whose objects carry the labels 3 and 7 (labels must survive the run)."""
    root = tmp_path_factory.mktemp("clip")
    frames, labels = make_clip(num_frames=4, height=50, width=70, num_objects=2, seed=3)
    labels = np.select([labels == 1, labels == 2], [3, 7], 0).astype(np.uint8)
    images, _ = write_clip_folder(root / "davis", frames, labels)
    mask = write_label_png(root / "first.png", labels[0])
    return {"root": root, "frames": frames, "labels": labels, "folder": images, "mask": mask}


def run_args(clip, tiny_checkpoint, out, *extra: str) -> list[str]:
    """`jfdeploy run` on the clip's frame folder at the original size, quiet."""
    return ["run", str(clip["folder"]), "--mask", str(clip["mask"]), "--out", str(out),
            "--checkpoint", str(tiny_checkpoint), "--size", "0", "--quiet", *extra]  # fmt: skip


@pytest.mark.slow
def test_installed_command_and_package_work_from_any_directory(tmp_path):
    result = subprocess.run(["jfdeploy", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "run" in result.stdout and "demo" in result.stdout
    code = "import jfdeploy, jfdeploy.kernels, jfdeploy.export, jfdeploy.io; print(jfdeploy.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("__init__.py")


def test_run_help_explains_the_options(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--mask", "--checkpoint", "--backend", "--mem-every", "--overlay", "--size", "--precision",
                   "--preset", "--max-frames", "--realtime"):  # fmt: skip
        assert option in text
    for hidden in ("--autocast", "--scales", "--resolution"):  # older spellings: accepted, not advertised
        assert hidden not in text


def read_labels(path):
    image = Image.open(path)
    assert image.mode == "P"
    return np.array(image)


@pytest.mark.parametrize("backend", ["torch", "eager"])
def test_run_on_a_frame_folder(clip, tiny_checkpoint, tmp_path, backend):
    out = tmp_path / "masks"
    code = main(run_args(clip, tiny_checkpoint, out, "--backend", backend, "--topk", "20"))
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["00000.png", "00001.png", "00002.png", "00003.png"]
    first = read_labels(out / "00000.png")
    np.testing.assert_array_equal(first, clip["labels"][0])  # the given mask comes back as is
    for name in written:
        labels = read_labels(out / name)
        assert labels.shape == (50, 70)
        assert set(np.unique(labels)) <= {0, 3, 7}


def test_run_on_a_video_with_resize_and_overlay(clip, tiny_checkpoint, tmp_path):
    video = write_clip_video(tmp_path / "clip.mp4", clip["frames"])
    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    code = main(
        [
            "run",
            str(video),
            "--mask",
            str(clip["mask"]),
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            "--size",
            "32",
            "--overlay",
            str(overlay),
            "--quiet",
        ]
    )
    assert code == 0
    assert len(list(out.iterdir())) == 4
    assert read_labels(out / "00002.png").shape == (50, 70)  # written at the original size
    assert overlay.stat().st_size > 0
    assert len(jfdeploy.io.open_frames(overlay)) == 4


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "3", "--height", "48", "--width", "64", "--quiet"]) == 0
    assert len(list(out.iterdir())) == 3
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    assert "frames/s" in captured.out


def error_of(args, capsys) -> str:
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_inputs_fail_cleanly(clip, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--out", str(out), "--checkpoint", str(tiny_checkpoint), "--quiet"]
    folder, mask = str(clip["folder"]), str(clip["mask"])
    assert "input not found" in error_of(["run", str(tmp_path / "missing.mp4"), "--mask", mask, *base], capsys)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "broken.mp4" in error_of(["run", str(broken), "--mask", mask, *base], capsys)
    small = write_label_png(tmp_path / "small.png", clip["labels"][0][:40])
    assert "40x70" in error_of(["run", folder, "--mask", str(small), *base], capsys)
    empty = write_label_png(tmp_path / "empty.png", np.zeros((50, 70), np.uint8))
    assert "empty" in error_of(["run", folder, "--mask", str(empty), *base], capsys)
    assert "limit of 1" in error_of(["run", folder, "--mask", mask, "--max-objects", "1", *base], capsys)
    assert "unknown backend" in error_of(["run", folder, "--mask", mask, "--backend", "tf", *base], capsys)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_mid_video_leaves_no_output(clip, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(clip["folder"].iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    (folder / "00002.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable third frame
    code = main(run_args({**clip, "folder": folder}, tiny_checkpoint, out))
    capsys.readouterr()
    assert code == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_refuses_to_overwrite_results(clip, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = run_args(clip, tiny_checkpoint, out)
    assert "--overwrite" in error_of(args, capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and len(list(out.iterdir())) == 4


def test_import_is_light():
    """Heavy optional dependencies are imported only where they are used."""
    heavy = "('av', 'onnx', 'onnxruntime', 'triton', 'tensorrt')"
    code = f"import sys, jfdeploy, jfdeploy.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
