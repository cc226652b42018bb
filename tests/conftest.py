"""Shared fixtures: golden data, models with the golden weight rule, the tiny model (built once per session).

Golden parity needs the published shapes (``model32``, ``model64``); tests of shapes, bookkeeping and
semantics run on ``tiny_model`` (ModelConfig.tiny(): same code paths, ~1M parameters instead of ~128M).
"""

from __future__ import annotations

import copy
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import jfdeploy
from jfdeploy.model.checkpoint import deterministic_state_dict, random_model

# Triton kernels run in Triton's CPU interpreter where there is no GPU (must be set before triton loads)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Ctrl-C for the commands the tests interrupt: a shell starting pytest in the background (``cmd &``) ignores
# SIGINT, the children would inherit that and never see the SIGINT the tests send; a handler set here is
# reset to the default on exec, so each child Python raises KeyboardInterrupt again
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"

# the golden clip's configuration (tests/data/golden/README.md)
GOLDEN_TOPK = 20
GOLDEN_MEM_EVERY = 3
GOLDEN_MAX_MEMORY_FRAMES = 2

# the tiny model's k: below the 12 tokens of a 48 x 64 frame, so that top-k selection matters
TINY_TOPK = 5


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden_davis_style.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_t1() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden_davis_style_t1_intermediates.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_state_dict() -> dict[str, torch.Tensor]:
    """Weights by the golden rule over the official keys (float32), as a published checkpoint."""
    with torch.device("meta"):
        shapes = jfdeploy.JointFormer(jfdeploy.ModelConfig(topk=GOLDEN_TOPK))
    return deterministic_state_dict(shapes)


@pytest.fixture(scope="session")
def model32(golden_state_dict) -> jfdeploy.JointFormer:
    return jfdeploy.load_model(golden_state_dict, topk=GOLDEN_TOPK)


@pytest.fixture(scope="session")
def model64(model32) -> jfdeploy.JointFormer:
    return copy.deepcopy(model32).double()


@pytest.fixture(scope="session")
def tiny_model() -> jfdeploy.JointFormer:
    """ModelConfig.tiny(topk=TINY_TOPK) with the golden weight rule, float32, eval mode (do not modify)."""
    return random_model(jfdeploy.ModelConfig.tiny(topk=TINY_TOPK))


@pytest.fixture(scope="session")
def tiny_model64(tiny_model) -> jfdeploy.JointFormer:
    return copy.deepcopy(tiny_model).double()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` saved as a checkpoint (the commands read its architecture from the tensor shapes)."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    jfdeploy.save_checkpoint(tiny_model, path)
    return path


def _export(model: jfdeploy.JointFormer, out: Path, precision: str, slim: bool = True) -> Path:
    pytest.importorskip("onnx", reason="ONNX export needs: pip install 'jfdeploy[onnx]'")
    from jfdeploy.export.onnx_export import export_engines

    export_engines(model, out, precision=precision, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, slim=slim)
    return out


@pytest.fixture(scope="session")
def engines32(model32, tmp_path_factory) -> Path:
    """fp32 engine directory of ``model32`` (published widths, for golden parity), exported once per session.

    Not slimmed: onnxslim takes 30 of its 50 s on 2 cores; the slimmed graphs (the same operators at any
    width) are checked against PyTorch on the tiny model's engine directories."""
    return _export(model32, tmp_path_factory.mktemp("engines") / "fp32", "fp32", slim=False)


@pytest.fixture(scope="session")
def tiny_engines32(tiny_model, tmp_path_factory) -> Path:
    """fp32 engine directory of ``tiny_model`` (2 memory frames), exported once per session (seconds)."""
    return _export(tiny_model, tmp_path_factory.mktemp("engines") / "tiny-fp32", "fp32")


@pytest.fixture(scope="session")
def tiny_engines16(tiny_model, tmp_path_factory) -> Path:
    """fp16 engine directory of ``tiny_model`` (needs onnxconverter-common too), exported once per session."""
    return _export(tiny_model, tmp_path_factory.mktemp("engines") / "tiny-fp16", "fp16")


TINY_FIXTURES = {"tiny_model", "tiny_model64", "tiny_engines32", "tiny_engines16"}


@pytest.fixture(autouse=True)
def _one_thread_for_the_tiny_model(request):
    """Tests on the tiny model run with one intra-op thread: splitting 96-channel work over threads costs
    more than it saves, and on a busy CPU the waiting threads made them 5-20 times slower (measured)."""
    if not TINY_FIXTURES & set(request.fixturenames):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_random_weight_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NO CHECKPOINT GIVEN")
        yield


# the slow tier: tests that need an exported engine directory or run the published-size model in float64
# (the golden clip's float64 parity; minutes each on 2 cores); `pytest -m "not slow"` is the quick tier,
# plain `pytest` runs everything
SLOW_FIXTURES = {"engines32", "tiny_engines32", "tiny_engines16", "float64_run", "model64"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pad_evenly(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims to multiples of ``multiple``, split evenly (the published convention)."""
    h, w = x.shape[-2:]
    extra_h, extra_w = -h % multiple, -w % multiple
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return torch.nn.functional.pad(x, pad), pad


def step_at_model_size(seg, frame, mask=None, labels=None, last=False) -> torch.Tensor:
    """``Segmenter.step`` on a normalized 3 x H x W frame and O x H x W masks at the model's size (any
    H, W): padded as the published code pads, put on the segmenter's runtime, the probabilities brought
    back and cropped, (1 + O) x H x W (all background before the first mask)."""
    runtime = seg.backend.runtime
    padded, pad = pad_evenly(torch.as_tensor(frame).detach().cpu()[None])
    masks = None
    if mask is not None:
        masks = runtime.upload(pad_evenly(torch.as_tensor(mask).detach().cpu().to(padded.dtype))[0].numpy())
    prob = seg.step(runtime.upload(padded.numpy()), masks, labels, last)
    h, w = frame.shape[-2:]
    if prob is None:
        return torch.ones((1, h, w), dtype=padded.dtype)
    left, _, top, _ = pad
    return torch.from_numpy(runtime.download(prob))[:, top : top + h, left : left + w]
