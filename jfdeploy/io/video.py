"""Frame sources (a folder of frames, a video file, a stream URL or a camera) and the mp4 overlay writer.

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

Live sources (``rtsp://``, ``rtsps://``, ``http://``, ``https://`` URLs, ``/dev/videoN`` and camera
indices) go through the same FFmpeg: :class:`LiveFrames` has no frame count, reads a stream once, and
can decode on a background thread that keeps only the newest frame (``realtime``). An mp4 served over
plain HTTP streams when its ``moov`` atom comes first (``Mp4Encoder(..., faststart=True)``, FFmpeg's
``-movflags faststart``) or when the server answers range requests; otherwise FFmpeg must seek to the
end of the file and fails on a server without ranges.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Generator, Iterator
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
LIVE_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_LIVE_TIMEOUT = 5.0  # seconds without an answer (open) or without data (read) before a stream counts as lost
LIVE_READER_THREAD_NAME = "jfdeploy-live-reader"
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
    """The frames of one video, read lazily and in order.

    Files and folders can be iterated as often as needed; a live source (:class:`LiveFrames`) once.

    Attributes:
        path: the folder or video file (a live source: its URL or device, as given).
        names: one name per frame (a folder's file stems, or ``00000``, ``00001``, ... for a video),
            used to name the output masks. A live source lists the frames handed out so far.
        fps: frames per second (a folder has ``DEFAULT_FOLDER_FPS`` unless given).
        size: (H, W) of every frame.
        frame_count: number of frames iteration yields (``len(names)``); None for a live source, whose
            end is not known in advance.
        live: True for a stream or camera (no ``len()``, read once), False for files and folders.
        dropped: frames decoded but never handed out (only a live source in realtime mode drops).
        ended_by: why a live source's iteration ended (end of stream, an error, ``max_frames``); None
            while it runs, when the consumer stopped first, and for files and folders.
    """

    live: bool = False

    def __init__(
        self, path: Path | str, names: list[str], size: tuple[int, int], fps: float, max_frames: int | None = None
    ) -> None:
        self.path = path
        self.names = names if max_frames is None else names[:max_frames]
        self.size = size
        self.fps = fps
        self.frame_count: int | None = len(self.names)
        self.dropped = 0
        self.ended_by: str | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, rgb) with rgb uint8 [H, W, 3]."""
        return zip(self.names, self._frames(), strict=False)

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds open (nothing for files and folders: each pass opens its own)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({str(self.path)!r}, frames={self.frame_count}, size={self.size}, fps={self.fps})"


class FolderFrames(FrameSource):
    """A folder of .jpg/.jpeg/.png frames, in name order (e.g. DAVIS ``JPEGImages/480p/<seq>``)."""

    def __init__(self, folder: Path, fps: float = DEFAULT_FOLDER_FPS, max_frames: int | None = None) -> None:
        self.files = _list_frame_files(folder)[:max_frames]
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

    def __init__(self, file: Path, max_frames: int | None = None) -> None:
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
        names = [f"{i:05d}" for i in range(count)]
        super().__init__(file, names, (first.shape[0], first.shape[1]), fps, max_frames=max_frames)

    def _decode(self, file: str | os.PathLike[str]) -> Generator[np.ndarray, None, None]:
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


class LiveFrames(FrameSource):
    """The frames of a stream or camera, decoded with PyAV as they arrive; iterate once.

    Opening connects, reads the stream header and decodes the first frame (it gives the true size), so
    a bad URL, or a first mask of the wrong size, is reported before a model loads; iteration starts with
    that same frame. Names are the frame's index in the stream: ``00000``, ``00001``, ...

    Without ``realtime`` each step reads the next frame in the caller's thread: none is skipped, and a
    consumer slower than the stream falls behind it (FFmpeg and the server buffer). With ``realtime`` a
    background thread decodes continuously into a one-frame buffer; each step hands out the newest frame
    not yet handed out, and frames overwritten before being handed out are counted in ``dropped`` (the
    names then have gaps). A file served over HTTP arrives as fast as the network allows, not at its frame
    rate, so in realtime mode a slow consumer sees only some of its frames.

    A stream that ends, breaks, or sends nothing for ``timeout`` seconds ends the iteration after what
    was read, without an exception; ``ended_by`` says why. Leaving the loop (break, an exception, Ctrl-C)
    stops the thread and closes the connection; ``close()`` or a with-block does it for a source that is
    never iterated.
    """

    live = True

    def __init__(
        self,
        url: str,
        *,
        av_format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: float = DEFAULT_LIVE_TIMEOUT,
        max_frames: int | None = None,
        realtime: bool = False,
    ) -> None:
        """Open ``url`` (anything FFmpeg opens: a stream URL, or a device with ``av_format``, e.g. ``v4l2``).

        Args:
            url: what FFmpeg opens; error messages show it with any password replaced by ``***``.
            av_format: FFmpeg's input format (``v4l2`` for ``/dev/videoN``); None guesses from the URL.
            options: FFmpeg options of the input (e.g. ``{"rtsp_transport": "tcp"}``).
            timeout: seconds to wait for the connection, and for each read, before giving up.
            max_frames: stop after handing out this many frames (None: until the stream ends).
            realtime: decode on a background thread and hand out the newest frame (see the class).

        Raises:
            InputError: the stream cannot be opened (unreachable, refused, not found, timed out), has no
                video stream or no decodable frame; the message is one line naming the URL.
        """
        av = _import_av()
        self._av = av
        display = _redact_url(url)
        self.url = url
        self.timeout = float(timeout)
        self.max_frames = max_frames
        self.realtime = realtime
        errors = _av_errors(av)
        decoder: Iterator[Any] | None = None
        started = time.monotonic()
        try:
            container = av.open(url, format=av_format, options=dict(options or {}), timeout=(timeout, timeout))
        except errors as error:
            reason = _describe_lost(error, av, self.timeout, time.monotonic() - started, "no answer")
            raise InputError(f"{display}: cannot open the stream ({reason})") from None
        try:
            if not container.streams.video:
                kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
                raise InputError(f"{display}: no video stream (streams: {kinds})")
            stream = container.streams.video[0]
            decoder = container.decode(stream)
            started = time.monotonic()
            try:
                first = next(decoder, None)
            except errors as error:
                reason = _describe_lost(error, av, self.timeout, time.monotonic() - started, "no data")
                if re.match(r"^https?://", url, re.IGNORECASE):  # the usual cause: an mp4 with its index at the end
                    reason += "; an mp4 over HTTP needs its moov atom first (-movflags faststart) or range requests"
                raise InputError(f"{display}: cannot decode the first frame ({reason})") from None
            if first is None:
                raise InputError(f"{display}: the stream ended before its first frame")
            fps = _stream_fps(stream)
            self._announced_frames = stream.frames or None  # a file served over HTTP knows its length
        except BaseException:
            _close_decoder(decoder, container)
            raise
        self._decoder: Iterator[Any] = decoder
        # closes the decoder and the connection once, whoever calls it first: close(), the reader thread
        # when it returns (it is the container's last user), or the garbage collector
        self._finalizer = weakref.finalize(self, _close_decoder, decoder, container)
        self._first: np.ndarray | None = first.to_ndarray(format="rgb24")
        super().__init__(display, [], (self._first.shape[0], self._first.shape[1]), fps)
        self.frame_count = None
        self._iterated = False
        self._stream_end: str | None = None  # why the decoding stopped (set by the thread that decodes)
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._slot_changed = threading.Condition()
        self._slot: tuple[int, np.ndarray] | None = None  # the newest decoded frame not yet handed out
        self._reader_done = False
        self._reader_error: BaseException | None = None

    def __len__(self) -> int:
        raise TypeError(f"{self.path}: a live source has no length (frame_count is None)")

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, rgb) with rgb uint8 [H, W, 3], starting with the frame read when opening."""
        if self._iterated or self._stop.is_set():
            raise RuntimeError(f"{self.path}: a live source is read once; open it again to read it again")
        self._iterated = True
        return self._iterate_realtime() if self.realtime else self._iterate_in_step()

    def close(self) -> None:
        """Stop the reader thread (joined with a timeout) and close the connection; safe to call twice."""
        self._stop.set()
        reader = self._reader
        if reader is None:
            self._finalizer()
        elif reader is not threading.current_thread():
            reader.join(self.timeout + 1.0)  # the reader closes the container when it returns

    def _hand_out(self, index: int, rgb: np.ndarray) -> tuple[str, np.ndarray]:
        name = f"{index:05d}"
        self.names.append(name)
        return name, rgb

    def _cap_reached(self) -> bool:
        if self.max_frames is not None and len(self.names) >= self.max_frames:
            self.ended_by = f"max_frames ({self.max_frames}) reached"
            return True
        return False

    def _iterate_in_step(self) -> Iterator[tuple[str, np.ndarray]]:
        try:
            for index, rgb in self._decode_stream():
                yield self._hand_out(index, rgb)
                if self._cap_reached():
                    return
            self.ended_by = self._stream_end
        finally:
            self.close()

    def _iterate_realtime(self) -> Iterator[tuple[str, np.ndarray]]:
        frames = self._decode_stream()
        first = next(frames)  # the frame read when opening: it is always handed out
        self._reader = threading.Thread(
            target=self._read_continuously, args=(frames,), name=LIVE_READER_THREAD_NAME, daemon=True
        )
        try:
            self._reader.start()
            yield self._hand_out(*first)
            while not self._cap_reached():
                newest = self._take_newest()
                if newest is None:
                    self.ended_by = self._stream_end
                    return
                yield self._hand_out(*newest)
        finally:
            self.close()

    def _read_continuously(self, frames: Iterator[tuple[int, np.ndarray]]) -> None:
        """Reader thread: decode into the one-frame slot until the stream ends or ``_stop`` is set."""
        try:
            for item in frames:
                if self._stop.is_set():
                    return
                with self._slot_changed:
                    if self._slot is not None:
                        self.dropped += 1
                    self._slot = item
                    self._slot_changed.notify()
        except BaseException as error:  # not a stream error (those end _decode_stream): the consumer re-raises it
            self._reader_error = error
        finally:
            with self._slot_changed:
                self._reader_done = True
                self._slot_changed.notify()
            frames.close()  # type: ignore[attr-defined]
            self._finalizer()

    def _take_newest(self) -> tuple[int, np.ndarray] | None:
        """The newest frame not yet handed out (waits for one); None when the reader has finished."""
        with self._slot_changed:
            while self._slot is None and not self._reader_done:
                self._slot_changed.wait(0.5)
            newest, self._slot = self._slot, None
        if newest is None and self._reader_error is not None:
            raise self._reader_error
        return newest

    def _decode_stream(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index in the stream, rgb uint8 [H, W, 3]) from the first frame on; sets ``_stream_end`` at the end."""
        first, self._first = self._first, None
        assert first is not None
        yield 0, first
        errors = _av_errors(self._av)
        height, width = self.size
        index = 1
        while True:
            started = time.monotonic()
            try:
                frame = next(self._decoder, None)
            except errors as error:
                reason = _describe_lost(error, self._av, self.timeout, time.monotonic() - started, "no data")
                self._stream_end = f"stream lost after {index} frames: {reason}"
                return
            if frame is None:
                announced = self._announced_frames
                short = f" after {index} of the {announced} frames announced" if announced and index < announced else ""
                self._stream_end = "end of stream" + short
                return
            rgb = frame.to_ndarray(format="rgb24")
            if rgb.shape[:2] != (height, width):  # a resolution change inside the stream
                rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
            yield index, rgb
            index += 1

    def __repr__(self) -> str:
        mode = ", realtime" if self.realtime else ""
        return f"LiveFrames({str(self.path)!r}, size={self.size}, fps={self.fps}{mode})"


