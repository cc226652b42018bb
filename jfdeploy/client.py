"""A Python client of ``jfdeploy serve`` (numpy, Pillow, requests, websockets; no torch).

    with Session.create("http://127.0.0.1:8000", size=480, preset="ytvos") as session:
        labels = session.step(first_rgb, mask=first_label_map)     # uint8 H x W, the mask's labels
        labels = session.step(next_rgb)
        for labels in session.stream(frames, {0: first_label_map}):  # over the WebSocket, in order
            ...

Frames go as PNG (lossless: the server's masks then equal ``jfdeploy run`` on the same pixels) unless
``image_format="jpeg"``. Errors of the server raise ``ServerError`` with its status and one-line message.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import requests
from PIL import Image

DEFAULT_TIMEOUT = 60.0
Masks = Mapping[int, np.ndarray] | Sequence[np.ndarray | None] | None


class ServerError(RuntimeError):
    """An answer of the server other than success: ``status`` (HTTP status or WebSocket close / error status),
    ``message`` its one line, ``retry_after`` seconds where the server said so."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def encode_image(rgb: np.ndarray, image_format: str = "png") -> bytes:
    """uint8 H x W x 3 -> PNG (fast compression) or JPEG (quality 95) bytes."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"a frame must be a uint8 H x W x 3 array, got {rgb.dtype} {rgb.shape}")
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if image_format == "png":
        image.save(out, format="PNG", compress_level=1)
    elif image_format == "jpeg":
        image.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    return out.getvalue()


def encode_mask(labels: np.ndarray) -> bytes:
    """uint8 H x W labels (0 = background) -> a grayscale PNG whose values are the labels."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a mask must be an H x W label map, got shape {labels.shape}")
    image = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint8)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decode_labels(data: bytes) -> np.ndarray:
    """A label PNG of the server -> uint8 H x W."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image).astype(np.uint8)


def _raise_for(response: requests.Response) -> None:
    if response.ok:
        return
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason
    retry = response.headers.get("Retry-After")
    raise ServerError(response.status_code, message, float(retry) if retry else None)


def _mask_at(masks: Masks, index: int) -> np.ndarray | None:
    if masks is None:
        return None
    if isinstance(masks, Mapping):
        return masks.get(index)
    return masks[index] if index < len(masks) else None


class Session:
    """One session (one video) on a ``jfdeploy serve`` server; a context manager that closes it."""

    def __init__(self, url: str, session_id: str, *, api_key: str | None = None, image_format: str = "png",
                 timeout: float = DEFAULT_TIMEOUT, http: requests.Session | None = None) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.id = session_id
        self.api_key = api_key
        self.image_format = image_format
        self.timeout = timeout
        self.http = http or requests.Session()
        self.options: dict[str, Any] = {}
        if api_key is not None:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def create(cls, url: str, api_key: str | None = None, *, image_format: str = "png",
               timeout: float = DEFAULT_TIMEOUT, **options: Any) -> Session:  # fmt: skip
        """Open a session; ``options`` are the server's session options (size, preset, mem_every,
        max_memory_frames, topk, variant, max_objects)."""
        session = cls(url, "", api_key=api_key, image_format=image_format, timeout=timeout)
        response = session.http.post(f"{session.url}/sessions", json=options, timeout=timeout)
        _raise_for(response)
        answer = response.json()
        session.id = answer["session"]
        session.options = answer.get("options", {})
        return session

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def _post_frame(self, rgb: np.ndarray, mask: np.ndarray | None, probabilities: bool) -> requests.Response:
        files: dict[str, tuple[str, bytes, str]] = {
            "image": (f"frame.{self.image_format}", encode_image(rgb, self.image_format), f"image/{self.image_format}")
        }
        if mask is not None:
            files["mask"] = ("mask.png", encode_mask(mask), "image/png")
        params = {"probabilities": "1"} if probabilities else None
        response = self.http.post(f"{self.url}/sessions/{self.id}/frames", files=files, params=params,
                                  timeout=self.timeout)  # fmt: skip
        _raise_for(response)
        return response

    def step(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Segment the next frame (uint8 H x W x 3); ``mask``: a label map given on it (new objects start,
        known ones are corrected). Returns its uint8 H x W label map."""
        return decode_labels(self._post_frame(rgb, mask, False).content)

    def step_probabilities(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``step`` that also returns the probabilities: {"labels": uint8 H x W, "object_ids": int32 [O],
        "probabilities": float32 (1 + O) x H x W, background first}."""
        with np.load(io.BytesIO(self._post_frame(rgb, mask, True).content)) as data:
            return {name: data[name] for name in data.files}

    def stream(self, frames: Iterable[np.ndarray], masks: Masks = None, *, window: int = 2) -> Iterator[np.ndarray]:
        """Segment ``frames`` over one WebSocket, yielding each label map in order; ``masks``: label maps
        by frame index (a dict, or a list with None where there is none). Up to ``window`` frames are in
        flight (keep it at most the server's --max-queue)."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        ws_url = "ws" + self.url[len("http") :] + f"/sessions/{self.id}/stream"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key is not None else None
        with connect(ws_url, additional_headers=headers, open_timeout=self.timeout, max_size=None) as ws:
            in_flight = 0

            def receive() -> np.ndarray:
                try:
                    reply = ws.recv(timeout=self.timeout)
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else 1006
                    reason = closed.rcvd.reason if closed.rcvd is not None else "connection lost"
                    raise ServerError(code, reason) from None
                if isinstance(reply, str):
                    error = json.loads(reply)
                    raise ServerError(int(error.get("status", 400)), str(error.get("error")))
                return decode_labels(reply)

            for index, rgb in enumerate(frames):
                mask = _mask_at(masks, index)
                if mask is not None:
                    ws.send(json.dumps({"mask": base64.b64encode(encode_mask(mask)).decode("ascii")}))
                ws.send(encode_image(rgb, self.image_format))
                in_flight += 1
                if in_flight >= window:
                    yield receive()
                    in_flight -= 1
            while in_flight:
                yield receive()
                in_flight -= 1

    def close(self) -> None:
        """Close the session on the server (its memory is freed); a session already gone is fine."""
        if not self.id:
            return
        try:
            response = self.http.delete(f"{self.url}/sessions/{self.id}", timeout=self.timeout)
            if response.status_code != 404:
                _raise_for(response)
        finally:
            self.id = ""
