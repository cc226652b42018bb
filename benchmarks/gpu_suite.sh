#!/usr/bin/env bash
# Every GPU check and benchmark of jfdeploy in ONE call, on a bare machine without network access.
#
#   OUT=DIR bash benchmarks/gpu_suite.sh [--wheels DIR] [--dry-run] [--tiny] [--budget SECONDS]
#
# Steps (each checks its Python imports first and is skipped, with the reason, when something is absent):
#   install  extra wheels from --wheels DIR (or WHEELS=DIR) with pip --no-index, then jfdeploy itself
#            offline (--no-deps --no-build-isolation; a PYTHONPATH copy when pip cannot)
#   env      GPU, driver, Python packages present / absent, `jfdeploy info`
#   tests    the CUDA tests: Triton kernels compiled for the GPU, no host sync in the steady state
#            (torch.cuda.set_sync_debug_mode), TensorRT plans when TensorRT and Polygraphy are there
#   kernel   fused top-k attention vs the dense PyTorch reference at the Table 9 shapes (480p: N = 1620
#            tokens, T = 2 / 4 frames, k = 120, fp16): time and peak memory
#   bench    `jfdeploy bench` at 480p, Ours-1 then Ours-3, every backend present
#   torch-free  the engine directory of the bench step through the torch-free runtime (torch blocked in the
#            process: benchmarks/torch_free_bench.py) against the torch backend at 480p: onnxruntime on CUDA
#            when onnxruntime-gpu is carried, tensorrt when TensorRT is present; skipped with the reason otherwise
#   serve    `jfdeploy serve` under load (benchmarks/serve_load.py): 1, 2, 4, 8 clients streaming at once, the
#            tiny model then the published shapes at 480p (854x480 frames): frames/s per session, p50 / p99
#            latency, mean batch size, server memory, and 4 / 8 clients at 480p with --max-batch 1 (unbatched);
#            needs the serve extra (starlette, uvicorn, ...)
# The whole run ends within --budget seconds (default 470): each step has its own `timeout`, cut to the time
# left. At most 8 files are written under $OUT, each stamped with the device name and the date:
#   env.txt, tests.log, kernel.json (table + log), bench.json (rows + log, torch-free rows too), bench.md,
#   serve.json (rows + log), summary.md
# --dry-run: decide every step (imports checked, reasons written) but run nothing heavy; with
#   SUITE_PRETEND_CUDA=1 it walks the decisions of a GPU machine (a check of this script on a CPU).
# --tiny: run every step at toy sizes on whatever device there is (a CPU check of this script's plumbing).
set -uo pipefail

WHEELS_DIR="${WHEELS:-}"
DRY=0
TINY=0
BUDGET="${SUITE_BUDGET_S:-470}"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS_DIR="${2:?--wheels needs a folder}"; shift 2 ;;
    --wheels=*) WHEELS_DIR="${1#--wheels=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    --tiny) TINY=1; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)" || exit 2  # the repository root