def _close_decoder(decoder: Iterator[Any] | None, container: Any) -> None:
    """Close PyAV's decode generator, then its container (errors ignored: the stream is being let go)."""
    for close in (getattr(decoder, "close", None), container.close):
        if close is None:
            continue
        try:
            close()
        except Exception:  # a broken connection can fail to close; nothing is left to save
            pass


def _stream_fps(stream: Any) -> float:
    """Frame rate of a PyAV video stream: its average, guessed or base rate, else ``DEFAULT_FOLDER_FPS``."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:  # live streams may report a time base (90000) as their rate
            return float(rate)
    return DEFAULT_FOLDER_FPS


def _describe_lost(error: BaseException, av: ModuleType, timeout: float, elapsed: float, what: str) -> str:
    """One line for a stream error: FFmpeg's reason, or for a timeout what did not come in how long.

    A timeout interrupts FFmpeg (PyAV raises ``ExitError``, "Immediate exit requested", or whatever the
    interrupted protocol makes of it), so FFmpeg's words then say nothing useful.
    """
    if isinstance(error, getattr(av.error, "ExitError", ())) or elapsed >= timeout:
        return f"timed out: {what} within {timeout:g} s"
    return _describe(error)


def _redact_url(url: str) -> str:
    """``url`` with the password of ``user:password@`` replaced by ``***`` (for messages and names)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", url)


