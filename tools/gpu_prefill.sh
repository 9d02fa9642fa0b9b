#!/usr/bin/env bash
# One device call (GPU machine, repository root): the kernel tests and conformance stages that the
# prefill path and the store touch, then benchmarks/micro/bench_prefill.py; everything lands in $OUT.
#   bash tools/gpu_prefill.sh   (PYTEST_K: a pytest -k expression, PREFILL_ARGS: extra bench_prefill arguments)
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/shim.sh  # import path for turboquant.*
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
T0=$(date +%s)
timeout ${TEST_SECONDS:-240} python3 -P -m pytest triton_impl/tests conformance/test_stages.py -p no:cacheprovider \
    -n ${WORKERS:-16} -q -W ignore -rf ${PYTEST_K:+-k "$PYTEST_K"} > "$OUT/tests.log" 2>&1
echo "tests rc $? in $(( $(date +%s) - T0 ))s"; grep -E "passed|failed" "$OUT/tests.log" | tail -2
grep -E "^FAILED" "$OUT/tests.log" | head -20
timeout ${BENCH_SECONDS:-240} python3 -m benchmarks.micro.bench_prefill --out "$OUT/prefill.jsonl" ${PREFILL_ARGS:-} \
    > "$OUT/prefill.log" 2>&1
echo "bench rc $? at $(( $(date +%s) - T0 ))s"; grep -v '^{' "$OUT/prefill.log" | tail -15
python3 -m benchmarks.micro.bench_prefill --report "$OUT/prefill.jsonl" --plot "$OUT/prefill.png" | tee "$OUT/prefill.md"
