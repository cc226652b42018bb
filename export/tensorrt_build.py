"""TensorRT plans from the engine directory's ONNX graphs (TensorRT 10 / 11 Python API).

Written against the public API (``shared/tensorrt_facts.md`` §1-3); TensorRT is imported lazily and
nothing here runs without it. Not yet run on a real TensorRT (no machine with one so far): the
tests check the profiles, and the graphs against TensorRT's ONNX operator table, without it.

- Strongly typed networks: the precision lives in the graphs (fp16 export), which TensorRT 11
  requires and TensorRT 10 honours with the STRONGLY_TYPED flag (set from the enum, never by bit).
- One optimization profile per resolution bucket (not one huge profile); each covers 1..max
  objects and the reference tokens of its frame sizes.
- A timing cache persisted beside the plans (``timing.cache``), a workspace limit, progress lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jfdeploy.errors import JfDeployError
from jfdeploy.export import specs
from jfdeploy.export.onnx_export import frame_tokens_needed

TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class Bucket:
    """Frames from min to max (padded sizes, multiples of 16), tuned for opt."""

    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]


DEFAULT_BUCKETS = (
    Bucket((128, 128), (240, 432), (368, 656)),  # up to ~360p
    Bucket((384, 384), (480, 864), (608, 1088)),  # 480p (the paper's setting)
    Bucket((624, 624), (720, 1280), (1088, 1920)),  # 720p..1080p
)


def profile_shapes(
    stage: str, bucket: Bucket, *, max_objects: int, slots: int, limits: dict[str, Any]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input of ``stage`` in ``bucket``."""
    needed = frame_tokens_needed(limits, slots)
    low_h, low_w = bucket.min_hw
    if (low_h // 16) * (low_w // 16) < needed:  # the graphs' constant k needs enough tokens
        raise JfDeployError(f"bucket minimum {low_h}x{low_w} has fewer than the {needed} tokens top-k needs")
    sizes = (
        specs.Size(1, *bucket.min_hw, slots),
        specs.Size(1, *bucket.opt_hw, slots),
        specs.Size(max_objects, *bucket.max_hw, slots),
    )
    return {
        name: tuple(specs.shape_at(stage, name, size) for size in sizes)  # type: ignore[misc]
        for name in specs.input_names(stage)
    }


def build_plans(
    directory: Path,
    manifest: dict[str, Any],
    *,
    buckets: tuple[Bucket, ...] = DEFAULT_BUCKETS,
    max_objects: int = 8,
    workspace_gib: float = 4.0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build one plan per stage into ``directory`` (a staging engine directory); return the manifest's
    ``tensorrt`` entry."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise JfDeployError("TensorRT is not installed: export --format onnx, or install TensorRT") from exc
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = directory / TIMING_CACHE
    config_template = builder.create_builder_config()
    timing_cache = config_template.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    slots = manifest["memory"]["slots"]
    plans = {}
    for stage, entry in manifest["stages"].items():
        progress(f"building TensorRT plan: {stage} ({len(buckets)} profiles)")
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(directory / entry["onnx"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise JfDeployError(f"TensorRT could not parse {entry['onnx']}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        for bucket in buckets:
            profile = builder.create_optimization_profile()
            shapes = profile_shapes(stage, bucket, max_objects=max_objects, slots=slots, limits=manifest["limits"])
            for name, (low, opt, high) in shapes.items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise JfDeployError(f"TensorRT failed to build {stage} (see the log above)")
        path = directory / f"{stage}.plan"
        path.write_bytes(bytes(plan))
        plans[stage] = path.name
    cache_path.write_bytes(bytes(timing_cache.serialize()))
    return {
        "version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "plans": plans,
        "buckets": [vars(b) for b in buckets],
        "max_objects": max_objects,
        "workspace_gib": workspace_gib,
    }
