#!/bin/bash
# One device call: smoke test, full conformance (-> conformance summary),
# decode/store benchmark with a config sweep.  Everything lands in $OUT.
#   run: bash tools/gpu_run.sh [bench budget seconds]
#   STEPS=smoke,conformance,bench (default: all three) picks the steps; CONF_WORKERS (default 16)
#   the conformance step's pytest-xdist workers (fewer when it shares the machine with vLLM tests).
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET=${1:-150}
BENCH_ARGS=${BENCH_ARGS:---sweep}
T0=$(date +%s)
source tools/shim.sh  # import path for turboquant.*
[ -f "$PWD/.tritoncache/cache.tgz" ] && mkdir -p ~/.triton && tar xzf .tritoncache/cache.tgz -C ~/.triton
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv
python3 -c "import torch, triton, numpy, turboquant.triton_impl as t; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, t.__file__)"
STEPS=${STEPS:-smoke,conformance,bench}
step() { [[ ",$STEPS," == *",$1,"* ]]; }
if step smoke; then
echo "== smoke $(( $(date +%s) - T0 ))s"
timeout 90 python3 -m benchmarks.micro.bench_decode --smoke --presets ${SMOKE_PRESETS:-tq3,tq4_qjl,k4g4,tq2.5} 2>&1 | tee "$OUT/smoke.log"
SMOKE=${PIPESTATUS[0]}
fi
if step conformance; then
echo "== conformance $(( $(date +%s) - T0 ))s (smoke rc ${SMOKE:-not run})"
timeout ${CONF_SECONDS:-180} python3 -P -m pytest conformance triton_impl/tests -rA -p no:cacheprovider -n ${CONF_WORKERS:-16} -q -W ignore > "$OUT/conformance.log" 2>&1
echo "conformance rc $?"; grep -E "passed|failed" "$OUT/conformance.log" | tail -2
grep -E "^FAILED" "$OUT/conformance.log" | head -20
python3 -m benchmarks.plots.conformance_summary "$OUT/conformance.log" > "$OUT/gpu-conformance.md"
fi
if step bench; then
echo "== bench $(( $(date +%s) - T0 ))s"
timeout $((BUDGET + ${BENCH_TAIL:-240})) python3 -m benchmarks.micro.bench_decode $BENCH_ARGS --out "$OUT/bench.json" --budget "$BUDGET" > "$OUT/bench.log" 2>&1
echo "bench rc $?"
grep -v '^{' "$OUT/bench.log" | tail -200
grep -E '"sweep"|error' "$OUT/bench.log" | head -40
python3 -m benchmarks.plots.plot_decode "$OUT/bench.json" --png "$OUT/bench.png" --md "$OUT/bench.md" > /dev/null || echo "plot failed"
fi
echo "== done $(( $(date +%s) - T0 ))s"
