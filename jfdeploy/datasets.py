"""Benchmark datasets (DAVIS 2016/2017, YouTube-VOS) and plain folders as ``Sequence`` lists, and the
mask writer/resume helpers of an evaluation run (scores: ``jfdeploy.scoring``).

Layouts read::

    DAVIS (davis):                                 YouTube-VOS (youtube_vos):
    root/JPEGImages/480p/<seq>/00000.jpg ...       root/<split>/meta.json
    root/Annotations/480p/<seq>/00000.png ...      root/<split>/JPEGImages/<vid>/00000.jpg, 00005.jpg ...
    root/ImageSets/<year>/<split>.txt              root/<split>/Annotations/<vid>/00000.png (first appearances)
                                                   root/<split>_all_frames/JPEGImages/<vid>/*.jpg  (optional)
                                                   root/all_frames/<split>_all_frames/JPEGImages/<vid>/*.jpg

Layouts written (``write_sequence_masks``)::

    davis:    out_root/<seq>/<frame>.png                 (what davis2017-evaluation reads)
    youtube:  out_root/Annotations/<vid>/<frame>.png     (zip ``Annotations`` for the CodaLab server)

Labels follow ``jfdeploy.io.masks``: uint8 [H, W], 0 = background, k = object k; the benchmarks' void
label 255 is never an object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from jfdeploy.errors import InputError
from jfdeploy.io.masks import read_label_png, write_label_png
from jfdeploy.io.video import IMAGE_SUFFIXES, list_images, natural_key
from jfdeploy.metrics import VOID_LABEL

__all__ = [
    "Layout",
    "Sequence",
    "davis",
    "generic",
    "mask_path",
    "missing_masks",
    "sequence_complete",
    "sequence_folder",
    "write_frame_mask",
    "write_sequence_masks",
    "youtube_vos",
]

Layout = Literal["davis", "youtube"]
LAYOUTS: tuple[str, ...] = ("davis", "youtube")
_MAX_NAMES = 5  # names quoted in one error message


# ------------------------------------------------------------------------------------------ the sequence


@dataclass
class Sequence:
    """One video to segment: its frames, the annotations that introduce its objects, the frames to save.

    Attributes:
        name: sequence (DAVIS) or video id (YouTube-VOS); the output sub-folder.
        frames: every frame to run, in order (for YouTube-VOS from the first annotated frame on).
        frame_names: file stems of ``frames`` ("00000", ...); output masks are named ``<stem>.png``.
        annotations: frame index (into ``frames``) -> annotation PNG given there. DAVIS: ``{0: ...}``;
            YouTube-VOS: every frame with a PNG in ``<split>/Annotations/<vid>`` (index 0 always among them).
        save: one flag per frame: whether the benchmark wants its mask (DAVIS and generic: all True;
            YouTube-VOS: the frames listed in meta.json, the first annotated frame included).
        object_ids: every object label (1..255, never the void 255 of the benchmarks) in first-appearance
            order, ascending within one frame.
        first_appearance: object id -> index of the frame whose annotation introduces it.
        palette: the first annotation's palette (RGB bytes), None for grayscale masks (then the DAVIS one is
            written).
        size: (H, W) of the frames and masks.
        layout: where ``write_sequence_masks`` puts the masks: "davis" or "youtube".
        binary: DAVIS 2016 (single object): ``load_annotation`` maps every nonzero label (0/255 masks) to 1.
        void_label: annotation label that is no object and reads as background (255 for the benchmarks,
            None for ``generic``, whose masks may use 255 as an object).
    """

    name: str
    frames: list[Path]
    frame_names: list[str]
    annotations: dict[int, Path]
    save: list[bool]
    object_ids: list[int]
    first_appearance: dict[int, int]
    palette: bytes | None
    size: tuple[int, int]
    layout: Layout = "davis"
    binary: bool = False
    void_label: int | None = VOID_LABEL

    def __post_init__(self) -> None:
        n = len(self.frames)
        if len(self.frame_names) != n or len(self.save) != n:
            raise ValueError(
                f"{self.name}: frames ({n}), frame_names ({len(self.frame_names)}) and save "
                f"({len(self.save)}) differ in length"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if any(not 0 <= i < n for i in self.annotations):
            raise ValueError(f"{self.name}: annotation indices {sorted(self.annotations)} outside 0..{n - 1}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frames_to_save(self) -> list[int]:
        """Indices of the frames whose masks the benchmark wants."""
        return [i for i, keep in enumerate(self.save) if keep]

    def new_objects(self, index: int) -> list[int]:
        """Objects introduced by the annotation of frame ``index`` (empty for other frames)."""
        return [obj for obj in self.object_ids if self.first_appearance[obj] == index]

    def load_annotation(self, index: int) -> np.ndarray:
        """The annotation of frame ``index`` as uint8 [H, W] labels (binary -> 0/1, void -> 0).

        Raises:
            KeyError: frame ``index`` has no annotation.
            InputError: unreadable file or a size other than ``size``.
        """
        return _read_annotation(self.annotations[index], self.size, self.binary, self.void_label)

    def read_frame(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB of frame ``index``; InputError if unreadable or not ``size``."""
        file = self.frames[index]
        try:
            with Image.open(file) as image:
                rgb = np.array(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"{file}: cannot read the frame ({error})") from None
        if rgb.shape[:2] != self.size:
            raise InputError(f"{file}: frame is {rgb.shape[0]}x{rgb.shape[1]}, the sequence {self.size}")
        return rgb

    def iter_frames(self) -> Iterator[tuple[int, str, np.ndarray]]:
        """Yield (index, frame name, uint8 [H, W, 3] RGB) for every frame to run, in order."""
        for index, name in enumerate(self.frame_names):
            yield index, name, self.read_frame(index)


