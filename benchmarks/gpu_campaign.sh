#!/usr/bin/env bash
# gpu_campaign.sh STAGE -- the GPU work that CPU CI cannot do, one stage per device call (each
# stays under the device tool's 10-minute limit).  Runs ON the GPU machine from the repository
# root, after the vLLM kit is installed (../shared/tools/gpu-vllm: stash the parts, then
# `bash .gpu-vllm/bin/install_on_device.sh install .gpu-vllm/pNN && bash benchmarks/gpu_campaign.sh vllm`
# in the same command; later stages in back-to-back calls while the machine is warm).
# Everything worth keeping lands in $OUT.
#
#   vllm   tests/vllm eager + CUDA graphs, including the 256-request load test (issues 4, 5)
#   tp2    tests/vllm/test_tp.py on a 2-GPU machine (kind nvidia-h200-x2; issue 4)
#   e2e    benchmarks/e2e_vllm.py: bf16, FP8, vLLM's TurboQuant presets and ours, one run,
#          then the markdown table and the quality-vs-bytes PNG (issues 4, 6)
#   bench  benchmarks/gpu_run.sh: smoke, GPU conformance, decode/store grid with the vLLM
#          baselines (issue 3)
set -euo pipefail
stage="${1:?usage: $0 vllm|tp2|e2e|bench}"
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONPATH="${GPU_VLLM_SITE:-/tmp/site}${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
case "$stage" in
  vllm)
    OUT="$OUT" TQ_LOAD_REQUESTS="${TQ_LOAD_REQUESTS:-256}" bash tests/vllm/run_gpu.sh "${MODE:-all}" ;;
  tp2)
    OUT="$OUT" bash tests/vllm/run_gpu.sh eager -k test_tp 2>&1 | tail -40 ;;
  e2e)
    # shim: the package mapping of pyproject.toml without installing (as gpu_run.sh does)
    mkdir -p /tmp/shim/turboquant
    for f in turboquant/*; do ln -sf "$PWD/$f" /tmp/shim/turboquant/; done
    for d in reference triton_impl conformance vllm_integration; do ln -sfn "$PWD/$d" "/tmp/shim/turboquant/$d"; done
    export PYTHONPATH="/tmp/shim:$PYTHONPATH"
    timeout "${E2E_SECONDS:-540}" python3 benchmarks/e2e_vllm.py --model models/tiny-llama --out "$OUT/e2e.jsonl" \
        ${E2E_ARGS:-} || echo "e2e stopped (rc $?): the rows written so far are kept"
    python3 benchmarks/e2e_vllm.py --report "$OUT/e2e.jsonl" --plot "$OUT/e2e.png" > "$OUT/e2e.md" || true
    cat "$OUT/e2e.md" ;;
  bench)
    OUT="$OUT" BENCH_ARGS="${BENCH_ARGS:---vllm}" bash benchmarks/gpu_run.sh "${BENCH_SECONDS:-300}" ;;
  *) echo "unknown stage $stage (vllm|tp2|e2e|bench)" >&2; exit 2 ;;
esac
