#!/usr/bin/env bash
# gpu_campaign.sh STAGE -- the GPU work that CPU CI cannot do, one stage per device call (each
# stays under the device tool's 10-minute limit).  Runs ON the GPU machine from the repository
# root.  The stages that use vLLM run after the vLLM kit is installed (../shared/tools/gpu-vllm:
# stash the parts, then `bash .gpu-vllm/bin/install_on_device.sh install .gpu-vllm/pNN && bash
# tools/gpu_campaign.sh vllm` in the same command; later stages in back-to-back calls while
# the machine is warm).  Everything worth keeping lands in $OUT.
#
#   conf   kernel smoke test + the GPU conformance suite (no vLLM needed; can ride along with a
#          stash call)
#   vllm   tests/vllm: the whole suite eager and, at the same time on the same card, the
#          engine-level files with CUDA graphs; the load test with 256 requests (issues 4, 5;
#          TQ_LOAD_DIAGNOSTICS=1 adds its diagnostic variants; TESTS="file ..." picks files; pytest gets SIGINT
#          75 s before VLLM_SECONDS and 60 s to stop (it shuts vLLM engines down before its summary), so a cut run
#          still prints its failures; its -v lines name each test's outcome as it ends). A fresh machine's first hybrid-model
#          start compiles the GDN kernels: give test_hybrid.py alone VLLM_SECONDS >= 300
#   tp2    tests/vllm/test_tp.py on a 2-GPU machine (kind nvidia-h200-x2; issue 4)
#   e2e    benchmarks/e2e/e2e_vllm.py: bf16, FP8, vLLM's TurboQuant presets and ours, one run
#          (all 13 configs do not fit one call: vLLM's TurboQuant engines take ~150 s each to start;
#          on 2026-12-03 7 configs finished in 420 s. Split with E2E_CONFIGS, merge with --report a,b),
#          engines started 5 at a time, measured one at a time; then the markdown table and the
#          quality-vs-bytes PNG, then benchmarks/e2e/equal_layers.py (ours with vLLM's bf16 layers, same
#          held-out text) (issues 4, 6)
#   serving benchmarks/e2e/serving.py (issue 17): a Llama-3-8B-sized dummy model, one engine per config in
#          its own subprocess (vLLM's defaults: CUDA graphs, chunked prefill), capacity, M/L/G
#          throughput, TTFT, TPOT; then the table and the PNG.  SERVING_CONFIGS picks the configs,
#          SERVING_ARGS the sizes (e.g. "--workloads M --m-requests 64 --measure ttft,throughput"),
#          SERVING_SECONDS the --deadline (no new engine or measurement after it), SERVING_KILL_SECONDS the
#          --kill-after (default deadline + 60 s: a measurement still running then is killed and recorded,
#          so the table is always written; keep it under the call's limit), SERVING_CALL_LIMIT (+ CALL_T0,
#          the call's start in epoch seconds) caps both by the device call's limit, TQ_GIT_COMMIT the
#          commit to record (the device's copy has no .git).  Merge calls with --report a,b
#   profile ncu (Nsight Compute) on one launch of each PROFILE_TARGETS entry (default: the tq3 decode at
#          32 x 32k and the tq3 store of 32k tokens; benchmarks/micro/profile_kernels.py): speed of light,
#          warp stall reasons, scheduler and instruction statistics, shared-memory bank conflicts, and
#          per-SASS-instruction stall samples ($OUT/profile/<target>-{details.txt,sass.csv}). No vLLM
#          needed. ncu runs with --clock-control none (device/METHOD.md: leave the clocks alone)
#   kernels the kernel A/Bs of one session in one call (issues 13, 14; vLLM's FA3 / TurboQuant beside ours
#          when the kit is installed): GPU tests (KERNEL_TESTS, KERNEL_TEST_K a -k expression, pytest -n 8), the decode grid (DECODE_ARGS,
#          benchmarks/micro/bench_decode.py, then its table and PNG), the store at decode and prompt sizes
#          (STORE_ARGS, bench_prefill.py: every mse config's bytes are checked against the first's), the
#          per-launch trace (TRACE_TARGETS). Each step has its own timeout (KERNEL_TEST_SECONDS,
#          DECODE_SECONDS, STORE_SECONDS, TRACE_SECONDS); KERNEL_STEPS picks steps (default
#          tests,decode,store,trace: about 500 s with the defaults, so after the kit's install run
#          KERNEL_STEPS=tests,decode in that call and store,trace in the next). The defaults are the next
#          session's plan (docs/kernel-notes.md)
#   bench  tools/gpu_run.sh bench step: store, then decode over the 1k..128k x 1..64 grid with the
#          default decode path (the mma kernel where it applies) and the split kernel beside it
#          (rows PRESET+split), then k4v3 and tq3 in batch-invariant mode (fixed-length splits), then
#          the vLLM baselines, same process (issues 3, 5, 13).  BENCH_ARGS="--sweep ..." adds the split
#          kernel's AttnConfig sweep (it does not touch the mma kernel)
#
# The device tool returns at most 8 files from $OUT, so the stage works in $OUT/$stage and, on
# exit, packs that folder into $OUT/$stage.tgz (plus $OUT/$stage-summary.txt: the pytest summary
# lines and markdown tables) and removes the folder.
set -euo pipefail
stage="${1:?usage: $0 conf|vllm|tp2|e2e|serving|profile|kernels|bench}"
cd "$(dirname "$0")/.."
FINAL="${OUT:-/tmp/out}"
OUT="$FINAL/$stage"
mkdir -p "$OUT"
pack() {
  grep -hE "^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED) |^[0-9]+ (passed|failed)|^\||^load:|rc [0-9]+" \
      "$OUT"/*.log "$OUT"/*.md "$OUT"/*.stdout 2>/dev/null | cut -c1-300 > "$FINAL/$stage-summary.txt" || true
  tar czf "$FINAL/$stage.tgz" -C "$FINAL" "$stage" && rm -rf "$OUT"
}
trap pack EXIT
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONPATH="${GPU_VLLM_SITE:-/tmp/site}${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
case "$stage" in
  conf)
    OUT="$OUT" STEPS=smoke,conformance CONF_SECONDS="${CONF_SECONDS:-180}" bash tools/gpu_run.sh ;;
  vllm)
    # the server's and Qwen3-Next's imports, which the shared kit leaves out (carry .gpu-vllm/extra)
    if [ -d .gpu-vllm/extra ]; then bash tests/vllm/extra_wheels.sh install; fi
    # pytest gets SIGINT 75 s before the stage's limit and SIGKILL 60 s later (tools/until_deadline.sh), so that a
    # cut run still prints its failures (its engines' shutdown comes first: 20 s was not enough for a graphs run);
    # TESTS picks files (e.g. TESTS="tests/vllm/test_load.py tests/vllm/test_hybrid.py")
    OUT="$OUT" TQ_LOAD_REQUESTS="${TQ_LOAD_REQUESTS:-256}" \
        GRACE=60 TQ_VLLM_DEADLINE=$(( $(date +%s) + ${VLLM_SECONDS:-540} - 75 )) timeout "${VLLM_SECONDS:-540}" \
        bash tests/vllm/run_gpu.sh "${MODE:-both}" "${@:2}" ;;
  tp2)
    OUT="$OUT" TESTS=tests/vllm/test_tp.py bash tests/vllm/run_gpu.sh eager 2>&1 | tail -40 ;;
  e2e)
    # the project with its entry points (vLLM loads the plugin through them)
    TQ_SITE=/tmp/tq-site bash tests/vllm/install_tq_site.sh
    export PYTHONPATH="/tmp/tq-site:$PYTHONPATH"
    # the committed calibrations of the model (turboquant calibrate), under the names e2e looks for
    for f in results/2026-12-03-calibration-tiny-llama/calib-*-tiny-llama-*.json; do
      b=$(basename "$f"); cp "$f" "$OUT/calib-tiny-llama-${b##*-tiny-llama-}"
    done
    python3 -m benchmarks.e2e.e2e_vllm --model models/tiny-llama --out "$OUT/e2e.jsonl" --eager --jobs 5 \
        --deadline "${E2E_SECONDS:-480}" \
        --configs "${E2E_CONFIGS:-bf16,fp8,turboquant_4bit_nc,turboquant_k3v4_nc,turboquant_3bit_nc,tq4,k4g4,k4v3,tq3,tq3_qjl,tq2,tq3.5+cal,tq2.5+cal}" \
        ${E2E_ARGS:-} || echo "e2e rc $?"
    python3 -m benchmarks.e2e.e2e_vllm --report "$OUT/e2e.jsonl" --plot "$OUT/e2e.png" > "$OUT/e2e.md" || true
    cat "$OUT/e2e.md"
    # ours with vLLM's bf16 layers, on this machine's held-out text (its Python's stdlib), CPU work
    timeout "${EQUAL_SECONDS:-240}" python3 -m benchmarks.e2e.equal_layers --vllm-rows "$OUT/e2e.jsonl" --threads 16 \
        --out "$OUT/equal_layers.json" > "$OUT/equal_layers.md" || echo "equal_layers rc $?"
    grep -E "^\||comparable" "$OUT/equal_layers.md" || true ;;
  serving)
    TQ_SITE=/tmp/tq-site bash tests/vllm/install_tq_site.sh
    export PYTHONPATH="/tmp/tq-site:$PYTHONPATH"
    deadline="${SERVING_SECONDS:-480}"
    kill_after="${SERVING_KILL_SECONDS:-$(( deadline + 60 ))}"
    if [ -n "${SERVING_CALL_LIMIT:-}" ]; then
      # the device call's own limit, counted from CALL_T0 (epoch seconds; set it first thing in the
      # command, before the kit's install): kill 25 s before that limit so that the rows and the table
      # are written, and start nothing in the last 60 s before the kill
      left=$(( SERVING_CALL_LIMIT - ($(date +%s) - ${CALL_T0:-$(date +%s)}) - 25 ))
      [ "$kill_after" -gt "$left" ] && kill_after=$left
      [ "$deadline" -gt $(( kill_after - 60 )) ] && deadline=$(( kill_after - 60 ))
      echo "serving: deadline ${deadline} s, kill after ${kill_after} s (call limit ${SERVING_CALL_LIMIT} s)"
    fi
    python3 -m benchmarks.e2e.serving --out "$OUT/serving.jsonl" --deadline "$deadline" \
        --kill-after "$kill_after" \
        --configs "${SERVING_CONFIGS:-bf16,fp8,turboquant_4bit_nc,turboquant_3bit_nc,tq4,k4v3,tq3}" \
        ${SERVING_ARGS:-} || echo "serving rc $?"
    python3 -m benchmarks.e2e.serving --report "$OUT/serving.jsonl" --plot "$OUT/serving.png" > "$OUT/serving.md" || true
    cat "$OUT/serving.md" ;;
  profile)
    for t in ${PROFILE_TARGETS:-decode:tq3:32x32768 store:tq3:32768}; do
      name=$(echo "$t" | tr ':' '-')
      case "$t" in  # the kernel to profile; skip the warm-up call's launches of it
        decode:*) kern="${PROFILE_DECODE_KERNEL:-_decode_mma_kernel}"; skip=1 ;;
        store:*) kern="${PROFILE_STORE_KERNEL:-_store_mse_kernel}"; skip=2 ;;  # keys and values: two launches a call
      esac
      timeout "${PROFILE_SECONDS:-240}" ncu --clock-control none -k "regex:$kern" --launch-skip "$skip" --launch-count 1 \
          --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
          --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
          --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SourceCounters \
          -f -o "$OUT/$name" python3 -m benchmarks.micro.profile_kernels "$t" --launches 2 \
          > "$OUT/$name-ncu.log" 2>&1 || echo "ncu $t rc $?" | tee -a "$OUT/$name-ncu.log"
      tail -5 "$OUT/$name-ncu.log"
      if [ -f "$OUT/$name.ncu-rep" ]; then
        ncu --import "$OUT/$name.ncu-rep" --page details --print-units base > "$OUT/$name-details.txt" 2>&1 || true
        ncu --import "$OUT/$name.ncu-rep" --page source --print-source sass --csv > "$OUT/$name-sass.csv" 2>&1 || true
        grep -iE "Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Issued Ipc|No Eligible|Stall|Bank" \
            "$OUT/$name-details.txt" | head -60
      fi
    done ;;
  kernels)
    source tools/shim.sh  # import path for turboquant.*
    T0=$(date +%s); t() { echo "== $1 done at $(( $(date +%s) - T0 )) s"; }
    steps=",${KERNEL_STEPS:-tests,decode,store,trace},"
    [[ "$steps" == *,tests,* ]] || KERNEL_TESTS=""
    [[ "$steps" == *,decode,* ]] || DECODE_ARGS=""
    [[ "$steps" == *,store,* ]] || STORE_ARGS=""
    [[ "$steps" == *,trace,* ]] || TRACE_TARGETS=""
    tests="${KERNEL_TESTS-triton_impl/tests/test_decode_mma.py triton_impl/tests/test_store_mse.py triton_impl/tests/test_prefill.py}"
    if [ -n "$tests" ]; then
      workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || true)  # pytest-xdist where installed
      # KERNEL_TEST_K: a -k expression (one argument, spaces allowed); SIGINT 15 s before the step's limit, so
      # that a cut run still prints its failures (tools/until_deadline.sh)
      bash tools/until_deadline.sh $(( $(date +%s) + ${KERNEL_TEST_SECONDS:-150} - 15 )) \
          python3 -P -m pytest -p no:cacheprovider -q $workers $tests ${KERNEL_TEST_K:+-k "$KERNEL_TEST_K"} \
          ${KERNEL_TEST_ARGS:-} > "$OUT/tests.log" 2>&1 || echo "tests rc $?"
      { grep -E "^FAILED|^ERROR" "$OUT/tests.log" || true; } | head -20; tail -2 "$OUT/tests.log"; t tests
    fi
    dargs="${DECODE_ARGS---no-store --vllm --rounds 2 --presets tq3,k4v3,tq4 --shapes 32x32768,8x32768,1x131072,64x1024,256x6144,64x32768 --kernels auto,mma@w1,mma@r168,mma@r168a1,mma@r168b16384k2v3,mma@s3w0,mma@s6w0}"
    if [ -n "$dargs" ]; then
      python3 -c "import vllm" 2>/dev/null || dargs="${dargs//--vllm/}"  # no kit: our kernels only
      timeout "${DECODE_SECONDS:-300}" python3 -m benchmarks.micro.bench_decode $dargs --out "$OUT/decode.json" \
          > "$OUT/decode.log" 2>&1 || echo "decode rc $?"
      { grep -v '^{' "$OUT/decode.log" || true; } | tail -80
      python3 -m benchmarks.plots.plot_decode "$OUT/decode.json" --png "$OUT/decode.png" --md "$OUT/decode.md" \
          > /dev/null 2>&1 || echo "decode plot failed"
      t decode
    fi
    sargs="${STORE_ARGS---shapes 8192x8192,32768x2048,131072x2048 --presets tq3,k4v3,tq4 --tiles \"\" --dense-rotations \"\" --store-min-tokens 32 --store-rounds 3 --store-configs mse:64:4:prefetch+lean+search+wg+balance}"
    if [ -n "$sargs" ]; then
      eval "timeout \"${STORE_SECONDS:-180}\" python3 -m benchmarks.micro.bench_prefill $sargs --out \"$OUT/store.jsonl\"" \
          > "$OUT/store.log" 2>&1 || echo "store rc $?"
      grep -E '"kind": "store' "$OUT/store.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r.get('preset'), r.get('query_tokens'), r['impl'], '%.1f us' % (r['seconds'] * 1e6) if 'seconds' in r
          else 'slots differing from the first config: %.2e' % r['slots_differ'] if 'slots_differ' in r else r.get('error'))
" || true
      t store
    fi
    targets="${TRACE_TARGETS-decode:tq3:32x32768 decode:tq3:64x1024}"
    if [ -n "$targets" ]; then
      timeout "${TRACE_SECONDS:-60}" python3 -m benchmarks.micro.profile_kernels --trace --launches 5 \
          $targets > "$OUT/trace.log" 2>&1 || echo "trace rc $?"
      { grep -v -i warn "$OUT/trace.log" || true; } | tail -30; t trace
    fi ;;
  bench)
    OUT="$OUT" STEPS=bench BENCH_ARGS="${BENCH_ARGS:---vllm --presets tq3,tq4,k4v3,tq2 --kernels auto,split --batch-invariant k4v3,tq3}" \
        bash tools/gpu_run.sh "${BENCH_SECONDS:-240}" ;;
  *) echo "unknown stage $stage (conf|vllm|tp2|e2e|serving|profile|kernels|bench)" >&2; exit 2 ;;
esac
