"""TensorRT plans for an engine directory, built with Polygraphy (TensorRT 10 / 11).

``jfdeploy build ENGINE_DIR`` (and ``jfdeploy export --format tensorrt``) turn the directory's ONNX
graphs into one plan per stage, on the GPU machine that will run them. Per stage, one Polygraphy
loader chain::

    EngineBytesFromNetwork(
        NetworkFromOnnxPath(stage.onnx, strongly_typed=True),
        CreateConfig(profiles=[one Profile per resolution bucket], memory_pool_limits={WORKSPACE: ...},
                     load_timing_cache=cache, tf32=False),
        save_timing_cache=cache)

- Strongly typed networks: the precision lives in the graphs (the fp16 export keeps LayerNorm,
  softmax and the top-k scores in fp32); TensorRT 11 is always strongly typed, TensorRT 10 is told so.
- One optimization profile per resolution bucket (not one huge profile); each covers 1..max objects,
  the bucket's frame sizes and the matching reference tokens. A bucket costs about one more build.
- Timing cache: Polygraphy loads it before each stage's build and, after the build, merges the
  file's current entries into the builder's cache and rewrites the file. jfdeploy points it at a
  working copy and moves that over the cache file at the end.
- Atomic: plans go to temporary files, are moved in under content-addressed names
  (``<stage>.<sha256[:12]>.plan``) and the manifest is replaced last, in one rename: at every moment
  the directory is the old one or the new one. Without TensorRT nothing at all is written.

TensorRT and Polygraphy are imported lazily: the profile logic and the loader chain are plain Python.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jfdeploy.errors import InputError
from jfdeploy.fsutil import discard, new_staging_dir, sha256_file
from jfdeploy.manifest import EngineError, load_manifest, replace_manifest
from jfdeploy.plans import (
    DEFAULT_BUCKETS,
    Bucket,
    ShapeRange,
    check_bucket_tokens,
    polygraphy_errors,
    profile_shapes,
    require_tensorrt,
)
from jfdeploy.specs import Widths

TIMING_CACHE = "timing.cache"  # default timing cache, beside the plans (not hashed: a build input, not an engine)
BUILD_HINT = ", on the GPU machine that will run the plans (`jfdeploy export --format onnx` needs neither)"


@dataclass(frozen=True)
class BuildSettings:
    """How ``jfdeploy build`` builds the plans (recorded in the manifest)."""

    buckets: tuple[Bucket, ...] = DEFAULT_BUCKETS
    max_objects: int = 8
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # None: ENGINE_DIR/timing.cache
    tf32: bool = False  # fp32 graphs compute in fp32, as PyTorch does by default
    optimization_level: int | None = None  # TensorRT's builder_optimization_level 0..5 (None: its default, 3)
    strongly_typed: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.buckets:
            raise InputError("at least one --profile is needed")
        if self.max_objects < 1:
            raise InputError(f"--max-objects must be >= 1, got {self.max_objects}")
        if not self.workspace_gib > 0:
            raise InputError(f"--workspace must be > 0 GiB, got {self.workspace_gib}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InputError(f"--optimization-level must be 0..5, got {self.optimization_level}")

    def stage_profiles(
        self, stage: str, *, slots: int, limits: dict[str, Any], widths: Widths
    ) -> list[dict[str, ShapeRange]]:
        return [
            profile_shapes(stage, b, max_objects=self.max_objects, slots=slots, limits=limits, widths=widths)
            for b in self.buckets
        ]

    def check(self, *, slots: int, limits: dict[str, Any]) -> None:
        """Refuse buckets the graphs cannot run (too few tokens for the constant k), before any work."""
        for bucket in self.buckets:
            check_bucket_tokens(bucket, slots=slots, limits=limits)


def plan_loader(
    onnx_path: Path,
    profiles: list[dict[str, ShapeRange]],
    *,
    workspace_bytes: int,
    timing_cache: Path,
    tf32: bool = False,
    optimization_level: int | None = None,
    workspace_pool: Any = None,
):
    """Polygraphy's loader chain for one stage; calling it builds and returns the serialized plan.

    Nothing runs (and TensorRT is not imported) until it is called, except ``workspace_pool``:
    None means ``tensorrt.MemoryPoolType.WORKSPACE``.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    if workspace_pool is None:
        import tensorrt

        workspace_pool = tensorrt.MemoryPoolType.WORKSPACE
    trt_profiles = []
    for shapes in profiles:
        profile = Profile()
        for name, (low, opt, high) in shapes.items():
            profile.add(name, low, opt, high)
        trt_profiles.append(profile)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)  # parse_from_file: external weights work
    config = CreateConfig(
        profiles=trt_profiles,
        memory_pool_limits={workspace_pool: workspace_bytes},
        load_timing_cache=str(timing_cache),
        tf32=tf32,
        builder_optimization_level=optimization_level,
    )
    return EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))


