"""jfdeploy.io: palette masks, frame sources, video round trips, the overlay writer, the synthetic clip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jfdeploy.errors import InputError
from jfdeploy.io import (
    OverlayWriter,
    davis_palette,
    make_clip,
    open_frames,
    read_label_png,
    write_clip_folder,
    write_clip_video,
    write_label_png,
)
from jfdeploy.io.synthetic import MAX_OBJECTS

needs_av = pytest.mark.skipif(
    importlib.util.find_spec("av") is None, reason="PyAV not installed: pip install 'jfdeploy[video]'"
)


def _labels(height: int = 24, width: int = 32) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    labels[2:10, 3:12] = 1
    labels[12:20, 15:30] = 2
    labels[0, 0] = 7
    return labels


def _write_frames(folder: Path, names: list[str], size: tuple[int, int] = (16, 20)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, name in enumerate(names):
        rgb = np.full((*size, 3), 10 * i, np.uint8)
        Image.fromarray(rgb).save(folder / name)
        frames.append(rgb)
    return frames


# --- masks -----------------------------------------------------------------------------------------


def test_davis_palette_matches_the_standard_colours() -> None:
    palette = davis_palette()
    assert len(palette) == 768
    table = np.frombuffer(palette, np.uint8).reshape(256, 3)
    assert table[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert table[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in table.tolist()}) == 256


def test_palette_png_round_trip_keeps_labels_and_palette(tmp_path: Path) -> None:
    labels = _labels()
    path = write_label_png(tmp_path / "sub" / "00000.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
    read, palette = read_label_png(path)
    assert read.dtype == np.uint8 and np.array_equal(read, labels)
    assert palette is not None and palette[:768] == davis_palette()

    custom = bytes(range(256)) * 3
    write_label_png(tmp_path / "custom.png", labels, palette=custom)
    read2, palette2 = read_label_png(tmp_path / "custom.png")
    assert np.array_equal(read2, labels) and palette2 == custom
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00000.png", "custom.png", "sub"]  # no temp files


def test_rgb_mask_maps_palette_colours_to_labels(tmp_path: Path) -> None:
    labels = _labels()
    table = np.frombuffer(davis_palette(), np.uint8).reshape(256, 3)
    Image.fromarray(table[labels]).save(tmp_path / "rgb.png")
    rgba = np.concatenate([table[labels], np.full((*labels.shape, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        read, palette = read_label_png(tmp_path / name)
        assert np.array_equal(read, labels) and palette is None


def test_rgb_mask_with_foreign_colour_is_an_input_error(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "white.png")
    with pytest.raises(InputError, match=r"white\.png.*RGB\(255, 255, 255\)") as info:
        read_label_png(tmp_path / "white.png")
    assert "\n" not in str(info.value)


def test_grayscale_mask_values_are_labels(tmp_path: Path) -> None:
    labels = _labels()
    Image.fromarray(labels).save(tmp_path / "gray.png")  # mode L
    read, palette = read_label_png(tmp_path / "gray.png")
    assert np.array_equal(read, labels) and palette is None


def test_unreadable_and_missing_masks_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_label_png(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png"):
        read_label_png(tmp_path / "bad.png")


# --- frame sources ---------------------------------------------------------------------------------


def test_folder_frames_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "JPEGImages" / "480p" / "seq"
    frames = _write_frames(folder, ["frame10.png", "frame2.png", "frame1.png"])
    (folder / "notes.txt").write_text("ignored")
    source = open_frames(folder)
    assert len(source) == 3 and source.size == (16, 20) and source.fps == 24.0
    assert source.names == ["frame1", "frame2", "frame10"]
    got = list(source)
    assert [name for name, _ in got] == source.names
    assert all(rgb.dtype == np.uint8 and rgb.shape == (16, 20, 3) for _, rgb in got)
    assert np.array_equal(got[0][1], frames[2]) and np.array_equal(got[2][1], frames[0])
    assert len(list(source)) == 3  # iterates again


def test_davis_style_folder_and_clip_root(tmp_path: Path) -> None:
    frames, labels = make_clip(num_frames=3, height=40, width=48)
    image_dir, mask_dir = write_clip_folder(tmp_path / "clip", frames, labels)
    assert sorted(p.name for p in image_dir.iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    read, palette = read_label_png(mask_dir / "00001.png")
    assert np.array_equal(read, labels[1]) and palette is not None
    for path in (image_dir, tmp_path / "clip"):
        source = open_frames(path)
        assert source.names == ["00000", "00001", "00002"] and source.size == (40, 48)
        first = next(iter(source))[1]
        assert np.abs(first.astype(int) - frames[0]).mean() < 4  # JPEG


def test_frame_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        open_frames(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no frames"):
        open_frames(tmp_path / "empty")
    _write_frames(tmp_path / "mixed", ["a.png"], size=(16, 20))
    _write_frames(tmp_path / "mixed", ["b.png"], size=(16, 22))
    with pytest.raises(InputError, match="differ in size") as info:
        open_frames(tmp_path / "mixed")
    assert "\n" not in str(info.value)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder of frames or a video"):
        open_frames(tmp_path / "notes.txt")


@needs_av
def test_corrupt_video_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=r"random\.mp4") as info:
        open_frames(bad)
    assert "\n" not in str(info.value)


def test_missing_pyav_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_av(name: str, *args: object, **kwargs: object) -> object:
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"jfdeploy\[video\]"):
        open_frames(tmp_path / "clip.mp4")
    with pytest.raises(InputError, match=r"jfdeploy\[video\]"), OverlayWriter(tmp_path / "o.mp4", 10, (8, 8)):
        pass


@needs_av
def test_video_round_trip(tmp_path: Path) -> None:
    frames, _ = make_clip(num_frames=6, height=64, width=96, seed=3)
    path = write_clip_video(tmp_path / "out" / "clip.mp4", frames, fps=12)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["clip.mp4"]
    source = open_frames(path)
    assert len(source) == 6 and source.size == (64, 96) and source.fps == pytest.approx(12.0)
    assert source.names[:2] == ["00000", "00001"]
    decoded = [rgb for _, rgb in source]
    assert len(decoded) == 6 and decoded[0].dtype == np.uint8
    for original, rgb in zip(frames, decoded, strict=True):
        assert rgb.shape == (64, 96, 3)
        assert np.abs(rgb.astype(int) - original).mean() < 6


@needs_av
def test_overlay_writer(tmp_path: Path) -> None:
    frames, labels = make_clip(num_frames=4, height=41, width=63, seed=1)  # odd sides are padded
    out = tmp_path / "overlay.mp4"
    with OverlayWriter(out, fps=8, size=(41, 63)) as writer:
        for rgb, label_map in zip(frames, labels, strict=True):
            writer.write(rgb, label_map)
        assert not out.exists()  # written to a temp file until the block ends
    source = open_frames(out)
    assert len(source) == 4 and source.size == (42, 64)
    first = next(iter(source))[1][:41, :63].astype(int)
    background = labels[0] == 0
    assert np.abs(first[background] - frames[0][background]).mean() < 6
    assert np.abs(first[~background] - frames[0][~background]).mean() > 20  # objects coloured
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]


@needs_av
def test_overlay_writer_leaves_nothing_after_an_exception(tmp_path: Path) -> None:
    frames, labels = make_clip(num_frames=2, height=32, width=32)
    with pytest.raises(RuntimeError, match="boom"), OverlayWriter(tmp_path / "o.mp4", 10, (32, 32)) as writer:
        writer.write(frames[0], labels[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"), OverlayWriter(tmp_path / "empty.mp4", 10, (32, 32)):
        pass
    assert list(tmp_path.iterdir()) == []


# --- synthetic clip --------------------------------------------------------------------------------


def test_make_clip_is_deterministic_with_visible_moving_objects() -> None:
    frames, labels = make_clip()
    assert frames.shape == (10, 120, 200, 3) and frames.dtype == np.uint8
    assert labels.shape == (10, 120, 200) and labels.dtype == np.uint8
    again_frames, again_labels = make_clip()
    assert np.array_equal(frames, again_frames) and np.array_equal(labels, again_labels)
    other, _ = make_clip(seed=1)
    assert not np.array_equal(frames, other)
    for num_objects in range(1, MAX_OBJECTS + 1):
        _, labels = make_clip(num_frames=4, num_objects=num_objects, seed=num_objects)
        assert set(np.unique(labels[0])) == set(range(num_objects + 1))
        for k in range(1, num_objects + 1):
            assert (labels[0] == k).sum() > 100
            centre0 = np.argwhere(labels[0] == k).mean(0)
            centre1 = np.argwhere(labels[1] == k).mean(0)
            assert 0.5 < np.abs(centre1 - centre0).max() < 6  # moves a few pixels per frame
    with pytest.raises(ValueError):
        make_clip(num_objects=MAX_OBJECTS + 1)
