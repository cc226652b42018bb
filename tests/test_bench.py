"""`jfdeploy bench` as a CPU smoke run (a real run, tiny settings; speed is printed, never asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jfdeploy.bench import Row, format_markdown, mean_iou
from jfdeploy.cli import main


@pytest.mark.slow
def test_bench_smoke_writes_table_json_and_chart(tmp_path, capsys):
    out_json, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    settings = ["--refs", "1", "--resolution", "64", "--frames", "5", "--warmup", "2", "--mem-every", "2"]
    outputs = ["--json", str(out_json), "--chart", str(chart)]
    code = main(["bench", "--backends", "eager,torch,torch-fp16,onnxruntime", *settings, *outputs])
    assert code == 0
    table = capsys.readouterr().out
    assert "| eager | 1 | 1 | 64x114 |" in table and "| torch | 1 | 1 | 64x114 |" in table
    assert "skipped: needs a CUDA GPU" in table and "skipped: needs --engines DIR" in table
    payload = json.loads(out_json.read_text())
    assert payload["device"] == "CPU" and payload["versions"]["torch"]
    assert payload["settings"]["frames"] == 5 and payload["paper"]["1"]["fps"] == 6.7
    rows = {r["backend"]: r for r in payload["rows"]}
    for backend in ("eager", "torch"):
        row = rows[backend]
        assert row["refs"] == 1 and row["objects"] == 1 and row["resolution"] == "64x114"
        assert len(row["frame_ms"]) == 3 and row["fps"] > 0 and row["peak_memory_mb"] > 0
    assert rows["torch"]["mean_iou_vs_eager"] > 0.99  # the same model: the same masks
    assert chart.stat().st_size > 1000


def test_mean_iou():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    a[:, :2, :2] = 1
    b[:, :2, :1] = 1
    assert mean_iou(a, a, 1) == 1.0
    assert mean_iou(a, b, 1) == pytest.approx(0.5)
    assert mean_iou(a, b, 2) == pytest.approx(0.75)  # object 2 absent from both: IoU 1


def test_markdown_puts_the_paper_beside_ours():
    rows = [Row("eager", 3, 1, "480x853", fps=2.0, peak_memory_mb=1000.0), Row("torch", 3, 1, "480x853", fps=5.0,
            peak_memory_mb=500.0, mean_iou_vs_eager=0.995)]  # fmt: skip
    text = format_markdown(rows, {"device": "X", "versions": {"torch": "2"}})
    assert "| torch | 3 | 1 | 480x853 | 5.00 | 500 | 2.50x | 0.50x | 0.9950 | 3.0 | 5785 |" in text


def test_bad_bench_arguments(capsys):
    assert main(["bench", "--backends", "pytorch"]) == 2
    assert main(["bench", "--resolution", "100"]) == 2
    assert main(["bench", "--refs", "0"]) == 2
    assert "must" in capsys.readouterr().err
