#!/usr/bin/env bash
# Everything that needs a GPU (GPU sessions are rare). Each part fits in one 10-minute device call:
#   bash benchmarks/gpu_suite.sh [env|tests|kernel|backends|bench|sweep|all]   (default: all)
# Parts: environment report; CUDA tests (Triton kernels compiled for the GPU, golden parity);
# the kernel benchmark at 480p; torch-vs-eager at 480p (Ours-1 / Ours-3); `jfdeploy bench` with an
# fp16 engine directory (TensorRT plans if TensorRT is there); the objects x resolution sweep.
# Everything is written under $OUT (default benchmarks/results/<date>-local); commit the results
# under benchmarks/results/<device>-<date>/ afterwards.
set -uo pipefail
PART="${1:-all}"
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
want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }

# offline install (the device reaches no package index): no deps, no build isolation
python3 -m pip install -q --no-deps --no-build-isolation --no-index . > "$OUT/install.log" 2>&1 || {
  echo "pip install failed, using a PYTHONPATH copy" | tee -a "$OUT/install.log"
  rm -rf /tmp/jfsite && mkdir -p /tmp/jfsite && cp -r jfdeploy /tmp/jfsite/ \
    && cp -r kernels /tmp/jfsite/jfdeploy/kernels && cp -r export /tmp/jfsite/jfdeploy/export
  export PYTHONPATH=/tmp/jfsite
}

want env && step environment bash -c "nvidia-smi; python3 -m jfdeploy.cli info"
want tests && step tests python3 -m pytest -q -x tests/test_kernels.py tests/test_golden.py tests/test_staged.py \
  tests/test_attention.py tests/test_export.py
want kernel && step kernel_bench python3 benchmarks/topk_attention_bench.py --json "$OUT/topk_attention.json"
for refs in 1 3; do
  want backends && step "backends_ours$refs" python3 benchmarks/staged_vs_eager.py --height 480 --width 864 \
    --objects 1 --memory-frames "$refs" --variants torch,torch-fp16,torch-triton,torch-fp16-triton
done
if want bench; then
  step export python3 -m jfdeploy.cli export --precision fp16 --out /tmp/jf-engines --overwrite
  step bench python3 -m jfdeploy.cli bench --refs 1,3 --engines /tmp/jf-engines \
    --json "$OUT/bench.json" --chart "$OUT/bench.png"
fi
want sweep && step bench_sweep python3 -m jfdeploy.cli bench --backends eager,torch-fp16,torch-fp16+triton \
  --refs 3 --objects 1,2,4 --resolution 240p,480p,720p --json "$OUT/bench_sweep.json"
echo "results in $OUT (status $status)"
exit $status
