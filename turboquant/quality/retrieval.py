"""Needle retrieval accuracy by depth and context length.

A task counts as solved when the model's greedy prediction of every answer
token (teacher-forced, which equals greedy decoding when all are right) is the
planted value.  Tasks come from :func:`turboquant.quality.needles.eval_grid`
with an evaluation seed and held-out filler text.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from turboquant.quality.kv_attention import compressed_kv
from turboquant.quality.needles import VALUE_LEN, Task, eval_grid

EVAL_SEED = 1_000_003  # training documents use the training seed; this one is never trained on


def solved(model, tasks: list[Task], batch_size: int = 16, codec=None) -> np.ndarray:
    """Boolean per task: all answer tokens predicted (argmax) correctly."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = next(model.parameters()).device
    by_ctx = defaultdict(list)
    for i, t in enumerate(tasks):
        by_ctx[t.context].append(i)
    ok = np.zeros(len(tasks), bool)
    with compressed_kv(model, codec), torch.no_grad():
        for idx in by_ctx.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s: s + batch_size]
                x = torch.as_tensor(np.stack([tasks[i].ids for i in chunk]), dtype=torch.long, device=device)
                logits = model(input_ids=x, use_cache=False, logits_to_keep=VALUE_LEN + 1).logits
                pred = logits[:, :-1].argmax(-1).cpu().numpy()  # predictions of the answer tokens
                ans = np.stack([tasks[i].answer for i in chunk])
                ok[chunk] = np.all(pred == ans, axis=1)
    return ok


def accuracy_table(tasks: list[Task], ok: np.ndarray) -> dict:
    """Accuracy per (context, depth), per context, per depth and overall."""
    cells = defaultdict(list)
    for t, o in zip(tasks, ok):
        cells[(t.context, t.depth)].append(bool(o))
    contexts = sorted({c for c, _ in cells})
    depths = sorted({d for _, d in cells})
    grid = {str(c): {str(d): float(np.mean(cells[(c, d)])) for d in depths if (c, d) in cells} for c in contexts}
    return {
        "contexts": contexts, "depths": depths, "trials": len(next(iter(cells.values()))),
        "accuracy": grid,
        "by_context": {str(c): float(np.mean([o for (cc, _), v in cells.items() if cc == c for o in v]))
                       for c in contexts},
        "by_depth": {str(d): float(np.mean([o for (_, dd), v in cells.items() if dd == d for o in v]))
                     for d in depths},
        "overall": float(np.mean(ok)),
    }


def evaluate(model, text: np.ndarray, contexts, depths, trials: int, seed: int = EVAL_SEED,
             batch_size: int = 16, codec=None) -> dict:
    """Build the task grid from ``text`` and return :func:`accuracy_table` (plus the seed)."""
    tasks = eval_grid(seed, text, contexts, depths, trials)
    return {"seed": seed, **accuracy_table(tasks, solved(model, tasks, batch_size, codec))}
