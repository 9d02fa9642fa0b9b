"""One tensor-parallel run for test_tp.py, in its own process (vLLM spawns its TP workers, which
re-import the main module: hence a script with a __main__ guard).

    python tp_run.py MODEL_DIR TP OUT_JSON
"""

from __future__ import annotations

import json
import sys

PROMPTS = [[1] + list(range(5, 5 + n)) for n in (6, 30, 70)]
MAX_TOKENS = 16


def main(model: str, tp: int, out: str) -> None:
    from vllm import LLM, SamplingParams

    from turboquant.vllm_integration.engine_configs import memory_kwargs

    kw = dict(model=model, dtype="float32", max_model_len=256, max_num_seqs=4, enforce_eager=True, seed=0,
              tensor_parallel_size=tp, block_size=32, attention_backend="CUSTOM",
              additional_config={"turboquant": {"preset": "tq3"}})
    kw.update(memory_kwargs(0.3, 32 << 20, fixed_gpu_pool=True))
    if tp > 1:
        kw["distributed_executor_backend"] = "mp"
    llm = LLM(**kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True), use_tqdm=False)
    with open(out, "w") as f:
        json.dump({"tp": tp, "num_blocks": int(llm.llm_engine.vllm_config.cache_config.num_gpu_blocks),
                   "tokens": [list(o.outputs[0].token_ids) for o in outs]}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
