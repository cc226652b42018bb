"""`jfdeploy eval` / `compare` end to end on generated DAVIS- and YouTube-VOS-layout mini datasets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_datasets import _make_davis2017, _make_youtube

from conftest import TINY_TOPK
from jfdeploy.cli import main
from jfdeploy.datasets import davis
from jfdeploy.evaluate import segment_sequence
from jfdeploy.io import make_clip, read_label_png
from jfdeploy.predictor import VideoPredictor


def eval_args(dataset, root, out, tiny_checkpoint, *extra):
    return ["eval", "--dataset", dataset, "--root", str(root), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
            "--topk", str(TINY_TOPK), "--size", "0", "--quiet", *extra]  # fmt: skip


def test_davis_eval_scores_resumes_and_compares(tiny_checkpoint, tmp_path, capsys):
    root, out = _make_davis2017(tmp_path / "DAVIS", frames=4), tmp_path / "out"
    assert main(eval_args("davis2017", root, out, tiny_checkpoint)) == 0
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
    assert main(eval_args("davis2017", root, out, tiny_checkpoint)) == 0
    assert "0 sequence(s) segmented, 2 already complete" in capsys.readouterr().out
    (out / "masks" / "bike" / "00002.png").unlink()
    assert main(eval_args("davis2017", root, out, tiny_checkpoint)) == 0
    assert "1 sequence(s) segmented, 1 already complete" in capsys.readouterr().out

    assert (
        main(["compare", str(out / "masks"), str(root / "Annotations" / "480p"), "--json", str(tmp_path / "c.json")])
        == 0
    )
    compared = json.loads((tmp_path / "c.json").read_text())
    assert compared["J&F"] == pytest.approx(summary["J&F"])
    assert "J&F" in capsys.readouterr().out


def test_youtube_eval_handles_objects_appearing_later(tiny_checkpoint, tmp_path, capsys):
    root, out = _make_youtube(tmp_path / "YTVOS"), tmp_path / "out"
    assert main(eval_args("youtubevos2019", root, out, tiny_checkpoint)) == 0
    written = sorted(p.name for p in (out / "Annotations" / "vidA").iterdir())
    assert written == ["00000.png", "00005.png", "00010.png", "00015.png"]  # only the frames the benchmark scores
    appears, _ = read_label_png(out / "Annotations" / "vidA" / "00010.png")
    assert (appears == 3).any()  # object 3's given mask on the frame it appears
    assert sorted(p.name for p in (out / "Annotations" / "vidB").iterdir()) == ["00005.png", "00010.png", "00015.png"]
    assert not (out / "summary.json").exists()  # YouTube-VOS is scored by its server


@pytest.mark.parametrize(("sizes", "flip"), [((None,), True), ((None, 48), False)])
def test_test_time_augmentation_averages_every_augmentation(tiny_model, sizes, flip):
    """The augmented predictor's probabilities are the mean of one predictor per augmentation, each mapped
    back to the frame (unflipped, resized), and its labels their argmax."""
    frames, labels = make_clip(num_frames=3, height=64, width=96, num_objects=2, seed=5)
    combined = VideoPredictor(tiny_model, sizes=sizes, flip=flip)
    augmentations = combined.options.augmentations
    singles = [VideoPredictor(tiny_model, sizes=(size,)) for size, _ in augmentations]
    for t in range(3):
        objects = labels[0] if t == 0 else None
        result = combined.step(frames[t], objects, probabilities=True)
        expected = []
        for (_, flipped), single in zip(augmentations, singles, strict=True):
            rgb = np.ascontiguousarray(frames[t][:, ::-1]) if flipped else frames[t]
            given = None if objects is None else np.ascontiguousarray(objects[:, ::-1] if flipped else objects)
            prob = single.step(rgb, given, probabilities=True).probabilities
            expected.append(prob[:, :, ::-1] if flipped else prob)
        mean = sum(expected) / len(expected)
        np.testing.assert_allclose(result.probabilities, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result.labels, np.array([0, 1, 2], np.uint8)[result.probabilities.argmax(0)])
        if t > 0:  # the augmentations disagree somewhere: the average is not any single one
            assert any(not np.array_equal(prob, mean) for prob in expected)


def test_eval_sequence_loop_matches_the_predictor(tiny_model, tmp_path):
    """segment_sequence is the predictor's frame loop: same labels as stepping it by hand."""
    sequence = davis(_make_davis2017(tmp_path / "DAVIS", frames=3), sequences=["car"])[0]
    predictor = VideoPredictor(tiny_model, sizes=(None,))
    looped = dict(segment_sequence(predictor, sequence))
    by_hand = VideoPredictor(tiny_model, sizes=(None,))
    first = sequence.load_annotation(0)
    for index in range(3):
        expected = by_hand.step(sequence.read_frame(index), first if index == 0 else None, last=index == 2).labels
        np.testing.assert_array_equal(looped[index], expected)


def test_bad_eval_input(tiny_checkpoint, tmp_path, capsys):
    assert main(eval_args("davis2017", tmp_path / "nowhere", tmp_path / "out", tiny_checkpoint)) == 2
    root = _make_davis2017(tmp_path / "DAVIS", frames=2)
    assert main(eval_args("davis2017", root, tmp_path / "out", tiny_checkpoint, "--sequences", "train")) == 2
    assert main(eval_args("generic", root, tmp_path / "out", tiny_checkpoint)) == 2
    err = capsys.readouterr().err
    assert "unknown sequences ['train']" in err and "--mask" in err
