#!/usr/bin/env bash
# thirteenth session, device call 12 (after the kit's install in the same command): GPU tests of the
# committed decode rules (query columns, merge waves, constexpr block size, tensor-core query rotation),
# then the decode grid with vLLM's FA3 bf16 / FP8 / TurboQuant in the same process, `auto` beside
# `mma@q1`, then the per-launch trace at the two shapes the rules touch.
set -u
K=$OUT/k; mkdir -p $K
mkdir -p /tmp/shim/turboquant; for f in $PWD/turboquant/*; do ln -sf "$f" /tmp/shim/turboquant/; done
for d in reference triton_impl conformance vllm_integration; do ln -sfn "$PWD/$d" /tmp/shim/turboquant/$d; done
T0=$(date +%s); t() { echo "t $(( $(date +%s)-T0 )) $1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > $K/gpu.txt
PYTHONPATH=/tmp/shim timeout 150 python3 -P -m pytest -p no:cacheprovider -q -n 8 triton_impl/tests/test_decode_mma.py \
  > $K/tests.log 2>&1; tail -4 $K/tests.log; t tests
PYTHONPATH=/tmp/shim timeout 60 python3 -P -m pytest -p no:cacheprovider -q -n 8 triton_impl/tests/test_prefill.py \
  -k "rotat or few_rows" > $K/tests-rot.log 2>&1; tail -3 $K/tests-rot.log; t tests-rot
PYTHONPATH=/tmp/shim:/tmp/site timeout 240 python3 -m benchmarks.micro.bench_decode --no-store --vllm --presets tq3,k4v3,tq4 \
  --shapes 32x32768,8x32768,1x131072,64x1024 --kernels auto,mma@q1 --out $K/decode-vllm.json > $K/decode-vllm.log 2>&1
grep -E "^\|" $K/decode-vllm.log | head -60; t decode
PYTHONPATH=/tmp/shim timeout 45 python3 -m benchmarks.micro.profile_kernels --trace --launches 5 decode:tq3:1x131072 \
  decode:tq3:64x1024 decode:tq3:32x32768 > $K/trace.log 2>&1; grep -v -i warn $K/trace.log | tail -30; t trace
tar czf $OUT/kernels.tgz -C $OUT k && rm -rf $K
