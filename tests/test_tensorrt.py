"""TensorRT plans through Polygraphy: profiles, the loader chain, `jfdeploy build`, atomic manifest updates.

Without TensorRT (the CPU machines) these check everything that needs no TensorRT, and that nothing is
written when it is missing; the tests that build and run plans need TensorRT and a CUDA GPU and are
skipped otherwise, never faked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs: pip install 'jfdeploy[onnx]'")
pytest.importorskip("polygraphy", reason="TensorRT plans need Polygraphy: pip install 'jfdeploy[tensorrt]'")

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY
from jfdeploy import specs
from jfdeploy.cli import main
from jfdeploy.export.tensorrt import BuildSettings, install_plans, plan_loader
from jfdeploy.manifest import EngineError, load_manifest, write_manifest
from jfdeploy.plans import (
    DEFAULT_BUCKETS,
    NAMED_BUCKETS,
    Bucket,
    manifest_profiles,
    parse_bucket,
    profile_shapes,
    select_profile,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = "TensorRT is not installed"
needs_tensorrt = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()), reason=f"{NO_TENSORRT} (or no CUDA GPU)"
)
without_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: this checks the refusal without it")
LIMITS = {"topk": 120, "per_frame": False}  # top-k 120 over all reference frames
PUBLISHED = specs.PUBLISHED
C, L = PUBLISHED.c16, PUBLISHED.layers


def tree_digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes (hidden files included)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# ---- profiles ------------------------------------------------------------------------------------


def test_profile_shapes_of_the_480p_bucket():
    """min: 384x384, 1 object; opt: 480x864, 1 object; max: 608x1088, max objects (and as many frames and
    token rows: a server's batch); 4 slots of reference tokens."""
    bucket = NAMED_BUCKETS["480p"]
    assert DEFAULT_BUCKETS == (bucket,)
    reader = profile_shapes("memory_reader", bucket, max_objects=8, slots=4, limits=LIMITS, widths=PUBLISHED)
    assert list(reader) == ["tokens", "reference_keys", "reference_values", "reference_valid"]
    assert reader["tokens"] == ((1, C, 24, 24), (1, C, 30, 54), (8, C, 38, 68))  # up to a row per pair
    assert reader["reference_keys"] == (
        (L, 1, 12, 4 * 24 * 24, 64),
        (L, 1, 12, 4 * 30 * 54, 64),  # 480x864: 1620 tokens x 4 slots
        (L, 8, 12, 4 * 38 * 68, 64),
    )
    assert reader["reference_valid"] == ((1, 4 * 576), (1, 4 * 1620), (8, 4 * 38 * 68))
    encoder = profile_shapes("reference_encoder", bucket, max_objects=3, slots=2, limits=LIMITS, widths=PUBLISHED)
    assert encoder["frame"] == ((1, 3, 384, 384), (1, 3, 480, 864), (1, 3, 608, 1088))
    assert encoder["object_prob"] == ((1, 384, 384), (1, 480, 864), (3, 608, 1088))
    assert encoder["memory_token"] == ((1, 1, C), (1, 1, C), (3, 1, C))
    decoder = profile_shapes("decoder", bucket, max_objects=2, slots=4, limits=LIMITS, widths=PUBLISHED)
    assert decoder["f4"] == ((1, 256, 96, 96), (1, 256, 120, 216), (2, 256, 152, 272))  # 1 frame's .. a pair's
    frames = profile_shapes("frame_encoder", bucket, max_objects=4, slots=4, limits=LIMITS, widths=PUBLISHED)
    assert frames["frame"] == ((1, 3, 384, 384), (1, 3, 480, 864), (4, 3, 608, 1088))  # a batch of frames
    assert decoder["f16"][2] == (2, C, 38, 68)


@pytest.mark.parametrize("name", sorted(NAMED_BUCKETS))
def test_every_stage_input_has_an_ordered_range(name):
    for stage in specs.STAGES:
        shapes = profile_shapes(stage, NAMED_BUCKETS[name], max_objects=5, slots=4, limits=LIMITS, widths=PUBLISHED)
        assert list(shapes) == list(specs.input_names(stage))
        for low, opt, high in shapes.values():
            assert len(low) == len(opt) == len(high)
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))


