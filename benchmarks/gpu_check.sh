#!/usr/bin/env bash
# The one prepared GPU run for the Triton kernels, for a machine with a CUDA GPU:
#   bash benchmarks/gpu_check.sh            (results under $OUT, default benchmarks/results/gpu_check)
# 1. tests/test_kernels.py and tests/test_kernels_offsets.py on CUDA (GPU-marked cases included: bf16,
#    large shapes, the full ImageNet-21k logits);
# 2. python -m benchmarks.bench_kernel, full grid (batch 1..1024, N 10..21843), fp16 then fp32, CSV
#    (+ plot if matplotlib is there) into $OUT. Copy the CSVs/PNGs into benchmarks/results/ and commit them.
# Needs torch, Triton and pytest only: no open_clip, no network. The tests run without tests/conftest.py,
# whose export fixtures need open_clip; on a GPU it only sets what a GPU run does not need.
# mmadapter.kernels is the kernels/ folder installed under the mmadapter namespace (pyproject.toml); a bare
# checkout does not provide that name (the package holds only its own folder). When this checkout is not
# installed, the run uses an explicit path instead: it runs from a staging folder whose mmadapter/ links
# every entry of the checkout's mmadapter/ plus kernels/ and export/ under their installed names, beside
# links to tests/, benchmarks/ and pyproject.toml (no pip, no network, nothing written into the checkout).
# Every step has its own time limit, so the whole run stays under ~8 minutes on an H200.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/benchmarks/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
cd "$ROOT"
unset TRITON_INTERPRET

if ! "$PY" -c "import mmadapter.kernels" 2>/dev/null; then
  STAGE="$(mktemp -d)"
  mkdir "$STAGE/mmadapter"
  ln -s "$ROOT"/mmadapter/* "$STAGE/mmadapter/"
  ln -s "$ROOT/kernels" "$STAGE/mmadapter/kernels"
  ln -s "$ROOT/export" "$STAGE/mmadapter/export"
  ln -s "$ROOT/tests" "$ROOT/benchmarks" "$ROOT/pyproject.toml" "$STAGE/"
  cd "$STAGE"  # the working folder is first on sys.path: the checkout's own mmadapter/ must not shadow
  echo "gpu_check: this checkout is not installed; running from $STAGE (explicit path)"
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" 2>&1
  "$PY" -c "import mmadapter.kernels as k; print('mmadapter.kernels from', k.__file__)" 2>&1
  git -C "$ROOT" rev-parse --short HEAD 2>&1
} | tee "$OUT/env.txt"

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 300 "$PY" -m pytest tests/test_kernels.py tests/test_kernels_offsets.py --noconftest -q -rs \
    -p no:cacheprovider 2>&1 | tee "$OUT/test_kernels.log"
  status=${PIPESTATUS[0]}
else
  echo "pytest not installed on this machine: GPU tests not run" | tee "$OUT/test_kernels.log"
  status=3
fi

for dtype in float16 float32; do
  timeout 150 "$PY" -m benchmarks.bench_kernel --dtype "$dtype" --time-budget-s 110 --repeats 30 \
    --out "$OUT/kernel_gpu_$dtype.csv" 2>&1 | tee "$OUT/bench_kernel_$dtype.log"
done
echo "gpu_check: tests exit status $status; results in $OUT"
exit "$status"
