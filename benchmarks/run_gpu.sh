#!/usr/bin/env bash
# On a CUDA machine: the GPU tests (tests/test_cuda.py with torch.compile, CUDA graphs and the
# host-synchronisation checks, the CUDA cases of test_autocast.py, the registered ops of
# test_triton_ops.py), then both benchmarks against torch and Liger-Kernel -- wall clock and
# device time -- whose rows are appended to benchmarks/results.csv and rendered in
# benchmarks/RESULTS.md. Logs go to the folder given as $1 (default benchmarks/gpu-logs).
# Install liger-kernel first to get the `liger` cross-entropy provider.
#
# Sizes on the GPU (override with the environment variables):
#   CE_SIZES="8192x1000 4096x32000 8192x128256"   cross entropy, softmax focal (rows x classes)
#   ELEMENTWISE_SIZES="4194304 67108864"          BCE with logits, sigmoid focal (4M, 64M)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-benchmarks/gpu-logs}
mkdir -p "$LOGS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CE_SIZES=${CE_SIZES:-"8192x1000 4096x32000 8192x128256"}
ELEMENTWISE_SIZES=${ELEMENTWISE_SIZES:-"4194304 67108864"}
{
    nvidia-smi
    uptime
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 -c "import liger_kernel; print('liger-kernel installed')" || echo "liger-kernel not installed: no liger rows"
} 2>&1 | tee "$LOGS/env.txt"
timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q -n "${TEST_WORKERS:-8}" -p no:cacheprovider \
    tests/test_cuda.py tests/test_autocast.py tests/test_triton_ops.py 2>&1 \
    | tee "$LOGS/tests.txt" | tail -25
# The sizes above as the "cuda" section of a copy of config.json (the rest unchanged).
CONFIG="$LOGS/config.json"
CE_SIZES="$CE_SIZES" ELEMENTWISE_SIZES="$ELEMENTWISE_SIZES" python3 - "$CONFIG" <<'EOF' || exit 1
import json, os, sys
config = json.load(open("benchmarks/config.json"))
config["cuda"] = {
    "cross_entropy": {
        "sizes": [[int(n) for n in s.split("x")] for s in os.environ["CE_SIZES"].split()]
    },
    "elementwise": {"sizes": [int(n) for n in os.environ["ELEMENTWISE_SIZES"].split()]},
}
json.dump(config, open(sys.argv[1], "w"), indent=2)
print("GPU sizes:", json.dumps(config["cuda"]))
EOF
for family in elementwise cross_entropy; do
    timeout "${BENCH_TIMEOUT:-1200}" python3 "benchmarks/bench_$family.py" --config "$CONFIG" \
        --device cuda 2>&1 | tee "$LOGS/bench_$family.txt" | grep -v "^running"
done
echo "results: benchmarks/results.csv, benchmarks/RESULTS.md; logs: $LOGS"
