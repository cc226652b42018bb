"""Export every stage of a JointFormer to ONNX: the engine directory's graphs.

Each stage module (``jfdeploy.stages``) is traced at an example size with every symbolic
dimension of ``export.specs`` dynamic (objects, frame height/width, reference tokens), checked by
``onnx.checker``, checked against TensorRT's ONNX operator support, and written with named
inputs/outputs. ``fp16`` graphs are converted from the fp32 export by onnxconverter-common with
LayerNormalization, Softmax, the top-k score path and the reductions kept in fp32
(``export.precision``). Every graph is then simplified by onnxslim (constant folding, dead and
duplicate nodes: memory_reader loses about 40% of its nodes) right before it is saved; without
onnxslim the graphs are saved as traced, with a note, and the manifest says so.

The top-k size is a constant of the graphs: frames must give the joint attention at least k
reference tokens (checked by the runners from the manifest's ``limits``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jfdeploy import manifest as manifest_io
from jfdeploy import specs
from jfdeploy.errors import JfDeployError
from jfdeploy.export.examples import example_inputs
from jfdeploy.fsutil import atomic_directory, raise_if_interrupted
from jfdeploy.limits import frame_tokens_needed, token_limits
from jfdeploy.loop_stages import build_loop_stages
from jfdeploy.model import JointFormer
from jfdeploy.stages import build_stages

if TYPE_CHECKING:
    from jfdeploy.export.tensorrt import BuildSettings

OPSET = 17  # LayerNormalization needs 17; TensorRT 10 parses 9..20
PRECISIONS = ("fp32", "fp16")
INITIAL_MEMORY_TOKEN = "initial_memory_token.npy"


SLIM_MISSING = "onnxslim is not installed: graphs saved without simplification (pip install onnxslim)"


def _import_onnxslim():
    """The onnxslim module, or None when it is not installed (slimming is then skipped)."""
    try:
        import onnxslim
    except ImportError:
        return None
    return onnxslim


def slim_graph(graph, onnxslim, stage: str):
    """``graph`` (onnx.ModelProto) simplified by onnxslim: constants folded, dead and duplicate nodes
    removed, inputs/outputs (names, dynamic dimensions, dtypes) unchanged."""
    # token_rows is 1 or objects: onnxslim's shape inference would take the broadcast for equality and
    # rename one symbol to the other, so these graphs are simplified without it
    shared_rows = any("token_rows" in shape for shape in specs.stage_shapes()[stage].values())
    slimmed = onnxslim.slim(graph, no_shape_infer=shared_rows)
    if slimmed is None:  # onnxslim returns None when its own result check fails
        raise JfDeployError(f"onnxslim could not simplify {stage}: export with slim=False (or without onnxslim)")
    return slimmed


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise JfDeployError("ONNX export needs the onnx package: pip install 'jfdeploy[onnx]'") from exc
    return onnx


def export_stage(
    module: torch.nn.Module,
    stage: str,
    path: Path,
    size: specs.Size,
    opset: int = OPSET,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Trace one stage at ``size`` and write its ONNX graph to ``path`` (``dtype``: of the model-side floats
    of its example inputs; the model's stages are traced in fp32 and converted afterwards)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: sizes stay symbolic
        torch.onnx.export(
            module,
            example_inputs(stage, size, dtype),
            str(path),
            input_names=list(specs.input_names(stage)),
            output_names=list(specs.output_names(stage)),
            dynamic_axes=specs.dynamic_axes(stage),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def example_size(model: JointFormer, slots: int) -> specs.Size:
    """A small square size at which every top-k candidate set holds >= k tokens (see token_limits)."""
    needed = frame_tokens_needed(token_limits(model.config), slots)
    side = max(4, math.isqrt(needed - 1) + 1)
    return specs.Size(
        objects=2,
        height=16 * side,
        width=16 * side,
        slots=slots,
        widths=specs.Widths.of(model.config),
        frames=2,
        token_rows=1,
    )  # frames traced at 2 (a traced 1 may be taken for a broadcast); token rows at 1, the broadcast kept


def export_engines(
    model: JointFormer,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    max_memory_frames: int = 3,
    example: specs.Size | None = None,
    checkpoint_sha256: str | None = None,
    tensorrt: BuildSettings | None = None,
    overwrite: bool = False,
    slim: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the engine directory of ``model`` and return its manifest.

    example: the size the stages are traced at (any valid one; the graphs are dynamic).
    slim: simplify every graph with onnxslim before it is saved (skipped, with a note, when onnxslim is
    not installed); the manifest records each graph's node count before and after.
    tensorrt: None for ONNX only, else the settings of ``tensorrt.build_engine_dir``, which then also builds
    a TensorRT plan per stage in the staging directory (needs TensorRT and a GPU; checked before exporting).
    """
    onnx = _import_onnx()
    from jfdeploy.export.precision import to_fp16
    from jfdeploy.export.trt_ops import check_graph

    if precision not in PRECISIONS:
        raise JfDeployError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if next(model.parameters()).dtype != torch.float32:
        raise JfDeployError("export a float32 model (load_model gives one; --precision fp16 makes the fp16 graphs)")
    model = model.eval()
    slots = max_memory_frames + 1
    if tensorrt is not None:  # before the export's minutes: buckets the graphs cannot run, no TensorRT, no GPU
        from jfdeploy.export.tensorrt import BUILD_HINT, require_tensorrt

        tensorrt.check(slots=slots, limits=token_limits(model.config))
        require_tensorrt(hint=BUILD_HINT)
    example = example or example_size(model, slots)
    if example.widths != specs.Widths.of(model.config):
        raise JfDeployError(f"example size widths {example.widths} are not the model's {specs.Widths.of(model.config)}")
    # the frame loop's stages are traced with the graphs' float type at their model-side tensors (casts inside)
    # and never converted: they compute probabilities and masks in fp32 whatever the precision
    graph_float = torch.float16 if precision == "fp16" else torch.float32
    stages = {**dict(build_stages(model).items()), **build_loop_stages(torch.float32, graph_float, in_place=False)}
    report = progress or (lambda message: None)
    onnxslim = _import_onnxslim() if slim else None
    slim_entry = {"tool": "onnxslim", "version": getattr(onnxslim, "__version__", None), "skipped": None}
    if slim and onnxslim is None:
        slim_entry["skipped"] = "onnxslim is not installed"
        (progress or warnings.warn)(SLIM_MISSING)
    elif not slim:
        slim_entry["skipped"] = "disabled (slim=False)"
    stage_entries: dict[str, Any] = {}
    with atomic_directory(Path(out_dir), overwrite=overwrite) as staging:
        for stage in specs.STAGES:
            raise_if_interrupted()  # a library may have swallowed the interrupt during the previous stage
            path = staging / f"{stage}.onnx"
            report(f"exporting {stage}")
            loop = stage in specs.LOOP_STAGES
            export_stage(stages[stage], stage, path, example, dtype=graph_float if loop else torch.float32)
            graph = onnx.load(str(path))
            if (
                precision == "fp16" and not loop
            ):  # before slimming: onnxconverter-common 1.16 mis-types a slimmed graph's Casts
                graph = to_fp16(graph)  # (onnxruntime refuses it), and it picks its fp32 blocks on the traced graph
            nodes_before_slim = len(graph.graph.node)
            if onnxslim is not None:  # last: folds what tracing and the fp16 conversion left (e.g. duplicate Casts)
                graph = slim_graph(graph, onnxslim, stage)
            if precision == "fp16" or onnxslim is not None:
                onnx.save(graph, str(path))
            onnx.checker.check_model(str(path))
            problems = check_graph(graph)
            if problems:
                raise JfDeployError(f"{stage}: not parseable by TensorRT: " + "; ".join(problems[:5]))
            stage_entries[stage] = {
                "onnx": path.name,
                "inputs": _io_entries(graph.graph.input, stage, example.widths),
                "outputs": _io_entries(graph.graph.output, stage, example.widths),
                "nodes": len(graph.graph.node),
                "nodes_before_slim": nodes_before_slim,
            }
        np.save(staging / INITIAL_MEMORY_TOKEN, model.convmae.cls_token.detach().float().cpu().numpy())
        manifest = {
            "precision": precision,
            "opset": OPSET,
            "model": dataclasses.asdict(model.config),
            "memory": {"max_memory_frames": max_memory_frames, "slots": slots},
            "limits": token_limits(model.config),
            "example_size": example.point(),  # the widths are the model's
            "checkpoint_sha256": checkpoint_sha256,
            "versions": manifest_io.package_versions(),
            "slim": slim_entry,
            "stages": stage_entries,
            "initial_memory_token": INITIAL_MEMORY_TOKEN,
            "tensorrt": None,
        }
        manifest_io.write_manifest(staging, manifest)
        if tensorrt is not None:
            from jfdeploy.export.tensorrt import build_engine_dir

            build_engine_dir(staging, tensorrt, progress=report)
    return manifest_io.load_manifest(out_dir)


_ONNX_DTYPES = {1: "float32", 2: "uint8", 9: "bool", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32"}


def _io_entries(values, stage: str, widths: specs.Widths) -> list[dict[str, Any]]:
    shapes = specs.stage_shapes(widths)[stage]
    for value in values:
        if value.type.tensor_type.elem_type not in _ONNX_DTYPES:
            raise JfDeployError(
                f"{stage}: {value.name} has ONNX type {value.type.tensor_type.elem_type}, not one of ours"
            )
    return [
        {
            "name": value.name,
            "dtype": _ONNX_DTYPES[value.type.tensor_type.elem_type],
            "shape": list(shapes[value.name]),
        }
        for value in values
    ]
