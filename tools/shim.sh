# Sourced from the repository root by the device scripts: the import path for `turboquant.*` without
# installing the project, a symlink farm that maps pyproject's package-dir (turboquant/ plus the top-level
# reference, triton_impl, conformance and vllm_integration folders) under /tmp/shim.
mkdir -p /tmp/shim/turboquant
for f in turboquant/*; do ln -sfn "$PWD/$f" /tmp/shim/turboquant/; done
for d in reference triton_impl conformance vllm_integration; do ln -sfn "$PWD/$d" /tmp/shim/turboquant/$d; done
export PYTHONPATH=/tmp/shim${PYTHONPATH:+:$PYTHONPATH}
