"""Encoded images in and out of the server: frames (PNG / JPEG), label maps (palette PNGs), probabilities (npz).

Frames decode as ``jfdeploy run`` reads a folder of frames (Pillow, converted to RGB), so the same file
gives the same pixels and therefore the same masks. Label maps follow the DAVIS convention of
``jfdeploy.io.masks``: a palette (P) or grayscale (L) PNG whose pixel values are the labels, 0 the
background, or an RGB(A) PNG whose colours all belong to the DAVIS palette.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jfdeploy.errors import InputError
from jfdeploy.io.masks import davis_palette, image_labels

MAX_FRAME_PIXELS = 4096 * 4096  # refused before decoding: a small file may announce a huge image
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _open(data: bytes, what: str) -> Image.Image:
    if not data:
        raise InputError(f"the {what} is empty: send PNG or JPEG bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except _DECODE_ERRORS as error:
        raise InputError(f"the {what} is not an image Pillow can read ({type(error).__name__})") from None
    if image.width * image.height > MAX_FRAME_PIXELS:
        raise InputError(f"the {what} is {image.width}x{image.height}, more than {MAX_FRAME_PIXELS} pixels")
    return image


def decode_frame(data: bytes) -> np.ndarray:
    """PNG / JPEG (any format Pillow reads) bytes -> uint8 H x W x 3 RGB; InputError if not an image."""
    image = _open(data, "frame")
    try:
        return np.array(image.convert("RGB"))
    except _DECODE_ERRORS as error:
        raise InputError(f"the frame cannot be decoded ({type(error).__name__}: {error})") from None


def decode_label_map(data: bytes) -> np.ndarray:
    """A label PNG -> uint8 H x W labels (0 = background), read as ``jfdeploy run`` reads a mask file
    (``jfdeploy.io.masks.image_labels``: palette, grayscale, 16-bit, or DAVIS colours); InputError otherwise."""
    return image_labels(_open(data, "mask"), "the mask")[0]


def encode_label_png(labels: np.ndarray) -> bytes:
    """uint8 H x W labels -> a palette PNG (DAVIS colours), as ``jfdeploy run`` writes its masks."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(davis_palette())
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def host_array(values: object) -> np.ndarray:
    """float32 numpy array of probabilities given as numpy or as a tensor on any device (no torch import)."""
    detach = getattr(values, "detach", None)
    if detach is not None:  # a torch tensor: to the host first
        values = detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def encode_probabilities(labels: np.ndarray, object_ids: Sequence[int], probabilities: object) -> bytes:
    """An npz of ``labels`` uint8 H x W, ``object_ids`` int32 [O] and ``probabilities`` float32
    (1 + O) x H x W (row 0 the background, row i the object ``object_ids[i - 1]``)."""
    out = io.BytesIO()
    np.savez(
        out,
        labels=np.asarray(labels, dtype=np.uint8),
        object_ids=np.asarray(list(object_ids), dtype=np.int32),
        probabilities=host_array(probabilities),
    )
    return out.getvalue()
