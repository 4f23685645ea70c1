#!/usr/bin/env bash
# The one prepared GPU run for the Triton kernels (issue 3), for a session lent a GPU machine:
#   bash benchmarks/gpu_check.sh            (from the repository root; results under $OUT)
# 1. tests/test_kernels.py on CUDA (GPU-marked cases included: bf16, large shapes);
# 2. bench_kernel.py full grid (batch 1..1024, N 10..21843), fp16 then fp32, CSV (+ plot if
#    matplotlib is there) into $OUT. Copy the CSVs/PNGs into benchmarks/results/ and commit them.
# Needs torch + triton + pytest only: no open_clip, no network, no install (mmadapter is put on the
# path through a symlinked package tree, since mmadapter.kernels maps onto ./kernels).
# Every step has its own time limit so the whole run stays under ~8 minutes on an H200.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/benchmarks/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
cd "$ROOT"

SHIM="$(mktemp -d)"
mkdir -p "$SHIM/mmadapter"
for f in "$ROOT"/mmadapter/*; do ln -s "$f" "$SHIM/mmadapter/$(basename "$f")"; done
ln -s "$ROOT/kernels" "$SHIM/mmadapter/kernels"
[ -d "$ROOT/export" ] && ln -s "$ROOT/export" "$SHIM/mmadapter/export"
export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv 2>&1
  "$PY" -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, \
'numpy', numpy.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" 2>&1
  "$PY" -c "import mmadapter.kernels as k; print('mmadapter.kernels from', k.__file__)" 2>&1
  git rev-parse --short HEAD 2>&1
} | tee "$OUT/env.txt"

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 240 "$PY" -m pytest tests/test_kernels.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/test_kernels.log"
  status=${PIPESTATUS[0]}
else
  echo "pytest not installed on this machine: GPU tests not run" | tee "$OUT/test_kernels.log"
  status=3
fi

for dtype in float16 float32; do
  timeout 150 "$PY" benchmarks/bench_kernel.py --dtype "$dtype" --time-budget-s 110 --repeats 30 \
    --out "$OUT/kernel_gpu_$dtype.csv" 2>&1 | tee "$OUT/bench_kernel_$dtype.log"
done
rm -rf "$SHIM"
echo "gpu_check: tests exit status $status; results in $OUT"
exit "$status"
