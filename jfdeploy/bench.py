"""``jfdeploy bench``: the paper's Table 9 setting, every backend side by side with eager PyTorch.

Setting (YouTube-VOS, as the published evaluation): shorter side 480 on a 16:9 clip, a memory frame
every 5 frames, top-k 120 over all reference frames in every joint block, Ours-1 (1 memory frame +
the previous frame) and Ours-3 (3 + previous), one object unless ``--objects`` says otherwise.

Each row (backend x refs x objects x resolution) runs in a fresh process, so that its peak memory is
its own: ``torch.cuda.max_memory_allocated`` (and the process's memory from NVML when available) on
a GPU, peak resident memory (VmHWM) on the CPU. Time per frame is one ``VideoPredictor.step`` (the
frame loop every verb runs: RGB frame in, label map on the host out, so the wall clock includes the
device's work), warm-up frames excluded, on a clip long enough for the memory to be full. Masks are
compared with the eager row's (mean IoU over objects and frames).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import queue as queue_module
import signal
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jfdeploy.fsutil import atomic_file, write_text_atomic

PAPER = {  # Table 9(b), YouTube-VOS 2019 val, GPU not stated (the code mentions an A6000)
    1: {"fps": 6.7, "memory_mb": 4404},
    3: {"fps": 3.0, "memory_mb": 5785},
}
# the rows, by variant name (``RunOptions.from_variant``): BACKEND[-PRECISION][-triton]
VARIANTS = (
    "eager",
    "eager-fp16",
    "torch",
    "torch-bf16",
    "torch-fp16",
    "torch-triton",
    "torch-fp16-triton",
    "onnxruntime",
    "tensorrt",
)
# earlier spellings, still accepted on the command line
VARIANT_ALIASES = {"eager-amp": "eager-fp16", "torch+triton": "torch-triton", "torch-fp16+triton": "torch-fp16-triton"}


@dataclass(frozen=True)
class RowSpec:
    variant: str
    refs: int  # memory frames besides the previous one (Ours-N)
    objects: int
    shorter_side: int
    frames: int
    warmup: int
    mem_every: int
    topk: int
    checkpoint: str | None
    engines: str | None
    device: str
    width: int | None = None  # None: 16:9
    count_flops: bool = False  # also count the timed frames' flops, in a second (untimed) pass

    @property
    def size(self) -> tuple[int, int]:
        return self.shorter_side, self.width or round(self.shorter_side * 16 / 9)


@dataclass
class Row:
    backend: str
    refs: int
    objects: int
    resolution: str
    fps: float | None = None
    peak_memory_mb: float | None = None
    process_memory_mb: float | None = None
    frame_ms: list[float] = field(default_factory=list)
    mean_iou_vs_eager: float | None = None
    skipped: str | None = None
    gflop_per_frame: float | None = None  # mean over the timed frames (torch.utils.flop_counter), PyTorch backends


def missing_requirement(variant: str, device: str, engines: str | None) -> str | None:
    """Why ``variant`` cannot run here (None: it can)."""
    import importlib.util

    from jfdeploy.precision import cpu_has_bf16
    from jfdeploy.predictor import ENGINE_BACKENDS, RunOptions

    if variant in ENGINE_BACKENDS and engines is None:
        return "needs --engines DIR (jfdeploy export)"
    engine_dir = Path(engines) if engines and variant in ENGINE_BACKENDS else None
    options = RunOptions.from_variant(variant, engines=engine_dir)
    cuda = device.startswith("cuda")
    for package in ("tensorrt",) * (options.backend == "tensorrt") + ("triton",) * (options.attention == "triton"):
        if importlib.util.find_spec(package) is None:
            return f"{package} not installed"
    if not cuda and (options.backend == "tensorrt" or options.attention == "triton" or options.precision == "fp16"):
        return "needs a CUDA GPU"
    if not cuda and options.precision == "bf16" and not cpu_has_bf16():
        return "needs a CUDA GPU or a CPU with bf16 units"
    return None


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _nvml_process_mb() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory:
                return process.usedGpuMemory / 2**20
    except Exception:  # NVML absent or not permitted in this container: the column stays empty
        return None
    return None


def run_row(spec: RowSpec) -> tuple[dict[str, Any], np.ndarray]:
    """Run one row in this process: (row fields, label maps T x H x W of the timed frames).

    The frames go through the one frame loop (``predict_frames``) at the clip's own size; a frame's
    time is one predictor step, RGB frame in, label map on the host out.
    """
    import warnings

    import torch

    import jfdeploy
    from jfdeploy.io import make_clip
    from jfdeploy.predictor import ENGINE_BACKENDS, RunOptions, VideoPredictor, predict_frames

    height, width = spec.size
    frames, labels = make_clip(num_frames=spec.frames, height=height, width=width, num_objects=spec.objects, seed=0)
    device = torch.device(spec.device)
    options = RunOptions.from_variant(
        spec.variant,
        engines=Path(spec.engines) if spec.engines else None,
        mem_every=spec.mem_every,
        max_memory_frames=spec.refs,
        sizes=(None,),
    )
    model = None
    if options.backend in ENGINE_BACKENDS:
        options = dataclasses.replace(options, device=spec.device)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NO CHECKPOINT GIVEN")
            model = jfdeploy.load_model(spec.checkpoint, topk=spec.topk).to(device)
    predictor = VideoPredictor(model, options)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    times, maps = [], []
    clip = ((f"{t:05d}", frames[t]) for t in range(spec.frames))
    for result in predict_frames(predictor, clip, {0: labels[0]}, frame_count=spec.frames):
        if result.index >= spec.warmup:
            times.append(result.seconds * 1e3)
            maps.append(result.labels)
    row = Row(spec.variant, spec.refs, spec.objects, f"{height}x{width}", frame_ms=times)
    row.fps = 1e3 / statistics.median(times)
    if spec.count_flops and model is not None:
        row.gflop_per_frame = mean_gflop(predictor, frames, labels[0], spec.warmup)
    if cuda:
        row.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
        row.process_memory_mb = _nvml_process_mb()
    else:
        row.peak_memory_mb = _peak_rss_mb()
    return dataclasses.asdict(row), np.stack(maps)


def mean_gflop(predictor, frames: np.ndarray, first_mask: np.ndarray, warmup: int) -> float:
    """Mean GFLOP per frame from frame ``warmup`` on, the clip run again from the start (``frames``: T x H x W x 3),
    as PyTorch's flop counter counts them (matrix products, convolutions, attention; not element-wise work)."""
    from torch.utils.flop_counter import FlopCounterMode

    from jfdeploy.predictor import predict_frames

    predictor.reset()
    results = predict_frames(predictor, ((f"{t:05d}", f) for t, f in enumerate(frames)), {0: first_mask},
                             frame_count=len(frames))  # fmt: skip
    total = 0
    for index in range(len(frames)):
        if index < warmup:
            next(results)
            continue
        with FlopCounterMode(display=False) as counter:  # one counter per frame: entering one clears it
            next(results)
        total += counter.get_total_flops()
    return total / (len(frames) - warmup) / 1e9


