"""Inputs and outputs of ``jfdeploy run``: frames from folders or videos, DAVIS palette masks, overlays.

    source = open_frames("clip.mp4")                       # or a folder of frames, rtsp:// / http(s):// URL, camera
    labels, palette = read_label_png("first_mask.png")     # uint8 [H, W], 0 = background
    for name, rgb in source:                               # rgb: uint8 [H, W, 3]
        x = to_model_input(rgb)                            # [3, H, W], ImageNet-normalized
        ...
        write_label_png(f"out/{name}.png", masks_to_labels(prob, object_ids), palette)

Video needs PyAV (``pip install 'jfdeploy[video]'``), imported only when a video is read or written.
"""

from jfdeploy.io.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    resize_labels_nearest,
    resize_prob,
    resize_shorter_side,
    to_model_input,
)
from jfdeploy.io.masks import (
    davis_palette,
    labels_to_masks,
    masks_to_labels,
    read_label_png,
    write_label_png,
)
from jfdeploy.io.synthetic import make_clip, write_clip_folder, write_clip_video
from jfdeploy.io.video import FrameSource, LiveFrames, OverlayWriter, is_live_spec, open_frames, overlay_labels

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FrameSource",
    "LiveFrames",
    "OverlayWriter",
    "davis_palette",
    "is_live_spec",
    "labels_to_masks",
    "make_clip",
    "masks_to_labels",
    "open_frames",
    "overlay_labels",
    "read_label_png",
    "resize_labels_nearest",
    "resize_prob",
    "resize_shorter_side",
    "to_model_input",
    "write_clip_folder",
    "write_clip_video",
    "write_label_png",
]
