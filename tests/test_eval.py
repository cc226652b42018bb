"""`jfdeploy eval` / `compare` end to end on generated DAVIS- and YouTube-VOS-layout mini datasets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_datasets import _make_davis2017, _make_youtube

import jfdeploy
from jfdeploy.cli import main
from jfdeploy.datasets import davis
from jfdeploy.evaluate import EvalOptions, segment_sequence
from jfdeploy.io import read_label_png


@pytest.fixture(scope="module")
def checkpoint(model32, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    jfdeploy.save_checkpoint(model32, path)
    return path


def eval_args(dataset, root, out, checkpoint, *extra):
    return ["eval", "--dataset", dataset, "--root", str(root), "--out", str(out), "--checkpoint", str(checkpoint),
            "--topk", "20", "--size", "0", "--quiet", *extra]  # fmt: skip


@pytest.mark.slow
def test_davis_eval_scores_resumes_and_compares(checkpoint, tmp_path, capsys):
    root, out = _make_davis2017(tmp_path / "DAVIS", frames=4), tmp_path / "out"
    assert main(eval_args("davis2017", root, out, checkpoint)) == 0
    assert "2 sequence(s) segmented" in capsys.readouterr().out
    for seq in ("car", "bike"):
        names = sorted(p.name for p in (out / "masks" / seq).iterdir())
        assert names == ["00000.png", "00001.png", "00002.png", "00003.png"]
        first, _ = read_label_png(out / "masks" / seq / "00000.png")
        expected, _ = read_label_png(root / "Annotations" / "480p" / seq / "00000.png")
        np.testing.assert_array_equal(first, expected)  # the given mask comes back on frame 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["J&F"] <= 1 and set(summary["sequences"]) == {"car", "bike"}
    rows = list(csv.DictReader(open(out / "per_sequence.csv")))
    assert [r["sequence"] for r in rows] == ["bike", "car"]

    # resumable: nothing to do, then one missing mask makes its sequence run again
    assert main(eval_args("davis2017", root, out, checkpoint)) == 0
    assert "0 sequence(s) segmented, 2 already complete" in capsys.readouterr().out
    (out / "masks" / "bike" / "00002.png").unlink()
    assert main(eval_args("davis2017", root, out, checkpoint)) == 0
    assert "1 sequence(s) segmented, 1 already complete" in capsys.readouterr().out

    assert (
        main(["compare", str(out / "masks"), str(root / "Annotations" / "480p"), "--json", str(tmp_path / "c.json")])
        == 0
    )
    compared = json.loads((tmp_path / "c.json").read_text())
    assert compared["J&F"] == pytest.approx(summary["J&F"])
    assert "J&F" in capsys.readouterr().out


@pytest.mark.slow
def test_youtube_eval_handles_objects_appearing_later(checkpoint, tmp_path, capsys):
    root, out = _make_youtube(tmp_path / "YTVOS"), tmp_path / "out"
    assert main(eval_args("youtubevos2019", root, out, checkpoint)) == 0
    written = sorted(p.name for p in (out / "Annotations" / "vidA").iterdir())
    assert written == ["00000.png", "00005.png", "00010.png", "00015.png"]  # only the frames the benchmark scores
    appears, _ = read_label_png(out / "Annotations" / "vidA" / "00010.png")
    assert (appears == 3).any()  # object 3's given mask on the frame it appears
    assert sorted(p.name for p in (out / "Annotations" / "vidB").iterdir()) == ["00005.png", "00010.png", "00015.png"]
    assert not (out / "summary.json").exists()  # YouTube-VOS is scored by its server


@pytest.mark.slow
def test_test_time_augmentation_keeps_shapes(model32, tmp_path):
    sequence = davis(_make_davis2017(tmp_path / "DAVIS", frames=3), sequences=["car"])[0]
    plain = dict(segment_sequence(model32, sequence, EvalOptions(scales=(None,))))
    augmented = dict(segment_sequence(model32, sequence, EvalOptions(scales=(None, 48), flip=True)))
    assert sorted(augmented) == [0, 1, 2]
    for index in augmented:
        assert augmented[index].shape == plain[index].shape == sequence.size
    np.testing.assert_array_equal(augmented[0], plain[0])  # frame 0 is the given mask either way
    assert set(np.unique(augmented[2])) <= {0, 1, 2}


def test_bad_eval_input(checkpoint, tmp_path, capsys):
    assert main(eval_args("davis2017", tmp_path / "nowhere", tmp_path / "out", checkpoint)) == 2
    root = _make_davis2017(tmp_path / "DAVIS", frames=2)
    assert main(eval_args("davis2017", root, tmp_path / "out", checkpoint, "--sequences", "train")) == 2
    assert main(eval_args("generic", root, tmp_path / "out", checkpoint)) == 2
    err = capsys.readouterr().err
    assert "unknown sequences ['train']" in err and "--mask" in err
