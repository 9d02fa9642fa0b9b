"""Byte-level tokenizer: token id = byte value (0..255), then four specials.

Built with ``tokenizers`` (a BPE model with the 256 byte symbols of the GPT-2
byte-to-unicode map and no merges, i.e. one token per byte, with the
ByteLevel pre-tokenizer and decoder) and wrapped in ``PreTrainedTokenizerFast``,
so ``transformers`` and vLLM load it from ``tokenizer.json``.  Encoding adds
``<s>`` in front, as the model was trained.
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 256, 257, 258, 259
VOCAB_SIZE = 260


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters
    (the alphabet of the ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def encode_bytes(data: bytes, bos: bool = True) -> list[int]:
    """The ids the tokenizer gives for ``data`` (no tokenizer object needed)."""
    return ([BOS_ID] if bos else []) + list(data)


def build_tokenizer(model_max_length: int = 2048):
    """A ``PreTrainedTokenizerFast`` whose ids are the bytes of the UTF-8 text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", BOS_ID)]
    )
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != BOS_ID + i:
            raise RuntimeError(f"special token {name!r} got id {tok.token_to_id(name)}, expected {BOS_ID + i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=model_max_length,
    )
