"""Shared fixtures of the quality tests: a tiny random Llama (head size 64, GQA)
and a smoke-trained checkpoint made by models/train_tiny_llama.py --smoke."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO, "models", "train_tiny_llama.py")


@pytest.fixture(scope="session")
def tiny_llama():
    """A random LlamaForCausalLM: 2 layers, 4 query heads, 2 KV heads, head size 64 (float32, eval)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=260, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                   max_position_embeddings=256, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peakier attention than the default init, like a trained model
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    return model


@pytest.fixture(scope="session")
def smoke_checkpoint(tmp_path_factory):
    """models/train_tiny_llama.py --smoke --eval, run once per session; returns its output directory."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("tiny-smoke")
    proc = subprocess.run([sys.executable, TRAIN_SCRIPT, "--smoke", "--eval", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(out)
