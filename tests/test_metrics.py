"""DAVIS metrics on hand-built masks whose J, F and statistics are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jfdeploy.errors import InputError
from jfdeploy.metrics import (
    _dilate,
    bound_pixels,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    evaluate_sequence,
    f_measure,
    seg2bmap,
    summarize,
)


def box(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """bool [H, W] mask set on rows[0]..rows[1] x cols[0]..cols[1] (inclusive)."""
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def coords(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(y), int(x)) for y, x in zip(*np.nonzero(mask), strict=True)}


def brute_dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """cv2.dilate's definition spelled out: dst[y, x] = OR src[y + i - KH//2, x + j - KW//2] over set (i, j),
    pixels outside the image absent."""
    h, w = mask.shape
    kh, kw = footprint.shape
    out = np.zeros_like(mask, dtype=bool)
    for i, j in zip(*np.nonzero(footprint), strict=True):
        dy, dx = i - kh // 2, j - kw // 2
        for y in range(h):
            sy = y + dy
            if not 0 <= sy < h:
                continue
            for x in range(w):
                sx = x + dx
                if 0 <= sx < w and mask[sy, sx]:
                    out[y, x] = True
    return out


# ------------------------------------------------------------------------------------------------- J


def test_iou_identical_disjoint_half_overlap() -> None:
    a = box((10, 10), (0, 3), (0, 3))  # 16 px
    assert db_eval_iou(a, a) == 1.0
    assert db_eval_iou(a, box((10, 10), (6, 9), (6, 9))) == 0.0
    # shifted by 2 columns: intersection 4x2 = 8, union 16 + 16 - 8 = 24
    assert db_eval_iou(a, box((10, 10), (0, 3), (2, 5))) == pytest.approx(8 / 24)


def test_iou_empty_conventions() -> None:
    empty = np.zeros((5, 7), dtype=np.uint8)
    obj = box((5, 7), (1, 2), (1, 2)).astype(np.uint8)
    assert db_eval_iou(empty, empty) == 1.0  # union empty -> 1
    assert db_eval_iou(obj, empty) == 0.0
    assert db_eval_iou(empty, obj) == 0.0


def test_iou_void_and_stacked_frames() -> None:
    gt = box((4, 4), (0, 1), (0, 1))  # 4 px
    pred = box((4, 4), (0, 1), (1, 2))  # 4 px, 2 shared
    void = np.zeros((4, 4), dtype=bool)
    void[0, 0] = True  # removes one gt-only pixel: inter 2, union 6 - 1 = 5
    assert db_eval_iou(gt, pred) == pytest.approx(2 / 6)
    assert db_eval_iou(gt, pred, void) == pytest.approx(2 / 5)
    stacked = db_eval_iou(np.stack([gt, gt, np.zeros_like(gt)]), np.stack([gt, pred, np.zeros_like(gt)]))
    assert isinstance(stacked, np.ndarray) and stacked.shape == (3,)
    np.testing.assert_allclose(stacked, [1.0, 2 / 6, 1.0])
    with pytest.raises(InputError):
        db_eval_iou(gt, pred[:3])


# ---------------------------------------------------------------------------------------- boundaries


def test_seg2bmap_one_pixel_objects() -> None:
    # interior pixel: itself and its N, W, NW neighbours (the boundary sits half a pixel towards the origin)
    m = np.zeros((5, 5), dtype=bool)
    m[2, 2] = True
    assert coords(seg2bmap(m)) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    # at the origin: only itself
    m = np.zeros((5, 5), dtype=bool)
    m[0, 0] = True
    assert coords(seg2bmap(m)) == {(0, 0)}
    # bottom-right corner pixel: never itself a boundary (b[-1, -1] = 0), its 3 upper-left neighbours are
    m = np.zeros((5, 5), dtype=bool)
    m[4, 4] = True
    assert coords(seg2bmap(m)) == {(3, 3), (3, 4), (4, 3)}


def test_seg2bmap_square_and_full_frame() -> None:
    # a 4x4 square on rows/cols 2..5 -> the outline of the 5x5 box on rows/cols 1..5: 16 pixels
    b = seg2bmap(box((10, 10), (2, 5), (2, 5)))
    outline = box((10, 10), (1, 5), (1, 5)) & ~box((10, 10), (2, 4), (2, 4))
    assert np.array_equal(b, outline) and b.sum() == 16
    # a mask covering the whole frame has no boundary at all
    assert not seg2bmap(np.ones((6, 9), dtype=bool)).any()


def test_bound_pix_formula_and_disk() -> None:
    # ||(480, 854)|| = sqrt(959716) = 979.65; 0.008 * 979.65 = 7.837 -> ceil = 8
    assert math.hypot(480, 854) == pytest.approx(979.65, abs=0.01)
    assert bound_pixels((480, 854)) == 8
    assert bound_pixels((1080, 1920)) == 18  # 0.008 * 2202.9 = 17.6
    assert bound_pixels((480, 854), bound_th=3) == 3  # >= 1: a radius in pixels
    d8 = disk(8.0)
    assert d8.shape == (17, 17)
    assert int(d8.sum()) == 197  # lattice points with x^2 + y^2 <= 64 (Gauss circle N(8))
    assert np.array_equal(disk(1).astype(int), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(1.5).shape == (4, 4)  # skimage's arange(-r, r + 1) gives an even footprint here


@pytest.mark.parametrize("radius", [1, 2, 3, 1.5, 2.5])
def test_dilate_matches_opencv_definition(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 10))
    fp = disk(radius)
    for shape in [(13, 17), (3, 4), (1, 9)]:
        mask = rng.random(shape) < 0.08
        mask[0, -1] = True  # a set pixel at the border
        assert np.array_equal(_dilate(mask, fp), brute_dilate(mask, fp))


def test_dilate_matches_scipy_with_opencv_anchor() -> None:
    """An independent implementation (scipy is in the test extra: this test must run, never skip)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for radius in [2, 8, 2.5]:
        fp = disk(radius)
        mask = rng.random((40, 57)) < 0.02
        origin = [0 if k % 2 else -1 for k in fp.shape]
        assert np.array_equal(_dilate(mask, fp), ndimage.binary_dilation(mask, structure=fp, origin=origin))


