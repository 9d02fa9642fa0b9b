"""A tiny random Llama checkpoint with a local tokenizer (no hub access)."""

from __future__ import annotations

import os


def build_tiny_llama(path: str, *, head_dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, vocab: int = 256, seed: int = 0, dtype: str = "bfloat16",
                     **config_overrides) -> str:
    """Write config, weights and tokenizer to ``path`` (idempotent) and return it."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
                      max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False, **config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Larger-than-default q/k projections make attention peaky (closer to a
    # trained model), so the compressed-cache attention is not near-uniform.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    model.to(getattr(torch, dtype)).save_pretrained(path)
    return path
