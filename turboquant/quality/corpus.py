"""Text present on any machine: the running Python's standard-library sources.

Every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (site-packages,
dist-packages and __pycache__ excluded) is one document.  A file belongs to the
held-out evaluation split when the SHA-256 of ``"tiny-llama/split/" + its
relative path`` falls in the first ``EVAL_PERCENT`` of 100 buckets: the split
depends on the path only, so it is the same on every Python version and no
held-out path is ever trained on (file contents differ between versions; the
manifest hash records exactly which bytes were used).

A corpus is the files' bytes as token ids (byte values), each file followed by
``</s>``.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass

import numpy as np

from turboquant.quality.tokenizer import EOS_ID

EVAL_PERCENT = 5
SPLITS = ("train", "eval")
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_files(root: str | None = None) -> list[str]:
    """Relative POSIX paths of every .py file under ``root``, sorted."""
    root = stdlib_root() if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root={root!r} is not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def split_of(relpath: str, eval_percent: int = EVAL_PERCENT) -> str:
    """'eval' or 'train', from the hash of the relative path alone."""
    if not 0 < eval_percent < 100:
        raise ValueError(f"eval_percent={eval_percent} must lie in (0, 100)")
    h = int.from_bytes(hashlib.sha256(f"tiny-llama/split/{relpath}".encode()).digest()[:4], "little")
    return "eval" if h % 100 < eval_percent else "train"


@dataclass(frozen=True)
class Corpus:
    split: str
    root: str
    files: tuple[str, ...]
    ids: np.ndarray  # int16 token ids: file bytes, then EOS after each file
    manifest_sha256: str  # over "path\0sha256(content)\n" of every file, in order

    @property
    def n_bytes(self) -> int:
        return int(self.ids.size - len(self.files))


def load_corpus(split: str, root: str | None = None, max_bytes: int | None = None,
                eval_percent: int = EVAL_PERCENT) -> Corpus:
    """The files of ``split`` in path order (stopping once ``max_bytes`` of text are read)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; allowed values: {list(SPLITS)}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes} must be positive (or None for all)")
    root = stdlib_root() if root is None else root
    manifest = hashlib.sha256()
    parts, files, total = [], [], 0
    for rel in list_files(root):
        if split_of(rel, eval_percent) != split:
            continue
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        if not data:
            continue
        manifest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        arr = np.empty(len(data) + 1, np.int16)
        arr[:-1] = np.frombuffer(data, np.uint8)
        arr[-1] = EOS_ID
        parts.append(arr)
        files.append(rel)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if not files:
        raise FileNotFoundError(f"no .py files of split {split!r} under root={root!r}")
    return Corpus(split, root, tuple(files), np.concatenate(parts), manifest.hexdigest())


def load_text(split: str, max_bytes: int | None = None, root: str | None = None) -> str:
    """The files of ``split`` as one text (file separators dropped), for models with their own
    tokenizer."""
    ids = load_corpus(split, root, max_bytes).ids
    return ids[(ids >= 0) & (ids < 256)].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def windows(ids: np.ndarray, length: int, count: int, bos: int | None, spread: bool = False) -> np.ndarray:
    """``count`` windows [count, length] of ``ids``, each ``bos`` (when given) followed by
    length-1 (or length) tokens: consecutive from the start, or with ``spread`` evenly spaced
    over the whole of ``ids`` (non-overlapping either way)."""
    body = length - (bos is not None)
    if length < 2 or count < 1:
        raise ValueError(f"length={length} must be >= 2 and count={count} >= 1")
    if count * body > ids.size:
        raise ValueError(f"corpus has {ids.size} tokens, fewer than count*{body}={count * body} needed")
    if spread:
        starts = np.linspace(0, ids.size - body, count).astype(np.int64)
    else:
        starts = np.arange(count, dtype=np.int64) * body
    w = np.asarray(ids, np.int64)[starts[:, None] + np.arange(body)[None, :]]
    if bos is not None:
        w = np.concatenate([np.full((count, 1), bos, np.int64), w], axis=1)
    return w
