"""jfdeploy.datasets: DAVIS 2016/2017, YouTube-VOS and plain-folder readers, mask writing/resume, compare_folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jfdeploy.datasets import (
    Sequence,
    davis,
    generic,
    mask_path,
    missing_masks,
    sequence_complete,
    write_sequence_masks,
    youtube_vos,
)
from jfdeploy.errors import InputError
from jfdeploy.io.masks import davis_palette, read_label_png, write_label_png
from jfdeploy.metrics import evaluate_sequence, summarize
from jfdeploy.scoring import compare_folders

H, W = 24, 32
# a palette other than DAVIS's, to check that the annotation's own palette is kept
CUSTOM_PALETTE = bytes((i * 7 + c * 50) % 256 for i in range(256) for c in range(3))


def _write_jpegs(folder: Path, names: list[str], size: tuple[int, int] = (H, W)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), 20 * i % 256, np.uint8)).save(folder / f"{name}.jpg", quality=90)


def _square_labels(t: int, objects: tuple[int, ...] = (1, 2), size: tuple[int, int] = (H, W)) -> np.ndarray:
    """uint8 [H, W]: object k is a 6x6 square whose place depends on k and on the frame t."""
    labels = np.zeros(size, np.uint8)
    for k in objects:
        y, x = 2 + 8 * (k - 1), 2 + t + 3 * (k - 1)
        labels[y : y + 6, x : x + 6] = k
    return labels


def _names(count: int, step: int = 1, start: int = 0) -> list[str]:
    return [f"{i:05d}" for i in range(start, start + count * step, step)]


# --- dataset builders --------------------------------------------------------------------------------


def _make_davis2017(root: Path, frames: int = 5) -> Path:
    """DAVIS 2017: 'bike' and 'car' listed in val.txt (car first), 'extra' on disk but not listed."""
    for seq in ("bike", "car", "extra"):
        _write_jpegs(root / "JPEGImages" / "480p" / seq, _names(frames))
        for t in range(frames):
            write_label_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", _square_labels(t), CUSTOM_PALETTE)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("car\nbike\n\n")
    return root


def _make_davis2016(root: Path, frames: int = 4) -> Path:
    """DAVIS 2016: binary grayscale 0/255 annotations."""
    _write_jpegs(root / "JPEGImages" / "480p" / "cows", _names(frames))
    ann = root / "Annotations" / "480p" / "cows"
    ann.mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(_square_labels(t, (1,)) * 255).save(ann / f"{t:05d}.png")
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("cows\n")
    return root


def _make_youtube(root: Path) -> Path:
    """YouTube-VOS 'valid' with two videos.

    vidA: sparse frames 00000..00015 (step 5) and an all_frames folder 00000..00015; object 1 annotated on
    00000, object 3 first annotated on 00010. vidB: sparse frames only, its object first annotated on 00005.
    """
    valid = root / "valid"
    _write_jpegs(valid / "JPEGImages" / "vidA", _names(4, step=5))
    _write_jpegs(root / "valid_all_frames" / "JPEGImages" / "vidA", _names(16))
    write_label_png(valid / "Annotations" / "vidA" / "00000.png", _square_labels(0, (1,)), CUSTOM_PALETTE)
    write_label_png(valid / "Annotations" / "vidA" / "00010.png", _square_labels(0, (3,)), CUSTOM_PALETTE)
    _write_jpegs(valid / "JPEGImages" / "vidB", _names(4, step=5))
    write_label_png(valid / "Annotations" / "vidB" / "00005.png", _square_labels(0, (2,)))
    meta = {
        "videos": {
            "vidB": {"objects": {"2": {"category": "dog", "frames": ["00005", "00010", "00015"]}}},
            "vidA": {
                "objects": {
                    "1": {"category": "cat", "frames": ["00000", "00005", "00010", "00015"]},
                    "3": {"category": "ant", "frames": ["00010", "00015"]},
                }
            },
        }
    }
    (valid / "meta.json").write_text(json.dumps(meta))
    return root


# --- DAVIS -------------------------------------------------------------------------------------------


def test_davis2017_reads_sequences_in_image_set_order(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    seqs = davis(root)
    assert [s.name for s in seqs] == ["car", "bike"]
    car = seqs[0]
    assert isinstance(car, Sequence) and len(car) == 5
    assert car.frame_names == _names(5)
    assert car.frames == [root / "JPEGImages" / "480p" / "car" / f"{n}.jpg" for n in _names(5)]
    assert car.annotations == {0: root / "Annotations" / "480p" / "car" / "00000.png"}
    assert car.save == [True] * 5 and car.frames_to_save == list(range(5))
    assert car.object_ids == [1, 2]
    assert car.first_appearance == {1: 0, 2: 0}
    assert car.new_objects(0) == [1, 2] and car.new_objects(1) == []
    assert car.palette is not None and car.palette[:768] == CUSTOM_PALETTE
    assert car.size == (H, W) and car.layout == "davis" and not car.binary
    np.testing.assert_array_equal(car.load_annotation(0), _square_labels(0))
    index, name, rgb = next(car.iter_frames())
    assert (index, name, rgb.shape, rgb.dtype) == (0, "00000", (H, W, 3), np.uint8)


def test_davis_sequences_subset_and_unknown(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    assert [s.name for s in davis(root, sequences=["bike"])] == ["bike"]
    with pytest.raises(InputError, match="extra"):
        davis(root, sequences=["extra"])


def test_davis_frames_in_natural_order(tmp_path: Path) -> None:
    root = tmp_path / "DAVIS"
    _write_jpegs(root / "JPEGImages" / "480p" / "s", ["f10", "f2", "f1"])
    write_label_png(root / "Annotations" / "480p" / "s" / "f1.png", _square_labels(0))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("s\n")
    (seq,) = davis(root)
    assert seq.frame_names == ["f1", "f2", "f10"]
    assert seq.palette == davis_palette()  # write_label_png's default palette, read back


def test_void_label_is_no_object(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    labels = _square_labels(0)
    labels[0, :] = 255
    write_label_png(root / "Annotations" / "480p" / "car" / "00000.png", labels)
    car = davis(root, sequences=["car"])[0]
    assert car.object_ids == [1, 2]
    assert 255 not in car.load_annotation(0)


def test_davis2016_binary_masks_become_object_1(tmp_path: Path) -> None:
    root = _make_davis2016(tmp_path / "DAVIS2016")
    (seq,) = davis(root, year=2016)
    assert seq.name == "cows" and seq.binary
    assert seq.object_ids == [1] and seq.first_appearance == {1: 0}
    assert seq.palette is None  # grayscale masks: the writer falls back to the DAVIS palette
    ann = seq.load_annotation(0)
    assert set(np.unique(ann).tolist()) == {0, 1}
    np.testing.assert_array_equal(ann, _square_labels(0, (1,)))


def test_davis2016_legacy_image_set(tmp_path: Path) -> None:
    root = _make_davis2016(tmp_path / "DAVIS2016")
    shutil.rmtree(root / "ImageSets" / "2016")
    (root / "ImageSets" / "480p").mkdir(parents=True)
    lines = [f"/JPEGImages/480p/cows/{n}.jpg /Annotations/480p/cows/{n}.png" for n in _names(4)]
    (root / "ImageSets" / "480p" / "val.txt").write_text("\n".join(lines) + "\n")
    assert [s.name for s in davis(root, year=2016)] == ["cows"]


def test_davis_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="DAVIS root not found"):
        davis(tmp_path / "nowhere")
    root = _make_davis2017(tmp_path / "DAVIS")
    with pytest.raises(InputError, match=r"ImageSets.2017.test-dev\.txt"):
        davis(root, split="test-dev")
    with pytest.raises(InputError, match=r"JPEGImages.Full-Resolution"):
        davis(root, resolution="Full-Resolution")
    shutil.rmtree(root / "Annotations" / "480p")
    with pytest.raises(InputError, match=r"DAVIS Annotations folder not found: .*Annotations.480p"):
        davis(root)


def test_davis_listed_sequence_missing(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    (root / "ImageSets" / "2017" / "val.txt").write_text("car\nghost\n")
    with pytest.raises(InputError, match=r"'ghost'.*JPEGImages.480p.ghost"):
        davis(root)


def test_davis_first_annotation_missing_or_empty_or_wrong_size(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    first = root / "Annotations" / "480p" / "bike" / "00000.png"
    write_label_png(first, np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match=r"bike.00000\.png.*no object"):
        davis(root)
    write_label_png(first, np.ones((H + 2, W), np.uint8))
    with pytest.raises(InputError, match=r"bike.00000\.png.*26x32"):
        davis(root)
    first.unlink()
    with pytest.raises(InputError, match=r"annotation not found.*bike.00000\.png"):
        davis(root)


def test_davis_empty_frames_folder(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    for f in (root / "JPEGImages" / "480p" / "car").iterdir():
        f.unlink()
    with pytest.raises(InputError, match=r"car: no"):
        davis(root)


# --- YouTube-VOS -------------------------------------------------------------------------------------


def test_youtube_vos_dense_frames_save_meta_frames(tmp_path: Path) -> None:
    root = _make_youtube(tmp_path / "ytvos")
    vid_a, _ = youtube_vos(root)
    assert vid_a.name == "vidA" and vid_a.layout == "youtube"
    assert vid_a.frame_names == _names(16)  # the all_frames folder
    assert vid_a.frames[0] == root / "valid_all_frames" / "JPEGImages" / "vidA" / "00000.jpg"
    assert vid_a.frames_to_save == [0, 5, 10, 15]
    assert [vid_a.frame_names[i] for i in vid_a.frames_to_save] == ["00000", "00005", "00010", "00015"]
    assert vid_a.annotations == {
        0: root / "valid" / "Annotations" / "vidA" / "00000.png",
        10: root / "valid" / "Annotations" / "vidA" / "00010.png",
    }
    assert vid_a.object_ids == [1, 3]
    assert vid_a.first_appearance == {1: 0, 3: 10}
    assert vid_a.new_objects(10) == [3]
    assert vid_a.palette is not None and vid_a.palette[:768] == CUSTOM_PALETTE
    assert vid_a.size == (H, W)
    np.testing.assert_array_equal(vid_a.load_annotation(10), _square_labels(0, (3,)))


def test_youtube_vos_later_first_annotation_trims_frames(tmp_path: Path) -> None:
    root = _make_youtube(tmp_path / "ytvos")
    vid_b = youtube_vos(root, sequences=["vidB"])[0]
    assert vid_b.frame_names == ["00005", "00010", "00015"]  # sparse: no all_frames folder for vidB
    assert vid_b.frames[0] == root / "valid" / "JPEGImages" / "vidB" / "00005.jpg"
    assert vid_b.annotations == {0: root / "valid" / "Annotations" / "vidB" / "00005.png"}
    assert vid_b.save == [True, True, True]
    assert vid_b.object_ids == [2] and vid_b.first_appearance == {2: 0}


def test_youtube_vos_all_frames_switch(tmp_path: Path) -> None:
    root = _make_youtube(tmp_path / "ytvos")
    sparse = youtube_vos(root, sequences=["vidA"], all_frames=False)[0]
    assert sparse.frame_names == _names(4, step=5)
    assert sparse.save == [True] * 4
    assert sparse.annotations.keys() == {0, 2} and sparse.first_appearance == {1: 0, 3: 2}
    with pytest.raises(InputError, match="all-frames folder for video 'vidB'"):
        youtube_vos(root, all_frames=True)
    # the STCN/XMem place of the dense frames
    (root / "all_frames").mkdir()
    shutil.move(root / "valid_all_frames", root / "all_frames" / "valid_all_frames")
    assert len(youtube_vos(root, sequences=["vidA"])[0]) == 16


def test_youtube_vos_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="split folder not found"):
        youtube_vos(tmp_path / "nothing")
    root = _make_youtube(tmp_path / "ytvos")
    meta = root / "valid" / "meta.json"
    good = meta.read_text()

    meta.write_text("{not json")
    with pytest.raises(InputError, match=r"meta\.json: not a YouTube-VOS meta\.json"):
        youtube_vos(root)
    meta.write_text(json.dumps({"videos": {"vidA": {"frames": []}}}))
    with pytest.raises(InputError, match="not a YouTube-VOS meta"):
        youtube_vos(root)
    meta.unlink()
    with pytest.raises(InputError, match=r"meta\.json not found"):
        youtube_vos(root)

    # a video of meta.json that is not on disk
    data = json.loads(good)
    data["videos"]["vidC"] = {"objects": {"1": {"category": "x", "frames": ["00000"]}}}
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"'vidC'.*JPEGImages.vidC"):
        youtube_vos(root)
    with pytest.raises(InputError, match="vidZ"):
        youtube_vos(root, sequences=["vidZ"])

    # meta.json asks for a frame the video does not have
    data = json.loads(good)
    data["videos"]["vidB"]["objects"]["2"]["frames"].append("00020")
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"'vidB'.*00020"):
        youtube_vos(root, sequences=["vidB"])
    meta.write_text(good)

    # an annotation of a frame the video does not have
    write_label_png(root / "valid" / "Annotations" / "vidB" / "00007.png", _square_labels(0, (2,)))
    with pytest.raises(InputError, match=r"00007\.png.*not among"):
        youtube_vos(root, sequences=["vidB"])
    (root / "valid" / "Annotations" / "vidB" / "00007.png").unlink()

    # an empty first annotation
    write_label_png(root / "valid" / "Annotations" / "vidB" / "00005.png", np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match=r"vidB.00005\.png.*no object"):
        youtube_vos(root, sequences=["vidB"])

    # no annotation at all
    shutil.rmtree(root / "valid" / "Annotations" / "vidB")
    (root / "valid" / "Annotations" / "vidB").mkdir()
    with pytest.raises(InputError, match=r"Annotations.vidB: no \.png"):
        youtube_vos(root, sequences=["vidB"])


# --- generic -----------------------------------------------------------------------------------------


def test_generic_folder(tmp_path: Path) -> None:
    frames = tmp_path / "clip"
    _write_jpegs(frames, ["frame10", "frame2", "frame1"])
    mask = tmp_path / "first.png"
    labels = _square_labels(0, (2, 3))
    labels[0, 0] = 255  # a plain folder has no void label: 255 is an object
    write_label_png(mask, labels, CUSTOM_PALETTE)
    seq = generic(frames, mask)
    assert seq.name == "clip" and seq.layout == "davis"
    assert seq.frame_names == ["frame1", "frame2", "frame10"]
    assert seq.annotations == {0: mask}
    assert seq.object_ids == [2, 3, 255] and seq.first_appearance == {2: 0, 3: 0, 255: 0}
    assert seq.save == [True] * 3
    assert seq.palette is not None and seq.palette[:768] == CUSTOM_PALETTE
    np.testing.assert_array_equal(seq.load_annotation(0), labels)


def test_generic_errors(tmp_path: Path) -> None:
    frames = tmp_path / "clip"
    _write_jpegs(frames, _names(3))
    with pytest.raises(InputError, match="first-frame mask not found"):
        generic(frames, tmp_path / "missing.png")
    with pytest.raises(InputError, match="frames folder not found"):
        generic(tmp_path / "nope", tmp_path / "missing.png")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(InputError, match="not a folder of frames"):
        generic(video, tmp_path / "missing.png")
    write_label_png(tmp_path / "small.png", np.ones((H - 1, W), np.uint8))
    with pytest.raises(InputError, match="23x32"):
        generic(frames, tmp_path / "small.png")
    write_label_png(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match="no object"):
        generic(frames, tmp_path / "empty.png")


# --- writing and resuming ----------------------------------------------------------------------------


def test_write_and_resume_davis_layout(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    car = davis(root, sequences=["car"])[0]
    out = tmp_path / "out"
    assert not sequence_complete(out, car)
    for t in range(len(car) - 1):
        path = write_sequence_masks(out, car, t, _square_labels(t))
        assert path == out / "car" / f"{t:05d}.png"
    assert missing_masks(out, car) == [4]
    assert not sequence_complete(out, car)
    write_sequence_masks(out, car, 4, _square_labels(4))
    assert sequence_complete(out, car)

    labels, palette = read_label_png(out / "car" / "00003.png")
    np.testing.assert_array_equal(labels, _square_labels(3))
    assert palette is not None and palette[:768] == CUSTOM_PALETTE
    assert not list((out / "car").glob(".*"))  # no temp files left

    # a truncated file, a wrong size and a non-PNG all count as missing
    data = (out / "car" / "00001.png").read_bytes()
    (out / "car" / "00001.png").write_bytes(data[: len(data) // 2])
    write_label_png(out / "car" / "00002.png", np.zeros((H, W + 1), np.uint8))
    Image.fromarray(_square_labels(3)).save(out / "car" / "00003.png", format="JPEG")
    assert missing_masks(out, car) == [1, 2, 3]


def test_write_davis2016_uses_the_davis_palette(tmp_path: Path) -> None:
    (seq,) = davis(_make_davis2016(tmp_path / "DAVIS2016"), year=2016)
    path = write_sequence_masks(tmp_path / "out", seq, 0, seq.load_annotation(0))
    assert read_label_png(path)[1] == davis_palette()


def test_write_youtube_layout_saves_only_meta_frames(tmp_path: Path) -> None:
    vid_a = youtube_vos(_make_youtube(tmp_path / "ytvos"), sequences=["vidA"])[0]
    out = tmp_path / "results"
    written = [write_sequence_masks(out, vid_a, t, _square_labels(0, (1,))) for t in range(len(vid_a))]
    assert [p for p in written if p is not None] == [
        out / "Annotations" / "vidA" / f"{n}.png" for n in ("00000", "00005", "00010", "00015")
    ]
    assert written[1] is None
    assert sorted(p.name for p in (out / "Annotations" / "vidA").iterdir()) == [
        "00000.png",
        "00005.png",
        "00010.png",
        "00015.png",
    ]
    assert sequence_complete(out, vid_a)
    assert not sequence_complete(out, vid_a, layout="davis")  # other layout, other place
    forced = write_sequence_masks(out, vid_a, 1, _square_labels(0, (1,)), all_frames=True)
    assert forced == out / "Annotations" / "vidA" / "00001.png"
    assert mask_path(out, vid_a, 3, layout="davis") == out / "vidA" / "00003.png"


def test_write_rejects_wrong_shape(tmp_path: Path) -> None:
    car = davis(_make_davis2017(tmp_path / "DAVIS"), sequences=["car"])[0]
    with pytest.raises(InputError, match="labels are"):
        write_sequence_masks(tmp_path / "out", car, 0, np.zeros((H, W + 1), np.uint8))
    with pytest.raises(ValueError, match="layout"):
        mask_path(tmp_path, car, 0, layout="coco")  # type: ignore[arg-type]


# --- compare_folders ---------------------------------------------------------------------------------


def _gt_arrays(root: Path, seq: str) -> np.ndarray:
    files = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
    return np.stack([read_label_png(f)[0] for f in files])


def test_compare_identical_folders_is_perfect(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    gt_root = root / "Annotations" / "480p"
    result = compare_folders(gt_root, gt_root, sequences=["car", "bike"])
    assert result["J&F"] == pytest.approx(1.0) and result["J"] == 1.0 and result["F"] == 1.0
    assert result["sequences"] == {"car": {"J": 1.0, "F": 1.0}, "bike": {"J": 1.0, "F": 1.0}}
    # default sequences: the prediction folder's sub-folders
    assert set(compare_folders(gt_root, gt_root)["sequences"]) == {"bike", "car", "extra"}


def test_compare_shifted_masks_matches_metrics(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    pred_root = tmp_path / "pred"
    expected = {}
    for seq in ("car", "bike"):
        gt = _gt_arrays(root, seq)
        shift = 1 if seq == "car" else 3
        pred = np.roll(gt, shift, axis=2)  # every object moved `shift` pixels right
        for t, labels in enumerate(pred):
            write_label_png(pred_root / seq / f"{t:05d}.png", labels)  # DAVIS palette, other than the GT's
        expected[seq] = evaluate_sequence(pred, gt)
    want = summarize(expected)
    got = compare_folders(pred_root, root / "Annotations" / "480p", sequences=["car", "bike"])
    assert 0.0 < got["J&F"] < 1.0
    assert got["J&F"] == pytest.approx(want["J&F"])
    assert got["J"] == pytest.approx(want["J"]) and got["F"] == pytest.approx(want["F"])
    for seq in ("car", "bike"):
        assert got["sequences"][seq] == pytest.approx(want["sequences"][seq])
    assert got["sequences"]["car"]["J"] > got["sequences"]["bike"]["J"]
    # J of the 6x6 squares moved one pixel: overlap 6x5 over a union of 6x7
    assert got["sequences"]["car"]["J"] == pytest.approx(30 / 42)


def test_compare_missing_frame_and_sequence(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    gt_root = root / "Annotations" / "480p"
    pred_root = tmp_path / "pred"
    shutil.copytree(gt_root / "car", pred_root / "car")
    (pred_root / "car" / "00002.png").unlink()
    (pred_root / "car" / "00004.png").unlink()
    with pytest.raises(InputError, match=r"missing prediction frame\(s\) 00002\.png, 00004\.png"):
        compare_folders(pred_root, gt_root)
    with pytest.raises(InputError, match=r"prediction folder not found: .*bike"):
        compare_folders(pred_root, gt_root, sequences=["bike"])
    with pytest.raises(InputError, match=r"no ground truth for sequence.*ghost"):
        compare_folders(pred_root, gt_root, sequences=["ghost"])
    with pytest.raises(InputError, match="no sequence folder"):
        compare_folders(tmp_path / "DAVIS" / "ImageSets", gt_root)


def test_compare_size_mismatch(tmp_path: Path) -> None:
    root = _make_davis2017(tmp_path / "DAVIS")
    gt_root = root / "Annotations" / "480p"
    pred_root = tmp_path / "pred"
    shutil.copytree(gt_root / "car", pred_root / "car")
    write_label_png(pred_root / "car" / "00001.png", np.zeros((H, W - 2), np.uint8))
    with pytest.raises(InputError, match=r"00001\.png: mask is 24x30, expected 24x32"):
        compare_folders(pred_root, gt_root)


def test_compare_davis2016_binary(tmp_path: Path) -> None:
    root = _make_davis2016(tmp_path / "DAVIS2016")
    gt_root = root / "Annotations" / "480p"
    with pytest.raises(InputError, match="binary=True"):
        compare_folders(gt_root, gt_root)
    (seq,) = davis(root, year=2016)
    out = tmp_path / "out"
    for t in range(len(seq)):
        write_sequence_masks(out, seq, t, _square_labels(t, (1,)))
    assert compare_folders(out, gt_root, binary=True)["J&F"] == pytest.approx(1.0)


def test_compare_youtube_seen_unseen(tmp_path: Path) -> None:
    from jfdeploy.metrics import db_eval_iou, f_measure
    from jfdeploy.scoring import compare_youtube, read_categories

    meta = {"videos": {
        "v1": {"objects": {"1": {"category": "cat", "frames": ["00000", "00005", "00010"]}}},
        "v2": {"objects": {"1": {"category": "yak", "frames": ["00005", "00010"]}}},
    }}  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "seen.txt").write_text("cat\ndog\n")
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    shifted = {}
    for vid, frames in (("v1", ["00000", "00005", "00010"]), ("v2", ["00005", "00010"])):
        for t, frame in enumerate(frames):
            labels = _square_labels(t, (1,))
            write_label_png(gt / vid / f"{frame}.png", labels)
            moved = np.roll(labels, 1 if vid == "v2" else 0, axis=1)  # v2 is off by a pixel
            shifted[(vid, frame)] = (labels, moved)
            write_label_png(pred / vid / f"{frame}.png", moved)
    scores = compare_youtube(pred, gt, tmp_path / "meta.json", read_categories(tmp_path / "seen.txt"))
    assert scores["J_seen"] == 1.0 and scores["F_seen"] == 1.0  # v1 is perfect
    g, p = shifted[("v2", "00010")]  # v2 is scored on 00010 only (00005 was given)
    assert scores["J_unseen"] == pytest.approx(db_eval_iou(g == 1, p == 1))
    assert scores["F_unseen"] == pytest.approx(f_measure(p == 1, g == 1))
    assert scores["G"] == pytest.approx((2 + scores["J_unseen"] + scores["F_unseen"]) / 4)
    assert scores["objects"]["v2_1"]["seen"] is False
    (pred / "v2" / "00010.png").unlink()
    with pytest.raises(InputError, match="missing mask"):
        compare_youtube(pred, gt, tmp_path / "meta.json", set())
