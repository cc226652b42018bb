#!/usr/bin/env bash
# Everything that needs a GPU, in one device call (GPU sessions are rare):
#   environment report, CUDA tests (Triton kernels compiled for the GPU, golden parity on CUDA),
#   the kernel benchmark at 480p, the backend benchmark at 480p (Ours-1 / Ours-3 settings).
# Writes everything under $OUT (default benchmarks/results/<date>-local). Commit the results under
# benchmarks/results/<device>-<date>/ afterwards. Usage on the device machine, from the repo root:
#   bash benchmarks/gpu_suite.sh
set -uo pipefail
OUT="${OUT:-benchmarks/results/$(date +%Y-%m-%d)-local}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember failures, go on
  local name="$1"; shift
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1 || { echo "   FAILED (see $name.log)"; status=1; }
  tail -n 25 "$OUT/$name.log"
}

# offline install (the device reaches no package index): no deps, no build isolation
python3 -m pip install -q --no-deps --no-build-isolation --no-index . > "$OUT/install.log" 2>&1 || {
  echo "pip install failed, using a PYTHONPATH copy" | tee -a "$OUT/install.log"
  rm -rf /tmp/jfsite && mkdir -p /tmp/jfsite && cp -r jfdeploy /tmp/jfsite/ \
    && cp -r kernels /tmp/jfsite/jfdeploy/kernels && cp -r export /tmp/jfsite/jfdeploy/export
  export PYTHONPATH=/tmp/jfsite
}

step environment bash -c "nvidia-smi; python3 -m jfdeploy.cli info; python3 -c 'import torch; print(torch.cuda.get_device_properties(0))'"
step tests python3 -m pytest -q -x tests/test_kernels.py tests/test_golden.py tests/test_staged.py tests/test_attention.py
step kernel_bench python3 benchmarks/topk_attention_bench.py --json "$OUT/topk_attention.json"
step backends_ours1 python3 benchmarks/staged_vs_eager.py --height 480 --width 864 --objects 1 --memory-frames 1 \
  --variants torch,torch-fp16,torch-triton,torch-fp16-triton
step backends_ours3 python3 benchmarks/staged_vs_eager.py --height 480 --width 864 --objects 1 --memory-frames 3 \
  --variants torch,torch-fp16,torch-triton,torch-fp16-triton
step export python3 -m jfdeploy.cli export --precision fp16 --out /tmp/jf-engines --overwrite
step bench python3 -m jfdeploy.cli bench --refs 1,3 --engines /tmp/jf-engines \
  --json "$OUT/bench.json" --chart "$OUT/bench.png"
step bench_sweep python3 -m jfdeploy.cli bench --backends eager,torch-fp16,torch-fp16+triton --refs 3 \
  --objects 1,2,4 --resolution 240p,480p,720p --json "$OUT/bench_sweep.json"
echo "results in $OUT (status $status)"
exit $status
