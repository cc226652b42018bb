"""The engine directory's manifest: what was exported, how, by which versions, with every file's hash.

An engine directory is plain files (ONNX graphs, TensorRT plans, ``initial_memory_token.npy``) and
``manifest.json``. Runners refuse a directory whose manifest is missing or of another format,
whose files do not hash as recorded, or whose TensorRT plans were built by another TensorRT
version or on another GPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from jfdeploy.errors import JfDeployError
from jfdeploy.fsutil import sha256_file, write_text_atomic
from jfdeploy.specs import STAGES

MANIFEST = "manifest.json"
FORMAT = "jfdeploy-engines"
VERSION = 3  # 2: every tensor op of a frame is a stage (pre/postprocessing, aggregation, memory write);
# 3: the frame encoder takes a batch of frames, the reader and decoder the rows of each (video, object) pair
OLDER = {1: "without the frame loop's stages", 2: "without the frame batch axis of cross-stream batching"}


class EngineError(JfDeployError):
    """An engine directory that cannot be used as it is."""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("jfdeploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Hash every file of ``directory`` into the manifest and write it (the directory is a staging one)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format": FORMAT, "version": VERSION, **manifest}
    manifest["files"] = {p.name: sha256_file(p) for p in files}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def replace_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write a complete manifest (``files`` included) over ``directory``'s in one rename, so that readers see
    the old manifest or the new one, never a mix (``jfdeploy build`` commits its plans this way)."""
    return write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def load_manifest(directory: str | os.PathLike, *, verify_files: bool = True) -> dict[str, Any]:
    """Read and check an engine directory's manifest (format, version, file hashes)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise EngineError(f"{directory} is not an engine directory: no {MANIFEST} (run `jfdeploy export` first)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") == FORMAT and manifest.get("version") in OLDER:
        version = manifest["version"]
        raise EngineError(
            f"{directory} was exported by an older jfdeploy (manifest v{version}, {OLDER[version]}): "
            "export it again with `jfdeploy export`"
        )
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise EngineError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('version')}, expected {FORMAT!r} v{VERSION}"
        )
    if verify_files:
        for name, digest in manifest.get("files", {}).items():
            file = directory / name
            if not file.is_file():
                raise EngineError(f"{directory}: {name} is listed in the manifest but missing")
            if sha256_file(file) != digest:
                raise EngineError(f"{directory}: {name} does not match its sha256 in the manifest (modified?)")
    return manifest


def check_stages(manifest: dict[str, Any], directory: str | os.PathLike) -> None:
    """Refuse a directory that lacks a graph of some stage (every tensor op of a frame is one)."""
    missing = [stage for stage in STAGES if stage not in manifest.get("stages", {})]
    if missing:
        raise EngineError(f"{directory} has no graph for the stages {', '.join(missing)}: export it again with "
                          "`jfdeploy export`")  # fmt: skip


def check_tensorrt_plans(manifest: dict[str, Any], *, tensorrt_version: str, gpu: str) -> None:
    """Refuse plans built by another TensorRT version or for another GPU (plans are not portable)."""
    built = manifest.get("tensorrt")
    if not built:
        raise EngineError("this engine directory holds no TensorRT plans (export with --format tensorrt)")
    if built["version"] != tensorrt_version:
        raise EngineError(
            f"TensorRT plans were built with TensorRT {built['version']}, this is {tensorrt_version}: rebuild them"
        )
    if built["gpu"] != gpu:
        raise EngineError(f"TensorRT plans were built on {built['gpu']}, this GPU is {gpu}: rebuild them")
