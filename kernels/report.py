"""Ahead-of-time compile report of the fused top-k attention kernel, no GPU needed.

For each NVIDIA architecture and each configuration the wrapper would launch, compile the kernel
with Triton's compiler and its bundled ``ptxas`` and read registers, spill bytes and shared memory::

    jfdeploy kernels --arch sm_80,sm_86,sm_89,sm_90 --json report.json
    python -m jfdeploy.kernels.report --arch sm_90 --case fp16:120:all_frames   # one case

What is compiled comes from ``topk_attention.plan_launch``, the function the launch wrapper calls:
the same tile sizes, num_warps / num_stages, constexprs and runtime arguments, for inputs shaped
as the model passes them at the paper's 480p Table 9 setting (1620 query tokens of one object,
12 heads, head dim 64, 4 reference frames of 1620 tokens, a validity mask). The runtime arguments
are specialized as Triton's JIT specializes them at launch (integers equal to 1 become
constants, integers and pointers divisible by 16 get the divisibility hint); identical compile
inputs are compiled once and share their row's figures (column ``binary``).

Register and spill figures are ptxas's own (``-v``) from the compile Triton runs; shared memory
is Triton's figure (the dynamic shared memory the launch requests) plus any static shared memory
ptxas reports. A row is clean when it spills nothing and needs at most 99 KB of shared memory,
the per-block limit of sm_86 / sm_89 (sm_80 allows 163 KB, sm_90 227 KB).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from jfdeploy.precision import torch_precisions

if TYPE_CHECKING:  # not imported at run time: the report itself needs only torch (and Triton to compile)
    from jfdeploy.kernels.topk_attention import LaunchPlan
    from jfdeploy.model.attention import TopkRange

ARCHS: dict[str, int] = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}
SHARED_LIMIT_BYTES = 99 * 1024  # per-block shared memory of sm_86 / sm_89, the smallest of ARCHS
DTYPES: dict[str, torch.dtype] = torch_precisions()  # the precision names of every verb
TOPK_RANGES: tuple[TopkRange, ...] = ("all_frames", "every_frame")


@dataclass(frozen=True)
class Shape:
    """Inputs of one launch: ``tokens`` query rows and own keys, ``frames`` x ``tokens`` reference keys."""

    batch: int = 1
    heads: int = 12
    tokens: int = 1620  # 30 x 54 tokens: a 480 x 864 frame at stride 16
    frames: int = 4
    head_dim: int = 64


TABLE9 = Shape()


@dataclass(frozen=True)
class Case:
    dtype: str  # key of DTYPES
    topk: int
    topk_range: TopkRange

    @classmethod
    def parse(cls, text: str) -> Case:
        """'fp16:120:all_frames' -> Case."""
        parts = text.split(":")
        topk_range = next((r for r in TOPK_RANGES if len(parts) == 3 and r == parts[2]), None)
        if len(parts) != 3 or parts[0] not in DTYPES or not parts[1].isdigit() or topk_range is None:
            raise ValueError(
                f"case must be DTYPE:K:RANGE (DTYPE in {sorted(DTYPES)}, RANGE in {TOPK_RANGES}), got {text!r}"
            )
        return cls(parts[0], int(parts[1]), topk_range)

    def __str__(self) -> str:
        return f"{self.dtype}:{self.topk}:{self.topk_range}"


DEFAULT_CASES: tuple[Case, ...] = tuple(
    [Case("fp16", k, r) for k in (20, 60, 120, 180, 600) for r in TOPK_RANGES]
    + [Case(dtype, 120, r) for dtype in ("fp32", "bf16") for r in TOPK_RANGES]
)
TABLE9_CASE = Case("fp16", 120, "all_frames")


@dataclass
class Row:
    """One (arch, case) compile."""

    arch: str
    dtype: str
    topk: int
    topk_range: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    maxnreg: int | None
    registers: int | None = None
    spill_stores: int | None = None  # bytes
    spill_loads: int | None = None  # bytes
    stack_frame: int | None = None  # bytes
    shared: int | None = None  # bytes: Triton's dynamic shared memory + ptxas's static smem
    binary: str = ""  # short hash of the PTX: rows with the same hash are the same kernel
    compile_s: float = 0.0
    error: str = ""

    @property
    def clean(self) -> bool:
        return (
            not self.error
            and self.spill_stores == 0
            and self.spill_loads == 0
            and self.shared is not None
            and self.shared <= SHARED_LIMIT_BYTES
        )


# --------------------------------------------------------------------------------------------
# toolchain
# --------------------------------------------------------------------------------------------


def _ptxas_path(capability: int) -> str:
    """The ptxas Triton uses for ``capability`` (its API: a tool with .path in 3.4+, a path before)."""
    from triton.backends.nvidia import compiler as nvidia_compiler

    try:
        tool = nvidia_compiler.get_ptxas(capability)
    except TypeError:  # older signature: get_ptxas()
        tool = nvidia_compiler.get_ptxas()
    path = getattr(tool, "path", tool)
    if isinstance(path, tuple):  # (path, version) in some releases
        path = path[0]
    return str(path)


def ptxas_version(capability: int) -> str:
    """'release 12.9, V12.9.86'-style version of the ptxas used for ``capability``."""
    text = subprocess.run([_ptxas_path(capability), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release [^\n]*", text)
    return match.group(0).strip() if match else text.strip().splitlines()[-1]


class Toolchain(TypedDict):
    triton: str
    torch: str
    ptxas: dict[str, dict[str, str]]  # arch -> {"binary": file name, "version": ptxas --version}


class _ReportFields(TypedDict):
    toolchain: Toolchain
    shape: dict[str, int]  # Shape's fields
    shared_limit_bytes: int
    rows: list[dict[str, Any]]  # Row's fields and "clean"


class Report(_ReportFields, total=False):
    command: str  # set by run_from_args
    date: str


def toolchain(archs: Iterable[str]) -> Toolchain:
    """Versions of everything that decides the figures; raises JfDeployError without Triton's NVIDIA backend."""
    from jfdeploy.errors import JfDeployError

    try:
        import triton
        from triton.backends.nvidia import compiler as _  # noqa: F401
    except ImportError as error:
        raise JfDeployError(f"the kernel report needs Triton with its NVIDIA backend: {error}") from error
    ptxas = {}
    for arch in archs:
        capability = ARCHS[arch]
        try:
            binary = os.path.basename(_ptxas_path(capability))  # (Triton's bundled ptxas, by name)
            ptxas[arch] = {"binary": binary, "version": ptxas_version(capability)}
        except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
            raise JfDeployError(f"Triton's bundled ptxas for {arch} does not run: {error}") from error
    return {"triton": triton.__version__, "torch": torch.__version__, "ptxas": ptxas}


