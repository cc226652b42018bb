"""The CLI contract, tried as a user would: the installed ``jfdeploy`` command in a subprocess.

Every verb: an error a user can cause ends in exactly one line on stderr and exit status 2 (no
traceback); SIGTERM / SIGINT remove what the command was writing and exit 143 / 130; outputs follow
the umask; options that do not apply are refused by name.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jfdeploy import fsutil
from jfdeploy.errors import Interrupted
from jfdeploy.io import make_clip, read_label_png, write_clip_folder, write_label_png

JFDEPLOY = shutil.which("jfdeploy")
# every test runs the installed command end to end in subprocesses: the slow tier
pytestmark = [pytest.mark.skipif(JFDEPLOY is None, reason="the jfdeploy command is not installed"), pytest.mark.slow]
SMALL = ["--size", "0", "--topk", "20", "--quiet"]  # original (small) size, few top-k scores


def jfdeploy(*args: str, cwd: Path | None = None, umask: int = -1, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [JFDEPLOY, *map(str, args)], cwd=cwd, umask=umask, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, exactly one line on stderr, no traceback, the line names ``words``."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict[str, Path]:
    """5 frames of 50x70 with objects 3 and 7, as a folder of frames and a first mask."""
    root = tmp_path_factory.mktemp("clip")
    frames, labels = make_clip(num_frames=5, height=50, width=70, num_objects=2, seed=3)
    labels = np.select([labels == 1, labels == 2], [3, 7], 0).astype(np.uint8)
    images, _ = write_clip_folder(root / "davis", frames, labels)
    return {"frames": images, "mask": write_label_png(root / "first.png", labels[0])}


# ------------------------------------------------------------------------------------ one-line errors


def test_version():
    result = jfdeploy("--version")
    assert result.returncode == 0 and result.stdout.startswith("jfdeploy ")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--engines", "{engines}", "--precision", "fp16"], ["--precision", "--engines"]),
        (["--engines", "{engines}", "--autocast", "fp16"], ["--precision", "--engines"]),  # the older spelling
        (["--engines", "{engines}", "--topk", "120"], ["--topk", "--engines"]),  # the default, given explicitly
        (["--engines", "{engines}", "--attention", "triton"], ["--attention", "--engines"]),
        (["--engines", "{engines}", "--topk", "50"], ["--topk", "--engines"]),
        (["--engines", "{engines}", "--backend", "eager"], ["--backend", "--engines"]),
        (["--backend", "onnxruntime"], ["--backend", "--engines"]),
        (["--backend", "eager", "--attention", "triton"], ["--attention", "eager"]),
        (["--preset", "kitti"], ["--preset", "davis17"]),
        (["--mem-every", "0"], ["--mem-every", ">= 1"]),
        (["--size", "-1"], ["--size"]),
    ],
)
def test_run_refuses_options_that_do_not_apply_or_are_out_of_range(clip, tmp_path, args, words):
    (tmp_path / "engines").mkdir()
    args = [a.replace("{engines}", str(tmp_path / "engines")) for a in args]
    result = jfdeploy("run", clip["frames"], "--mask", clip["mask"], "--out", tmp_path / "out", *args)
    assert_one_line_error(result, "jfdeploy run: error:", *words)
    assert sorted(os.listdir(tmp_path)) == ["engines"]  # nothing written


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["demo", "--topk", "0"], ["--topk", ">= 1"]),
        (["demo", "--objects", "9"], ["--objects"]),
        (["demo", "--device", "gpu0"], ["--device"]),
        (["eval", "--dataset", "generic", "--root", ".", "--out", "o", "--overlay", "o.mp4"], ["--overlay"]),
        (["eval", "--dataset", "davis2017", "--root", ".", "--out", "o", "--mask", "m.png"], ["--mask"]),
        (["compare", "nowhere", "."], ["nowhere"]),
    ],
)
def test_bad_options_end_in_one_line(tmp_path, args, words):
    assert_one_line_error(jfdeploy(*args, cwd=tmp_path), *words)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["bench"], ["demo"]])
def test_cuda_device_without_cuda_is_refused(tmp_path, command):
    assert_one_line_error(jfdeploy(*command, "--device", "cuda", cwd=tmp_path), "--device cuda", "CUDA")
    assert os.listdir(tmp_path) == []


def test_info_lists_only_what_imports(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "onnxruntime.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    result = jfdeploy("info", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "not installed" not in result.stdout
    assert not any(line.startswith("onnxruntime") for line in lines)
    backends = next(line for line in lines if line.startswith("backends:"))
    assert "torch" in backends and "onnxruntime" not in backends
    assert any(line.startswith("numpy ") and line.split()[1][0].isdigit() for line in lines)


# ---------------------------------------------------------------------------------------- interrupts


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended (status {process.returncode}) before the signal: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the command wrote no partial output in time")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_writing_leaves_nothing(tmp_path, signum, status):
    parent = tmp_path / "parent"
    parent.mkdir()
    command = [JFDEPLOY, "demo", "--out", parent / "X", "--overlay", parent / "X.mp4", "--frames", "40",
               "--height", "48", "--width", "64", "--topk", "20"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def writing() -> bool:
        partial = [p for p in parent.glob(".X.partial-*") if any(p.glob("*.png"))]
        return bool(partial) and any(parent.glob(".X.*.tmp.mp4"))

    _wait_for(writing, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr.splitlines()[-1]
    assert os.listdir(parent) == []


def test_interrupted_eval_keeps_only_complete_sequences(tmp_path):
    root, out = tmp_path / "DAVIS", tmp_path / "out"
    for name, frames in (("a", 3), ("b", 40)):
        rgb, labels = make_clip(num_frames=frames, height=48, width=64, num_objects=1, seed=frames)
        images, masks = write_clip_folder(tmp_path / "clips" / name, rgb, labels)
        for kind, folder in (("JPEGImages", images), ("Annotations", masks)):
            shutil.copytree(folder, root / kind / "480p" / name)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("a\nb\n")
    command = [JFDEPLOY, "eval", "--dataset", "davis2017", "--root", root, "--out", out, *SMALL]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "masks" / "a").is_dir() and any(out.glob("masks/.b.partial-*/*.png")), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert os.listdir(out) == ["masks"] and os.listdir(out / "masks") == ["a"]
    assert sorted(os.listdir(out / "masks" / "a")) == ["00000.png", "00001.png", "00002.png"]


def test_an_interrupt_a_library_swallows_still_stops_the_command(tmp_path):
    """In-process: SIGTERM whose exception a bare ``except:`` swallows; nothing is committed afterwards."""
    out = tmp_path / "X"
    with pytest.raises(Interrupted) as raised, fsutil.command_scope():
        with fsutil.atomic_directory(out, overwrite=False) as staging:
            (staging / "a.png").write_bytes(b"partial")
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises here
            except:  # noqa: E722 -- what some third-party code does
                pass
    assert raised.value.signum == signal.SIGTERM
    assert os.listdir(tmp_path) == [] and fsutil.unfinished_paths() == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the scope restored the handler


def test_a_signal_during_a_commit_waits_for_its_end(tmp_path):
    """In-process: a rename and its unregistering are never split by an interrupt."""
    reached_end_of_block = False
    with pytest.raises(Interrupted), fsutil.command_scope():
        with fsutil.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs in here, and defers
            reached_end_of_block = True
    assert reached_end_of_block


# ---------------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_outputs_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    out = tmp_path / "new" / "X"
    result = jfdeploy("demo", "--out", out, "--overlay", tmp_path / "new" / "X.mp4", "--frames", "2",
                      "--height", "32", "--width", "32", "--quiet", umask=umask)  # fmt: skip
    assert result.returncode == 0, result.stderr

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "new") == dir_mode and mode(out) == dir_mode
    assert mode(tmp_path / "new" / "X.mp4") == file_mode
    assert {mode(p) for p in out.iterdir()} == {file_mode}


# ----------------------------------------------------------------------- checkpoints, compare, eval


@pytest.fixture(scope="module")
def run_outputs(golden_state_dict, clip, tmp_path_factory) -> dict[str, Path]:
    """`jfdeploy run` with one deterministic state dict saved plain and in the published trainer's form."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.save(golden_state_dict, root / "plain.pth")
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10, 20], 0.1)  # holds a Counter
    trainer = {"it": 1234, "network": golden_state_dict, "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict()}  # fmt: skip
    assert isinstance(trainer["scheduler"]["milestones"], collections.Counter)
    torch.save(trainer, root / "trainer.pth")
    outputs = {}
    for name in ("plain", "trainer"):
        out = root / f"masks-{name}"
        result = jfdeploy("run", clip["frames"], "--mask", clip["mask"], "--out", out,
                          "--checkpoint", root / f"{name}.pth", "--size", "0", "--topk", "20")  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[name] = out
        outputs[f"{name}-stderr"] = result.stderr
    return outputs


def test_trainer_checkpoint_gives_the_masks_of_the_state_dict(run_outputs):
    names = sorted(p.name for p in run_outputs["plain"].iterdir())
    assert names == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png"]
    assert sorted(p.name for p in run_outputs["trainer"].iterdir()) == names
    for name in names:
        plain, _ = read_label_png(run_outputs["plain"] / name)
        trainer, _ = read_label_png(run_outputs["trainer"] / name)
        np.testing.assert_array_equal(trainer, plain)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"backend torch on {device}" in run_outputs["plain-stderr"].splitlines()[0]  # the first progress line


def test_compare_two_run_outputs(run_outputs, tmp_path):
    result = jfdeploy("compare", run_outputs["trainer"], run_outputs["plain"], "--json", tmp_path / "same.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "same.json").read_text())["J&F"] == pytest.approx(1.0)

    changed = shutil.copytree(run_outputs["plain"], tmp_path / "changed")
    labels, palette = read_label_png(changed / "00002.png")
    write_label_png(changed / "00002.png", np.full_like(labels, 3), palette)  # frame 2 (scored): all object 3
    result = jfdeploy("compare", changed, run_outputs["plain"], "--json", tmp_path / "changed.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "changed.json").read_text())["J&F"] < 0.99

    nested = tmp_path / "nested"
    shutil.copytree(run_outputs["plain"], nested / "seq")
    assert_one_line_error(jfdeploy("compare", run_outputs["plain"], nested), "DAVIS layout")


def test_eval_overwrite_recomputes_complete_sequences(clip, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "--dataset", "generic", "--root", clip["frames"], "--mask", clip["mask"], "--out", out, *SMALL]
    first = jfdeploy(*args)
    assert first.returncode == 0 and "1 sequence(s) segmented" in first.stdout, first.stderr
    mask = out / "masks" / "JPEGImages" / "00003.png"
    computed = np.array(Image.open(mask))
    write_label_png(mask, np.zeros_like(computed))  # a complete sequence with a changed mask
    again = jfdeploy(*args, "--overwrite")
    assert again.returncode == 0 and "1 sequence(s) segmented, 0 already complete" in again.stdout, again.stderr
    np.testing.assert_array_equal(np.array(Image.open(mask)), computed)


def test_check_exits_1_when_an_output_is_out_of_tolerance(tiny_engines16):
    result = jfdeploy("check", tiny_engines16, "--atol", "1e-12", "--rtol", "0", "--runners", "torch,onnxruntime")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("jfdeploy check: error: ")
    assert "| NO |" in result.stdout  # the table is printed before the verdict