def _run_in_child(spec: RowSpec, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    try:
        queue.put(("ok", *run_row(spec)))
    except Exception as exc:  # reported as a skipped row with its reason
        queue.put(("error", f"{type(exc).__name__}: {exc}", None))


def run_isolated(spec: RowSpec) -> tuple[dict[str, Any] | str, np.ndarray | None]:
    """run_row in a fresh process (its own peak memory); an error comes back as its message.

    If the parent is interrupted (or the wait fails), the child is terminated, never left running.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_in_child, args=(spec, queue))
    process.start()
    finished = False
    try:
        while True:
            try:
                status, payload, maps = queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not process.is_alive():
                    finished = True
                    return f"the benchmark process died (exit code {process.exitcode})", None
        finished = True
    finally:
        if not finished:
            process.terminate()
        process.join()
    return (payload, maps) if status == "ok" else (str(payload), None)


def mean_iou(a: np.ndarray, b: np.ndarray, objects: int) -> float:
    """Mean over objects and frames of the IoU of label maps T x H x W (both empty counts as 1)."""
    scores = []
    for obj in range(1, objects + 1):
        x, y = a == obj, b == obj
        union = (x | y).sum(axis=(1, 2))
        inter = (x & y).sum(axis=(1, 2))
        scores.extend(np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist())
    return float(np.mean(scores))


def environment(device: str) -> dict[str, Any]:
    import torch

    from jfdeploy.manifest import package_versions

    info: dict[str, Any] = {"platform": platform.platform(), "versions": package_versions(), "device": "CPU"}
    if device.startswith("cuda"):
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            info["driver"] = None
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def format_markdown(rows: list[Row], info: dict[str, Any]) -> str:
    lines = [f"device: {info['device']}; torch {info['versions']['torch']}", ""]
    lines.append("| backend | refs | objects | resolution | FPS | peak MB | speedup vs eager | memory vs eager "
                 "| mIoU vs eager | paper FPS | paper MB |")  # fmt: skip
    lines.append("|" + " --- |" * 11)
    eager = {(r.refs, r.objects, r.resolution): r for r in rows if r.backend == "eager" and r.fps}
    for r in rows:
        paper = PAPER.get(r.refs, {})
        if r.skipped:
            lines.append(f"| {r.backend} | {r.refs} | {r.objects} | {r.resolution} | skipped: {r.skipped} |"
                         + " |" * 6)  # fmt: skip
            continue
        assert r.fps is not None  # a row that ran has its FPS
        base = eager.get((r.refs, r.objects, r.resolution))
        speed = f"{r.fps / base.fps:.2f}x" if base and base.fps else "n/a"
        memory = (
            f"{r.peak_memory_mb / base.peak_memory_mb:.2f}x"
            if base and base.peak_memory_mb and r.peak_memory_mb
            else "n/a"
        )
        iou = f"{r.mean_iou_vs_eager:.4f}" if r.mean_iou_vs_eager is not None else "n/a"
        peak = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb else "n/a"
        lines.append(f"| {r.backend} | {r.refs} | {r.objects} | {r.resolution} | {r.fps:.2f} | {peak} | {speed} | "
                     f"{memory} | {iou} | {paper.get('fps', '')} | {paper.get('memory_mb', '')} |")  # fmt: skip
    return "\n".join(lines)


def write_chart(rows: list[Row], path: Path) -> None:
    """FPS and peak memory per backend (one bar group per refs / objects / resolution setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not r.skipped]
    labels = [f"{r.backend}\nOurs-{r.refs} {r.objects}obj {r.resolution}" for r in done]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(done) + 4), 4.5))
    axes[0].bar(range(len(done)), [r.fps for r in done], color="tab:blue")
    axes[0].set_ylabel("frames / s")
    axes[1].bar(range(len(done)), [r.peak_memory_mb or 0 for r in done], color="tab:orange")
    axes[1].set_ylabel("peak memory (MB)")
    for ax in axes:
        ax.set_xticks(range(len(done)), labels, rotation=60, ha="right", fontsize=7)
    fig.suptitle("jfdeploy bench")
    fig.tight_layout()
    with atomic_file(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def run_bench(
    variants: list[str],
    refs: list[int],
    objects: list[int],
    shorter_sides: list[int],
    *,
    frames: int,
    warmup: int,
    mem_every: int = 5,
    topk: int = 120,
    checkpoint: str | None = None,
    engines: str | None = None,
    device: str = "cpu",
    progress=print,
) -> tuple[list[Row], dict[str, Any]]:
    """Every (variant, refs, objects, resolution) row; eager rows first (the baseline of the others)."""
    ordered = ["eager", *[v for v in variants if v != "eager"]]
    rows: list[Row] = []
    eager_maps: dict[tuple, np.ndarray] = {}
    for side in shorter_sides:
        for n_refs in refs:
            for n_objects in objects:
                for variant in ordered:
                    spec = RowSpec(variant, n_refs, n_objects, side, frames, warmup, mem_every, topk, checkpoint,
                                   engines, device)  # fmt: skip
                    resolution = "{}x{}".format(*spec.size)
                    reason = missing_requirement(variant, device, engines)
                    if reason is None:
                        progress(f"bench: {variant}, Ours-{n_refs}, {n_objects} object(s), {resolution}")
                        result, maps = run_isolated(spec)
                        if isinstance(result, str):
                            reason = result
                    if reason is not None:
                        rows.append(Row(variant, n_refs, n_objects, resolution, skipped=reason))
                        continue
                    assert isinstance(result, dict) and maps is not None  # run_isolated's "ok": fields and maps
                    row = Row(**result)
                    key = (n_refs, n_objects, side)
                    if variant == "eager":
                        eager_maps[key] = maps
                    if key in eager_maps:
                        row.mean_iou_vs_eager = mean_iou(maps, eager_maps[key], n_objects)
                    if variant in variants:
                        rows.append(row)
    return rows, environment(device)


def save_json(path: Path, rows: list[Row], info: dict[str, Any], settings: dict[str, Any]) -> None:
    payload = {**info, "settings": settings, "paper": PAPER, "rows": [dataclasses.asdict(r) for r in rows]}
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