# ------------------------------------------------------------------------------------------------- F


def test_f_identical_disjoint_and_empty_conventions() -> None:
    a = box((30, 30), (3, 8), (3, 8))
    far = box((30, 30), (20, 26), (20, 26))
    empty = np.zeros((30, 30), dtype=bool)
    assert f_measure(a, a) == 1.0
    assert f_measure(far, a, bound_th=2) == 0.0  # boundaries > 2 px apart: P = R = 0
    assert f_measure(empty, empty) == 1.0  # both boundaries empty
    assert f_measure(empty, a) == 0.0  # P = 1, R = 0
    assert f_measure(a, empty) == 0.0  # P = 0, R = 1
    # a full-frame mask has an empty boundary: scored as "empty" against a real object
    assert f_measure(np.ones((30, 30), dtype=bool), a) == 0.0


def test_f_shifted_square_by_hand() -> None:
    # gt: 4x4 square on rows/cols 2..5 -> outline of the box rows 1..5 x cols 1..5 (16 px);
    # pred: shifted right by 2 -> outline of rows 1..5 x cols 3..7 (16 px).
    gt = box((10, 10), (2, 5), (2, 5))
    pred = box((10, 10), (2, 5), (4, 7))
    # radius 1 (cross): pred top/bottom rows match at cols 3..6 (4 + 4), left side (col 3, rows 2..4) at
    # rows 2 and 4 only (next to gt's top/bottom rows), right side (col 7) nowhere -> P = 10/16; by mirror
    # symmetry R = 10/16, so F = 0.625.
    assert f_measure(pred, gt, bound_th=1) == pytest.approx(0.625)
    # radius 2 (offsets with dx^2 + dy^2 <= 4 reach 2 columns): every pixel of each outline is within 2
    # columns of the other outline -> P = R = 1.
    assert f_measure(pred, gt, bound_th=2) == pytest.approx(1.0)


def test_f_void_pixels_and_boundary_over_frames() -> None:
    gt = box((12, 12), (2, 6), (2, 6))
    pred = box((12, 12), (2, 6), (2, 6))
    pred[8:11, 8:11] = True  # a false blob
    assert f_measure(pred, gt, bound_th=1) < 1.0
    void = box((12, 12), (7, 11), (7, 11))  # covers the false blob: boundaries become identical
    assert f_measure(pred, gt, void, bound_th=1) == 1.0
    per_frame = db_eval_boundary(np.stack([gt, gt]), np.stack([gt, pred]), bound_th=1)
    assert isinstance(per_frame, np.ndarray) and per_frame.shape == (2,)
    assert per_frame[0] == 1.0 and per_frame[1] == pytest.approx(f_measure(pred, gt, bound_th=1))


# ---------------------------------------------------------------------------------------- statistics


def test_db_statistics_mean_recall_decay() -> None:
    v = np.array([1, 1, 1, 0, 0, 0, 0, 0.5])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(3.5 / 8)
    assert recall == pytest.approx(3 / 8)  # strictly above 0.5: the 0.5 frame does not count
    # bins bounds round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin v[0:3], last v[5:8]
    assert decay == pytest.approx(1 - 0.5 / 3)
    assert db_statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))


# -------------------------------------------------------------------------------------- per sequence


