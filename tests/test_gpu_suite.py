"""benchmarks/gpu_suite.sh: its decisions, checked on a CPU with --dry-run (nothing heavy runs).

The suite runs on a GPU machine in one call; here its dry run shows which steps it would run or skip
and why, and that it stays within the 8 files a device call brings back, each stamped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
MAX_FILES = 8

pytestmark = [
    pytest.mark.slow,  # each dry run imports torch, triton, onnx, ... a few times: ~30 s on a 2-core CPU
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"),
]


def dry_run(out: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, tuple[str, str]]]:
    """Run the suite with --dry-run; returns the process and {step: (status, note)} from summary.md."""
    result = subprocess.run(
        ["bash", str(SUITE), "--dry-run"],
        env={**os.environ, "OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    steps = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("step", "---"):
            steps[cells[0]] = (cells[1], cells[3])
    return result, steps


def check_files(out: Path) -> list[Path]:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= MAX_FILES, [p.name for p in files]
    for path in files:
        if path.suffix == ".json":
            stamp = json.loads(path.read_text())
            assert stamp["device"] and stamp["date"], f"{path.name} is not stamped"
        else:
            head = path.read_text()[:400]
            assert "device: " in head and "date: " in head, f"{path.name} is not stamped"
    return files


def test_dry_run_without_cuda_skips_every_gpu_step_with_its_reason(tmp_path):
    result, steps = dry_run(tmp_path / "out")
    assert result.returncode == 0, result.stderr
    names = {p.name for p in check_files(tmp_path / "out")}
    assert {"env.txt", "summary.md"} <= names
    assert steps["env"][0] == "ok"
    for step in ("tests", "kernel", "bench", "serve"):
        status, note = steps[step]
        assert status == "skipped" and "no CUDA device" in note, (step, status, note)
    assert steps["wheels"] == ("skipped", "no wheel folder given (--wheels DIR or WHEELS=DIR) or no .whl in it")
    env = (tmp_path / "out" / "env.txt").read_text()
    assert "== Python packages (import check)" in env and "torch " in env


def test_dry_run_pretending_cuda_lists_what_a_gpu_machine_runs(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxslim-0.1.98-py3-none-any.whl").write_bytes(b"")  # named only: a dry run installs nothing
    result, steps = dry_run(tmp_path / "out", SUITE_PRETEND_CUDA="1", WHEELS=str(wheels))
    assert result.returncode == 0, result.stderr
    check_files(tmp_path / "out")
    assert steps["wheels"][0] == "dry-run" and "onnxslim-0.1.98-py3-none-any.whl" in steps["wheels"][1]
    status, note = steps["tests"]
    assert status == "dry-run" and "test_steady_state_has_no_host_sync_on_cuda" in note
    assert ("tests/test_kernels.py" in note) == _imports("triton")
    status, note = steps["kernel"]
    assert status == "dry-run" and "topk_attention_bench.py --frames 2,4 --topk 120" in note
    for refs in (1, 3):
        status, note = steps[f"bench-ours{refs}"]
        expected = f"bench --refs {refs} --backends eager,eager-fp16,torch,torch-fp16,torch-bf16"
        assert status == "dry-run" and expected in note
    status, note = steps["serve-480p"]
    assert status == "dry-run" and "serve_load.py --clients 1,2,4,8" in note and "--size 480" in note
    assert steps["serve-tiny"][0] == "dry-run" and "--tiny --device cuda" in steps["serve-tiny"][1]
    if not _imports("tensorrt"):
        assert steps["bench tensorrt"][0] == "skipped" and steps["tests-tensorrt"][0] == "skipped"
    assert steps["bench onnxruntime"][0] == "skipped" and "CUDAExecutionProvider" in steps["bench onnxruntime"][1]


def _imports(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
