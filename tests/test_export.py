"""ONNX export, engine directories, the onnxruntime backend, TensorRT checks that need no TensorRT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs: pip install 'jfdeploy[onnx]'")
pytest.importorskip("onnxruntime", reason="backend onnxruntime needs: pip install 'jfdeploy[onnx]'")

import onnx
from onnx import TensorProto, helper

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, GOLDEN_TOPK
from jfdeploy.backends.engines import engine_backend
from jfdeploy.cli import main
from jfdeploy.export import specs
from jfdeploy.export.compare import TOLERANCE, compare_stages
from jfdeploy.export.manifest import EngineError, check_tensorrt_plans, load_manifest
from jfdeploy.export.onnx_export import example_size, export_engines
from jfdeploy.export.tensorrt_build import DEFAULT_BUCKETS, Bucket, profile_shapes
from jfdeploy.export.trt_ops import check_graph
from jfdeploy.stages import STAGE_TYPES

HAS_TENSORRT = shutil.which("trtexec") is not None or __import__("importlib").util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def engines32(model32, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "fp32"
    export_engines(model32, out, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES)
    return out


@pytest.fixture(scope="module")
def engines16(model32, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "fp16"
    export_engines(model32, out, precision="fp16", max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES)
    return out


def test_manifest_describes_the_directory(engines32):
    manifest = load_manifest(engines32)
    assert set(manifest["stages"]) == set(STAGE_TYPES)
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert manifest["model"]["topk"] == GOLDEN_TOPK
    assert manifest["memory"] == {"max_memory_frames": GOLDEN_MAX_MEMORY_FRAMES, "slots": 3}
    assert manifest["versions"]["torch"] and manifest["versions"]["onnx"]
    assert sorted(manifest["files"]) == sorted(p.name for p in engines32.iterdir() if p.name != "manifest.json")
    reader = manifest["stages"]["memory_reader"]
    assert [i["name"] for i in reader["inputs"]] == ["tokens", "reference_keys", "reference_values", "reference_valid"]
    assert reader["inputs"][1]["shape"] == [11, "objects", 12, "ref_tokens", 64]


@pytest.mark.parametrize("fixture", ["engines32", "engines16"])
def test_every_graph_is_valid_and_parseable_by_tensorrt(fixture, request):
    directory = request.getfixturevalue(fixture)
    for stage in STAGE_TYPES:
        path = directory / f"{stage}.onnx"
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        assert check_graph(model) == [], stage
        dims = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        assert dims, f"{stage} has no dynamic input dimension"


def test_onnxruntime_golden_parity(engines32, golden):
    seg = jfdeploy.Segmenter(None, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
                             backend="onnxruntime", engines=engines32)  # fmt: skip
    seg.step(torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = seg.step(torch.from_numpy(golden["frames"][1]))
    assert np.abs(prob.numpy() - golden["prob_t1"]).max() <= 1e-4


def test_onnxruntime_matches_torch_with_three_objects(model32, engines32):
    """Other sizes and object counts than the export's example: the graphs are dynamic."""
    frames = torch.randn(4, 3, 96, 112, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 96, 112)
    masks[0, :40, :50], masks[1, 50:, :60], masks[2, 20:80, 70:] = 1, 1, 1
    results = []
    for backend, options in (("torch", {}), ("onnxruntime", {"engines": engines32})):
        seg = jfdeploy.Segmenter(model32 if backend == "torch" else None, mem_every=2, max_memory_frames=2,
                                 backend=backend, **options)  # fmt: skip
        results.append([seg.step(f, mask=masks if t == 0 else None).numpy() for t, f in enumerate(frames)])
    assert max(np.abs(a - b).max() for a, b in zip(*results, strict=True)) < 1e-3


def test_fp16_graphs_against_fp32_torch(model32, engines16):
    """fp16 graphs, stage by stage against PyTorch fp32 (relative errors are printed by `jfdeploy check`)."""
    backend = engine_backend("onnxruntime", engines16, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES)
    atol, rtol = TOLERANCE["fp16"]
    results = compare_stages(model32, backend.runners, example_size(model32, 3), atol=atol, rtol=rtol)
    assert all(results), [(r.stage, [(o.name, o.max_rel) for o in r.outputs]) for r in results]
    worst = max(o.max_rel for r in results for o in r.outputs)
    assert 1e-5 < worst < 5e-2  # really half precision, and close


def test_fp16_keeps_layer_norm_softmax_and_topk_scores_in_fp32(engines16):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(engines16 / "memory_reader.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    checked = 0
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "TopK"):
            assert types.get(node.input[0]) == TensorProto.FLOAT, f"{node.op_type} {node.name}"
            checked += 1
    assert checked >= 3 * 11
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert any(types.get(n.output[0]) == TensorProto.FLOAT16 for n in matmuls)  # the rest is fp16


