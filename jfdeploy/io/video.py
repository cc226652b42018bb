"""Frame sources (a folder of frames or a video file) and the mp4 overlay writer.

Video library: PyAV (``pip install 'jfdeploy[video]'``, i.e. ``av``), not OpenCV. Checked here with
``pip index versions`` / ``pip download --no-deps``: both ``av`` 18.1.0 (abi3 wheel for CPython >= 3.11;
PyAV 14-17 cover 3.10) and ``opencv-python-headless`` 5.0.0.93 install on Python 3.11 beside numpy 2.4 and
both read mp4 back. PyAV won because:

- its wheels carry FFmpeg with libx264, so the overlays are H.264/yuv420p mp4s that browsers and slide
  decks play; the OpenCV wheels can only write MPEG-4 part 2 (``mp4v``; ``avc1`` fails to open);
- it is smaller (36 MB against 61 MB), needs no numpy ABI of its own (OpenCV pins ``numpy>=2``), and
  gives the stream's exact frame rate and frame count;
- decoding errors come back as exceptions instead of a silent ``ok == False``.

The library is imported inside the functions that need it: folders of frames work without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from jfdeploy.errors import InputError
from jfdeploy.fsutil import commit, discard, new_temp_file
from jfdeploy.io.masks import palette_array

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_FOLDER_FPS = 24.0
_INSTALL_HINT = "pip install 'jfdeploy[video]' (or: pip install av)"


def _import_av() -> ModuleType:
    """PyAV, imported on first use; InputError with the install line when it is missing."""
    try:
        import av
    except ImportError:
        raise InputError(f"reading or writing video needs PyAV: {_INSTALL_HINT}") from None
    return av


def _av_errors(av: ModuleType) -> tuple[type[BaseException], ...]:
    """The exceptions PyAV raises for files it cannot open, demux or decode."""
    return (av.error.FFmpegError, OSError, ValueError, EOFError)


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2`` before ``frame10`` (same as plain order for zero-padded names)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class FrameSource:
    """The frames of one video, read lazily and in order; iterate as often as needed.

    Attributes:
        path: the folder or video file.
        names: one name per frame (a folder's file stems, or ``00000``, ``00001``, ... for a video),
            used to name the output masks.
        fps: frames per second (a folder has ``DEFAULT_FOLDER_FPS`` unless given).
        size: (H, W) of every frame.
    """

    def __init__(self, path: Path, names: list[str], size: tuple[int, int], fps: float) -> None:
        self.path = path
        self.names = names
        self.size = size
        self.fps = fps

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, rgb) with rgb uint8 [H, W, 3]."""
        return zip(self.names, self._frames(), strict=False)

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({str(self.path)!r}, frames={len(self)}, size={self.size}, fps={self.fps})"


class FolderFrames(FrameSource):
    """A folder of .jpg/.jpeg/.png frames, in name order (e.g. DAVIS ``JPEGImages/480p/<seq>``)."""

    def __init__(self, folder: Path, fps: float = DEFAULT_FOLDER_FPS) -> None:
        self.files = _list_frame_files(folder)
        size = _common_size(folder, self.files)
        super().__init__(folder, [f.stem for f in self.files], size, fps)

    def _frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            rgb = _read_rgb(file)
            if rgb.shape[:2] != self.size:
                raise InputError(f"{file}: frame is {rgb.shape[0]}x{rgb.shape[1]}, the others {self.size}")
            yield rgb


def natural_key(name: str) -> list[Any]:
    """Sort key that puts frame2 before frame10."""
    return _natural_key(name)


def list_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files of ``folder`` (hidden files skipped) in natural name order; InputError if none."""
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith(".")]
    if not files:
        raise InputError(f"{folder}: no {'/'.join(suffixes)} files found: no frames")
    files.sort(key=lambda f: _natural_key(f.name))
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"{folder}: two files are named {duplicate!r} (different extensions)")
    return files


def _list_frame_files(folder: Path) -> list[Path]:
    """Frames of ``folder``, or of ``folder/JPEGImages`` (the root of a clip written by write_clip_folder)."""
    has_frames = any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir())
    if not has_frames and (folder / "JPEGImages").is_dir():
        return _list_frame_files(folder / "JPEGImages")
    return list_images(folder)


def _common_size(folder: Path, files: list[Path]) -> tuple[int, int]:
    """(H, W) shared by every frame (read from the headers only), or InputError naming the odd one."""
    size: tuple[int, int] | None = None
    for file in files:
        try:
            with Image.open(file) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"{file}: cannot read the frame ({error})") from None
        if size is None:
            size = (height, width)
        elif size != (height, width):
            raise InputError(
                f"{folder}: frames differ in size: {files[0].name} is {size[0]}x{size[1]}, "
                f"{file.name} is {height}x{width}"
            )
    assert size is not None
    return size


def _read_rgb(file: Path) -> np.ndarray:
    """uint8 [H, W, 3] of one image file, or InputError naming it."""
    try:
        with Image.open(file) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{file}: cannot read the frame ({error})") from None


class VideoFrames(FrameSource):
    """The frames of a video file, decoded with PyAV; names are ``00000``, ``00001``, ..."""

    def __init__(self, file: Path) -> None:
        av = _import_av()
        errors = _av_errors(av)
        try:
            with av.open(str(file)) as container:
                if not container.streams.video:
                    raise InputError(f"{file}: no video stream in the file")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            decoder = self._decode(file)
            try:
                first = next(decoder, None)  # proves that the stream decodes; gives the true size
            finally:
                decoder.close()
        except errors as error:
            raise InputError(f"{file}: cannot read the video ({_describe(error)})") from None
        if first is None or count == 0:
            raise InputError(f"{file}: the video has no frames")
        fps = float(rate) if rate else DEFAULT_FOLDER_FPS
        super().__init__(file, [f"{i:05d}" for i in range(count)], (first.shape[0], first.shape[1]), fps)

    def _decode(self, file: Path) -> Iterator[np.ndarray]:
        av = _import_av()
        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")

    def _frames(self) -> Iterator[np.ndarray]:
        errors = _av_errors(_import_av())
        height, width = self.size
        frames = self._decode(self.path)
        try:
            for index in range(len(self)):
                try:
                    rgb = next(frames, None)
                except errors as error:
                    message = f"{self.path}: cannot decode frame {index} ({_describe(error)})"
                    raise InputError(message) from None
                if rgb is None:  # the header promised more frames than the stream holds
                    return
                if rgb.shape[:2] != (height, width):  # a resolution change inside the stream
                    rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
                yield rgb
        finally:
            frames.close()


def _describe(error: BaseException) -> str:
    """One line for an exception: FFmpeg's own words (without the repeated file name), else its first line."""
    strerror = getattr(error, "strerror", None)
    text = strerror if isinstance(strerror, str) and strerror else str(error)
    text = text.splitlines()[0] if text else ""
    return text or type(error).__name__


def open_frames(path: str | os.PathLike[str], fps: float | None = None) -> FrameSource:
    """Open a folder of frames or a video file.

    Args:
        path: a folder of .jpg/.jpeg/.png frames (sorted by name; a folder whose only frames are in a
            ``JPEGImages`` subfolder works too) or a video (.mp4, .avi, .mov, .mkv, .webm, .m4v).
        fps: frame rate of a folder (default ``DEFAULT_FOLDER_FPS``); ignored for a video.

    Raises:
        InputError: missing path, empty folder, frames of different sizes, a corrupt or unsupported file,
            or PyAV missing for a video.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return FolderFrames(path, DEFAULT_FOLDER_FPS if fps is None else float(fps))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrames(path)
    raise InputError(f"{path}: not a folder of frames or a video file ({', '.join(VIDEO_SUFFIXES)})")


def overlay_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5, palette: bytes | None = None) -> np.ndarray:
    """Colour the objects over a frame.

    Args:
        rgb: uint8 [H, W, 3].
        labels: uint8 [H, W]; 0 is left as it is, label ``k`` is blended with palette colour ``k``.
        alpha: weight of the colour inside an object; object boundaries are drawn at full colour.
        palette: RGB bytes (DAVIS by default).

    Returns:
        uint8 [H, W, 3].
    """
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels are {labels.shape}, the frame is {rgb.shape[:2]}")
    colours = palette_array(palette)[labels].astype(np.float32)
    out = rgb.astype(np.float32)
    inside = labels > 0
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colours[inside]
    edge = np.zeros_like(inside)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    edge &= inside
    out[edge] = colours[edge]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class Mp4Encoder:
    """Encodes uint8 [H, W, 3] frames into an mp4, atomically.

    Frames go to a hidden temp file in the target folder; ``finish()`` renames it onto ``path``,
    ``abort()`` deletes it. H.264 (libx264, yuv420p) when PyAV has it, else MPEG-4 part 2. yuv420p needs
    even sides: an odd height/width is padded by repeating the last row/column.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int], crf: int = 18) -> None:
        av = _import_av()
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.tmp_path = new_temp_file(self.path, suffix=".tmp.mp4")  # registered: removed if the command fails
        try:
            self._container = av.open(str(self.tmp_path), mode="w", format="mp4")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            options = {"crf": str(crf), "preset": "veryfast"} if codec == "libx264" else {}
            rate = Fraction(fps).limit_denominator(1001)
            self._stream = self._container.add_stream(codec, rate=rate, options=options)
            self._stream.height = self.size[0] + self.size[0] % 2
            self._stream.width = self.size[1] + self.size[1] % 2
            self._stream.pix_fmt = "yuv420p"
        except BaseException:
            self.abort()
            raise
        self._av = av
        self.frames_written = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] frame of the encoder's size."""
        if rgb.shape != (*self.size, 3) or rgb.dtype != np.uint8:
            height, width = self.size
            raise ValueError(f"expected a uint8 {height}x{width}x3 frame, got {rgb.dtype} {rgb.shape}")
        pad = ((0, self.size[0] % 2), (0, self.size[1] % 2), (0, 0))
        if any(p[1] for p in pad):
            rgb = np.pad(rgb, pad, mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def finish(self) -> Path:
        """Flush, close and rename the temp file onto ``path``; returns ``path``.

        Raises:
            ValueError: no frame was written (an mp4 without frames is not a video): nothing is saved.
        """
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written, {self.path} was not created")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            commit(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close without keeping anything: the temp file is deleted."""
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # the file is being thrown away: a failing close changes nothing
                pass
        discard(self.tmp_path)


class OverlayWriter:
    """Context manager writing an mp4 of the objects blended over the frames.

    Usage::

        with OverlayWriter("out.mp4", fps=source.fps, size=source.size) as writer:
            for name, rgb in source:
                writer.write(rgb, labels)  # uint8 [H, W, 3], uint8 [H, W]

    The video appears at ``path`` only when the block ends without an exception; otherwise the temp
    file is deleted and nothing is left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        size: tuple[int, int],
        alpha: float = 0.5,
        palette: bytes | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.alpha = alpha
        self.palette = palette
        self._encoder: Mp4Encoder | None = None

    def __enter__(self) -> OverlayWriter:
        self._encoder = Mp4Encoder(self.path, self.fps, self.size)
        return self

    def write(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        """Append one frame: rgb uint8 [H, W, 3] with labels uint8 [H, W] coloured over it."""
        if self._encoder is None:
            raise RuntimeError("OverlayWriter.write() outside its with-block")
        self._encoder.write(overlay_labels(rgb, labels, self.alpha, self.palette))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return
        if exc_type is None:
            encoder.finish()
        else:
            encoder.abort()