START=$(date +%s)
DEADLINE=$((START + BUDGET))
OUT="${OUT:-$REPO/benchmarks/results/$(date +%Y-%m-%d)-local}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/jf-suite.XXXXXX)"  # logs and JSON before they are merged into $OUT
trap 'rm -rf "$WORK"' EXIT
# Python runs from $WORK: from the repository root, `import jfdeploy` would find the source folder, which lacks
# jfdeploy.kernels and jfdeploy.export (mapped from kernels/ and export/ at install time)
cd "$WORK" || exit 2
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
STEPS="$WORK/steps.tsv"  # name, status, seconds, note
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -c "$REPO/pyproject.toml" --rootdir "$REPO" -rs)
: > "$STEPS"

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[$(elapsed)s] $*"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS"; say "$1: $2 (${3}s) $4"; }
have() {  # have MODULE...: every module imported in the probe (after the install step)
  local module var
  for module in "$@"; do
    var="HAS_${module//[.-]/_}"
    [ "${!var:-no}" = yes ] || return 1
  done
}
slice() {  # slice SECONDS: that budget, cut to the time left (a reserve kept for the summary)
  local left=$((DEADLINE - $(date +%s) - 15))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
run_step() {  # run_step NAME BUDGET LOG COMMAND...: run under `timeout`, append to LOG, record the outcome
  local name="$1" want="$2" log="$3"; shift 3
  local seconds began rc status
  seconds=$(slice "$want")
  if [ "$DRY" = 1 ]; then
    echo "(dry run) would run with a ${seconds}s budget: $*" >> "$log"
    record "$name" "dry-run" 0 "would run: $* (budget ${seconds}s)"
    return 0
  fi
  if [ "$seconds" -lt 5 ]; then
    echo "not run: out of time" >> "$log"
    record "$name" "skipped" 0 "out of time (suite budget ${BUDGET}s)"
    return 1
  fi
  echo "\$ $* (budget ${seconds}s)" >> "$log"
  began=$(date +%s)
  timeout --kill-after=10 "$seconds" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout"; echo "TIMED OUT after ${seconds}s" >> "$log" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $(($(date +%s) - began)) "$*"
  [ $rc -eq 0 ]
}

# ---- install: extra wheels, then jfdeploy (offline) ----------------------------------------------------------
INSTALL_LOG="$WORK/install.log"
: > "$INSTALL_LOG"
began=$(date +%s)
if [ -n "$WHEELS_DIR" ] && ls "$WHEELS_DIR"/*.whl > /dev/null 2>&1; then
  if [ "$DRY" = 1 ]; then
    record wheels dry-run 0 "would install: $(cd "$WHEELS_DIR" && ls ./*.whl | tr '\n' ' ')"
  elif timeout "$(slice 90)" "$PY" -m pip install -q --no-index --find-links "$WHEELS_DIR" "$WHEELS_DIR"/*.whl \
      >> "$INSTALL_LOG" 2>&1; then
    record wheels ok $(($(date +%s) - began)) "pip install --no-index --find-links $WHEELS_DIR"
  else  # a dependency missing from the folder: each wheel on its own, without dependencies, into a side folder
    echo "pip could not resolve the wheels together: installing each with --no-deps into /tmp/jf-wheels" \
      | tee -a "$INSTALL_LOG"
    timeout "$(slice 60)" "$PY" -m pip install -q --no-index --no-deps --upgrade --target /tmp/jf-wheels \
      "$WHEELS_DIR"/*.whl >> "$INSTALL_LOG" 2>&1
    export PYTHONPATH="/tmp/jf-wheels${PYTHONPATH:+:$PYTHONPATH}"
    record wheels "fallback" $(($(date +%s) - began)) "--no-deps --target /tmp/jf-wheels on PYTHONPATH"
  fi
else
  record wheels skipped 0 "no wheel folder given (--wheels DIR or WHEELS=DIR) or no .whl in it"
fi

began=$(date +%s)
checkout_module="$("$PY" -c 'import jfdeploy.kernels, jfdeploy.export, jfdeploy; print(jfdeploy.__file__)' 2>/dev/null)"
if [ -n "$checkout_module" ] && [ "${checkout_module#"$REPO"/}" != "$checkout_module" ]; then
  record install skipped 0 "jfdeploy already imports from this checkout ($checkout_module)"
elif [ "$DRY" = 1 ]; then
  record install dry-run 0 "would run: pip install --no-deps --no-build-isolation --no-index ."
elif timeout "$(slice 90)" "$PY" -m pip install -q --no-deps --no-build-isolation --no-index "$REPO" \
    >> "$INSTALL_LOG" 2>&1; then
  record install ok $(($(date +%s) - began)) "pip install --no-deps --no-build-isolation --no-index ."
else
  echo "pip could not install jfdeploy: using a PYTHONPATH copy in /tmp/jf-site" | tee -a "$INSTALL_LOG"
  rm -rf /tmp/jf-site && mkdir -p /tmp/jf-site && cp -r "$REPO/jfdeploy" /tmp/jf-site/ \
    && cp -r "$REPO/kernels" /tmp/jf-site/jfdeploy/kernels && cp -r "$REPO/export" /tmp/jf-site/jfdeploy/export
  export PYTHONPATH="/tmp/jf-site${PYTHONPATH:+:$PYTHONPATH}"
  record install fallback $(($(date +%s) - began)) "PYTHONPATH=/tmp/jf-site"
fi

# ---- what is there: one Python process imports every module the steps need --------------------------------------
MODULES="torch triton numpy onnx onnxruntime onnxconverter_common onnxslim polygraphy tensorrt av matplotlib pynvml
pytest jfdeploy jfdeploy.kernels jfdeploy.export starlette uvicorn prometheus_client websockets requests"
probe_py='
import importlib, importlib.metadata, platform, sys
work, modules = sys.argv[1], sys.argv[2].split()
dists = {"onnxconverter_common": "onnxconverter-common", "pynvml": "nvidia-ml-py"}
assign, table = [], [f"python {platform.python_version()} ({sys.executable}), {platform.platform()}"]
for module in modules:
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # absent, or failing at import (missing CUDA libraries, ...)
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        table.append(f"{module:22s} absent ({type(exc).__name__}: {first})")
        continue
    assign.append(f"HAS_{module.replace(chr(46), chr(95))}=yes")
    version = getattr(imported, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(dists.get(module, module))
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    extra = ""
    if module == "torch":
        cuda = imported.cuda.is_available()
        extra = f", CUDA {imported.version.cuda}, GPU available: {cuda}"
        assign.append("CUDA=" + ("yes" if cuda else "no"))
        name = imported.cuda.get_device_name() if cuda else "CPU"
        assign.append("DEVICE_NAME=" + repr(name.replace(chr(39), "")))
    if module == "onnxruntime":
        providers = imported.get_available_providers()
        extra = f", providers {providers}"
        assign.append("ORT_CUDA=" + ("yes" if "CUDAExecutionProvider" in providers else "no"))
    if module == "jfdeploy":
        extra = f" ({imported.__file__})"
    table.append(f"{module:22s} {version}{extra}")
open(f"{work}/probe.sh", "w").write("\n".join(assign) + "\n")
open(f"{work}/packages.txt", "w").write("\n".join(table) + "\n")
'
CUDA=no ORT_CUDA=no DEVICE_NAME=unknown
if ! "$PY" -c "$probe_py" "$WORK" "$MODULES" 2> "$WORK/probe.err"; then  # the probe itself crashed: one by one
  echo "the import probe failed ($(tail -n 1 "$WORK/probe.err")): probing module by module" >> "$INSTALL_LOG"
  : > "$WORK/probe.sh"; : > "$WORK/packages.txt"
  for module in $MODULES; do
    mkdir -p "$WORK/one"
    "$PY" -c "$probe_py" "$WORK/one" "$module" 2>/dev/null \
      && cat "$WORK/one/probe.sh" >> "$WORK/probe.sh" && cat "$WORK/one/packages.txt" >> "$WORK/packages.txt"
  done
fi
# shellcheck disable=SC1091
. "$WORK/probe.sh"
if [ "$DRY" = 1 ] && [ "${SUITE_PRETEND_CUDA:-0}" = 1 ]; then  # lets a CPU dry run walk the GPU decisions
  CUDA=yes DEVICE_NAME="no GPU (dry run pretending CUDA)"
fi
STAMP="device: $DEVICE_NAME; date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "$STAMP; CUDA: $CUDA; onnxruntime CUDA: $ORT_CUDA"
HAS_JF=no
have jfdeploy jfdeploy.kernels jfdeploy.export && HAS_JF=yes

# ---- env ---------------------------------------------------------------------------------------------------------
began=$(date +%s)
ENV_TXT="$OUT/env.txt"
{
  echo "jfdeploy GPU suite: environment"
  echo "$STAMP"
  echo "mode: $([ "$DRY" = 1 ] && echo dry-run || { [ "$TINY" = 1 ] && echo tiny || echo full; }); budget ${BUDGET}s"
  echo
  echo "== nvidia-smi"
  if command -v nvidia-smi > /dev/null; then timeout 20 nvidia-smi 2>&1; else echo "absent (no NVIDIA driver tools)"; fi
  echo
  echo "== Python packages (import check)"
  cat "$WORK/packages.txt"
  echo
  echo "== jfdeploy info"
  if [ "$HAS_JF" = yes ]; then timeout 60 "$PY" -m jfdeploy.cli info 2>&1; else echo "skipped: jfdeploy does not import"; fi
  echo
  echo "== install log"
  cat "$INSTALL_LOG"
} > "$ENV_TXT"
record env ok $(($(date +%s) - began)) "env.txt"

# ---- tests -------------------------------------------------------------------------------------------------------
TESTS_LOG="$OUT/tests.log"
{ echo "jfdeploy GPU suite: CUDA tests"; echo "$STAMP"; echo; } > "$TESTS_LOG"
if [ "$HAS_JF" != yes ] || ! have pytest; then
  record tests skipped 0 "needs jfdeploy and pytest importable"
  echo "skipped: needs jfdeploy and pytest importable" >> "$TESTS_LOG"
elif [ "$TINY" = 1 ]; then
  run_step tests 120 "$TESTS_LOG" "${PYTEST[@]}" \
    "$REPO/tests/test_host_sync.py::test_meta_tensors_refuse_host_reads"
elif [ "$CUDA" != yes ]; then
  record tests skipped 0 "no CUDA device (torch.cuda.is_available() is False)"
  echo "skipped: no CUDA device" >> "$TESTS_LOG"
else
  selection=("$REPO/tests/test_host_sync.py::test_steady_state_has_no_host_sync_on_cuda")
  if have triton; then selection+=("$REPO/tests/test_kernels.py"); else
    record tests-kernels skipped 0 "triton does not import"; fi
  run_step tests 100 "$TESTS_LOG" "${PYTEST[@]}" "${selection[@]}"
  if have tensorrt polygraphy onnx; then  # builds plans: its own budget, after the quick tests
    run_step tests-tensorrt 120 "$TESTS_LOG" "${PYTEST[@]}" "$REPO/tests/test_tensorrt.py"
  else
    record tests-tensorrt skipped 0 "tensorrt, polygraphy and onnx must all import"
  fi
fi

# ---- kernel ------------------------------------------------------------------------------------------------------
KERNEL_LOG="$WORK/kernel.log"
: > "$KERNEL_LOG"
if [ "$HAS_JF" != yes ] || ! have torch triton; then
  record kernel skipped 0 "needs jfdeploy, torch and triton importable"
elif [ "$TINY" = 1 ]; then
  run_step kernel 120 "$KERNEL_LOG" "$PY" "$REPO/benchmarks/topk_attention_bench.py" --tokens 16 --frames 2 --topk 8 \
    --json "$WORK/kernel_rows.json"
elif [ "$CUDA" != yes ]; then
  record kernel skipped 0 "no CUDA device: the kernel would only run in Triton's interpreter (no timing)"
else
  # the compile report for this GPU's arch with this machine's Triton (exit 1 on any spill / > 99 KB shared)
  arch="$("$PY" -c 'import torch; print("sm_%d%d" % torch.cuda.get_device_capability())')"
  run_step kernel-report 60 "$KERNEL_LOG" "$PY" -m jfdeploy.cli kernels --arch "$arch" \
    --case fp16:120:all_frames --case fp16:120:every_frame --case fp32:120:all_frames --case bf16:120:all_frames --check
  run_step kernel 80 "$KERNEL_LOG" "$PY" "$REPO/benchmarks/topk_attention_bench.py" --frames 2,4 --topk 120 \
    --json "$WORK/kernel_rows.json"
fi

# ---- bench -------------------------------------------------------------------------------------------------------
BENCH_LOG="$WORK/bench.log"
: > "$BENCH_LOG"
backends=(eager)
skipped_backends=()
if [ "$HAS_JF" != yes ]; then
  record bench skipped 0 "jfdeploy does not import"
elif [ "$TINY" != 1 ] && [ "$CUDA" != yes ]; then
  record bench skipped 0 "no CUDA device: the 480p rows are GPU figures (CPU smoke: jfdeploy bench --size 96)"
else
  if [ "$TINY" = 1 ]; then
    backends=(eager torch)
    bench_args=(--device cpu --size 64 --frames 3 --warmup 1)
    refs_list=(1)
  else
    backends=(eager eager-fp16 torch torch-fp16 torch-bf16)
    if have triton; then backends+=(torch-triton torch-fp16-triton); else
      skipped_backends+=("torch-triton, torch-fp16-triton: triton does not import"); fi
    engines=()
    if have tensorrt polygraphy onnx onnxconverter_common; then  # plans + their ONNX graphs: both engine rows
      run_step export-tensorrt 150 "$BENCH_LOG" "$PY" -m jfdeploy.cli export --precision fp16 --format tensorrt \
        --out "$WORK/engines" --overwrite && engines=(--engines "$WORK/engines") && backends+=(tensorrt)
    else
      skipped_backends+=("tensorrt: tensorrt, polygraphy, onnx and onnxconverter_common must all import")
      if [ "$ORT_CUDA" = yes ] && have onnx onnxconverter_common; then
        run_step export-onnx 90 "$BENCH_LOG" "$PY" -m jfdeploy.cli export --precision fp16 --format onnx \
          --out "$WORK/engines" --overwrite && engines=(--engines "$WORK/engines")
      fi
    fi
    if [ "$ORT_CUDA" = yes ] && [ ${#engines[@]} -gt 0 ]; then backends+=(onnxruntime); else
      skipped_backends+=("onnxruntime: needs onnxruntime-gpu (CUDAExecutionProvider; a CPU-only onnxruntime would time the CPU) and an exported engine directory")
    fi
    bench_args=("${engines[@]}")
    refs_list=(1 3)
  fi
  for reason in "${skipped_backends[@]}"; do record "bench ${reason%%:*}" skipped 0 "${reason#*: }"; done
  for refs in "${refs_list[@]}"; do  # Ours-1 first: its rows survive if Ours-3 runs out of time
    budget=$([ "$refs" = 1 ] && echo 110 || echo 150)
    [ "$TINY" = 1 ] && budget=240
    run_step "bench-ours$refs" "$budget" "$BENCH_LOG" "$PY" -m jfdeploy.cli bench --refs "$refs" \
      --backends "$(IFS=,; echo "${backends[*]}")" "${bench_args[@]}" \
      --json "$WORK/bench_ours$refs.json"
  done
fi

# ---- torch-free: the engine runtime without torch, against the torch backend -------------------------------------
free_variants=()
if [ "$TINY" = 1 ] && [ "$HAS_JF" = yes ] && have onnx; then  # plumbing check: a tiny export, onnxruntime on the CPU
  run_step export-tiny 60 "$BENCH_LOG" "$PY" -c "from jfdeploy.export.onnx_export import export_engines; \
from jfdeploy.model import ModelConfig; from jfdeploy.model.checkpoint import random_model; \
export_engines(random_model(ModelConfig.tiny(topk=5)), '$WORK/engines', slim=False)" && free_variants=(onnxruntime torch)
  free_args=(--size 64 --frames 3 --device cpu)
elif [ "$HAS_JF" != yes ] || [ "$CUDA" != yes ]; then
  record torch-free skipped 0 "needs jfdeploy and a CUDA device"
elif [ ! -f "$WORK/engines/manifest.json" ]; then
  record torch-free skipped 0 "no engine directory: the bench step exports one only with TensorRT or onnxruntime-gpu"
else
  [ "$ORT_CUDA" = yes ] && free_variants+=(onnxruntime)
  [ "$ORT_CUDA" = yes ] || record "torch-free onnxruntime" skipped 0 "onnxruntime-gpu (CUDAExecutionProvider) not carried"
  if have tensorrt polygraphy; then free_variants+=(tensorrt); else
    record "torch-free tensorrt" skipped 0 "tensorrt and polygraphy must import"; fi
  free_variants+=(torch-fp16 torch)
  free_args=(--size 480 --frames 12 --device cuda)
fi
if [ ${#free_variants[@]} -gt 0 ]; then
  run_step torch-free 120 "$BENCH_LOG" "$PY" "$REPO/benchmarks/torch_free_bench.py" --engines "$WORK/engines" \
    --variants "$(IFS=,; echo "${free_variants[*]}")" "${free_args[@]}" --json "$WORK/torch_free.json"
fi

# ---- serve: jfdeploy serve under load ---------------------------------------------------------------------------
SERVE_LOG="$WORK/serve.log"
: > "$SERVE_LOG"
serve_load=("$PY" "$REPO/benchmarks/serve_load.py" --clients 1,2,4,8 --transport stream)
if [ "$HAS_JF" != yes ] || ! have starlette uvicorn prometheus_client websockets requests; then
  record serve skipped 0 "needs jfdeploy and the serve extra (starlette, uvicorn, prometheus_client, websockets, requests)"
elif [ "$TINY" = 1 ]; then  # plumbing check on whatever device there is
  run_step serve-tiny 90 "$SERVE_LOG" "${serve_load[@]}" --tiny --clients 1,2 --frames 6 --fps 10 \
    --json "$WORK/serve_tiny.json"
elif [ "$CUDA" != yes ]; then
  record serve skipped 0 "no CUDA device: the serve rows are GPU figures (CPU: benchmarks/serve_load.py --tiny)"
else
  run_step serve-tiny 60 "$SERVE_LOG" "${serve_load[@]}" --tiny --device cuda --frames 20 --fps 30 \
    --json "$WORK/serve_tiny.json"
  run_step serve-480p 120 "$SERVE_LOG" "${serve_load[@]}" --device cuda --size 480 --height 480 --width 854 \
    --frames 20 --fps 10 --json "$WORK/serve_480p.json"
  # the same streams one frame at a time (--max-batch 1): what cross-stream batching gains on this GPU
  run_step serve-480p-unbatched 60 "$SERVE_LOG" "${serve_load[@]}" --device cuda --size 480 --height 480 --width 854 \
    --clients 4,8 --frames 10 --fps 10 --max-batch 1 --json "$WORK/serve_480p_unbatched.json"
fi

# ---- merge into $OUT, summary --------------------------------------------------------------------------------------
record total "done" "$(elapsed)" "suite budget ${BUDGET}s"
STAMP="$STAMP" WORK="$WORK" OUT="$OUT" DRY="$DRY" "$PY" - << 'EOF'
import json, os, pathlib
out, work, stamp = pathlib.Path(os.environ["OUT"]), pathlib.Path(os.environ["WORK"]), os.environ["STAMP"]
device, date = stamp.removeprefix("device: ").split("; date: ")


def read(name):
    path = work / name
    return path.read_text(errors="replace") if path.is_file() else ""


def load(name):
    try:
        return json.loads(read(name)) if read(name) else None
    except json.JSONDecodeError:
        return None


kernel = {"device": device, "date": date, "shapes": "480p: N 1620 tokens, T 2 / 4 frames, k 120, 12 heads, d 64",
          "result": load("kernel_rows.json"), "log": read("kernel.log")}
if kernel["result"] or kernel["log"]:
    (out / "kernel.json").write_text(json.dumps(kernel, indent=2) + "\n")

runs = {name: load(f"bench_{name}.json") for name in ("ours1", "ours3")}
rows = [row for run in runs.values() if run for row in run["rows"]]
torch_free = load("torch_free.json")
bench_log = read("bench.log")
if rows or bench_log or torch_free:
    first = next((run for run in runs.values() if run), {})
    payload = {"device": device, "date": date, "environment": {k: v for k, v in first.items() if k not in
               ("rows", "settings", "paper")}, "settings": {n: r["settings"] for n, r in runs.items() if r},
               "paper": first.get("paper"), "rows": rows, "torch_free": torch_free, "log": bench_log}  # fmt: skip
    (out / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["# jfdeploy bench", "", stamp, ""]
    if rows:
        from jfdeploy.bench import Row, format_markdown

        info = {"device": device, "versions": first.get("versions", {"torch": "?"})}
        lines += [format_markdown([Row(**row) for row in rows], info), ""]
    else:
        lines += ["no rows (see the log below)", ""]
    if torch_free:
        lines += ["## torch-free runtime (benchmarks/torch_free_bench.py)", "",
                  "| variant | torch imported | resolution | first mask s | ms / frame | frames/s | peak RSS MB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in torch_free["rows"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            else:
                lines.append(f"| {r['variant']} | {r['torch_imported']} | {r['resolution']} | {r['first_mask_s']:.2f} | "
                             f"{r['median_step_ms']:.1f} | {r['fps']:.2f} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
        lines.append("")
    lines += ["## log (last 60 lines)", "", "```", *bench_log.splitlines()[-60:], "```", ""]
    (out / "bench.md").write_text("\n".join(lines))

serve = {"device": device, "date": date, "tiny": load("serve_tiny.json"), "480p": load("serve_480p.json"),
         "480p_unbatched": load("serve_480p_unbatched.json"), "log": read("serve.log")}
if serve["tiny"] or serve["480p"] or serve["log"]:
    (out / "serve.json").write_text(json.dumps(serve, indent=2) + "\n")

steps = [line.split("\t") for line in read("steps.tsv").splitlines() if line]
summary = ["# jfdeploy GPU suite", "", stamp, "", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
summary += [f"| {name} | {status} | {seconds} | {note.replace('|', '/')} |" for name, status, seconds, note in steps]
files = sorted(p.name for p in out.iterdir() if p.is_file()) + ["summary.md"]
summary += ["", "files: " + ", ".join(sorted(set(files))), ""]
(out / "summary.md").write_text("\n".join(summary))
EOF
cat "$OUT/summary.md"
say "results in $OUT ($(find "$OUT" -maxdepth 1 -type f | wc -l) files)"
# exit status: 0 unless a step that ran failed or timed out
if cut -f2 "$STEPS" | grep -q -e '^failed' -e '^timeout'; then exit 1; fi
exit 0