def test_tampered_or_foreign_directories_are_refused(engines32, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(engines32, copy)
    with open(copy / "enhancer.onnx", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    with pytest.raises(EngineError, match=r"enhancer\.onnx does not match its sha256"):
        load_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(EngineError, match=r"no manifest\.json"):
        jfdeploy.Segmenter(None, backend="onnxruntime", engines=copy)
    shutil.copy(engines32 / "manifest.json", copy / "manifest.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(EngineError, match="expected 'jfdeploy-engines' v1"):
        load_manifest(copy)


def test_tensorrt_plans_are_tied_to_version_and_gpu():
    manifest = {"tensorrt": {"version": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3", "plans": {}}}
    check_tensorrt_plans(manifest, tensorrt_version="10.13.0", gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineError, match=r"built with TensorRT 10\.13\.0, this is 11\.1\.0"):
        check_tensorrt_plans(manifest, tensorrt_version="11.1.0", gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineError, match="built on NVIDIA H100 80GB HBM3"):
        check_tensorrt_plans(manifest, tensorrt_version="10.13.0", gpu="NVIDIA A100")
    with pytest.raises(EngineError, match="no TensorRT plans"):
        check_tensorrt_plans({"tensorrt": None}, tensorrt_version="10.13.0", gpu="x")


def test_frames_too_small_for_the_constant_k_are_refused(engines32):
    seg = jfdeploy.Segmenter(None, mem_every=3, max_memory_frames=2, backend="onnxruntime", engines=engines32)
    with pytest.raises(jfdeploy.InputError, match="need >= 7 per frame"):
        seg.step(torch.zeros(3, 16, 32), mask=torch.ones(1, 16, 32))


def test_tensorrt_profiles_cover_the_buckets(model32):
    limits = {"topk": 120, "per_frame": False}
    for stage in STAGE_TYPES:
        for bucket in DEFAULT_BUCKETS:
            shapes = profile_shapes(stage, bucket, max_objects=8, slots=4, limits=limits)
            assert set(shapes) == set(specs.input_names(stage))
            for low, opt, high in shapes.values():
                assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))
    reader = profile_shapes("memory_reader", DEFAULT_BUCKETS[1], max_objects=8, slots=4, limits=limits)
    assert reader["reference_keys"][1] == (11, 1, 12, 4 * 30 * 54, 64)  # 480x864: 1620 tokens x 4 slots
    with pytest.raises(jfdeploy.JfDeployError, match="fewer than the 120 tokens"):
        profile_shapes("enhancer", Bucket((32, 32), (64, 64), (96, 96)), max_objects=2, slots=4,
                       limits={"topk": 120, "per_frame": True})  # fmt: skip


def test_graph_checker_reports_what_tensorrt_cannot_parse():
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="unique"),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT64, [1], [4000])),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk"),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode="cubic", antialias=1),
        helper.make_node("Slice", ["x", "starts", "ends", "axes_dynamic"], ["s"], name="slice"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                     helper.make_tensor_value_info("axes_dynamic", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("u", "v", "r", "s")],
        initializer=[helper.make_tensor("scales", TensorProto.FLOAT, [2], [1, 2]),
                     helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                     helper.make_tensor("ends", TensorProto.INT64, [1], [4])],
    )  # fmt: skip
    problems = check_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    text = "\n".join(problems)
    assert "Unique node unique: operator not in the TensorRT ONNX parser table" in text
    assert "K = 4000 must be < 3840" in text
    assert "antialias unsupported" in text
    assert "input 3 (axes_dynamic) must be a constant" in text


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: this checks the message shown without it")
def test_tensorrt_without_tensorrt_says_so(model32, tmp_path):
    with pytest.raises(jfdeploy.JfDeployError, match="TensorRT is not installed"):
        export_engines(model32, tmp_path / "e", max_memory_frames=1, tensorrt={})
    assert not (tmp_path / "e").exists()


def test_cli_export_check_and_run_with_engines(model32, tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    jfdeploy.save_checkpoint(model32, checkpoint)
    engines = tmp_path / "engines"
    assert main(["export", "--checkpoint", str(checkpoint), "--topk", "20", "--out", str(engines),
                 "--max-memory-frames", "2"]) == 0  # fmt: skip
    assert main(["check", str(engines), "--checkpoint", str(checkpoint)]) == 0
    table = capsys.readouterr().out
    assert "| memory_reader | f16 |" in table and "NO" not in table
    assert main(["check", str(engines)]) == 2  # another checkpoint (none): refused
    from jfdeploy.io import make_clip, write_clip_folder, write_label_png

    frames, labels = make_clip(num_frames=3, height=64, width=96, num_objects=2, seed=1)
    images, _ = write_clip_folder(tmp_path / "clip", frames, labels)
    mask = write_label_png(tmp_path / "first.png", labels[0])
    out = tmp_path / "masks"
    assert main(["run", str(images), "--mask", str(mask), "--out", str(out), "--engines", str(engines),
                 "--size", "0", "--quiet"]) == 0  # fmt: skip
    assert len(list(out.iterdir())) == 3
