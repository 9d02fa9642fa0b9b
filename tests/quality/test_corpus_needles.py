"""Corpus split and needle tasks (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from turboquant.quality import corpus, needles
from turboquant.quality.tokenizer import BOS_ID, EOS_ID, encode_bytes


def make_root(tmp_path, n=60):
    for i in range(n):
        d = tmp_path / f"pkg{i % 3}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i}.py").write_bytes(f"# module {i}\nx = {i}\n".encode() * 5)
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "foreign.py").write_text("never read\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    return str(tmp_path)


def test_split_depends_on_path_only():
    assert corpus.split_of("os.py") == corpus.split_of("os.py")
    paths = [f"dir/file{i}.py" for i in range(4000)]
    share = np.mean([corpus.split_of(p) == "eval" for p in paths])
    assert 0.03 < share < 0.07  # EVAL_PERCENT = 5
    with pytest.raises(ValueError, match="eval_percent"):
        corpus.split_of("os.py", eval_percent=0)


def test_load_corpus_splits_are_disjoint_and_complete(tmp_path):
    root = make_root(tmp_path)
    files = corpus.list_files(root)
    assert len(files) == 60 and not any("site-packages" in f for f in files)
    tr, ev = corpus.load_corpus("train", root), corpus.load_corpus("eval", root, eval_percent=30)
    tr30 = corpus.load_corpus("train", root, eval_percent=30)
    assert set(ev.files).isdisjoint(tr30.files) and len(ev.files) + len(tr30.files) == 60
    assert len(tr.files) >= len(tr30.files)
    assert tr.ids.dtype == np.int16 and np.sum(tr.ids == EOS_ID) == len(tr.files)
    first = (tmp_path / tr.files[0]).read_bytes()
    assert tr.ids[: len(first)].tolist() == list(first) and tr.ids[len(first)] == EOS_ID
    assert corpus.load_corpus("train", root).manifest_sha256 == tr.manifest_sha256
    assert len(corpus.load_corpus("train", root, max_bytes=1).files) == 1


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        corpus.load_corpus("test", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="root"):
        corpus.list_files(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="max_bytes"):
        corpus.load_corpus("train", str(tmp_path), max_bytes=0)


def test_windows():
    ids = np.arange(100, dtype=np.int16)
    w = corpus.windows(ids, 10, 3, BOS_ID)
    assert w.shape == (3, 10) and (w[:, 0] == BOS_ID).all() and w[1, 1:].tolist() == list(range(9, 18))
    assert corpus.windows(ids, 10, 2, None)[1].tolist() == list(range(10, 20))
    with pytest.raises(ValueError, match="count"):
        corpus.windows(ids, 10, 20, BOS_ID)


def test_stdlib_split_has_both_parts():
    files = corpus.list_files()
    ev = [f for f in files if corpus.split_of(f) == "eval"]
    assert ev and len(ev) < len(files) / 5


TEXT = np.frombuffer(b"def f(x):\n    return x + 1\n" * 400, np.uint8).astype(np.int16)


def decode(ids):
    return bytes(int(i) for i in ids if i < 256)


def test_eval_task_layout():
    rng = np.random.default_rng(0)
    for ctx in (128, 512):
        for depth in (0.0, 0.5, 1.0):
            t = needles.eval_task(rng, TEXT, ctx, depth)
            assert t.ids.size == ctx and t.ids[0] == BOS_ID and (t.ids[1:] < 256).all()
            assert t.ids[t.answer_start:].tolist() == t.answer.tolist()
            text = decode(t.ids[1:])
            key = text[-(needles.VALUE_LEN + 3 + needles.KEY_LEN): -(needles.VALUE_LEN + 3)]
            line = b"\n## key " + key + b" = " + decode(t.answer) + b"\n"
            assert text.count(line) == 1  # the target needle, planted once
            assert text.count(b"\n## key ") == 4  # target, two distractors, query
            at = text.index(line)
            before = text[:at].count(b"\n## key ")  # distractors planted before the target
            fill = ctx - 1 - 3 * needles.NEEDLE_OVERHEAD - needles.QUERY_LEN
            assert at - before * needles.NEEDLE_OVERHEAD == round(depth * fill)


def test_eval_task_errors_and_grid():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="depth"):
        needles.eval_task(rng, TEXT, 256, 1.5)
    with pytest.raises(ValueError, match="context"):
        needles.eval_task(rng, TEXT, 60, 0.5)
    a = needles.eval_grid(7, TEXT, [128, 256], [0.0, 1.0], 3)
    b = needles.eval_grid(7, TEXT, [128, 256], [0.0, 1.0], 3)
    assert len(a) == 12 and all((x.ids == y.ids).all() for x, y in zip(a, b))
    c = needles.eval_grid(8, TEXT, [128, 256], [0.0, 1.0], 3)
    assert any((x.ids != y.ids).any() for x, y in zip(a, c))


def test_train_document_queries_every_needle():
    rng = np.random.default_rng(1)
    for length in (128, 700, 2048):
        doc = needles.train_document(rng, TEXT, length)
        assert doc.size == length and doc[0] == BOS_ID and doc[-1] == EOS_ID
        text = decode(doc)
        lines = [ln for ln in text.split(b"\n") if ln.startswith(b"## key ")]
        assert len(lines) % 2 == 0 and lines
        n = len(lines) // 2
        assert sorted(lines[:n]) == sorted(lines[n:])  # every planted pair is asked at the end
    with pytest.raises(ValueError, match="length"):
        needles.train_document(rng, TEXT, 40)


def test_encode_bytes():
    assert encode_bytes(b"ab") == [BOS_ID, 97, 98] and encode_bytes(b"ab", bos=False) == [97, 98]


def test_spread_windows_cover_the_corpus():
    ids = np.arange(1000, dtype=np.int16)
    w = corpus.windows(ids, 11, 4, BOS_ID, spread=True)
    assert w[0, 1] == 0 and w[-1, -1] == 999 and (np.diff(w[:, 1]) >= 10).all()
