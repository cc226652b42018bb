"""Inputs and outputs of ``jfdeploy run``: frames from folders or videos, DAVIS palette masks, overlays.

    source = open_frames("clip.mp4")                       # or a folder of frames, rtsp:// / http(s):// URL, camera
    labels, palette = read_label_png("first_mask.png")     # uint8 [H, W], 0 = background
    for name, rgb in source:                               # rgb: uint8 [H, W, 3]
        result = predictor.step(rgb, ...)                  # resizing and normalizing are stages of the runtime
        write_label_png(f"out/{name}.png", result.labels, palette)

Video needs PyAV (``pip install 'jfdeploy[video]'``), imported only when a video is read or written.
"""

from jfdeploy.io.masks import davis_palette, read_label_png, write_label_png
from jfdeploy.io.synthetic import make_clip, write_clip_folder, write_clip_video
from jfdeploy.io.video import FrameSource, LiveFrames, OverlayWriter, is_live_spec, open_frames, overlay_labels

__all__ = [
    "FrameSource",
    "LiveFrames",
    "OverlayWriter",
    "davis_palette",
    "is_live_spec",
    "make_clip",
    "open_frames",
    "overlay_labels",
    "read_label_png",
    "write_clip_folder",
    "write_clip_video",
    "write_label_png",
]