# --------------------------------------------------------------------------------------------
# what the wrapper launches, specialized as Triton's JIT does
# --------------------------------------------------------------------------------------------


class CaseInputs(TypedDict):
    """plan_launch's inputs: B x h x N x d query/keys/values, B x h x T*N x d references, B x T*N mask."""

    q: torch.Tensor
    k_own: torch.Tensor
    v_own: torch.Tensor
    k_ref: torch.Tensor
    v_ref: torch.Tensor
    out: torch.Tensor
    ref_valid: torch.Tensor
    frames: int


def case_inputs(case: Case, shape: Shape = TABLE9) -> CaseInputs:
    """Meta tensors (no memory) laid out as the model passes them: q/k/v views of one qkv projection."""
    dtype = DTYPES[case.dtype]
    b, h, n, d, t = shape.batch, shape.heads, shape.tokens, shape.head_dim, shape.frames
    qkv = torch.empty(b, n, 3, h, d, dtype=dtype, device="meta")
    q, k_own, v_own = qkv.permute(2, 0, 3, 1, 4)  # B x h x N x d views (Attention.heads)
    k_ref = torch.empty(b, h, t * n, d, dtype=dtype, device="meta")
    v_ref = torch.empty(b, h, t * n, d, dtype=dtype, device="meta")
    valid = torch.empty(b, t * n, dtype=torch.int8, device="meta")
    out = torch.empty(b, h, n, d, dtype=dtype, device="meta")
    return CaseInputs(q=q, k_own=k_own, v_own=v_own, k_ref=k_ref, v_ref=v_ref, out=out, ref_valid=valid, frames=t)


_TYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8"}