# --------------------------------------------------------------------------------------- small helpers


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} not found: {path}")
    return path


def list_folder_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files of an existing ``folder`` in natural name order (``jfdeploy.io.video.list_images``)."""
    return list_images(require_dir(folder, "folder"), suffixes)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, or InputError naming the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{path}: cannot read the image ({error})") from None
    return height, width


def _load_annotation(
    path: Path, size: tuple[int, int] | None, binary: bool, void_label: int | None
) -> tuple[np.ndarray, bytes | None]:
    """uint8 [H, W] labels and palette of an annotation PNG: nonzero -> 1 when ``binary``, ``void_label`` -> 0."""
    labels, palette = read_label_png(path)
    if size is not None and labels.shape != tuple(size):
        raise InputError(f"{path}: mask is {labels.shape[0]}x{labels.shape[1]}, the frames are {size[0]}x{size[1]}")
    if binary:
        return (labels > 0).astype(np.uint8), palette
    if void_label is not None:
        labels = np.where(labels == void_label, 0, labels).astype(np.uint8)
    return labels, palette


def _read_annotation(path: Path, size: tuple[int, int] | None, binary: bool, void_label: int | None) -> np.ndarray:
    """The labels of ``_load_annotation``."""
    return _load_annotation(path, size, binary, void_label)[0]


def _objects_of(labels: np.ndarray) -> list[int]:
    """Object labels present in a label map, ascending (0 excluded)."""
    return [int(v) for v in np.unique(labels) if v != 0]


def quote_names(names: list[str]) -> str:
    """A few names for an error message: 'a, b, c (+7 more)'."""
    shown = ", ".join(names[:_MAX_NAMES])
    return shown if len(names) <= _MAX_NAMES else f"{shown} (+{len(names) - _MAX_NAMES} more)"


def _select(names: list[str], wanted: Iterable[str] | None, source: Path) -> list[str]:
    """``names`` restricted to ``wanted`` (kept in ``wanted`` order); InputError for names not in ``names``."""
    if wanted is None:
        return names
    wanted, known = list(wanted), set(names)
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise InputError(f"sequence(s) not in {source}: {quote_names(unknown)}")
    return wanted


def _first_annotation_objects(
    path: Path, size: tuple[int, int], binary: bool, void_label: int | None = VOID_LABEL, what: str = "annotation"
) -> tuple[list[int], bytes | None]:
    """Objects and palette of a first annotation; InputError if it is missing, of another size or empty."""
    if not path.is_file():
        raise InputError(f"first-frame {what} not found: {path}")
    labels, palette = _load_annotation(path, size, binary, void_label)
    objects = _objects_of(labels)
    if not objects:
        raise InputError(f"{path}: the first-frame {what} holds no object (all background)")
    return objects, palette


# ------------------------------------------------------------------------------------------------ DAVIS


def _davis_imageset(root: Path, year: int, split: str) -> tuple[Path, list[str]]:
    """The sequence names of ``ImageSets/<year>/<split>.txt`` (one name a line).

    DAVIS 2016's own release (``ImageSets/480p/<split>.txt``, lines of ``/JPEGImages/480p/<seq>/00000.jpg
    /Annotations/...``) is read too when the 2016 list is absent: the names are the frames' folders.
    """
    listing = root / "ImageSets" / str(year) / f"{split}.txt"
    if not listing.is_file() and year == 2016 and (root / "ImageSets" / "480p" / f"{split}.txt").is_file():
        listing = root / "ImageSets" / "480p" / f"{split}.txt"
    if not listing.is_file():
        raise InputError(f"DAVIS image set not found: {listing}")
    names: list[str] = []
    for line in listing.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        name = Path(line.split()[0]).parent.name if "/" in line else line
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"{listing}: the image set lists no sequence")
    return listing, names


def _first_frame_sequence(
    name: str,
    frames: list[Path],
    first: Path,
    objects: list[int],
    palette: bytes | None,
    size: tuple[int, int],
    **options: Any,
) -> Sequence:
    """A DAVIS-style sequence: every object given on frame 0, every frame saved."""
    return Sequence(
        name=name,
        frames=frames,
        frame_names=[f.stem for f in frames],
        annotations={0: first},
        save=[True] * len(frames),
        object_ids=objects,
        first_appearance=dict.fromkeys(objects, 0),
        palette=palette,
        size=size,
        layout="davis",
        **options,
    )


def _davis_sequence(root: Path, name: str, resolution: str, binary: bool) -> Sequence:
    frames_dir = require_dir(root / "JPEGImages" / resolution / name, f"frames of DAVIS sequence {name!r}")
    frames = list_folder_images(frames_dir)
    size = _image_size(frames[0])
    first = root / "Annotations" / resolution / name / f"{frames[0].stem}.png"
    objects, palette = _first_annotation_objects(first, size, binary)
    return _first_frame_sequence(name, frames, first, objects, palette, size, binary=binary)


def davis(
    root: str | os.PathLike[str],
    year: int = 2017,
    split: str = "val",
    resolution: str = "480p",
    sequences: Iterable[str] | None = None,
) -> list[Sequence]:
    """The sequences of a DAVIS split, in image-set order.

    Layout: ``root/ImageSets/<year>/<split>.txt`` (one sequence a line), ``root/JPEGImages/<resolution>/<seq>/
    00000.jpg ...`` and ``root/Annotations/<resolution>/<seq>/00000.png`` (the first frame's annotation; the
    semi-supervised task gives only that one). DAVIS 2016 (``year=2016``) is single-object: its 0/255
    masks (or the 2017 release's instance labels) read as object 1 (``Sequence.binary``).

    Args:
        root: the DAVIS folder (e.g. ``DAVIS/2017/trainval``).
        year: 2016 or 2017 (names the image-set folder).
        split: image set name: "val", "train", "test-dev", ...
        resolution: "480p" or "Full-Resolution".
        sequences: only these sequences (in this order); each must be in the image set.

    Raises:
        InputError: a missing folder or image set, a listed sequence without frames, a first annotation
            missing, unreadable, of another size than the frames, or without any object.
    """
    root = Path(root)
    require_dir(root, "DAVIS root")
    for sub in ("JPEGImages", "Annotations"):
        require_dir(root / sub / resolution, f"DAVIS {sub} folder")
    listing, names = _davis_imageset(root, int(year), split)
    names = _select(names, sequences, listing)
    return [_davis_sequence(root, name, resolution, binary=int(year) == 2016) for name in names]


# ------------------------------------------------------------------------------------------ YouTube-VOS


def _youtube_meta(split_dir: Path) -> dict[str, set[str]]:
    """meta.json as {video: frame names the benchmark evaluates (the union over the video's objects)}."""
    meta_path = split_dir / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"YouTube-VOS meta.json not found: {meta_path}")
    try:
        videos = json.loads(meta_path.read_text())["videos"]
        out: dict[str, set[str]] = {}
        for vid, entry in videos.items():
            out[str(vid)] = {str(f) for obj in entry["objects"].values() for f in obj["frames"]}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise InputError(
            f'{meta_path}: not a YouTube-VOS meta.json ({{"videos": {{vid: {{"objects": {{id: {{"frames": '
            f"[...]}}}}}}}}}}) ({type(error).__name__}: {error})"
        ) from None
    return out


def _all_frames_dir(root: Path, split: str, vid: str) -> Path | None:
    """The dense-frames folder of a video, if the dataset has one (both usual places are looked at)."""
    for base in (root / f"{split}_all_frames", root / "all_frames" / f"{split}_all_frames"):
        folder = base / "JPEGImages" / vid
        if folder.is_dir():
            return folder
    return None


def _youtube_annotations(
    vid: str, ann_dir: Path, frame_index: dict[str, int], size: tuple[int, int]
) -> tuple[dict[int, Path], list[int], dict[int, int], bytes | None]:
    """Annotation PNGs by (untrimmed) frame index, objects in first-appearance order, their first frames, palette."""
    annotations: dict[int, Path] = {}
    for png in list_folder_images(ann_dir, (".png",)):
        if png.stem not in frame_index:
            raise InputError(f"{png}: annotation of a frame that is not among the video's frames")
        annotations[frame_index[png.stem]] = png
    first_appearance: dict[int, int] = {}
    palette: bytes | None = None
    for index in sorted(annotations):
        labels, file_palette = _load_annotation(annotations[index], size, False, VOID_LABEL)
        if not first_appearance:
            if not labels.any():
                raise InputError(f"{annotations[index]}: the first annotation of video {vid!r} holds no object")
            palette = file_palette
        for obj in _objects_of(labels):
            first_appearance.setdefault(obj, index)
    object_ids = sorted(first_appearance, key=lambda obj: (first_appearance[obj], obj))
    return annotations, object_ids, first_appearance, palette


def _youtube_sequence(root: Path, split: str, vid: str, wanted: set[str], all_frames: bool | None) -> Sequence:
    split_dir = root / split
    dense = _all_frames_dir(root, split, vid) if all_frames is not False else None
    if all_frames and dense is None:
        raise InputError(f"no all-frames folder for video {vid!r}: {root / f'{split}_all_frames' / 'JPEGImages' / vid}")
    frames_dir = dense or require_dir(split_dir / "JPEGImages" / vid, f"frames of YouTube-VOS video {vid!r}")
    frames = list_folder_images(frames_dir)
    size = _image_size(frames[0])
    ann_dir = require_dir(split_dir / "Annotations" / vid, f"annotations of YouTube-VOS video {vid!r}")
    annotations, object_ids, first_appearance, palette = _youtube_annotations(
        vid, ann_dir, {f.stem: i for i, f in enumerate(frames)}, size
    )
    start = min(annotations)
    frames = frames[start:]
    names = [f.stem for f in frames]
    unknown = sorted(wanted - set(names), key=natural_key)
    if unknown:
        raise InputError(
            f"video {vid!r}: meta.json asks for frame(s) {quote_names(unknown)} which are not in {frames_dir} "
            "from the first annotated frame on"
        )
    return Sequence(
        name=vid,
        frames=frames,
        frame_names=names,
        annotations={i - start: p for i, p in sorted(annotations.items())},
        save=[n in wanted for n in names],
        object_ids=object_ids,
        first_appearance={obj: i - start for obj, i in first_appearance.items()},
        palette=palette,
        size=size,
        layout="youtube",
    )


def youtube_vos(
    root: str | os.PathLike[str],
    split: str = "valid",
    sequences: Iterable[str] | None = None,
    all_frames: bool | None = None,
) -> list[Sequence]:
    """The videos of a YouTube-VOS split (2018 or 2019), sorted by id, as the benchmark runs them.

    Layout: ``root/<split>/meta.json`` (``{"videos": {vid: {"objects": {"1": {"category": .., "frames":
    ["00000", "00005", ...]}}}}}``), ``root/<split>/JPEGImages/<vid>/*.jpg`` (every 5th frame),
    ``root/<split>/Annotations/<vid>/*.png`` (only on the frames where objects first appear), and optionally
    the dense frames ``root/<split>_all_frames/JPEGImages/<vid>/*.jpg`` (or ``root/all_frames/<split>_all_frames
    /...``, the STCN/XMem/JointFormer layout).

    Conventions (those of the STCN/XMem/JointFormer evaluation code):

    * frames to run: the dense frames when the all-frames folder of the video exists (unless
      ``all_frames=False``), else the sparse ones; frames before the first annotated one are dropped;
    * annotations: every annotation PNG; an object's first appearance is the first PNG holding its label;
    * frames to save: the union of the video's object frame lists in meta.json (the first annotated frame
      included), never the extra dense frames; the output is ``Annotations/<vid>/<frame>.png``.

    Args:
        root: the YouTube-VOS folder holding ``<split>/``.
        split: "valid" (or "test", "train").
        sequences: only these videos (in this order); each must be in meta.json.
        all_frames: None: use the dense frames where they exist; True: require them; False: never use them.

    Raises:
        InputError: missing folders or meta.json, an unreadable meta.json, a video without frames or
            annotations, an empty first annotation, an annotation or a meta.json frame that is not among the
            frames to run, a mask of another size than the frames.
    """
    root = Path(root)
    split_dir = require_dir(root / split, "YouTube-VOS split folder")
    for sub in ("JPEGImages", "Annotations"):
        require_dir(split_dir / sub, f"YouTube-VOS {sub} folder")
    meta = _youtube_meta(split_dir)
    names = _select(sorted(meta), sequences, split_dir / "meta.json")
    return [_youtube_sequence(root, split, vid, meta[vid], all_frames) for vid in names]


# ---------------------------------------------------------------------------------------------- generic


def generic(
    frames_dir: str | os.PathLike[str], first_mask: str | os.PathLike[str], name: str | None = None
) -> Sequence:
    """A folder of frames (.jpg/.jpeg/.png, natural name order) with the first frame's label PNG.

    Every frame is saved (layout "davis": ``out_root/<name>/<frame>.png``); every label 1..255 of the mask
    is an object (no void label); the mask's palette is kept.

    Args:
        frames_dir: the folder of frames.
        first_mask: the first frame's label PNG (palette or grayscale), same size as the frames.
        name: the sequence name (default: the folder's name).

    Raises:
        InputError: missing folder or mask, no frames, a mask of another size or without any object.
    """
    frames_dir = Path(frames_dir)
    if frames_dir.exists() and not frames_dir.is_dir():
        raise InputError(f"{frames_dir}: not a folder of frames (videos: use jfdeploy.io.open_frames)")
    frames = list_folder_images(require_dir(frames_dir, "frames folder"))
    size = _image_size(frames[0])
    mask = Path(first_mask)
    objects, palette = _first_annotation_objects(mask, size, False, void_label=None, what="mask")
    return _first_frame_sequence(name or frames_dir.resolve().name, frames, mask, objects, palette, size,
                                 void_label=None)  # fmt: skip


# --------------------------------------------------------------------------------- writing and resuming


def sequence_folder(out_root: str | os.PathLike[str], sequence: Sequence, layout: Layout | None = None) -> Path:
    """The folder of a sequence's masks: ``out_root/<seq>`` (davis) or ``out_root/Annotations/<vid>`` (youtube);
    ``layout`` defaults to ``sequence.layout``. An evaluation writes it whole (staged, then renamed into place)."""
    layout = layout or sequence.layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    base = Path(out_root) / "Annotations" if layout == "youtube" else Path(out_root)
    return base / sequence.name


def mask_path(
    out_root: str | os.PathLike[str], sequence: Sequence, frame_index: int, layout: Layout | None = None
) -> Path:
    """Where the mask of frame ``frame_index`` goes: ``sequence_folder(...)/<frame>.png``."""
    return sequence_folder(out_root, sequence, layout) / f"{sequence.frame_names[frame_index]}.png"


def _check_labels(sequence: Sequence, frame_index: int, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(sequence.size):
        raise InputError(
            f"{sequence.name} frame {frame_index}: labels are {labels.shape}, the sequence {sequence.size}"
        )
    return labels


def write_frame_mask(folder: str | os.PathLike[str], sequence: Sequence, frame_index: int, labels: np.ndarray) -> Path:
    """Write one frame's labels (uint8 [H, W], H x W = ``sequence.size``) as ``folder/<frame>.png`` with the
    sequence's palette, atomically; InputError for labels of another size. ``folder`` is the sequence's
    folder (``sequence_folder``) or a staging folder that becomes it."""
    labels = _check_labels(sequence, frame_index, labels)
    return write_label_png(Path(folder) / f"{sequence.frame_names[frame_index]}.png", labels, sequence.palette)


def write_sequence_masks(
    out_root: str | os.PathLike[str],
    sequence: Sequence,
    frame_index: int,
    labels: np.ndarray,
    layout: Layout | None = None,
    all_frames: bool = False,
) -> Path | None:
    """Write one frame's labels as a palette PNG (the sequence's palette), atomically, at ``mask_path``.

    Frames whose ``sequence.save`` flag is False are skipped (None is returned) unless ``all_frames``:
    the YouTube-VOS server wants exactly the meta.json frames. Call it for every frame.

    Args:
        out_root: the results folder (see ``mask_path`` for the layouts).
        sequence: the sequence.
        frame_index: index into ``sequence.frames``.
        labels: uint8 [H, W] with (H, W) = ``sequence.size``.
        layout: "davis" or "youtube"; ``sequence.layout`` by default.
        all_frames: write frames that the benchmark does not evaluate too.

    Returns:
        The path written, or None for a skipped frame.
    """
    labels = _check_labels(sequence, frame_index, labels)
    if not (all_frames or sequence.save[frame_index]):
        return None
    return write_frame_mask(sequence_folder(out_root, sequence, layout), sequence, frame_index, labels)


def _mask_ok(path: Path, size: tuple[int, int]) -> bool:
    """Whether ``path`` is a PNG that decodes fully to ``size``."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or (image.size[1], image.size[0]) != tuple(size):
                return False
            image.load()
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    return True


def missing_masks(out_root: str | os.PathLike[str], sequence: Sequence, layout: Layout | None = None) -> list[int]:
    """Indices of the frames to save whose PNG is absent, unreadable or not ``sequence.size``."""
    return [i for i in sequence.frames_to_save if not _mask_ok(mask_path(out_root, sequence, i, layout), sequence.size)]


def sequence_complete(out_root: str | os.PathLike[str], sequence: Sequence, layout: Layout | None = None) -> bool:
    """Whether every frame to save has a readable PNG of the right size (a finished sequence to skip on resume)."""
    return not missing_masks(out_root, sequence, layout)
