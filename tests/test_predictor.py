"""VideoPredictor: the streaming API, and the frame loop every verb shares (its masks are `jfdeploy run`'s)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import jfdeploy
from conftest import TINY_TOPK, step_at_model_size
from jfdeploy import specs
from jfdeploy.backends.staged import StagedBackend
from jfdeploy.backends.torch_runtime import loop_runtime
from jfdeploy.errors import InputError
from jfdeploy.io import make_clip, open_frames, read_label_png, write_clip_folder, write_label_png
from jfdeploy.predictor import RunOptions, VideoPredictor
from jfdeploy.resample import Geometry
from jfdeploy.stages import build_stages

JFDEPLOY = shutil.which("jfdeploy")
FRAMES, ADDED_AT = 6, 3
SETTINGS = {"mem_every": 2, "max_memory_frames": 2, "sizes": (None,)}  # tiny_engines32 holds 2 memory frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """A 6-frame clip; object 1 given on frame 0, object 2 only from frame 3 on (a mask folder)."""
    root = tmp_path_factory.mktemp("clip")
    frames, labels = make_clip(num_frames=FRAMES, height=64, width=96, num_objects=2, seed=7)
    images, _ = write_clip_folder(root / "davis", frames, labels)
    masks = root / "masks"
    write_label_png(masks / "00000.png", np.where(labels[0] == 1, 1, 0).astype(np.uint8))
    write_label_png(masks / f"{ADDED_AT:05d}.png", np.where(labels[ADDED_AT] == 2, 2, 0).astype(np.uint8))
    return {"frames": images, "masks": masks, "labels": labels}


def predict_by_hand(predictor: VideoPredictor, clip: dict) -> list[np.ndarray]:
    """Step the predictor through the clip as a user would: the first mask, then add_objects at frame 3."""
    first, _ = read_label_png(clip["masks"] / "00000.png")
    added, _ = read_label_png(clip["masks"] / f"{ADDED_AT:05d}.png")
    results = []
    for index, (_, rgb) in enumerate(open_frames(clip["frames"])):
        if index == ADDED_AT:
            predictor.add_objects(added)
        result = predictor.step(rgb, first if index == 0 else None, last=index == FRAMES - 1)
        results.append(result.labels)
    return results


def run_command(tmp_path: Path, clip: dict, *args) -> list[np.ndarray]:
    out = tmp_path / "out"
    command = [JFDEPLOY, "run", clip["frames"], "--mask", clip["masks"], "--out", out, "--size", "0",
               "--mem-every", "2", "--max-memory-frames", "2", "--quiet", *args]  # fmt: skip
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return [read_label_png(out / f"{i:05d}.png")[0] for i in range(FRAMES)]


@pytest.mark.slow
def test_predictor_equals_run_bit_for_bit_torch(tiny_model, tiny_checkpoint, clip, tmp_path):
    by_hand = predict_by_hand(VideoPredictor(tiny_model, backend="torch", **SETTINGS), clip)
    assert not (by_hand[ADDED_AT - 1] == 2).any() and (by_hand[ADDED_AT] == 2).any()  # object 2 starts at frame 3
    assert (by_hand[-1] == 1).any() and (by_hand[-1] == 2).any()
    from_run = run_command(
        tmp_path, clip, "--checkpoint", tiny_checkpoint, "--topk", str(TINY_TOPK), "--backend", "torch"
    )
    for index, (mine, theirs) in enumerate(zip(by_hand, from_run, strict=True)):
        np.testing.assert_array_equal(mine, theirs, err_msg=f"frame {index}")


def test_predictor_equals_run_bit_for_bit_onnxruntime(tiny_engines32, clip, tmp_path):
    pytest.importorskip("onnxruntime")
    predictor = VideoPredictor(None, backend="onnxruntime", engines=tiny_engines32, device="cpu", **SETTINGS)
    by_hand = predict_by_hand(predictor, clip)
    assert (by_hand[-1] == 2).any()
    from_run = run_command(tmp_path, clip, "--engines", tiny_engines32, "--device", "cpu")
    for index, (mine, theirs) in enumerate(zip(by_hand, from_run, strict=True)):
        np.testing.assert_array_equal(mine, theirs, err_msg=f"frame {index}")


def test_reset_starts_a_new_video_with_the_same_results(tiny_model, clip):
    predictor = VideoPredictor(tiny_model, **SETTINGS)
    first = predict_by_hand(predictor, clip)
    predictor.reset()
    assert predictor.object_ids == []
    second = predict_by_hand(predictor, clip)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_torch_frames_equal_numpy_frames_and_probabilities_are_at_the_frame_size(tiny_model):
    frames, labels = make_clip(num_frames=3, height=50, width=70, num_objects=2, seed=1)
    labels = np.where(labels == 2, 9, labels).astype(np.uint8)  # the caller's own label values come back
    a, b = VideoPredictor(tiny_model, size=32), VideoPredictor(tiny_model, size=32)
    for t in range(3):
        objects = labels[0] if t == 0 else None
        from_numpy = a.step(frames[t], objects, probabilities=True)
        from_torch = b.step(torch.from_numpy(frames[t]), None if objects is None else torch.from_numpy(objects))
        np.testing.assert_array_equal(from_numpy.labels, from_torch.labels)
        assert from_numpy.labels.shape == (50, 70) and set(np.unique(from_numpy.labels)) <= {0, 1, 9}
        assert from_numpy.object_ids == [1, 9]
        assert from_numpy.probabilities.shape == (3, 50, 70)
        assert isinstance(from_numpy.probabilities, np.ndarray) and from_numpy.probabilities.dtype == np.float32
        np.testing.assert_allclose(from_numpy.probabilities.sum(0), np.ones((50, 70)), rtol=0, atol=1e-5)


def test_a_known_object_is_corrected_by_a_later_mask(tiny_model):
    frames, labels = make_clip(num_frames=3, height=64, width=96, num_objects=2, seed=2)
    predictor = VideoPredictor(tiny_model, sizes=(None,))
    predictor.step(frames[0], labels[0])
    correction = np.zeros_like(labels[1])
    correction[:10, :10] = 1  # object 1 is said to be in the corner now; object 2 keeps being tracked
    result = predictor.step(frames[1], correction)
    assert (result.labels[:10, :10] == 1).all()
    assert not (result.labels[10:, 10:] == 1).any()
    assert (result.labels == 2).any()


def test_frames_before_any_object_are_background(tiny_model):
    frames, labels = make_clip(num_frames=2, height=64, width=96, num_objects=1)
    predictor = VideoPredictor(tiny_model, sizes=(None,))
    empty = predictor.step(frames[0])
    assert empty.object_ids == [] and not empty.labels.any()
    assert (predictor.step(frames[1], labels[1]).labels == 1).any()


def test_bad_input_is_refused(tiny_model):
    predictor = VideoPredictor(tiny_model, sizes=(None,), max_objects=2)
    frame = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(InputError, match="RGB uint8"):
        predictor.step(frame.astype(np.float32))
    with pytest.raises(InputError, match="label map is 32x32"):
        predictor.step(frame, np.ones((32, 32), np.uint8))
    with pytest.raises(InputError, match="more than the limit of 2"):
        predictor.step(frame, np.arange(64 * 96).reshape(64, 96) % 4)
    with pytest.raises(InputError, match=r"0\.\.255"):
        predictor.step(frame, np.full((64, 96), 300))
    with pytest.raises(InputError, match="needs an engine directory"):
        VideoPredictor(None, backend="onnxruntime")
    with pytest.raises(InputError, match="unknown precision"):
        VideoPredictor(tiny_model, precision="fp8")


@pytest.mark.parametrize(
    ("variant", "fields"),
    [
        ("torch", {}),
        ("torch-bf16", {"precision": "bf16"}),
        ("torch-fp16-triton", {"precision": "fp16", "attention": "triton"}),
        ("eager-fp16", {"backend": "eager", "precision": "fp16"}),
        ("onnxruntime", {"backend": "onnxruntime", "engines": Path("e")}),
    ],
)
def test_variant_names_round_trip(variant, fields):
    extra = {"engines": Path("e")} if variant == "onnxruntime" else {}
    options = RunOptions.from_variant(variant, **extra)
    assert options.variant == variant
    for name, value in fields.items():
        assert getattr(options, name) == value


@pytest.mark.parametrize("variant", ["torch+triton", "torch-fp8", "eager-triton", "torch-triton-fp16", "tensorrt-fp16"])
def test_bad_variant_names_are_refused(variant):
    with pytest.raises(InputError):
        RunOptions.from_variant(variant, **({"engines": Path("e")} if variant.startswith("onnx") else {}))


def test_cpu_autocast_with_weights_cast_once_is_as_close_as_plain_autocast(tiny_model):
    """On a CPU the torch backend casts its linear / conv weights once instead of at every call: its error
    against fp32 stays that of plain autocast (bf16 rounding may fall differently), the caller's model intact."""
    frames, labels = make_clip(num_frames=4, height=64, width=96, num_objects=2, seed=4)
    settings = {"mem_every": 2, "max_memory_frames": 2}
    cast_once = jfdeploy.Segmenter(tiny_model, backend="torch", autocast=torch.bfloat16, **settings)
    plain = jfdeploy.Segmenter(tiny_model, backend="torch", **settings)
    plain.backend = StagedBackend(  # autocast casting the weights at every call
        loop_runtime(
            tiny_model,
            dict(build_stages(tiny_model).items()),
            memory_dtype=torch.bfloat16,
            precision=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        ),
        tiny_model.convmae.cls_token.detach(),
        specs.Widths.of(tiny_model.config),
        max_memory_frames=2,
        skip_full_validity=True,
    )
    exact = jfdeploy.Segmenter(tiny_model, backend="torch", **settings)
    mask = torch.from_numpy(np.stack([labels[0] == 1, labels[0] == 2]).astype(np.float32))
    where = Geometry(frames[0].shape[:2])
    for t in range(4):
        (frame,) = exact.runtime.run(
            "preprocess", torch.from_numpy(frames[t]), *map(torch.from_numpy, sum(where.input_taps(), ()))
        )
        given = mask if t == 0 else None
        a = step_at_model_size(cast_once, frame[0], mask=given)
        b = step_at_model_size(plain, frame[0], mask=given)
        reference = step_at_model_size(exact, frame[0], mask=given)
        assert a.dtype == torch.float32
        error, plain_error = (a - reference).abs().max().item(), (b - reference).abs().max().item()
        assert error <= 2 * plain_error + 1e-3, f"frame {t}: {error} vs plain autocast {plain_error}"
    assert cast_once.backend.memory.keys.dtype == torch.bfloat16
    assert next(tiny_model.parameters()).dtype == torch.float32  # the caller's model is not touched
