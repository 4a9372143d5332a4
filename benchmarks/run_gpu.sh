#!/usr/bin/env bash
# On a CUDA machine: the GPU tests (tests/test_cuda.py, the CUDA cases of test_autocast.py),
# then both benchmarks, whose rows are appended to results.csv and rendered in RESULTS.md.
# Logs go to the folder given as $1 (default benchmarks/gpu-logs). Install liger-kernel first
# to get the `liger` cross-entropy provider.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-benchmarks/gpu-logs}
mkdir -p "$LOGS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 -c "import liger_kernel; print('liger-kernel installed')" || true
} 2>&1 | tee "$LOGS/env.txt"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -n "${TEST_WORKERS:-8}" -p no:cacheprovider \
    tests/test_cuda.py tests/test_autocast.py 2>&1 | tee "$LOGS/tests.txt" | tail -25
for family in elementwise cross_entropy; do
    timeout "${BENCH_TIMEOUT:-240}" python3 "benchmarks/bench_$family.py" 2>&1 \
        | tee "$LOGS/bench_$family.txt" | grep -v "^running"
done
