#!/usr/bin/env bash
# extra_wheels.sh fetch|install -- the wheels of tests/vllm/extra_wheels.txt, next to the vLLM kit.
#   fetch    (here, with a package index) download them into .gpu-vllm/extra/
#   install  (on the GPU machine, after the kit's install step) pip-install them --no-deps into
#            $GPU_VLLM_SITE (default /tmp/site); the call carries ".gpu-vllm/extra"
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=.gpu-vllm/extra
case "${1:-}" in
  fetch)
    mkdir -p "$DIR"
    reqs=$(sed 's/#.*//' tests/vllm/extra_wheels.txt | awk 'NF{print $1}')
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR" $reqs
    ls -la "$DIR" ;;
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "${GPU_VLLM_SITE:-/tmp/site}" "$DIR"/*.whl
    echo "installed: $(ls "$DIR" | tr '\n' ' ')" ;;
  *) echo "usage: $0 fetch|install" >&2; exit 2 ;;
esac
