"""Engine directories without torch against the torch backend: time to first mask, frames/s, peak memory.

    python benchmarks/torch_free_bench.py --engines engines/ --variants onnxruntime,torch,torch-bf16 --size 240

Each variant runs in a fresh process through ``predict_frames`` (the frame loop of every verb) on a generated
16:9 clip (one object, a memory frame every 5, the engines' top-k), in the paper's setting at ``--size``:

- ``onnxruntime`` / ``tensorrt``: ``VideoPredictor(engines=DIR)`` in a process where ``import torch`` is
  blocked (a meta-path finder refuses it), so the row shows the torch-free runtime even on a machine that has
  torch; ``--device`` picks CPU or CUDA (onnxruntime-gpu, TensorRT).
- ``torch``, ``torch-bf16``, ...: the torch backend, on the model of the engines' architecture with the same
  deterministic random weights (the engines' own weights when they were exported from a checkpoint are not
  needed: the time does not depend on them).

Reported per variant: seconds from process start to the first label map (imports, loading the engines or
building the model, the first frame), the median step of the frames after ``--warmup``, frames/s, and the
process's peak resident memory. ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import importlib.abc, json, os, resource, sys, time
start = float(sys.argv[1])
options = json.loads(sys.argv[2])
if options["block_torch"]:
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked: this row runs the torch-free runtime")
    sys.meta_path.insert(0, NoTorch())
import numpy as np
from jfdeploy.io import make_clip
from jfdeploy.predictor import RunOptions, VideoPredictor, predict_frames
height = options["size"]
width = 16 * round(height * 16 / 9 / 16)
frames, labels = make_clip(num_frames=options["frames"], height=height, width=width, num_objects=1, seed=0)
common = dict(sizes=(None,), mem_every=5, max_memory_frames=options["memory_frames"], device=options["device"])
if options["variant"] in ("onnxruntime", "tensorrt"):
    predictor = VideoPredictor(None, RunOptions(backend=options["variant"], engines=options["engines"],
                                                threads=options["threads"], **common))
else:
    import torch
    from jfdeploy.manifest import load_manifest
    from jfdeploy.model import ModelConfig
    from jfdeploy.model.checkpoint import random_model
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    config = ModelConfig(**load_manifest(options["engines"], verify_files=False)["model"])
    model = random_model(config).to(options["device"] or "cpu")
    common.pop("device")
    predictor = VideoPredictor(model, RunOptions.from_variant(options["variant"], **common))
steps, first = [], None
for result in predict_frames(predictor, [(str(i), f) for i, f in enumerate(frames)], {0: labels[0]},
                             frame_count=len(frames)):
    if first is None:
        first = time.time() - start
    steps.append(result.seconds)
timed = sorted(steps[1 + options["warmup"]:]) or sorted(steps)
median = timed[len(timed) // 2]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"variant": options["variant"], "torch_imported": "torch" in sys.modules,
                  "first_mask_s": first, "median_step_ms": 1000 * median, "fps": 1 / median,
                  "peak_rss_mb": peak, "resolution": f"{height}x{width}", "frames": len(frames)}))
"""


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    options = {
        "variant": variant,
        "engines": str(args.engines),
        "size": args.size,
        "frames": args.frames,
        "warmup": args.warmup,
        "memory_frames": args.memory_frames,
        "device": args.device,
        "threads": args.threads,
        "block_torch": variant in ("onnxruntime", "tensorrt"),
    }
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, repr(start), json.dumps(options)], capture_output=True, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    if result.returncode != 0:
        return {"variant": variant, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", required=True, help="engine directory (`jfdeploy export`)")
    parser.add_argument("--variants", default="onnxruntime,torch,torch-bf16", help="comma list (default: %(default)s)")
    parser.add_argument("--size", type=int, default=240, help="clip height; width 16:9 (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=10, help="frames of the clip (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="steps after the first left out of the median")
    parser.add_argument("--memory-frames", type=int, default=3, help="memory frames per object (default: 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the backend's default)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = [run_variant(variant.strip(), args) for variant in args.variants.split(",") if variant.strip()]
    print("| variant | torch imported | resolution | time to first mask (s) | ms / frame | frames/s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['variant']} | - | - | failed: {row['error']} | - | - | - |")
            continue
        print(
            f"| {row['variant']} | {'yes' if row['torch_imported'] else 'no'} | {row['resolution']} | "
            f"{row['first_mask_s']:.2f} | {row['median_step_ms']:.0f} | {row['fps']:.2f} | {row['peak_rss_mb']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