def test_profiles_take_the_static_widths_of_the_architecture():
    tiny = specs.Widths.of(jfdeploy.ModelConfig.tiny())
    assert (tiny.c4, tiny.c8, tiny.c16, tiny.layers, tiny.heads, tiny.head_dim) == (32, 48, 96, 3, 3, 32)
    assert specs.Widths.from_manifest({"model": {}}) == PUBLISHED  # a manifest's model entry: the published one
    reader = profile_shapes("memory_reader", NAMED_BUCKETS["480p"], max_objects=2, slots=4, limits=LIMITS, widths=tiny)
    low, _, high = reader["reference_keys"]
    assert low[0] == high[0] == 3 and low[2] == 3 and low[4] == 32  # L, heads, head dim of the tiny model
    assert reader["tokens"][0][1] == 96 and specs.dynamic_axes("memory_reader")["tokens"] == {
        0: "token_rows",
        2: "h16",
        3: "w16",
    }


def test_buckets_too_small_for_the_constant_k_are_refused():
    small = Bucket((32, 32), (64, 64), (96, 96))  # 4 tokens per frame at the minimum
    with pytest.raises(jfdeploy.InputError, match="fewer than the 120 tokens"):
        profile_shapes(
            "enhancer", small, max_objects=2, slots=4, limits={"topk": 120, "per_frame": True}, widths=PUBLISHED
        )
    with pytest.raises(jfdeploy.InputError, match="fewer than the 30 tokens"):  # 120 over 4 slots
        BuildSettings((small,)).check(slots=4, limits=LIMITS)
    BuildSettings((small,)).check(slots=4, limits={"topk": None, "per_frame": False})  # no top-k: any size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("384x384:480x864:608x1088", NAMED_BUCKETS["480p"]),
        ("480p", NAMED_BUCKETS["480p"]),
        ("64x64:64x96:128x128", Bucket((64, 64), (64, 96), (128, 128))),
    ],
)
def test_parse_bucket(text, expected):
    assert parse_bucket(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("480x864", "expected MIN_HxW:OPT_HxW:MAX_HxW"),
        ("384x384:480x864", "expected MIN_HxW:OPT_HxW:MAX_HxW"),
        ("384x384:480x864:600x1088", "multiples of 16"),
        ("480x480:384x864:608x1088", "min <= opt <= max"),
        ("1080p", "expected MIN_HxW:OPT_HxW:MAX_HxW"),
    ],
)
def test_parse_bucket_refuses(text, message):
    with pytest.raises(jfdeploy.InputError, match=message):
        parse_bucket(text)


def test_build_settings_are_checked():
    with pytest.raises(jfdeploy.InputError, match="--max-objects must be >= 1"):
        BuildSettings(max_objects=0)
    with pytest.raises(jfdeploy.InputError, match="--workspace must be > 0"):
        BuildSettings(workspace_gib=0)
    with pytest.raises(jfdeploy.InputError, match="at least one --profile"):
        BuildSettings(())
    with pytest.raises(jfdeploy.InputError, match=r"--optimization-level must be 0\.\.5"):
        BuildSettings(optimization_level=6)


def test_select_profile():
    small, large = (
        profile_shapes("enhancer", NAMED_BUCKETS[n], max_objects=4, slots=4, limits=LIMITS, widths=PUBLISHED)
        for n in ("360p", "720p")
    )
    ranges = [small, large]
    at = {name: shape for name, (_, opt, _) in small.items() for shape in [opt]}
    assert select_profile(ranges, at, None) == 0
    big = {"f16": (2, C, 45, 80), "memory_token": (2, 1, C)}  # 720x1280, 2 objects
    assert select_profile(ranges, big, None) == 1
    assert select_profile(ranges, big, 0) == 1  # the current profile does not hold it
    too_many = {"f16": (5, C, 45, 80), "memory_token": (5, 1, C)}
    assert select_profile(ranges, too_many, None) == -1
    both = [large, large]
    assert select_profile(both, big, 1) == 1  # stays on the current profile when it holds the shapes


