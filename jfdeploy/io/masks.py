"""Label masks in the DAVIS convention: palette-indexed PNGs whose pixel value is the object label.

Label 0 is the background, labels 1..255 are objects. The palette only colours the labels for people
looking at the file; it never changes what a pixel means. The toolkit writes the standard
PASCAL-VOC/DAVIS palette unless a mask came with its own, which is then kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jfdeploy.errors import InputError
from jfdeploy.fsutil import atomic_file

PALETTE_SIZE = 256 * 3


def davis_palette() -> bytes:
    """The PASCAL-VOC/DAVIS colour map: 256 RGB triples (768 bytes), label ``i`` at ``[3*i : 3*i+3]``.

    Bits 0, 3, 6 of the label go to red, bits 1, 4, 7 to green and bits 2, 5 to blue, most significant
    bit of the colour first: 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), ...
    The map is a bijection, so every colour names exactly one label.
    """
    palette = bytearray(PALETTE_SIZE)
    for label in range(256):
        red = green = blue = 0
        bits = label
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette[3 * label : 3 * label + 3] = bytes((red, green, blue))
    return bytes(palette)


def palette_array(palette: bytes | None = None) -> np.ndarray:
    """The palette as a uint8 [256, 3] colour table (missing entries black); davis by default."""
    raw = davis_palette() if palette is None else bytes(palette)[:PALETTE_SIZE]
    table = np.zeros(PALETTE_SIZE, dtype=np.uint8)
    table[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return table.reshape(256, 3)


def colours_to_labels(rgb: np.ndarray, what: str) -> np.ndarray:
    """Map an [H, W, 3] uint8 colour mask to labels through the DAVIS palette; InputError naming ``what``
    (a path, "the mask") for a colour outside it."""
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(keys, return_inverse=True)
    table = palette_array().astype(np.int32)
    label_of_key = {int(k): i for i, k in enumerate((table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2])}
    unknown = [int(c) for c in colours if int(c) not in label_of_key]
    if unknown:
        first = unknown[0]
        raise InputError(
            f"{what}: colour mask has {len(unknown)} colour(s) outside the DAVIS palette, e.g. "
            f"RGB({first >> 16}, {(first >> 8) & 255}, {first & 255}); save it as a palette (mode P) "
            "or grayscale PNG whose pixel values are the object labels"
        )
    lut = np.array([label_of_key[int(c)] for c in colours], dtype=np.uint8)
    return lut[inverse.reshape(keys.shape)]


def image_labels(image: Image.Image, what: str) -> tuple[np.ndarray, bytes | None]:
    """The labels (uint8 [H, W]) and palette (mode P: RGB bytes, else None) of an opened label image.

    Modes P (palette indices are the labels), L (gray values), 1 (0/1), LA/PA (the alpha is ignored),
    I / I;16 (values in 0..255), RGB/RGBA whose colours all belong to the DAVIS palette (each colour
    becomes its palette index). InputError naming ``what`` otherwise.
    """
    try:
        image.load()
        mode = image.mode
        palette = image.getpalette() if mode in ("P", "PA") else None
        if mode in ("PA", "LA"):
            image = image.getchannel(0)
        array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{what}: cannot read the mask image ({error})") from None
    if mode in ("P", "PA", "L", "LA", "1"):
        return array.astype(np.uint8), None if palette is None else bytes(palette)
    if mode.startswith("I"):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{what}: mask labels must lie in 0..255, got {array.min()}..{array.max()}")
        return array.astype(np.uint8), None
    if mode in ("RGB", "RGBA"):
        return colours_to_labels(np.ascontiguousarray(array[..., :3]), what), None
    raise InputError(f"{what}: mask image mode {mode!r} is not supported; use a palette (P) or grayscale PNG")


def read_label_png(path: str | os.PathLike[str]) -> tuple[np.ndarray, bytes | None]:
    """Read a label mask.

    Args:
        path: a PNG (or any image Pillow reads) in mode P (palette indices are the labels), L (gray
            values are the labels), 1 (0/1), LA/PA (the alpha is ignored), or RGB/RGBA whose colours
            all belong to the DAVIS palette (each colour becomes its palette index).

    Returns:
        labels: uint8 [H, W].
        palette: the file's palette as RGB bytes (mode P only), else None.

    Raises:
        InputError: missing or unreadable file, an unsupported mode, or colours outside the palette.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            return image_labels(image, str(path))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the mask image ({error})") from None


def write_label_png(path: str | os.PathLike[str], labels: np.ndarray, palette: bytes | None = None) -> Path:
    """Write labels as a palette (mode P) PNG, atomically: a temp file in the same folder, then a rename.

    Args:
        path: the PNG to write; its parent folders are created.
        labels: uint8 [H, W] (any integer dtype with values in 0..255 is accepted).
        palette: RGB bytes (up to 768); the DAVIS palette by default.

    Returns:
        The path written.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H x W, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"labels must lie in 0..255, got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(labels))  # mode L; putpalette makes it P, values kept
    image.putpalette(davis_palette() if palette is None else bytes(palette))
    with atomic_file(path, suffix=".tmp.png") as tmp:
        image.save(tmp, format="PNG")
    return path
