"""ONNX export, engine directories, the onnxruntime backend, TensorRT checks that need no TensorRT."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs: pip install 'jfdeploy[onnx]'")
pytest.importorskip("onnxruntime", reason="backend onnxruntime needs: pip install 'jfdeploy[onnx]'")

import onnx
from onnx import TensorProto, helper

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, TINY_TOPK, step_at_model_size
from jfdeploy import specs
from jfdeploy.cli import main
from jfdeploy.export.onnx_export import export_engines
from jfdeploy.export.tensorrt import BuildSettings
from jfdeploy.export.trt_ops import check_graph
from jfdeploy.manifest import EngineError, check_tensorrt_plans, load_manifest

HAS_TENSORRT = shutil.which("trtexec") is not None or __import__("importlib").util.find_spec("tensorrt") is not None


def test_manifest_describes_the_directory(tiny_engines32):
    manifest = load_manifest(tiny_engines32)
    assert set(manifest["stages"]) == set(specs.STAGES)
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert manifest["model"]["topk"] == TINY_TOPK and manifest["model"]["embed_dims"] == [32, 48, 96]
    assert manifest["memory"] == {"max_memory_frames": GOLDEN_MAX_MEMORY_FRAMES, "slots": 3}
    assert manifest["versions"]["torch"] and manifest["versions"]["onnx"]
    assert sorted(manifest["files"]) == sorted(p.name for p in tiny_engines32.iterdir() if p.name != "manifest.json")
    reader = manifest["stages"]["memory_reader"]
    assert [i["name"] for i in reader["inputs"]] == ["tokens", "reference_keys", "reference_values", "reference_valid"]
    assert reader["inputs"][1]["shape"] == [3, "objects", 3, "ref_tokens", 32]  # the tiny model's L, heads, d


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_engines32", "tiny_engines16"])
def test_every_graph_is_valid_and_parseable_by_tensorrt(fixture, request):
    directory = request.getfixturevalue(fixture)
    for stage in specs.STAGES:
        path = directory / f"{stage}.onnx"
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        assert check_graph(model) == [], stage
        dims = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        assert dims, f"{stage} has no dynamic input dimension"


def test_onnxruntime_golden_parity(engines32, golden):
    seg = jfdeploy.Segmenter(None, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
                             backend="onnxruntime", engines=engines32)  # fmt: skip
    step_at_model_size(seg, torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    prob = step_at_model_size(seg, torch.from_numpy(golden["frames"][1]))
    assert np.abs(prob.numpy() - golden["prob_t1"]).max() <= 1e-4


def test_onnxruntime_matches_torch_with_three_objects(tiny_model, tiny_engines32):
    """Other sizes and object counts than the export's example: the graphs are dynamic."""
    frames = torch.randn(4, 3, 96, 112, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 96, 112)
    masks[0, :40, :50], masks[1, 50:, :60], masks[2, 20:80, 70:] = 1, 1, 1
    results = []
    for backend, options in (("torch", {}), ("onnxruntime", {"engines": tiny_engines32})):
        seg = jfdeploy.Segmenter(tiny_model if backend == "torch" else None, mem_every=2, max_memory_frames=2,
                                 backend=backend, **options)  # fmt: skip
        results.append(
            [step_at_model_size(seg, f, mask=masks if t == 0 else None).numpy() for t, f in enumerate(frames)]
        )
    assert max(np.abs(a - b).max() for a, b in zip(*results, strict=True)) < 1e-3