def specialize(value: object) -> tuple[str, object]:
    """(signature type, specialization) of one runtime argument, as Triton's JIT launch computes it:
    ('constexpr', 1) for the integer 1; ('i32'|'i64', 'D'|'') for integers ('D': divisible by 16);
    ('*fp16', 'D'|'') for tensors ('D': 16-byte aligned data, assuming a 256-byte aligned allocation);
    ('fp32', None) for floats."""
    if isinstance(value, torch.Tensor):
        offset_bytes = value.storage_offset() * value.element_size()
        return "*" + _TYPE_NAMES[value.dtype], "D" if offset_bytes % 16 == 0 else ""
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1
        kind = "i32" if -(2**31) <= value < 2**31 else "i64"
        return kind, "D" if value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"no specialization for {type(value).__name__}")


@dataclass(frozen=True)
class CompileJob:
    """One kernel compile: ASTSource inputs plus options; equal jobs compile to the same binary."""

    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]  # argument names with the divisibility-by-16 hint
    capability: int
    options: tuple[tuple[str, int], ...]  # num_warps, num_stages, maxnreg


def compile_job(case: Case, arch: str, shape: Shape = TABLE9) -> tuple[CompileJob, LaunchPlan]:
    """The compile the wrapper's launch of ``case`` on ``arch`` triggers, and its LaunchPlan."""
    from jfdeploy.kernels import topk_attention

    inputs = case_inputs(case, shape)
    q, k_own, v_own, k_ref, v_ref = inputs["q"], inputs["k_own"], inputs["v_own"], inputs["k_ref"], inputs["v_ref"]
    plan = topk_attention.plan_launch(
        q, k_own, v_own, k_ref, v_ref, inputs["out"], scale=shape.head_dim**-0.5, topk=case.topk,
        frames=inputs["frames"], topk_range=case.topk_range, ref_valid=inputs["ref_valid"], capability=ARCHS[arch],
    )  # fmt: skip
    kernel = topk_attention._topk_joint_attention_kernel
    names = list(kernel.arg_names)
    runtime_names = [name for name in names if name not in plan.constexprs]
    assert len(runtime_names) == len(plan.args), "plan_launch and the kernel disagree on the arguments"
    signature: list[tuple[str, str]] = []
    constexprs: dict[str, object] = dict(plan.constexprs)
    divisible: list[str] = []
    for name, value in zip(runtime_names, plan.args, strict=True):
        kind, spec = specialize(value)
        if kind == "constexpr":
            constexprs[name] = spec
        elif spec == "D":
            divisible.append(name)
        signature.append((name, kind))
    for name in plan.constexprs:
        signature.append((name, "constexpr"))
    order = {name: i for i, name in enumerate(names)}
    signature.sort(key=lambda item: order[item[0]])
    for name in constexprs:
        signature = [(n, "constexpr" if n == name else kind) for n, kind in signature]
    job = CompileJob(
        signature=tuple(signature),
        constexprs=tuple(sorted(constexprs.items(), key=lambda item: order[item[0]])),
        divisible=tuple(divisible),
        capability=ARCHS[arch],
        options=tuple(sorted(plan.options.items())),
    )
    return job, plan


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, int]:
    """registers, stack_frame, spill_stores, spill_loads, static_smem from ``ptxas -v`` output."""
    registers, spills, smem = _REGISTERS.search(log), _SPILLS.search(log), _SMEM.search(log)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas log:\n{log}")
    return {
        "registers": int(registers.group(1)),
        "stack_frame": int(spills.group(1)),
        "spill_stores": int(spills.group(2)),
        "spill_loads": int(spills.group(3)),
        "static_smem": int(smem.group(1)) if smem else 0,
    }


