"""Planted key/value retrieval tasks ("needles") in filler text.

A needle is the line ``\\n## key ABCDE = 01234\\n`` (5 upper-case letters, 5
digits).  The query repeats the line up to ``= `` and the answer is the value:
the model has to find the key's earlier occurrence and copy what followed it
(an induction / retrieval head).

* Training documents (:func:`train_document`) plant 1-4 needles at random
  places and ask for all of them at the end, in random order.
* Evaluation tasks (:func:`eval_task`) have an exact length, the target
  needle at a given relative depth of the filler, distractor needles at random
  places, and one query at the end whose answer is the last tokens.

Everything is numpy on token ids (= bytes), driven by a ``numpy.random.Generator``:
training and evaluation use different seeds and different filler text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turboquant.quality.tokenizer import BOS_ID, EOS_ID

KEY_LEN = 5
VALUE_LEN = 5
_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
_DIGITS = np.frombuffer(b"0123456789", np.uint8)
_NL = ord("\n")


def _b(s: bytes) -> np.ndarray:
    return np.frombuffer(s, np.uint8).astype(np.int64)


PREFIX = _b(b"\n## key ")
SEP = _b(b" = ")
NEEDLE_OVERHEAD = len(PREFIX) + KEY_LEN + len(SEP) + VALUE_LEN + 1  # + trailing newline
QUERY_LEN = len(PREFIX) + KEY_LEN + len(SEP) + VALUE_LEN  # the query ends with the answer


def random_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct keys [n, KEY_LEN] and values [n, VALUE_LEN] as byte ids."""
    while True:
        keys = rng.choice(_LETTERS, size=(n, KEY_LEN)).astype(np.int64)
        if len({k.tobytes() for k in keys}) == n:
            break
    values = rng.choice(_DIGITS, size=(n, VALUE_LEN)).astype(np.int64)
    return keys, values


def needle(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.concatenate([PREFIX, key, SEP, value, [_NL]])


def query(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The query line including its answer (the last VALUE_LEN ids)."""
    return np.concatenate([PREFIX, key, SEP, value])


def filler(rng: np.random.Generator, text: np.ndarray, length: int) -> np.ndarray:
    """A random slice of ``length`` ids of ``text``; file separators become newlines."""
    if length < 0 or length > text.size:
        raise ValueError(f"filler length={length} must lie in [0, {text.size}]")
    start = int(rng.integers(0, text.size - length + 1))
    out = np.asarray(text[start: start + length], np.int64)
    return np.where(out == EOS_ID, _NL, out)


def _insert(fill: np.ndarray, positions: list[int], pieces: list[np.ndarray]) -> np.ndarray:
    order = np.argsort(positions, kind="stable")
    out, prev = [], 0
    for i in order:
        out.append(fill[prev: positions[i]])
        out.append(pieces[i])
        prev = positions[i]
    out.append(fill[prev:])
    return np.concatenate(out)


def train_document(rng: np.random.Generator, text: np.ndarray, length: int, max_needles: int = 4) -> np.ndarray:
    """``<s>`` + filler with 1..max_needles needles + every query line + ``</s>``: ``length`` ids
    (fewer needles when ``length`` is too short for them)."""
    n = int(rng.integers(1, max_needles + 1))
    while n > 1 and 2 + n * (NEEDLE_OVERHEAD + QUERY_LEN + 1) > length // 2:
        n -= 1
    body = 2 + n * (NEEDLE_OVERHEAD + QUERY_LEN + 1)
    if body >= length:
        raise ValueError(f"length={length} is too short for a retrieval document (needs > {body})")
    keys, values = random_pairs(rng, n)
    fill = filler(rng, text, length - body)
    pos = sorted(int(p) for p in rng.integers(0, fill.size + 1, size=n))
    doc = _insert(fill, pos, [needle(k, v) for k, v in zip(keys, values)])
    qs = [np.concatenate([query(keys[i], values[i]), [_NL]]) for i in rng.permutation(n)]
    return np.concatenate([[BOS_ID], doc, *qs, [EOS_ID]])


@dataclass(frozen=True)
class Task:
    ids: np.ndarray  # [context] int64, starts with <s>, ends with the answer
    context: int
    depth: float  # relative position of the target needle in the filler (0 = start, 1 = end)
    answer: np.ndarray  # the last VALUE_LEN ids

    @property
    def answer_start(self) -> int:
        return self.context - VALUE_LEN


def eval_task(rng: np.random.Generator, text: np.ndarray, context: int, depth: float,
              n_distractors: int = 2) -> Task:
    """One task of exactly ``context`` ids with the target needle at ``depth`` of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must lie in [0, 1]")
    n = 1 + n_distractors
    body = 1 + n * NEEDLE_OVERHEAD + QUERY_LEN
    if context <= body:
        raise ValueError(f"context={context} is too short for {n_distractors} distractors (needs > {body})")
    keys, values = random_pairs(rng, n)
    fill = filler(rng, text, context - body)
    pos = [int(round(depth * fill.size))] + [int(p) for p in rng.integers(0, fill.size + 1, size=n_distractors)]
    doc = _insert(fill, pos, [needle(k, v) for k, v in zip(keys, values)])
    ids = np.concatenate([[BOS_ID], doc, query(keys[0], values[0])])
    assert ids.size == context
    return Task(ids, context, float(depth), values[0].copy())


def eval_grid(seed: int, text: np.ndarray, contexts, depths, trials: int, n_distractors: int = 2) -> list[Task]:
    """``trials`` tasks for every (context, depth), from one generator seeded with ``seed``."""
    if trials < 1:
        raise ValueError(f"trials={trials} must be >= 1")
    rng = np.random.default_rng(seed)
    return [eval_task(rng, text, int(c), float(d), n_distractors)
            for c in contexts for d in depths for _ in range(trials)]