def _two_object_sequence() -> tuple[np.ndarray, np.ndarray]:
    """T = 4 frames of 20x20: object 1 a square, object 2 a square with a void (255) ring pixel in the gt."""
    gt = np.zeros((4, 20, 20), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 10:16, 10:16] = 2
    gt[:, 9, 10] = 255
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[0] = 0  # first and last frames wrong: the semi-supervised protocol skips them
    pred[3] = 0
    pred[2][pred[2] == 2] = 0  # object 2 missing in frame 2: J = 0, F = 0 there
    return pred, gt


def test_evaluate_sequence_skips_first_and_last() -> None:
    pred, gt = _two_object_sequence()
    res = evaluate_sequence(pred, gt)
    assert list(res) == [1, 2]
    assert res[1]["J-Mean"] == 1.0 and res[1]["F-Mean"] == 1.0 and res[1]["J-Recall"] == 1.0
    # object 2 on frames 1, 2: J = [1, 0] (void counted as background, so frame 1 is exact)
    assert res[2]["J-Mean"] == pytest.approx(0.5) and res[2]["F-Mean"] == pytest.approx(0.5)
    assert res[2]["J-Recall"] == pytest.approx(0.5)
    # T' = 2: bins bounds round(linspace(1, 2, 5)) - 1 = [0, 0, 1, 1, 1] -> decay = v[0] - v[1] = 1
    assert res[2]["J-Decay"] == pytest.approx(1.0)
    full = evaluate_sequence(pred, gt, skip_first_and_last=False)
    assert full[1]["J-Mean"] == pytest.approx(0.5)  # frames 0..3: J = [0, 1, 1, 0]
    only2 = evaluate_sequence(pred, gt, object_ids=[2])
    assert list(only2) == [2] and only2[2] == res[2]


def test_evaluate_sequence_absent_object_and_bad_inputs() -> None:
    pred, gt = _two_object_sequence()
    gt[2][gt[2] == 2] = 0  # object 2 also absent from the gt in frame 2: both empty -> J = F = 1
    res = evaluate_sequence(pred, gt)
    assert res[2]["J-Mean"] == 1.0 and res[2]["F-Mean"] == 1.0
    bad = pred.copy()
    bad[1, 0, 0] = 3  # a label above the first gt frame's object count: the benchmark refuses it
    with pytest.raises(InputError):
        evaluate_sequence(bad, gt)
    bad = pred.copy()
    bad[0, 0, 0] = 3  # ... but only in the evaluated frames: frame 0 is skipped
    assert evaluate_sequence(bad, gt) == res
    with pytest.raises(InputError):
        evaluate_sequence(pred[:2], gt[:2])  # nothing left after skipping first and last
    with pytest.raises(InputError):
        evaluate_sequence(pred, gt[:, :10])


# ---------------------------------------------------------------------------------------- aggregation


def _stats(j: float, f: float) -> dict[str, float]:
    return {
        "J-Mean": j,
        "J-Recall": float(j > 0.5),
        "J-Decay": 0.0,
        "F-Mean": f,
        "F-Recall": float(f > 0.5),
        "F-Decay": 0.1,
    }


def test_summarize_means_over_objects_not_sequences() -> None:
    results = {
        "one": {1: _stats(1.0, 0.5)},
        "three": {1: _stats(0.2, 0.3), 2: _stats(0.4, 0.6), 3: _stats(0.6, 0.9)},
    }
    s = summarize(results)
    # over the 4 objects: J = (1 + .2 + .4 + .6) / 4 = 0.55 (a per-sequence mean would give 0.7)
    assert s["J"] == pytest.approx(0.55)
    assert s["F"] == pytest.approx((0.5 + 0.3 + 0.6 + 0.9) / 4)  # 0.575
    assert s["J&F"] == pytest.approx((0.55 + 0.575) / 2)
    assert s["J-Recall"] == pytest.approx(2 / 4) and s["F-Decay"] == pytest.approx(0.1)
    assert s["sequences"]["one"] == pytest.approx({"J": 1.0, "F": 0.5})
    assert s["sequences"]["three"] == pytest.approx({"J": 0.4, "F": 0.6})
    assert set(s["objects"]) == {"one_1", "three_1", "three_2", "three_3"}
    assert s["objects"]["three_2"] == pytest.approx({"J": 0.4, "F": 0.6})


def test_summarize_end_to_end() -> None:
    pred, gt = _two_object_sequence()
    one = (gt == 1).astype(np.uint8)
    s = summarize({"two": evaluate_sequence(pred, gt), "one": evaluate_sequence(one, one)})
    # objects: two_1 (J = F = 1), two_2 (J = F = 0.5), one_1 (J = F = 1)
    assert s["J"] == pytest.approx(2.5 / 3) and s["F"] == pytest.approx(2.5 / 3)
    assert s["J&F"] == pytest.approx(2.5 / 3)
    assert s["sequences"]["two"]["J"] == pytest.approx(0.75)