def test_manifest_profiles_match_the_build_settings():
    settings = BuildSettings((NAMED_BUCKETS["360p"], NAMED_BUCKETS["480p"]), max_objects=3)
    manifest = {
        "model": {},  # the published architecture
        "memory": {"slots": 3},
        "limits": LIMITS,
        "tensorrt": {"profiles": [json.loads(json.dumps(vars(b))) for b in settings.buckets], "max_objects": 3},
    }
    for stage in specs.STAGES:
        assert manifest_profiles(manifest, stage) == settings.stage_profiles(
            stage, slots=3, limits=LIMITS, widths=PUBLISHED
        )


# ---- the Polygraphy loader chain -----------------------------------------------------------------


def test_polygraphy_loader_chain(tmp_path):
    """The chain is plain Python objects until called; only the workspace key comes from TensorRT."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    loaded_before = "tensorrt" in sys.modules
    bucket_ranges = BuildSettings((NAMED_BUCKETS["360p"], NAMED_BUCKETS["480p"]), max_objects=4).stage_profiles(
        "memory_reader", slots=4, limits=LIMITS, widths=PUBLISHED
    )
    workspace_pool = object()  # stands for tensorrt.MemoryPoolType.WORKSPACE, a dictionary key here
    cache = tmp_path / "timing.cache"
    loader = plan_loader(tmp_path / "memory_reader.onnx", bucket_ranges, workspace_bytes=3 << 30,
                         timing_cache=cache, optimization_level=2, workspace_pool=workspace_pool)  # fmt: skip
    assert isinstance(loader, EngineBytesFromNetwork)
    assert loader.timing_cache_path == str(cache)  # merged into and rewritten after the build
    network, config = loader._network, loader._config
    assert isinstance(network, NetworkFromOnnxPath) and network.path == str(tmp_path / "memory_reader.onnx")
    assert network.strongly_typed is True
    assert isinstance(config, CreateConfig)
    assert config.timing_cache_path == str(cache)  # loaded before the build
    assert config.memory_pool_limits == {workspace_pool: 3 << 30}
    assert config.tf32 is False and config.fp16 is False  # precision comes from the strongly typed graph
    assert config.builder_optimization_level == 2
    assert len(config.profiles) == 2 and all(isinstance(p, Profile) for p in config.profiles)
    for profile, ranges in zip(config.profiles, bucket_ranges, strict=True):
        assert list(profile) == list(specs.input_names("memory_reader"))
        for name, (low, opt, high) in ranges.items():
            assert (profile[name].min, profile[name].opt, profile[name].max) == (low, opt, high)
    assert not cache.exists()  # nothing ran
    assert ("tensorrt" in sys.modules) == loaded_before  # constructing the chain imported no TensorRT


@without_tensorrt
def test_calling_the_loader_chain_needs_tensorrt(tmp_path):
    from polygraphy.exception import PolygraphyException

    loader = plan_loader(tmp_path / "x.onnx", [], workspace_bytes=1 << 30, timing_cache=tmp_path / "t.cache",
                         workspace_pool="workspace")  # fmt: skip
    with pytest.raises(PolygraphyException, match="'tensorrt' is required"):
        loader()
    assert sorted(tmp_path.iterdir()) == []


# ---- installing plans: the manifest is replaced in one rename -----------------------------------


@pytest.fixture()
def small_dir(tmp_path) -> Path:
    """A tiny engine directory (two stages of placeholder graphs): enough for the manifest logic."""
    directory = tmp_path / "engines"
    directory.mkdir()
    for stage in ("a", "b"):
        (directory / f"{stage}.onnx").write_bytes(stage.encode() * 100)
    np.save(directory / "initial_memory_token.npy", np.zeros((1, 1, 4), np.float32))
    stages = {"a": {"onnx": "a.onnx"}, "b": {"onnx": "b.onnx"}}
    write_manifest(directory, {"stages": stages, "initial_memory_token": "initial_memory_token.npy", "tensorrt": None})
    return directory


def _staged_plans(directory: Path, tag: bytes) -> dict[str, Path]:
    work = directory / ".tensorrt-build-test"
    work.mkdir(exist_ok=True)
    plans = {}
    for stage in ("a", "b"):
        plans[stage] = work / f"{stage}.plan"
        plans[stage].write_bytes(tag + stage.encode())
    return plans


def test_install_plans_commits_and_replaces(small_dir):
    first = install_plans(small_dir, load_manifest(small_dir), _staged_plans(small_dir, b"v1"), {"version": "1"})
    assert load_manifest(small_dir) == first  # every listed file hashes as recorded
    plans = first["tensorrt"]["plans"]
    assert all(name.startswith(f"{stage}.") and name.endswith(".plan") for stage, name in plans.items())
    assert (small_dir / plans["a"]).read_bytes() == b"v1a"
    second = install_plans(small_dir, first, _staged_plans(small_dir, b"v2"), {"version": "2"})
    assert load_manifest(small_dir)["tensorrt"]["version"] == "2"
    assert not any((small_dir / name).exists() for name in plans.values())  # old plans removed
    assert sorted(p.name for p in small_dir.glob("*.plan")) == sorted(second["tensorrt"]["plans"].values())


def test_install_plans_failing_half_way_leaves_the_directory_as_it_was(small_dir):
    manifest = install_plans(small_dir, load_manifest(small_dir), _staged_plans(small_dir, b"v1"), {"version": "1"})
    shutil.rmtree(small_dir / ".tensorrt-build-test")
    before = tree_digest(small_dir)
    plans = _staged_plans(small_dir, b"v2")
    plans["b"].unlink()  # the second plan cannot be moved in
    with pytest.raises(FileNotFoundError):
        install_plans(small_dir, manifest, plans, {"version": "2"})
    shutil.rmtree(small_dir / ".tensorrt-build-test")
    assert tree_digest(small_dir) == before
    assert load_manifest(small_dir)["tensorrt"]["version"] == "1"


def test_install_plans_needs_every_stage(small_dir):
    plans = _staged_plans(small_dir, b"v1")
    del plans["b"]
    with pytest.raises(EngineError, match="plans built for"):
        install_plans(small_dir, load_manifest(small_dir), plans, {})


# ---- the command line ----------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    """``jfdeploy ARGV``'s exit status (options are checked while parsed: argparse exits)."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@without_tensorrt
def test_build_without_tensorrt_exits_2_and_writes_nothing(tiny_engines32, tmp_path, capsys):
    engines = tiny_engines32
    before = tree_digest(engines)
    cache = tmp_path / "cache" / "trt.cache"
    assert run_cli("build", str(engines), "--timing-cache", str(cache)) == 2
    _one_error_line(capsys, "jfdeploy build: error: TensorRT is not installed")
    assert run_cli("build", str(engines), "--profile", "360p", "--profile", "480p", "--workspace", "2") == 2
    _one_error_line(capsys, NO_TENSORRT)
    assert tree_digest(engines) == before
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--profile", "480x864"], "expected MIN_HxW:OPT_HxW:MAX_HxW"),
        (["--profile", "480p", "--profile", "64x64:64x64:abc"], "expected MIN_HxW:OPT_HxW:MAX_HxW"),
        (["--profile", "384x384:480x864:600x1088"], "multiples of 16"),
        (["--profile", "608x608:480x864:608x1088"], "min <= opt <= max"),
        (["--max-objects", "0"], "--max-objects: must be >= 1"),
        (["--workspace", "-1"], "--workspace-gib: must be > 0"),
        (["--optimization-level", "6"], "--optimization-level must be 0..5"),
    ],
)
def test_build_option_errors_exit_2(small_dir, options, message, capsys):
    before = tree_digest(small_dir)
    assert run_cli("build", str(small_dir), *options) == 2
    _one_error_line(capsys, message)
    assert tree_digest(small_dir) == before


