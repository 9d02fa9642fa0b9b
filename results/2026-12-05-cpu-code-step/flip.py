"""Experiment: how far does ONE one-step code change (what SPEC 10 allows near a boundary) move the
tiny float32 model's log-probabilities? Same model, requests and sampling as tests/vllm/test_load.py."""
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, "/work/main/tests/vllm")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tiny_model import build_tiny_llama  # noqa: E402
from tq_helpers import llm_kwargs  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

from turboquant.reference import slot as rslot  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
PRESET = sys.argv[2] if len(sys.argv) > 2 else "tq3"
model = build_tiny_llama("/tmp/flip_model")
kw = llm_kwargs(model, preset=PRESET, store="auto", attention="auto")
kw.update(dtype="float32", max_model_len=256, max_num_seqs=8, enable_prefix_caching=False)
llm = LLM(**kw)
rng = np.random.default_rng(1)


def sampling(m):
    return SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True, logprobs=5)


def run(prompt, m, flip=None):
    state = {"done": False}

    def cb(ev, d):
        if ev != "store" or flip is None or state["done"]:
            return
        layer, pos, head, field, j, step = flip
        if not d["layer_name"].endswith(f".{layer}.self_attn.attn") and f"layers.{layer}." not in d["layer_name"]:
            return
        sm = d["slot_mapping"].to(torch.int64)
        if pos >= sm.numel():
            return
        slot = int(sm[pos])
        cache, fmt = d["kv_cache"], d["fmt"]
        bs = cache.shape[2]
        raw = cache[slot // bs, head, slot % bs].cpu().numpy()[None].copy()
        f = rslot.unpack_fields(raw, fmt)
        codes = f[field]
        bits = fmt.field_map[field].bits
        c = int(codes[0, j])
        nc = c + step if 0 <= c + step < (1 << bits) else c - step
        codes[0, j] = nc
        new = rslot.pack_fields(f, fmt)
        cache[slot // bs, head, slot % bs] = torch.from_numpy(new[0]).to(cache.device)
        state["done"] = True

    with debug.recording(cb):
        out = llm.generate([{"prompt_token_ids": prompt}], sampling(m), use_tqdm=False)[0].outputs[0]
    return out, state["done"]


def delta(a, b):
    ta, tb = list(a.token_ids), list(b.token_ids)
    first = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
    same = len(ta) if first is None else first + 1
    lp = lambda s, t: s[t].logprob if t in s else float("-inf")  # noqa: E731
    return max(abs(lp(sa, t) - lp(sb, t)) for sa, sb, t in zip(a.logprobs[:same], b.logprobs, ta)), first


res = []
t0 = time.time()
for i in range(N):
    plen = int(rng.integers(8, 161))
    prompt = [1] + rng.integers(4, 256, plen - 1).tolist()
    m = int(rng.integers(4, 49))
    base, _ = run(prompt, m)
    layer = int(rng.integers(0, 2))
    pos = int(rng.integers(0, min(plen, 64)))  # the first chunk's tokens (max_num_batched_tokens 64)
    head = int(rng.integers(0, 2))
    field = str(rng.choice(["k_codes.0", "v_codes.0"]))
    j = int(rng.integers(0, 64))
    step = int(rng.choice([-1, 1]))
    out, done = run(prompt, m, (layer, pos, head, field, j, step))
    d, first = delta(base, out)
    res.append(d)
    print(f"{i}: layer {layer} pos {pos}/{plen} head {head} {field}[{j}] {step:+d} done={done}: "
          f"max |dlogprob| {d:.2e} first diff {first}", flush=True)
res = np.array(res)
print(f"N={N} in {time.time() - t0:.0f}s: max {res.max():.2e} p90 {np.quantile(res, .9):.2e} "
      f"median {np.median(res):.2e}")
