"""Same inputs and seeds give the same bytes across runs and processes."""

import hashlib
import os
import subprocess
import sys

import numpy as np

from turboquant import format as tqf
from turboquant import reference as ref

SCRIPT = """
import hashlib, numpy as np
from turboquant import format as tqf, reference as ref
rng = np.random.default_rng(123)
h = hashlib.sha256()
for name in tqf.PRESETS:
    fmt = tqf.LayerFormat(tqf.get_preset(name), 128, layer=5)
    k = rng.standard_normal((64, 2, 128)).astype(np.float32)
    v = rng.standard_normal((64, 2, 128)).astype(np.float32)
    h.update(ref.encode_slots(k, v, fmt).tobytes())
print(h.hexdigest())
"""


def _in_process() -> str:
    ns = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(SCRIPT, ns)
    return buf.getvalue().strip()


def test_bytes_identical_across_processes():
    env = dict(os.environ)
    outs = set()
    for hashseed in ("0", "12345"):
        env["PYTHONHASHSEED"] = hashseed
        outs.add(subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    outs.add(_in_process())
    assert len(outs) == 1, outs


def test_decode_deterministic_and_batch_independent():
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    rng = np.random.default_rng(0)
    k = rng.standard_normal((40, 2, 128)).astype(np.float32)
    v = rng.standard_normal((40, 2, 128)).astype(np.float32)
    cache = ref.new_cache(fmt, 10, 4, 2)
    ref.store(cache, k, v, np.arange(40), fmt)
    q = rng.standard_normal((3, 4, 128)).astype(np.float32)
    bt = np.arange(10, dtype=np.int32).reshape(1, 10).repeat(3, 0)
    a = ref.decode_attention(q, cache, bt, np.array([40, 17, 3]), fmt)
    b = ref.decode_attention(q, cache, bt, np.array([40, 17, 3]), fmt)
    alone = ref.decode_attention(q[1:2], cache, bt[1:2], np.array([17]), fmt)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    assert np.array_equal(a[1], alone[0])
