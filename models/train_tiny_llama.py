#!/usr/bin/env python3
"""Train the tiny Llama used to measure TurboQuant's quality (models/tiny-llama/).

A small LlamaForCausalLM (GQA, head size 128, RoPE, byte-level tokens) trained
from scratch in a few minutes on one GPU, on text every machine has (the
running Python's standard-library sources, held-out files split off by path
hash) mixed with generated long-range retrieval documents (key/value needles
planted early and asked for at the end), so that it has real induction /
retrieval heads.  Nothing is downloaded and the text is never committed.

    python models/train_tiny_llama.py --out /tmp/tl --eval                  # the committed run (one H200, 250 s)
    python models/train_tiny_llama.py --smoke --out /tmp/tiny --eval        # CPU, seconds: checks the recipe

It writes bf16 safetensors (the dtype vLLM serves it in), config, tokenizer (Hugging Face format, loadable
by transformers and vLLM), recipe.json (arguments, seeds, data manifests,
versions, loss curve) and, with --eval, metrics.json (bf16 perplexity on
held-out text, needle retrieval accuracy by depth and context length).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # importable from a plain checkout (no install needed)
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from turboquant.quality import corpus as corpus_mod  # noqa: E402
from turboquant.quality import needles, ppl, retrieval  # noqa: E402
from turboquant.quality.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, build_tokenizer  # noqa: E402

MAX_SAFETENSORS_BYTES = 30 * 1000 * 1000

FULL = dict(hidden=512, intermediate=1024, layers=6, heads=4, kv_heads=2, head_dim=128, context=2048,
            batch=64, lr=2e-3, time_budget=250.0, max_steps=100_000, retrieval_frac=0.3, log_every=50,
            corpus_bytes=0, ppl_windows=128, retrieval_trials=40, contexts="256,512,1024,2048",
            depths="0,0.25,0.5,0.75,1")
SMOKE = dict(hidden=128, intermediate=128, layers=2, heads=2, kv_heads=1, head_dim=64, context=128,
             batch=4, lr=2e-3, time_budget=60.0, max_steps=3, retrieval_frac=0.5, log_every=1,
             corpus_bytes=300_000, ppl_windows=2, retrieval_trials=2, contexts="128", depths="0,1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps, CPU-friendly (tests the recipe)")
    p.add_argument("--eval", action="store_true", help="evaluate the saved checkpoint (metrics.json)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="model init and training-data seed")
    p.add_argument("--stdlib", default=None, help="text root (default: the running Python's stdlib)")
    for k, v in FULL.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v} (smoke: {SMOKE[k]})")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.heads % args.kv_heads:
        raise SystemExit(f"--heads={args.heads} must be a multiple of --kv-heads={args.kv_heads}")
    if not 0.0 <= args.retrieval_frac <= 1.0:
        raise SystemExit(f"--retrieval-frac={args.retrieval_frac} must lie in [0, 1]")
    if args.context < 128:
        raise SystemExit(f"--context={args.context} must be >= 128")
    return args


def make_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.context, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )


class Batches:
    """Rows of ``context`` tokens: text rows (``<s>`` + a random window of the training
    text) and retrieval rows (packed needle documents of log-uniform lengths)."""

    def __init__(self, text: np.ndarray, context: int, batch: int, retrieval_frac: float, seed: int, device):
        self.text_np = text
        self.text = torch.from_numpy(text.astype(np.int64)).to(device)
        self.context, self.device = context, device
        self.n_ret = int(round(batch * retrieval_frac))
        self.n_text = batch - self.n_ret
        self.rng = np.random.default_rng([seed, 1])
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.offsets = torch.arange(context - 1, device=device)
        if self.text.numel() < 4 * context:
            raise ValueError(f"training text has {self.text.numel()} tokens, need >= {4 * context}")

    def retrieval_row(self) -> np.ndarray:
        """Half the rows start with one document of context/2..context tokens (long-range
        needles); the rest, and every later document, have log-uniform lengths 128..context."""
        parts, n, lo, hi = [], 0, math.log(128), math.log(self.context)
        long_first = self.rng.random() < 0.5
        while n < self.context:
            if long_first and not parts:
                length = int(self.rng.integers(self.context // 2, self.context + 1))
            else:
                length = int(math.exp(self.rng.uniform(lo, hi)))
            doc = needles.train_document(self.rng, self.text_np, length)
            parts.append(doc)
            n += doc.size
        return np.concatenate(parts)[: self.context]

    def next(self) -> torch.Tensor:
        rows = []
        if self.n_text:
            start = torch.randint(0, self.text.numel() - self.context, (self.n_text, 1), generator=self.gen,
                                  device=self.device)
            body = self.text[start + self.offsets]
            rows.append(torch.cat([torch.full((self.n_text, 1), BOS_ID, device=self.device), body], 1))
        if self.n_ret:
            r = np.stack([self.retrieval_row() for _ in range(self.n_ret)])
            rows.append(torch.from_numpy(r).to(self.device, non_blocking=True))
        return torch.cat(rows, 0)


def lr_at(progress: float, peak: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    if progress < warmup:
        return peak * progress / warmup
    t = (progress - warmup) / (1 - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train(args, model, batches: Batches, device) -> dict:
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    model.train()
    t0, step, curve, recent = time.time(), 0, [], []
    while True:
        elapsed = time.time() - t0
        progress = max(step / args.max_steps, elapsed / args.time_budget)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, args.lr)
        x = batches.next()
        with amp:
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % args.log_every == 0:
            value = float(loss.item())
            recent.append(value)
            curve.append([step, round(time.time() - t0, 2), round(value, 4)])
            print(f"step {step:6d}  {time.time() - t0:7.1f}s  loss {value:.4f}  lr {opt.param_groups[0]['lr']:.2e}",
                  flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - t0
    return {"steps": step, "wall_s": round(wall, 2), "tokens": step * args.batch * args.context,
            "tokens_per_s": round(step * args.batch * args.context / max(wall, 1e-9)),
            "final_loss_mean_last5": round(float(np.mean(recent[-5:])), 4) if recent else None, "loss_curve": curve}


def save(model, tokenizer, out: str, smoke: bool) -> dict:
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # understood by transformers 4.x and 5.x (and vLLM)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2)
    st = [n for n in os.listdir(out) if n.endswith(".safetensors")]
    size = sum(os.path.getsize(os.path.join(out, n)) for n in st)
    if not smoke and size > MAX_SAFETENSORS_BYTES:
        raise SystemExit(f"safetensors take {size} bytes > {MAX_SAFETENSORS_BYTES}: choose a smaller model")
    return {"safetensors_files": sorted(st), "safetensors_bytes": size}


def evaluate(args, out: str, eval_text: np.ndarray, device) -> dict:
    """bf16 (cuda) / float32 (cpu) evaluation of the saved checkpoint, reloaded from disk."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM.from_pretrained(out, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    tok = AutoTokenizer.from_pretrained(out)
    probe = "def f(x):\n    return x  # é"
    if tok(probe).input_ids != [BOS_ID] + list(probe.encode()):
        raise RuntimeError("the saved tokenizer does not give <s> + UTF-8 bytes")
    res = {"dtype": str(dtype).replace("torch.", ""), "device": str(device), "perplexity": {}}
    for ctx in sorted({args.context, min(512, args.context)}):
        n = min(args.ppl_windows * max(1, args.context // ctx), eval_text.size // ctx)
        w = corpus_mod.windows(eval_text, ctx, n, BOS_ID)
        r = ppl.perplexity(model, w, batch_size=max(1, 32 * 2048 // ctx) if device.type == "cuda" else 2)
        r.pop("window_nll")
        res["perplexity"][str(ctx)] = r
        print(f"held-out ppl @ {ctx}: {r['ppl']:.4f} ({r['bits_per_byte']:.4f} bits/byte, {r['windows']} windows)",
              flush=True)
    contexts = [int(c) for c in args.contexts.split(",")]
    depths = [float(d) for d in args.depths.split(",")]
    res["retrieval"] = retrieval.evaluate(model, eval_text, contexts, depths, args.retrieval_trials,
                                          batch_size=32 if device.type == "cuda" else 4)
    print("retrieval accuracy by context:", res["retrieval"]["by_context"], flush=True)
    print("retrieval accuracy by depth:", res["retrieval"]["by_depth"], flush=True)
    return res


def versions(device) -> dict:
    import tokenizers
    import transformers

    v = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
         "tokenizers": tokenizers.__version__, "numpy": np.__version__}
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    limit = args.corpus_bytes or None
    t0 = time.time()
    train_c = corpus_mod.load_corpus("train", args.stdlib, max_bytes=limit)
    eval_c = corpus_mod.load_corpus("eval", args.stdlib, max_bytes=limit)
    print(f"corpus: train {len(train_c.files)} files {train_c.n_bytes} B, eval {len(eval_c.files)} files "
          f"{eval_c.n_bytes} B ({time.time() - t0:.1f}s)", flush=True)

    from transformers import LlamaForCausalLM

    config = make_config(args)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters on {device}", flush=True)
    batches = Batches(train_c.ids, args.context, args.batch, args.retrieval_frac, args.seed, device)
    stats = train(args, model, batches, device)
    tokenizer = build_tokenizer(args.context)
    files = save(model, tokenizer, args.out, args.smoke)

    recipe = {
        "command": "python models/train_tiny_llama.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "seeds": {"init_and_data": args.seed, "retrieval_eval": retrieval.EVAL_SEED},
        "parameters": n_params,
        "data": {
            "stdlib_root": train_c.root, "split_rule": "sha256('tiny-llama/split/'+relpath) bucket < "
            f"{corpus_mod.EVAL_PERCENT} of 100 -> eval",
            "train": {"files": len(train_c.files), "bytes": train_c.n_bytes,
                      "manifest_sha256": train_c.manifest_sha256},
            "eval": {"files": len(eval_c.files), "bytes": eval_c.n_bytes, "manifest_sha256": eval_c.manifest_sha256},
            "retrieval_rows_per_batch": batches.n_ret, "text_rows_per_batch": batches.n_text,
            "needle_format": "'\\n## key ABCDE = 01234\\n', 1-4 per document, all asked at the end; "
                             "half the retrieval rows start with a document of context/2..context tokens",
        },
        "versions": versions(device),
        "training": stats,
        "files": files,
    }
    with open(os.path.join(args.out, "recipe.json"), "w") as f:
        json.dump(recipe, f, indent=1)
    print(f"saved to {args.out}: {files}", flush=True)
    if args.eval:
        metrics = evaluate(args, args.out, eval_c.ids, device)
        metrics["versions"] = recipe["versions"]
        metrics["eval_data"] = recipe["data"]["eval"]
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