def _run_ptxas(ptx: str, capability: int) -> str:
    """``ptxas -v`` of Triton's bundled ptxas on ``ptx``; its log."""
    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory(prefix="jfdeploy-ptxas-") as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as file:
            file.write(ptx)
        command = [_ptxas_path(capability), "-v", f"--gpu-name={arch}", source, "-o", source + ".o"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stderr


def run_compile(job: CompileJob) -> dict[str, object]:
    """Compile ``job`` with Triton (and its ptxas); returns the ptxas figures, shared memory and PTX hash."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from jfdeploy.kernels import topk_attention

    kernel = topk_attention._topk_joint_attention_kernel
    names = list(kernel.arg_names)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in job.divisible}
    source = ASTSource(fn=kernel, signature=dict(job.signature), constexprs=dict(job.constexprs), attrs=attrs)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="jfdeploy-kernel-report-") as cache:
        # a fresh cache: Triton runs ptxas (and prints its -v log) only when it really compiles
        saved = (knobs.cache.dir, knobs.nvidia.dump_ptxas_log)
        knobs.cache.dir, knobs.nvidia.dump_ptxas_log = cache, True
        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings():
                # Triton 3.9 warns that its fp-fusion default will change; the launch gets the same default
                warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
                compiled = triton.compile(
                    source,
                    target=GPUTarget("cuda", job.capability, 32),
                    options=dict(job.options),
                )
        finally:
            knobs.cache.dir, knobs.nvidia.dump_ptxas_log = saved
    ptx = compiled.asm["ptx"]
    ptxas_log = log.getvalue()
    if "Used" not in ptxas_log:  # a Triton without the dump_ptxas_log knob: run its ptxas on the PTX
        ptxas_log = _run_ptxas(ptx, job.capability)
    ptxas_figures = parse_ptxas_log(ptxas_log)
    shared = int(compiled.metadata.shared) + ptxas_figures.pop("static_smem")
    return {**ptxas_figures, "shared": shared, "binary": hashlib.sha256(ptx.encode()).hexdigest()[:10]}


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    from jfdeploy.kernels import topk_attention

    return not hasattr(topk_attention._topk_joint_attention_kernel, "cache_key") or os.environ.get(
        "TRITON_INTERPRET"
    ) in ("1", "true", "True")


def compile_report(
    archs: Sequence[str], cases: Sequence[Case] = DEFAULT_CASES, shape: Shape = TABLE9, *, log=None
) -> Report:
    """Compile every (arch, case); returns {"toolchain": ..., "shape": ..., "rows": [Row as dict]}.

    Under Triton's interpreter (TRITON_INTERPRET=1) kernels cannot be compiled in this process: the
    report then runs in a child process without it.
    """
    unknown = [arch for arch in archs if arch not in ARCHS]
    if unknown:
        from jfdeploy.errors import InputError

        raise InputError(f"unknown arch {', '.join(unknown)}; known: {', '.join(ARCHS)}")
    if _interpreted():
        return _report_in_child(archs, cases, shape)
    tools = toolchain(archs)
    rows: list[Row] = []
    done: dict[CompileJob, dict[str, object]] = {}
    for arch in archs:
        for case in cases:
            job, plan = compile_job(case, arch, shape)
            config = plan.config
            row = Row(arch, case.dtype, case.topk, case.topk_range, config.block_m, config.block_n,
                      config.num_warps, config.num_stages, config.maxnreg)  # fmt: skip
            if job not in done:
                start = time.perf_counter()
                try:
                    done[job] = run_compile(job)
                except Exception as error:  # a failed compile is a row of the report
                    done[job] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
                done[job]["compile_s"] = round(time.perf_counter() - start, 2)
                if log is not None:
                    print(f"compiled {arch} {case} in {done[job]['compile_s']:.1f} s", file=log, flush=True)
            for field, value in done[job].items():
                setattr(row, field, value)
            rows.append(row)
    return {
        "toolchain": tools,
        "shape": dataclasses.asdict(shape),
        "shared_limit_bytes": SHARED_LIMIT_BYTES,
        "rows": [dict(dataclasses.asdict(row), clean=row.clean) for row in rows],
    }


def _report_in_child(archs: Sequence[str], cases: Sequence[Case], shape: Shape) -> Report:
    from jfdeploy.errors import JfDeployError

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "jfdeploy.kernels.report", "--arch", ",".join(archs), "--json", "-"]
    command += ["--shape", json.dumps(dataclasses.asdict(shape)), "--head-dim", str(shape.head_dim)]
    for case in cases:
        command += ["--case", str(case)]
    # from a neutral folder: `-m` puts the working directory first on sys.path, and a source checkout there
    # (jfdeploy/ without kernels/, mapped in only at install time) would shadow the installed package
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise JfDeployError(f"the kernel report failed:\n{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def format_markdown(report: Report) -> str:
    """The report as Markdown: versions, then one row per (arch, case)."""
    tools = report["toolchain"]
    shape = report["shape"]
    lines = ["# Fused top-k attention: ahead-of-time compile report", ""]
    if report.get("command"):
        lines.append(f"`{report['command']}` ({report.get('date', '')})")
        lines.append("")
    lines.append(f"- triton {tools['triton']}, torch {tools['torch']}")
    for arch, info in tools["ptxas"].items():
        lines.append(f"- ptxas for {arch}: {info['version']} ({info['binary']})")
    lines.append(
        f"- inputs: {shape['tokens']} query rows, {shape['heads']} heads, head dim {shape['head_dim']}, "
        f"{shape['frames']} reference frames of {shape['tokens']} tokens, validity mask on"
    )
    lines.append(f"- clean: 0 spill bytes and shared memory <= {report['shared_limit_bytes'] // 1024} KB")
    lines.append("- registers: ptxas's count (it takes up to maxnreg when that helps its scheduling)")
    lines.append("- binary: hash of the PTX; rows with the same hash are the same kernel (k is a runtime argument)")
    lines.append("")
    columns = ["arch", "dtype", "k", "topk_range", "BLOCK_M", "BLOCK_N", "warps", "stages", "maxnreg",
               "registers", "spill stores B", "spill loads B", "shared B", "clean", "binary"]  # fmt: skip
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + " --- |" * len(columns))
    for row in report["rows"]:
        if row["error"]:
            figures = ["error", "", "", ""]
        else:
            figures = [row["registers"], row["spill_stores"], row["spill_loads"], row["shared"]]
        launch = [row["block_m"], row["block_n"], row["num_warps"], row["num_stages"], row["maxnreg"] or "-"]
        cells = [row["arch"], row["dtype"], row["topk"], row["topk_range"], *launch, *figures]
        cells += ["yes" if row["clean"] else "NO", row["binary"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    errors = [row for row in report["rows"] if row["error"]]
    for row in errors:
        lines.append(f"\n{row['arch']} {row['dtype']} k={row['topk']}: {row['error']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default=",".join(ARCHS), help=f"comma-separated, of {', '.join(ARCHS)} (default: all)"
    )
    parser.add_argument(
        "--case", action="append", default=None, metavar="DTYPE:K:RANGE",
        help="one configuration, e.g. fp16:120:all_frames (repeatable; default: the full matrix: fp16 at k "
        "20/60/120/180/600, fp32 and bf16 at k 120, both ranges)",
    )  # fmt: skip
    parser.add_argument("--head-dim", type=int, choices=(16, 32, 64, 128, 256), default=TABLE9.head_dim,
                        help=f"head dim of the inputs (default {TABLE9.head_dim}, JointFormer's)")  # fmt: skip
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON ('-': stdout only)")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the Markdown table here")
    parser.add_argument("--check", action="store_true", help="exit status 1 when any row is not clean")


def run_from_args(args: argparse.Namespace) -> Report:
    """Run the report for parsed ``add_arguments`` options; print / write it; return it."""
    from jfdeploy.errors import DifferenceError, InputError

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    try:
        cases = [Case.parse(text) for text in args.case] if args.case else list(DEFAULT_CASES)
    except ValueError as error:
        raise InputError(str(error)) from error
    shape = Shape(**json.loads(args.shape)) if getattr(args, "shape", None) else TABLE9
    shape = dataclasses.replace(shape, head_dim=args.head_dim)
    to_stdout_json = args.json == "-"
    report = compile_report(archs, cases, shape, log=None if to_stdout_json else sys.stderr)
    command = f"jfdeploy kernels --arch {','.join(archs)}"
    if shape.head_dim != TABLE9.head_dim:
        command += f" --head-dim {shape.head_dim}"
    if args.case:
        command += "".join(f" --case {case}" for case in cases)
    report["command"] = command
    report["date"] = datetime.date.today().isoformat()
    if to_stdout_json:
        json.dump(report, sys.stdout)
        return report
    text = format_markdown(report)
    print(text)
    from jfdeploy.fsutil import write_text_atomic

    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")
    if args.check and not all(row["clean"] for row in report["rows"]):
        raise DifferenceError("some kernel configurations spill or need more than 99 KB of shared memory")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)  # JSON of Shape (child processes)
    args = parser.parse_args(argv)
    from jfdeploy.errors import JfDeployError

    try:
        run_from_args(args)
    except JfDeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