def is_live_spec(spec: str | int | os.PathLike[str]) -> bool:
    """Whether :func:`open_frames` reads ``spec`` as a live source (stream URL, ``/dev/videoN``, camera index).

    Only the form is checked (no connection, no device lookup).
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return 0 <= spec <= 9
    if isinstance(spec, int):  # a bool
        return False
    text = os.fspath(spec)
    return bool(
        re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text)
        or re.fullmatch(r"\d", text)
        or re.fullmatch(r"/dev/video\d+", text)
    )


def _live_target(spec: str | int | os.PathLike[str]) -> tuple[str, str | None, dict[str, str]] | None:
    """(url, FFmpeg format, FFmpeg options) of a live ``spec``, None for a path; InputError for an unusable one."""
    if not is_live_spec(spec):
        return None
    text = str(spec) if isinstance(spec, int) else os.fspath(spec)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name not in LIVE_URL_SCHEMES:
            accepted = ", ".join(f"{s}://" for s in LIVE_URL_SCHEMES)
            raise InputError(
                f"{_redact_url(text)}: unsupported URL scheme {name}:// (streams: {accepted}; files: a path)"
            )
        return text, None, {"rtsp_transport": "tcp"} if name.startswith("rtsp") else {}
    device = text
    if re.fullmatch(r"\d", text):
        if not sys.platform.startswith("linux"):
            raise InputError(
                f"camera index {text}: camera indices are read as /dev/video{text}, which needs Linux; on "
                f"{sys.platform} give a stream URL, a video file or a folder of frames"
            )
        device = f"/dev/video{text}"
    if not Path(device).exists():
        index = f" (camera index {text})" if device != text else ""
        raise InputError(f"{device}: no such video device{index}; cameras present: ls /dev/video*")
    return device, "v4l2", {}


def open_frames(
    spec: str | int | os.PathLike[str],
    fps: float | None = None,
    *,
    max_frames: int | None = None,
    realtime: bool = False,
    timeout: float = DEFAULT_LIVE_TIMEOUT,
) -> FrameSource:
    """Open a folder of frames, a video file, a stream URL or a camera.

    Args:
        spec: one of
            - a folder of .jpg/.jpeg/.png frames (sorted by name; a folder whose only frames are in a
              ``JPEGImages`` subfolder works too);
            - a video file (.mp4, .avi, .mov, .mkv, .webm, .m4v);
            - a stream URL: ``rtsp://`` / ``rtsps://`` (over TCP), ``http://`` / ``https://`` (e.g. an mp4
              whose ``moov`` atom comes first, or an HLS playlist);
            - ``/dev/videoN`` (V4L2 camera), or a camera index ``0`` .. ``9`` (``/dev/videoN``; Linux only;
              a folder named like a digit: write ``./0``).
        fps: frame rate of a folder (default ``DEFAULT_FOLDER_FPS``); ignored for videos and live sources.
        max_frames: read at most this many frames (files and folders: ``frame_count`` becomes
            ``min(count, max_frames)``).
        realtime: live sources only: decode on a background thread and always hand out the newest frame,
            dropping the ones the consumer had no time for (see :class:`LiveFrames`).
        timeout: live sources only: seconds to wait for the connection, and for each read.

    Returns:
        a :class:`FrameSource`; ``live`` tells a :class:`LiveFrames` (``frame_count`` None, read once).

    Raises:
        InputError: missing path, empty folder, frames of different sizes, a corrupt or unsupported file,
            an unreachable or refused stream, no video stream, a missing camera, ``realtime`` for a file,
            ``max_frames`` < 1, or PyAV missing for a video.
    """
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames}")
    live = _live_target(spec)
    if live is not None:
        url, av_format, options = live
        return LiveFrames(
            url, av_format=av_format, options=options, timeout=timeout, max_frames=max_frames, realtime=realtime
        )
    path = Path(str(spec)) if isinstance(spec, int) else Path(spec)
    if realtime:
        raise InputError(f"{path}: realtime needs a live source (stream URL or camera); files are read frame by frame")
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return FolderFrames(path, DEFAULT_FOLDER_FPS if fps is None else float(fps), max_frames=max_frames)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrames(path, max_frames=max_frames)
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
    even sides: an odd height/width is padded by repeating the last row/column. ``faststart`` puts the
    ``moov`` atom before the frames (FFmpeg's ``-movflags faststart``): the file then plays while it
    downloads, also from an HTTP server without range requests.
    """

    def __init__(
        self, path: str | os.PathLike[str], fps: float, size: tuple[int, int], crf: int = 18, faststart: bool = False
    ) -> None:
        av = _import_av()
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.tmp_path = new_temp_file(self.path, suffix=".tmp.mp4")  # registered: removed if the command fails
        try:
            muxer_options = {"movflags": "faststart"} if faststart else {}
            self._container = av.open(str(self.tmp_path), mode="w", format="mp4", container_options=muxer_options)
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
