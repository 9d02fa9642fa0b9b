"""Byte tokenizer in Hugging Face format, and the training recipe in smoke mode (CPU)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from turboquant.quality.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, VOCAB_SIZE, encode_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = os.path.join(REPO, "models", "tiny-llama")


def test_tokenizer_is_bytes_plus_bos(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from turboquant.quality.tokenizer import build_tokenizer

    tok = build_tokenizer()
    assert len(tok) == VOCAB_SIZE
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (BOS_ID, EOS_ID, PAD_ID, UNK_ID)
    text = "naïve café\r\n\tdef f(): return '💡' \x00\xff"
    ids = tok(text).input_ids
    assert ids == encode_bytes(text.encode())
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == ids and again.decode(ids[1:]) == text


def test_smoke_training_writes_a_loadable_checkpoint(smoke_checkpoint):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = smoke_checkpoint
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "recipe.json",
                 "metrics.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    recipe = json.load(open(os.path.join(out, "recipe.json")))
    assert recipe["training"]["steps"] == 3 and recipe["args"]["smoke"]
    assert len(recipe["data"]["train"]["manifest_sha256"]) == 64 and recipe["versions"]["torch"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert np.isfinite(metrics["perplexity"]["128"]["ppl"]) and 0 <= metrics["retrieval"]["overall"] <= 1
    model = LlamaForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.num_key_value_heads == 1
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("abc").input_ids == [BOS_ID, 97, 98, 99]


def test_committed_model_card():
    """The committed checkpoint: Llama with GQA, head size 128, bf16 safetensors <= 30 MB, recipe and metrics."""
    cfg = json.load(open(os.path.join(COMMITTED, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["head_dim"] == 128
    assert cfg["num_attention_heads"] > cfg["num_key_value_heads"] and cfg["vocab_size"] == VOCAB_SIZE
    assert cfg["max_position_embeddings"] == 2048 and cfg["dtype"] == "bfloat16"
    path = os.path.join(COMMITTED, "model.safetensors")
    assert os.path.getsize(path) <= 30_000_000
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    assert {t["dtype"] for t in header.values()} == {"BF16"}
    recipe = json.load(open(os.path.join(COMMITTED, "recipe.json")))
    # the run's weights, 2 bytes each (it wrote fp16; the committed file holds them rounded to bf16)
    assert sum(t["data_offsets"][1] - t["data_offsets"][0] for t in header.values()) == 2 * recipe["parameters"]
    metrics = json.load(open(os.path.join(COMMITTED, "metrics.json")))
    assert set(metrics["retrieval"]["by_context"]) == {"256", "512", "1024", "2048"}
