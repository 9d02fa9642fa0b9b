#!/usr/bin/env bash
# run_gpu.sh -- the vLLM integration tests on a CUDA machine (runs ON the GPU machine, from the
# repository root of the copy there), after vLLM is available, e.g. through the project's kit:
#     bash .gpu-vllm/bin/install_on_device.sh install .gpu-vllm/p06   (after stashing p01..p05)
#
#   bash tests/vllm/run_gpu.sh eager     # the tests with enforce_eager=True
#   bash tests/vllm/run_gpu.sh graphs    # the same tests with CUDA graphs (torch.compile + FULL decode graphs)
#   bash tests/vllm/run_gpu.sh all       # both, one after the other
#   bash tests/vllm/run_gpu.sh both      # both at once on the one card: the whole suite eager, and
#                                        # $GRAPHS_TESTS (default: the engine-level files) with graphs
#   bash tests/vllm/run_gpu.sh eager -k test_tp   # extra arguments go to pytest
#   TESTS="tests/vllm/test_tp.py" bash tests/vllm/run_gpu.sh eager   # only these files
#
# Installs this project (no dependencies) into $TQ_SITE, puts it and the vLLM kit's site
# ($GPU_VLLM_SITE, default /tmp/site) on PYTHONPATH, and runs pytest with -P (so the source
# tree's turboquant/ does not shadow the installed package mapping).  Logs and JUnit XML go to
# $OUT (default /tmp/tq-vllm-out).  TQ_VLLM_DEADLINE (epoch seconds): each pytest gets SIGINT then
# (tools/until_deadline.sh), so a run cut by the device call's limit still prints what failed so far; pytest runs
# with -v, so each test's outcome is on its own line as it ends even if the run is killed before its summary.
set -euo pipefail
mode="${1:-all}"
case "$mode" in eager|graphs|all|both) ;; *) echo "usage: $0 eager|graphs|all|both [pytest args]" >&2; exit 2 ;; esac
shift || true
EXTRA=()  # e.g. -k test_tp (empty arguments dropped: pytest would take "" for the current directory)
for a in "$@"; do [ -n "$a" ] && EXTRA+=("$a"); done
SITE="${GPU_VLLM_SITE:-/tmp/site}"
TQ_SITE="${TQ_SITE:-/tmp/tq-site}"
OUT="${OUT:-/tmp/tq-vllm-out}"
mkdir -p "$OUT"
TQ_SITE="$TQ_SITE" bash tests/vllm/install_tq_site.sh
export PYTHONPATH="$TQ_SITE:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0   # flashinfer is not part of the kit
unset TRITON_INTERPRET
python3 -P - <<'PY'
import importlib.metadata as md, torch, vllm
import turboquant.triton_impl, turboquant.vllm_integration.plugin  # noqa: F401
eps = [e.name for e in md.entry_points(group="vllm.general_plugins")]
print("vllm", vllm.__version__, "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "| general plugins", eps)
assert torch.cuda.is_available(), "no CUDA device"
assert "turboquant" in eps, "the turboquant entry point is not installed"
try:
    import pytest  # noqa: F401
except ImportError:
    raise SystemExit("pytest is not installed on this machine: add it to the kit")
PY
# Files that run each in a pytest process of its own: the fault-injection files (a NaN-poisoned
# request can end in a CUDA device-side assert inside vLLM 0.26, which poisons the CUDA context of
# the process and would turn every later test into an error), and the batch-invariant load test
# (VLLM_BATCH_INVARIANT=1 replaces torch operators for the whole process).
FAULTS=(tests/vllm/test_faults.py tests/vllm/test_faults_vllm_attention.py tests/vllm/test_load_batch_invariant.py)
pytest_run() {  # pytest_run LOGNAME GRAPHS(0|1) ARGS...
  local name="$1" g="$2"
  shift 2
  TQ_VLLM_CUDAGRAPHS=$g bash tools/until_deadline.sh "${TQ_VLLM_DEADLINE:-}" python3 -P -m pytest "$@" -v -rA \
      --durations=15 -p no:cacheprovider --junitxml "$OUT/vllm-$name.xml" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 \
      | tee "$OUT/vllm-$name.log" | grep -vE '^\((MainProcess|EngineCore)'
  local r="${PIPESTATUS[0]}"
  [ "$r" = 5 ] && r=0  # nothing selected (e.g. -k test_tp for a fault file)
  return "$r"
}
run() {  # run MODE [test paths]
  local m="$1" g=0 r=0
  shift
  local paths=("$@")
  # shellcheck disable=SC2206
  [ ${#paths[@]} -eq 0 ] && paths=(${TESTS:-tests/vllm})
  [ "$m" = graphs ] && g=1
  local rest=() faults=() ignore=() x f
  for f in "${FAULTS[@]}"; do ignore+=("--ignore=$f"); done
  for x in "${paths[@]}"; do
    case "$x" in
      tests/vllm|tests/vllm/) faults=("${FAULTS[@]}"); rest+=("$x") ;;
      *) if [[ " ${FAULTS[*]} " == *" $x "* ]]; then faults+=("$x"); else rest+=("$x"); fi ;;
    esac
  done
  echo "=== $m (TQ_VLLM_CUDAGRAPHS=$g): ${rest[*]} (fault files, one process each: ${faults[*]:-none}) ==="
  if [ ${#rest[@]} -gt 0 ]; then pytest_run "$m" "$g" "${rest[@]}" "${ignore[@]}" || r=$?; fi
  for f in "${faults[@]}"; do pytest_run "$m-$(basename "$f" .py)" "$g" "$f" || r=$?; done
  return "$r"
}
rc=0
case "$mode" in
  all) run eager || rc=$?; run graphs || rc=$? ;;
  both)
    # Every engine of these files has a fixed KV pool (kv_cache_memory_bytes), so two pytest
    # processes can share the card; the graphs log is printed when both are done.
    GRAPHS_TESTS=${GRAPHS_TESTS:-"tests/vllm/test_engine.py tests/vllm/test_blocks.py tests/vllm/test_load.py tests/vllm/test_outliers.py ${FAULTS[*]}"}
    # shellcheck disable=SC2086
    run graphs $GRAPHS_TESTS > "$OUT/graphs.stdout" 2>&1 &
    gpid=$!
    run eager || rc=$?
    wait $gpid || rc=$?
    cat "$OUT/graphs.stdout" | tail -60 ;;
  *) run "$mode" || rc=$? ;;
esac
exit $rc
