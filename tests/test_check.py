"""`jfdeploy check`: engines against PyTorch through Polygraphy's comparator, stage by stage and frame by frame."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnxruntime runner needs: pip install 'jfdeploy[onnx]'")
pytest.importorskip("polygraphy", reason="jfdeploy check compares through Polygraphy: pip install 'jfdeploy[onnx]'")

import jfdeploy
from jfdeploy import specs
from jfdeploy.cli import main
from jfdeploy.errors import InputError
from jfdeploy.export import compare
from jfdeploy.manifest import load_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
CPU = torch.device("cpu")
SMALL_CLIP = "64x96"  # 4 x 6 tokens per frame: enough for the test engines' top-k over 3 slots
ALL_OUTPUTS = {(stage, output) for stage in specs.STAGES for output in specs.output_names(stage)}


def run_check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- tolerances -----------------------------------------------------------------------------------


def test_tolerance_arguments_global_per_output_and_per_stage():
    tolerances = compare.parse_tolerances(
        ["1e-3", "f16=0.5", "memory_reader.f16=0.25", "memory_token_out=2", "2e-3"],
        ["prob=0", "decoder.logits=0.125"],
        default=(9.0, 0.05),
    )
    assert (tolerances.atol, tolerances.rtol) == (2e-3, 0.05)  # the last global value wins; rtol keeps its default
    assert tolerances.of("memory_reader", "f16") == (0.25, 0.05)  # stage.output over output
    assert tolerances.of("decoder", "f16") == (0.5, 0.05)  # (not a decoder output: the plain name still applies)
    assert tolerances.of("reference_encoder", "memory_token_out") == (2.0, 0.05)
    assert tolerances.of("memory_token_update", "memory_token_out") == (2.0, 0.05)
    assert tolerances.of("decoder", "logits") == (2e-3, 0.125)
    assert tolerances.of("decoder", "decoder_tokens") == (2e-3, 0.05)
    assert tolerances.of(compare.CLIP, compare.CLIP_OUTPUT) == (2e-3, 0.0)
    func = tolerances.compare_func("memory_reader", ["f16"])  # Polygraphy's per-output dictionaries
    assert func.atol == {"": 2e-3, "f16": 0.25} and func.rtol == {"": 0.05, "f16": 0.05}


def test_drift_probabilities_get_a_looser_default_atol_unless_one_is_given():
    defaults = compare.parse_tolerances([], [], default=compare.TOLERANCE["fp32"])
    assert defaults.of(compare.CLIP, compare.CLIP_OUTPUT) == (compare.DRIFT_MIN_ATOL, 1e-3)
    assert defaults.of("decoder", "logits") == compare.TOLERANCE["fp32"]  # stages keep the precision's default
    fp16 = compare.parse_tolerances([], [], default=compare.TOLERANCE["fp16"])
    assert fp16.of(compare.CLIP, compare.CLIP_OUTPUT) == compare.TOLERANCE["fp16"]  # already looser
    given = compare.parse_tolerances(["1e-6"], [], default=compare.TOLERANCE["fp32"])
    assert given.of(compare.CLIP, compare.CLIP_OUTPUT) == (1e-6, 1e-3)  # a global atol given applies to drift
    per_output = compare.parse_tolerances(["prob=1e-5"], [], default=compare.TOLERANCE["fp32"])
    assert per_output.of(compare.CLIP, compare.CLIP_OUTPUT) == (1e-5, 1e-3)


@pytest.mark.parametrize(
    ("atol", "message"),
    [
        (["abc"], r"--atol wants a number >= 0 \(or NAME=VALUE\), got 'abc'"),
        (["-1"], "got '-1'"),
        (["nan"], "got 'nan'"),
        (["f16="], r"--atol f16 wants a number"),
        (
            ["nosuch=1"],
            r"unknown output 'nosuch'; outputs: accumulated_out, decoder_tokens, enhanced_f16, f16, f4, f8, frame",
        ),
        (["decoder.f16=1"], "unknown output 'decoder.f16'"),  # f16 is not an output of the decoder
    ],
)
def test_bad_tolerances_are_refused(atol, message):
    with pytest.raises(InputError, match=message):
        compare.parse_tolerances(atol, [], default=(1e-3, 1e-3))


def test_default_clip_size_holds_the_tokens_top_k_needs():
    manifest = {"limits": {"topk": 120, "per_frame": False}, "memory": {"slots": 4}, "tensorrt": None}
    assert compare.default_clip_size(manifest, ["torch", "onnxruntime"]) == (128, 224)  # 8 x 14 tokens >= 30
    manifest["limits"]["per_frame"] = True  # 120 tokens in every frame
    height, width = compare.default_clip_size(manifest, ["torch", "onnxruntime"])
    assert (height // 16) * (width // 16) >= 120 and height % 16 == 0 and width % 16 == 0
    manifest["tensorrt"] = {"profiles": [{"min_hw": [384, 384], "opt_hw": [480, 864], "max_hw": [608, 1088]}]}
    assert compare.default_clip_size(manifest, ["torch", "tensorrt"]) == (480, 864)
    assert compare.parse_clip_size("96X160") == (96, 160)
    with pytest.raises(InputError, match="--clip-size wants HxW"):
        compare.parse_clip_size("16x16")


def test_mask_agreement():
    reference = np.zeros((3, 4, 4), np.float32)
    reference[0], reference[1, :2], reference[2, 2:, :2] = 0.4, 0.9, 0.8  # rows 0-1 object 1, bottom left object 2
    prob = reference.copy()
    prob[1, 1] = 0.0  # row 1 falls back to the background: object 1 keeps 4 of its 8 pixels
    iou, disagreement = compare.mask_agreement(prob, reference)
    assert iou == pytest.approx((4 / 8 + 1.0) / 2) and disagreement == pytest.approx(4 / 16)


# ---- engines against PyTorch (CPU: torch vs onnxruntime) -----------------------------------------


def test_fp32_engines_match_torch_stage_by_stage_and_on_frame_1(tiny_engines32, tmp_path, capsys):
    report_path = tmp_path / "check.json"
    options = f"--atol 1e-4 --rtol 0 --frames 2 --clip-size {SMALL_CLIP}".split()
    code, out, err = run_check(capsys, str(tiny_engines32), *options, "--json", str(report_path))
    assert code == 0, err
    assert "| memory_reader | f16 | onnxruntime vs torch |" in out and "| 1 | onnxruntime vs torch |" in out
    assert "NO" not in out and out.rstrip().endswith("all within tolerance")
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["runners"] == ["torch", "onnxruntime"] and report["reference"] == "torch"
    assert {(row["stage"], row["output"]) for row in report["stages"]} == ALL_OUTPUTS
    assert all(row["ok"] and row["max_abs"] < 1e-4 and row["atol"] == 1e-4 for row in report["stages"])
    frames = report["drift"]["frames"]
    assert [entry["frame"] for entry in frames] == [0, 1]
    (frame1,) = frames[1]["comparisons"]
    assert frame1["runners"] == "onnxruntime vs torch" and frame1["max_abs"] < 1e-4 and frame1["iou"] == 1.0


@pytest.mark.slow
def test_fp16_engines_drift_is_reported_frame_by_frame(tiny_engines16, tmp_path, capsys):
    report_path = tmp_path / "drift.json"
    options = f"--frames 4 --clip-size {SMALL_CLIP} --mem-every 2".split()
    code, out, err = run_check(capsys, str(tiny_engines16), *options, "--json", str(report_path))
    assert code == 0, err  # the fp16 defaults: atol 0.1, rtol 0.05
    report = json.loads(report_path.read_text())
    worst_stage = max(row["max_abs"] for row in report["stages"])
    assert 1e-4 < worst_stage < 0.1  # really half precision, and close
    drift = report["drift"]
    assert drift["frames"] and [entry["frame"] for entry in drift["frames"]] == [0, 1, 2, 3]
    clip = {k: drift[k] for k in ("height", "width", "objects", "mem_every")}
    assert clip == {"height": 64, "width": 96, "objects": 2, "mem_every": 2}
    rows = [entry["comparisons"][0] for entry in drift["frames"]]
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("max_abs", "mean_abs", "iou", "disagreement"))
        assert 0 <= row["disagreement"] <= 1 and 0 <= row["iou"] <= 1
    assert rows[0]["max_abs"] == 0  # the same first mask
    assert all(row["max_abs"] > 1e-5 for row in rows[1:])  # fp16 graphs: every later frame differs
    assert out.count("| onnxruntime vs torch |") == len(report["stages"]) + 4


def test_tight_tolerance_exits_1_and_per_output_tolerances_apply(tiny_engines16, tmp_path, capsys):
    report_path = tmp_path / "check.json"
    options = "--atol 1e-12 --rtol 0 --atol memory_reader.f16=1 --rtol f16=0.5".split()
    code, out, err = run_check(capsys, str(tiny_engines16), *options, "--json", str(report_path))
    assert code == 1
    verdict = err.strip().splitlines()[-1]
    assert verdict.startswith("jfdeploy check: error: 13 of 26 comparisons out of tolerance (first: frame_encoder.")
    assert "| memory_reader | f16 | onnxruntime vs torch |" in out and "| NO |" in out
    report = json.loads(report_path.read_text())  # written before the verdict
    assert not report["ok"] and report["drift"] is None
    rows = {(row["stage"], row["output"]): row for row in report["stages"]}
    reader = rows[("memory_reader", "f16")]  # its own tolerance: within it
    assert reader["ok"] and (reader["atol"], reader["rtol"]) == (1.0, 0.5)
    model_rows = [row for key, row in rows.items() if key[0] in specs.MODEL_STAGES and key != ("memory_reader", "f16")]
    assert len(model_rows) == 10 and not any(row["ok"] for row in model_rows)
    exact = [row for key, row in rows.items() if key[0] in ("label_masks", "memory_grow", "memory_write", "label_map")]
    assert len(exact) == 9 and all(row["ok"] and row["max_abs"] == 0 for row in exact)  # copies and integer maps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--atol", "x=1"], "unknown output 'x'"),
        (["--rtol", "1e-3e"], "--rtol wants a number"),
        (["--runners", "torch,cuda"], "unknown runner"),
        (["--runners", "torch"], "--runners needs two or more different runners"),
        (["--frames", "1"], "--frames must be 0"),
        (["--clip-size", "64"], "--clip-size wants HxW"),
        ([], "is not an engine directory: no manifest.json"),
    ],
)
def test_bad_options_exit_2_with_one_line_before_the_engines_are_read(tmp_path, args, message, capsys):
    code, out, err = run_check(capsys, str(tmp_path / "nowhere"), *args)  # options are checked first
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jfdeploy check: error: ") and message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "nowhere.pth"], "nowhere.pth"),
        pytest.param(
            ["--runners", "torch,tensorrt"],
            "runner tensorrt cannot run here: TensorRT is not installed",
            marks=pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: this checks the refusal without"),
        ),
    ],
)
def test_what_the_engines_cannot_do_exits_2_with_one_line(tiny_engines32, args, message, capsys):
    code, out, err = run_check(capsys, str(tiny_engines32), *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jfdeploy check: error: ") and message in err


def test_library_runs_the_stages_through_polygraphy_runners(tiny_model, tiny_engines32):
    manifest = load_manifest(tiny_engines32)
    runners = compare.StageRunners(
        ["torch", "onnxruntime"], engines=tiny_engines32, manifest=manifest, model=tiny_model, device=CPU
    )
    names = [type(runner).__name__ for runner in runners.for_stage("decoder")]
    assert names == ["TorchStageRunner", "OnnxrtRunner"]  # Polygraphy's onnxruntime runner on the stage graph
    tight = compare.Tolerances(0.0, 0.0)
    checks = compare.check_stages(runners, compare.comparison_size(manifest, runners.kinds), tight)
    assert len(checks) == len(ALL_OUTPUTS)
    assert not any(c.ok for c in checks if c.stage in specs.MODEL_STAGES)  # no tolerance: every model output differs
    exact = [c for c in checks if c.stage in ("label_masks", "memory_grow", "memory_write", "label_map")]
    assert all(c.ok for c in exact), [(c.stage, c.output, c.max_abs) for c in exact if not c.ok]
    assert all(c.max_abs == 0 if c.ok else 0 < c.max_abs < 1e-4 and c.max_rel > 0 for c in checks)


# ---- TensorRT -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT plans need TensorRT and a CUDA GPU (not both here)")
def test_tensorrt_plans_against_torch_and_onnxruntime(tiny_engines32, tmp_path, capsys):
    directory = tmp_path / "engines"
    shutil.copytree(tiny_engines32, directory)
    assert main(["build", str(directory), "--profile", "64x64:64x96:128x224", "--max-objects", "2"]) == 0
    report_path = tmp_path / "check.json"
    code, _, err = run_check(
        capsys, str(directory), "--frames", "3", "--clip-size", SMALL_CLIP, "--json", str(report_path)
    )
    report = json.loads(report_path.read_text())
    assert code in (0, 1), err  # it ran; 1 would be a real difference, reported in the table
    assert report["runners"] == ["torch", "onnxruntime", "tensorrt"]
    pairs = {row["runners"] for row in report["stages"]}
    assert pairs == {"onnxruntime vs torch", "tensorrt vs torch"}
    assert all(math.isfinite(row["max_abs"]) and row["max_abs"] < 1e-2 for row in report["stages"])
    assert all(len(entry["comparisons"]) == 2 for entry in report["drift"]["frames"])


@pytest.mark.slow
def test_check_compares_model_configurations_without_engines(tiny_model, tmp_path, capsys):
    """bf16 against fp32 frame by frame: within the reduced-precision tolerance, out of a tight one (exit 1)."""
    jfdeploy.save_checkpoint(tiny_model, tmp_path / "tiny.pth")
    common = ["check", "--runners", "torch,torch-bf16", "--frames", "3", "--clip-size", "64x96", "--topk", "5",
              "--checkpoint", str(tmp_path / "tiny.pth"), "--device", "cpu",
              "--json", str(tmp_path / "drift.json")]  # fmt: skip
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "torch-bf16 vs torch" in out and "all within tolerance" in out
    rows = json.loads((tmp_path / "drift.json").read_text())["drift"]["frames"]
    assert [row["frame"] for row in rows] == [0, 1, 2]
    errors = [row["comparisons"][0]["max_abs"] for row in rows]
    assert errors[0] == 0.0  # the given mask
    assert all(0 < error < 0.1 for error in errors[1:])  # bf16 differs, within its tolerance
    assert main([*common, "--atol", "1e-6", "--rtol", "1e-6"]) == 1
    assert main(["check", "--runners", "torch,torch-bf16"]) == 2  # no --frames: nothing to compare
    assert main(["check", "--runners", "torch,onnxruntime", "--frames", "3"]) == 2  # engines need ENGINE_DIR