def test_build_refuses_profiles_too_small_for_the_graphs(tiny_engines32, capsys):
    engines = tiny_engines32
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in engines.iterdir())
    assert run_cli("build", str(engines), "--profile", "16x16:64x64:128x128") == 2
    _one_error_line(capsys, "fewer than the 2 tokens top-k needs")  # k 5 over 3 slots
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in engines.iterdir()) == before


def test_build_refuses_a_directory_that_is_not_an_engine_directory(tmp_path, capsys):
    assert run_cli("build", str(tmp_path)) == 2
    _one_error_line(capsys, "no manifest.json")
    assert list(tmp_path.iterdir()) == []


@without_tensorrt
def test_export_format_tensorrt_without_tensorrt_writes_nothing(tmp_path, capsys):
    out = tmp_path / "engines"
    assert run_cli("export", "--format", "tensorrt", "--out", str(out), "--profile", "480p") == 2
    _one_error_line(capsys, "jfdeploy export: error: TensorRT is not installed")
    assert list(tmp_path.iterdir()) == []
    assert run_cli("export", "--format", "tensorrt", "--out", str(out), "--profile", "1x1") == 2  # checked first
    _one_error_line(capsys, "expected MIN_HxW:OPT_HxW:MAX_HxW")


@pytest.mark.skipif(HAS_TENSORRT and torch.cuda.is_available(), reason="TensorRT and a GPU are present")
def test_tensorrt_backend_without_tensorrt_says_so(small_dir):
    """Backend tensorrt refuses with one clear error before it loads anything."""
    with pytest.raises(jfdeploy.JfDeployError, match=f"{NO_TENSORRT}|needs a CUDA GPU"):
        jfdeploy.Segmenter(None, backend="tensorrt", engines=small_dir)


