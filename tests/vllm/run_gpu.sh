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
#
# Installs this project (no dependencies) into $TQ_SITE, puts it and the vLLM kit's site
# ($GPU_VLLM_SITE, default /tmp/site) on PYTHONPATH, and runs pytest with -P (so the source
# tree's turboquant/ does not shadow the installed package mapping).  Logs and JUnit XML go to
# $OUT (default /tmp/tq-vllm-out).
set -euo pipefail
mode="${1:-all}"
case "$mode" in eager|graphs|all|both) ;; *) echo "usage: $0 eager|graphs|all|both [pytest args]" >&2; exit 2 ;; esac
shift || true
EXTRA=("$@")  # e.g. -k test_tp
SITE="${GPU_VLLM_SITE:-/tmp/site}"
TQ_SITE="${TQ_SITE:-/tmp/tq-site}"
OUT="${OUT:-/tmp/tq-vllm-out}"
mkdir -p "$OUT"
rm -rf "$TQ_SITE"
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$TQ_SITE" . ; then
  # No build backend on the machine: assemble the same layout from pyproject.toml by hand
  # (package-dir mapping, package data, entry points), which is all vLLM needs.
  echo "pip could not build the project; assembling $TQ_SITE from pyproject.toml" >&2
  rm -rf "$TQ_SITE"
  python3 - "$TQ_SITE" <<'PY'
import glob, os, shutil, sys, tomllib
site = sys.argv[1]
py = tomllib.load(open("pyproject.toml", "rb"))
st = py["tool"]["setuptools"]
def src_dir(pkg):  # setuptools' rule: the longest mapped parent, then the rest of the dotted name
    parts = pkg.split(".")
    for n in range(len(parts), 0, -1):
        base = st["package-dir"].get(".".join(parts[:n]))
        if base is not None:
            return os.path.join(base, *parts[n:])
    return os.path.join(*parts)
for pkg in st["packages"]:
    src = src_dir(pkg)
    dst = os.path.join(site, *pkg.split("."))
    os.makedirs(dst, exist_ok=True)
    for f in glob.glob(os.path.join(src, "*.py")):
        shutil.copy(f, dst)
    for pat in st.get("package-data", {}).get(pkg, []):
        for f in glob.glob(os.path.join(src, pat)):
            os.makedirs(os.path.join(dst, os.path.dirname(os.path.relpath(f, src))), exist_ok=True)
            shutil.copy(f, os.path.join(dst, os.path.relpath(f, src)))
proj = py["project"]
info = os.path.join(site, f"{proj['name'].replace('-', '_')}-{proj['version']}.dist-info")
os.makedirs(info)
open(os.path.join(info, "METADATA"), "w").write(
    f"Metadata-Version: 2.1\nName: {proj['name']}\nVersion: {proj['version']}\n")
with open(os.path.join(info, "entry_points.txt"), "w") as f:
    for group, eps in proj.get("entry-points", {}).items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n")
print("assembled", site)
PY
fi
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
run() {  # run MODE [test paths]
  local m="$1" g=0
  shift
  local paths=("$@")
  [ ${#paths[@]} -eq 0 ] && paths=(tests/vllm)
  [ "$m" = graphs ] && g=1
  echo "=== $m (TQ_VLLM_CUDAGRAPHS=$g): ${paths[*]} ==="
  TQ_VLLM_CUDAGRAPHS=$g python3 -P -m pytest "${paths[@]}" -q -rA --durations=15 -p no:cacheprovider \
      --junitxml "$OUT/vllm-$m.xml" "${EXTRA[@]}" 2>&1 | tee "$OUT/vllm-$m.log" | grep -vE '^\((MainProcess|EngineCore)'
  return "${PIPESTATUS[0]}"
}
rc=0
case "$mode" in
  all) run eager || rc=$?; run graphs || rc=$? ;;
  both)
    # Every engine of these files has a fixed KV pool (kv_cache_memory_bytes), so two pytest
    # processes can share the card; the graphs log is printed when both are done.
    GRAPHS_TESTS=${GRAPHS_TESTS:-"tests/vllm/test_engine.py tests/vllm/test_blocks.py tests/vllm/test_load.py tests/vllm/test_faults.py tests/vllm/test_outliers.py"}
    # shellcheck disable=SC2086
    run graphs $GRAPHS_TESTS > "$OUT/graphs.stdout" 2>&1 &
    gpid=$!
    run eager || rc=$?
    wait $gpid || rc=$?
    cat "$OUT/graphs.stdout" | tail -60 ;;
  *) run "$mode" || rc=$? ;;
esac
exit $rc