def build_engine_dir(
    directory: str | os.PathLike,
    settings: BuildSettings | None = None,
    *,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build one TensorRT plan per stage of the engine directory and record them in its manifest.

    Checks everything that needs no GPU first (manifest, profiles), then TensorRT; a failure at any
    point leaves the directory as it was. Returns the new manifest.
    """
    directory = Path(directory)
    settings = settings or BuildSettings()
    manifest = load_manifest(directory)
    slots, limits, widths = manifest["memory"]["slots"], manifest["limits"], Widths.from_manifest(manifest)
    settings.check(slots=slots, limits=limits)
    trt = require_tensorrt(hint=BUILD_HINT)
    import polygraphy
    import torch
    from polygraphy.logger import G_LOGGER

    gpu = torch.cuda.get_device_name()
    cache = Path(settings.timing_cache) if settings.timing_cache is not None else directory / TIMING_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache_work = cache.parent / f".{cache.name}.{os.getpid()}.partial"  # Polygraphy reads, rewrites (and locks) it
    work = new_staging_dir(directory / "tensorrt-build")  # the plans until they are installed
    stages = list(manifest["stages"])
    built: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    try:
        if cache.is_file():
            shutil.copyfile(cache, cache_work)
        else:
            cache_work.write_bytes(b"")  # an empty cache
        for number, stage in enumerate(stages, 1):
            progress(f"[{number}/{len(stages)}] TensorRT plan {stage}: {len(settings.buckets)} profile(s) "
                     f"({', '.join(map(str, settings.buckets))}), 1..{settings.max_objects} objects")  # fmt: skip
            start = time.perf_counter()
            with polygraphy_errors(f"TensorRT could not build {stage}"), G_LOGGER.verbosity(G_LOGGER.WARNING):
                plan = plan_loader(
                    directory / manifest["stages"][stage]["onnx"],
                    settings.stage_profiles(stage, slots=slots, limits=limits, widths=widths),
                    workspace_bytes=int(settings.workspace_gib * (1 << 30)),
                    timing_cache=cache_work,
                    tf32=settings.tf32,
                    optimization_level=settings.optimization_level,
                )()
            seconds[stage] = round(time.perf_counter() - start, 1)
            built[stage] = work / f"{stage}.plan"
            with open(built[stage], "wb") as f:
                f.write(plan)
            del plan
            progress(f"      {stage}: {built[stage].stat().st_size / 1e6:.1f} MB in {seconds[stage]:.1f} s")
        entry = {
            "version": trt.__version__,
            "gpu": gpu,
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "builder": f"polygraphy {polygraphy.__version__}",
            "profiles": [asdict(b) for b in settings.buckets],
            "max_objects": settings.max_objects,
            "workspace_gib": settings.workspace_gib,
            "strongly_typed": settings.strongly_typed,
            "tf32": settings.tf32,
            "optimization_level": settings.optimization_level,
            "timing_cache": cache.name if cache.parent == directory else str(cache),
            "build_seconds": seconds,
        }
        manifest = install_plans(directory, manifest, built, entry)
    finally:
        if built:  # the timing cache only gains entries: keep what was tuned, even if a later stage failed
            os.replace(cache_work, cache)
        cache_work.unlink(missing_ok=True)
        Path(f"{cache_work}.lock").unlink(missing_ok=True)
        discard(work)
    progress(f"TensorRT {trt.__version__} plans for {gpu} -> {directory}")
    return manifest


def install_plans(
    directory: Path, manifest: dict[str, Any], built: dict[str, Path], entry: dict[str, Any]
) -> dict[str, Any]:
    """Move the built plans into ``directory`` and commit them in its manifest; return the new manifest.

    built: stage -> plan file in a temporary folder of ``directory`` (same file system).
    entry: the manifest's ``tensorrt`` entry, without ``plans``.
    Plans get content-addressed names, so moving them in never touches a file the current manifest
    lists; the manifest is replaced in one rename (the commit); the old plans are removed afterwards.
    """
    if set(built) != set(manifest["stages"]):
        raise EngineError(f"plans built for {sorted(built)}, the directory has stages {sorted(manifest['stages'])}")
    old_plans = set((manifest.get("tensorrt") or {}).get("plans", {}).values())
    listed = set(manifest["files"])
    plans: dict[str, str] = {}
    digests: dict[str, str] = {}
    try:
        for stage, path in built.items():
            digest = sha256_file(path)
            name = f"{stage}.{digest[:12]}.plan"
            os.replace(path, directory / name)
            plans[stage], digests[name] = name, digest
        files = {name: digest for name, digest in manifest["files"].items() if name not in old_plans}
        new = {**manifest, "tensorrt": {**entry, "plans": plans}, "files": {**files, **digests}}
        replace_manifest(directory, new)
    except BaseException:
        for name in digests:
            if name not in listed:
                (directory / name).unlink(missing_ok=True)
        raise
    for name in old_plans - set(plans.values()):
        (directory / name).unlink(missing_ok=True)
    return new
