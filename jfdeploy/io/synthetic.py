"""A small synthetic clip with known masks, for ``jfdeploy demo`` and the tests (no data set needed).

A smooth, muted, textured background with 1..5 coloured, striped shapes (ellipses and rectangles) that
glide a few pixels per frame and bounce off the borders. Every object is fully inside the frame and
overlaps no other one on frame 0; later frames may show one object passing in front of another
(higher labels are drawn on top).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jfdeploy.io.masks import write_label_png
from jfdeploy.io.video import Mp4Encoder

OBJECT_COLOURS = (
    (230, 40, 40), (40, 200, 70), (50, 90, 240), (240, 210, 40), (210, 60, 220), (40, 210, 220), (250, 140, 30),
    (140, 90, 40),
)  # fmt: skip
MAX_OBJECTS = len(OBJECT_COLOURS)


@dataclass
class _Shape:
    """One moving object: centre (cy, cx), half sizes (hy, hx), velocity (vy, vx) in pixels per frame."""

    ellipse: bool
    cy: float
    cx: float
    hy: float
    hx: float
    vy: float
    vx: float

    def mask(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """bool [H, W]: the pixels whose centres lie inside the shape."""
        dy, dx = (yy - self.cy) / self.hy, (xx - self.cx) / self.hx
        if self.ellipse:
            return dy * dy + dx * dx <= 1.0
        return (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)

    def step(self, height: int, width: int) -> None:
        """Move one frame, bouncing off the borders so that the shape stays inside the frame."""
        self.cy, self.vy = _bounce(self.cy + self.vy, self.vy, self.hy, height)
        self.cx, self.vx = _bounce(self.cx + self.vx, self.vx, self.hx, width)


def _bounce(centre: float, velocity: float, half: float, extent: int) -> tuple[float, float]:
    """Reflect ``centre`` into [half, extent - 1 - half], flipping the velocity when it hit a border."""
    low, high = half, extent - 1 - half
    if centre < low:
        return 2 * low - centre, abs(velocity)
    if centre > high:
        return 2 * high - centre, -abs(velocity)
    return centre, velocity


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] in about 50..170: a few low-frequency waves per channel around mid-gray."""
    height, width = yy.shape
    v, u = yy / height, xx / width
    channels = []
    for _ in range(3):
        value = np.full(yy.shape, 0.5)
        for _ in range(3):
            fy, fx = rng.uniform(0.5, 3.0, size=2)
            phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.12)
            value += amplitude * np.sin(2 * np.pi * (fy * v + fx * u) + phase)
        channels.append(value)
    return (20.0 + 180.0 * np.stack(channels, axis=-1)).astype(np.float32)


def _initial_shapes(rng: np.random.Generator, num_objects: int, height: int, width: int) -> list[_Shape]:
    """Shapes side by side (one slot of width W / num_objects each), so none overlap on frame 0."""
    slot = width / num_objects
    small = min(height, width)
    shapes = []
    for index in range(num_objects):
        hx = max(3.0, min(rng.uniform(0.10, 0.18) * small, 0.4 * slot))
        hy = max(3.0, min(rng.uniform(0.10, 0.18) * small, 0.4 * height))
        cx = (index + 0.5) * slot + rng.uniform(-0.1, 0.1) * slot
        cy = rng.uniform(0.3, 0.7) * height
        cy, cx = min(max(cy, hy), height - 1 - hy), min(max(cx, hx), width - 1 - hx)
        vy, vx = rng.uniform(1.0, 3.0, size=2) * rng.choice([-1.0, 1.0], size=2)
        shapes.append(_Shape(index % 2 == 0, cy, cx, hy, hx, float(vy), float(vx)))
    return shapes


def make_clip(
    num_frames: int = 10, height: int = 120, width: int = 200, num_objects: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic clip: the same arguments give the same bytes.

    Args:
        num_frames: T >= 1.
        height, width: H, W >= 32.
        num_objects: 1..MAX_OBJECTS (8); object ``k`` (label ``k``) has colour ``OBJECT_COLOURS[k-1]``.
        seed: picks the background, the shapes' sizes and places, and their velocities.

    Returns:
        frames: uint8 [T, H, W, 3].
        labels: uint8 [T, H, W], 0 the background, 1..num_objects the objects.
    """
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be 1..{MAX_OBJECTS}, got {num_objects}")
    if num_frames < 1 or height < 32 or width < 32:
        raise ValueError(f"need num_frames >= 1 and at least 32x32, got {num_frames}, {height}x{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = _background(rng, yy, xx)
    shapes = _initial_shapes(rng, num_objects, height, width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        image = background.copy()
        for label, shape in enumerate(shapes, start=1):
            inside = shape.mask(yy, xx)
            stripes = 0.85 + 0.15 * np.sin(2 * np.pi * (xx - shape.cx + yy - shape.cy) / 8.0)
            image[inside] = np.asarray(OBJECT_COLOURS[label - 1], np.float32) * stripes[inside, None]
            labels[t][inside] = label
            shape.step(height, width)
        frames[t] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return frames, labels


def write_clip_folder(directory: str | os.PathLike[str], frames: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write a clip in the DAVIS layout.

    Args:
        directory: gets ``JPEGImages/00000.jpg, ...`` and ``Annotations/00000.png, ...`` (palette PNGs).
        frames: uint8 [T, H, W, 3].
        labels: uint8 [T, H, W].

    Returns:
        (the JPEGImages folder, the Annotations folder).
    """
    if frames.ndim != 4 or labels.shape != frames.shape[:3]:
        raise ValueError(f"need frames [T, H, W, 3] and labels [T, H, W], got {frames.shape}, {labels.shape}")
    root = Path(directory)
    image_dir, mask_dir = root / "JPEGImages", root / "Annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    for t, (rgb, label_map) in enumerate(zip(frames, labels, strict=True)):
        Image.fromarray(np.ascontiguousarray(rgb)).save(image_dir / f"{t:05d}.jpg", quality=95, subsampling=0)
        write_label_png(mask_dir / f"{t:05d}.png", label_map)
    return image_dir, mask_dir


def write_clip_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 10) -> Path:
    """Write uint8 [T, H, W, 3] frames as an mp4 (PyAV, H.264), atomically; returns the path."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    encoder = Mp4Encoder(path, fps, (frames.shape[1], frames.shape[2]))
    try:
        for rgb in frames:
            encoder.write(rgb)
    except BaseException:
        encoder.abort()
        raise
    return encoder.finish()