# ---- with TensorRT and a GPU ---------------------------------------------------------------------

SMALL = "64x64:80x112:128x128"  # the golden clip (72x104, padded to 80x112) and nearby sizes
SQUARE = "144x144:160x160:192x192"  # a second profile, to switch to


@pytest.mark.slow
@needs_tensorrt
def test_build_and_run_plans(engines32, tmp_path, golden, capsys):
    """One build (two small profiles, optimization level 1 to keep it short), then the backend on the GPU."""
    directory = tmp_path / "engines"
    shutil.copytree(engines32, directory)
    cache = tmp_path / "trt.cache"
    assert run_cli("build", str(directory), "--profile", SMALL, "--profile", SQUARE, "--max-objects", "2",
                   "--timing-cache", str(cache), "--workspace", "2", "--optimization-level", "1") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert all(f"TensorRT plan {stage}" in out for stage in specs.STAGES)
    manifest = load_manifest(directory)
    built = manifest["tensorrt"]
    import tensorrt

    assert built["version"] == tensorrt.__version__ and built["gpu"] == torch.cuda.get_device_name()
    assert [Bucket.from_dict(b) for b in built["profiles"]] == [parse_bucket(SMALL), parse_bucket(SQUARE)]
    assert built["max_objects"] == 2 and built["workspace_gib"] == 2 and built["strongly_typed"] is True
    assert sorted(built["plans"]) == sorted(specs.STAGES) and cache.stat().st_size > 0
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporary files left

    seg = jfdeploy.Segmenter(None, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
                             backend="tensorrt", engines=directory)  # fmt: skip
    frames = torch.from_numpy(golden["frames"]).cuda()
    seg.step(frames[0], mask=torch.from_numpy(golden["mask_t0"]).cuda())
    prob = seg.step(frames[1])
    assert prob.is_cuda
    assert np.abs(prob.cpu().numpy() - golden["prob_t1"]).max() <= 1e-3  # fp32 plans, TF32 off

    stage = seg.backend.runners["enhancer"]
    token = torch.randn(2, 1, C, device="cuda")
    small = torch.randn(2, C, 5, 7, device="cuda")  # 80x112: profile 0
    (first,) = stage(small, token)
    kept = first.clone()
    (square,) = stage(torch.randn(2, C, 10, 10, device="cuda"), token)  # 160x160: profile 1
    assert stage.profile == 1 and square.shape == (2, C, 10, 10) and square.is_cuda
    (again,) = stage(small, token)  # back to profile 0
    assert stage.profile == 0
    assert torch.equal(first, kept)  # later calls did not overwrite it: not a view of the runner's buffers
    torch.testing.assert_close(again, first)
    with pytest.raises(jfdeploy.InputError, match="fit no optimization profile"):
        stage(torch.randn(3, C, 5, 7, device="cuda"), torch.randn(3, 1, C, device="cuda"))  # 3 objects > 2