def test_fp16_keeps_layer_norm_softmax_and_topk_scores_in_fp32(tiny_engines16):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_engines16 / "memory_reader.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    checked = 0
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "TopK"):
            assert types.get(node.input[0]) == TensorProto.FLOAT, f"{node.op_type} {node.name}"
            checked += 1
    assert checked >= 3 * 3  # per joint block of the tiny model
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert any(types.get(n.output[0]) == TensorProto.FLOAT16 for n in matmuls)  # the rest is fp16


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_engines32", "tiny_engines16"])
def test_graphs_are_slimmed_and_the_manifest_counts_their_nodes(fixture, request):
    pytest.importorskip("onnxslim", reason="graph simplification needs: pip install onnxslim")
    directory = request.getfixturevalue(fixture)
    manifest = load_manifest(directory)
    assert manifest["slim"]["tool"] == "onnxslim" and manifest["slim"]["version"]
    assert manifest["slim"]["skipped"] is None
    for stage, entry in manifest["stages"].items():
        assert entry["nodes"] == len(onnx.load(str(directory / entry["onnx"])).graph.node), stage
        assert entry["nodes"] <= entry["nodes_before_slim"], stage
    reader = manifest["stages"]["memory_reader"]
    assert reader["nodes"] < 0.8 * reader["nodes_before_slim"]  # measured: about 0.55 (fp32), 0.6 (fp16)


def test_slimmed_fp16_graphs_keep_every_fp32_island(tiny_engines16):
    """Slimming runs after the fp16 conversion: no stage may lose an fp32 LayerNorm / Softmax / TopK input."""
    for stage in specs.STAGES:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_engines16 / f"{stage}.onnx")))
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax", "TopK"):
                assert types.get(node.input[0]) == TensorProto.FLOAT, f"{stage}: {node.op_type} {node.name}"


@pytest.mark.slow
def test_export_without_onnxslim_saves_unslimmed_graphs_and_says_so(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # `import onnxslim` raises ImportError
    manifest = export_engines(tiny_model, tmp_path / "e", max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, progress=print)
    assert "onnxslim is not installed" in capsys.readouterr().out
    assert manifest["slim"] == {"tool": "onnxslim", "version": None, "skipped": "onnxslim is not installed"}
    for stage, entry in manifest["stages"].items():
        assert entry["nodes"] == entry["nodes_before_slim"], stage
        assert check_graph(onnx.load(str(tmp_path / "e" / entry["onnx"]))) == [], stage


def test_tampered_or_foreign_directories_are_refused(tiny_engines32, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(tiny_engines32, copy)
    with open(copy / "enhancer.onnx", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    with pytest.raises(EngineError, match=r"enhancer\.onnx does not match its sha256"):
        load_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(EngineError, match=r"no manifest\.json"):
        jfdeploy.Segmenter(None, backend="onnxruntime", engines=copy)
    shutil.copy(tiny_engines32 / "manifest.json", copy / "manifest.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(EngineError, match="expected 'jfdeploy-engines' v3"):
        load_manifest(copy)
    for older in (1, 2):  # before the frame loop's stages; before the frame batch axis
        (copy / "manifest.json").write_text(json.dumps({**manifest, "version": older}))
        with pytest.raises(EngineError, match=rf"manifest v{older}, .*export it again with `jfdeploy export`"):
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


def test_frames_too_small_for_the_constant_k_are_refused(tiny_engines32):
    seg = jfdeploy.Segmenter(None, mem_every=3, max_memory_frames=2, backend="onnxruntime", engines=tiny_engines32)
    with pytest.raises(jfdeploy.InputError, match="need >= 2 per frame"):  # k 5 over 3 slots, 1 token here
        step_at_model_size(seg, torch.zeros(3, 16, 16), mask=torch.ones(1, 16, 16))


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
def test_tensorrt_without_tensorrt_says_so(tiny_model, tmp_path):
    with pytest.raises(jfdeploy.JfDeployError, match="TensorRT is not installed"):
        export_engines(tiny_model, tmp_path / "e", max_memory_frames=1, tensorrt=BuildSettings())
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_cli_export_check_and_run_with_engines(tiny_model, tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    jfdeploy.save_checkpoint(tiny_model, checkpoint)
    engines = tmp_path / "engines"
    assert main(["export", "--checkpoint", str(checkpoint), "--topk", str(TINY_TOPK), "--out", str(engines),
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
