#!/usr/bin/env bash
# twelfth session, device call: GPU tests of the new merge / query / inverse rotation, launch trace,
# decode old (old_s12 = 97dfde3) vs new (working tree) in the same call, two rounds
set -u
K=$OUT/k; mkdir -p $K
mk() { # mk SHIM SRC
  mkdir -p $1/turboquant; for f in $2/turboquant/*; do ln -sf "$f" $1/turboquant/; done
  for d in reference triton_impl conformance vllm_integration; do ln -sfn "$2/$d" $1/turboquant/$d; done; }
mk /tmp/shim "$PWD"; mk /tmp/shimold "$PWD/old_s12"
T0=$(date +%s); t() { echo "t $(( $(date +%s)-T0 )) $1"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $K/gpu.txt
PYTHONPATH=/tmp/shim timeout 120 python3 -P -m pytest -p no:cacheprovider -q -n 8 triton_impl/tests/test_decode_mma.py \
  > $K/tests.log 2>&1; tail -4 $K/tests.log; t tests
PYTHONPATH=/tmp/shim timeout 60 python3 -P -m pytest -p no:cacheprovider -q -n 8 triton_impl/tests/test_prefill.py \
  -k "rotat or few_rows" > $K/tests-rot.log 2>&1; tail -3 $K/tests-rot.log; t tests-rot
PYTHONPATH=/tmp/shim timeout 60 python3 -m benchmarks.micro.profile_kernels --trace --launches 5 decode:tq3:1x131072 \
  decode:tq3:64x1024 decode:tq3:32x32768 decode:k4v3:32x32768 decode:tq4:1x131072 > $K/trace.log 2>&1; grep -v -i warn $K/trace.log; t trace
for r in 1 2; do
  (cd old_s12 && PYTHONPATH=/tmp/shimold timeout 80 python3 -m benchmarks.micro.bench_decode --no-store --presets tq3,k4v3,tq4 \
     --shapes 32x32768,8x32768,1x131072,64x1024 --kernels auto --out $K/dec-old$r.json > $K/dec-old$r.log 2>&1); t old$r
  PYTHONPATH=/tmp/shim timeout 80 python3 -m benchmarks.micro.bench_decode --no-store --presets tq3,k4v3,tq4 \
     --shapes 32x32768,8x32768,1x131072,64x1024 --kernels auto --out $K/dec-new$r.json > $K/dec-new$r.log 2>&1; t new$r
done
paste <(grep -E "^(tq3|k4v3|tq4) " $K/dec-old1.log | awk '{print $1,$3,$4,$5}') <(grep -E "^(tq3|k4v3|tq4) " $K/dec-new1.log | awk '{print $5}') \
      <(grep -E "^(tq3|k4v3|tq4) " $K/dec-old2.log | awk '{print $5}') <(grep -E "^(tq3|k4v3|tq4) " $K/dec-new2.log | awk '{print $5}')
tar czf $OUT/kernels.tgz -C $OUT k && rm -rf $K
