"""Attention over compressed K/V: the hook, the codecs, activation capture."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from turboquant import format as tqf  # noqa: E402
from turboquant.quality import activations, codecs, kv_attention  # noqa: E402
from turboquant.reference import new_cache, paged_attention, store  # noqa: E402


def ids(b=2, t=48, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t)))


def test_identity_hook_reproduces_the_model(tiny_llama):
    x = ids()
    with torch.no_grad():
        ref = tiny_llama(input_ids=x).logits
        with kv_attention.compressed_kv(tiny_llama, codecs.IdentityCodec()):
            got = tiny_llama(input_ids=x).logits
    assert tiny_llama.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_hook_changes_outputs_and_is_removed(tiny_llama):
    x = ids()
    with torch.no_grad():
        ref = tiny_llama(input_ids=x).logits
        with kv_attention.compressed_kv(tiny_llama, codecs.make_codec("tq2", 64)):
            got = tiny_llama(input_ids=x).logits
        again = tiny_llama(input_ids=x).logits
    assert (got - ref).abs().max() > 1e-3
    torch.testing.assert_close(again, ref)
    assert not any(hasattr(m, "_turboquant_kv_hook") for m in tiny_llama.modules())


def test_hook_must_be_installed(tiny_llama):
    kv_attention.register()
    tiny_llama.set_attn_implementation(kv_attention.IMPL_NAME)
    try:
        with pytest.raises(RuntimeError, match="no hook"), torch.no_grad():
            tiny_llama(input_ids=ids())
    finally:
        tiny_llama.set_attn_implementation("sdpa")
    with pytest.raises(TypeError, match="hook"):
        with kv_attention.kv_hook(tiny_llama, "not callable"):
            pass


def test_exact_attention_with_cache_offset():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, t, 64, generator=g) for h, t in ((4, 10), (2, 10), (2, 10)))
    full = kv_attention.exact_attention(q, k, v, 0.125)
    tail = kv_attention.exact_attention(q[:, :, -3:], k, v, 0.125)
    torch.testing.assert_close(tail, full[:, -3:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        kv_attention.exact_attention(torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), 1.0)


@pytest.mark.parametrize("preset", ["tq3", "tq4_qjl", "k4g4", "tq2.5"])
def test_attention_over_decoded_kv_equals_reference_paged_attention(preset):
    """Exact attention over decode_slots(encode_slots(K, V)) is the reference's paged attention."""
    rng = np.random.default_rng(1)
    t, hq, hkv, d = 24, 4, 2, 128
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    k = (rng.standard_normal((t, hkv, d)) * 2).astype(np.float32)
    v = rng.standard_normal((t, hkv, d)).astype(np.float32)
    codec = codecs.TurboQuantCodec(preset, d)
    fmt = codec.layer_format(3)
    cache = new_cache(fmt, num_blocks=2, block_size=16, num_kv_heads=hkv)
    store(cache, k, v, np.arange(t), fmt)
    ref = paged_attention(q, cache, np.array([[0, 1]]), np.array([t]), fmt, query_start_loc=np.array([0, t]))
    kq, vq = codec(3, torch.from_numpy(k.transpose(1, 0, 2))[None], torch.from_numpy(v.transpose(1, 0, 2))[None])
    got = kv_attention.exact_attention(torch.from_numpy(q.transpose(1, 0, 2))[None], kq, vq, d ** -0.5)[0]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_codec_properties():
    x = torch.randn(1, 2, 50, 128) * 3
    assert codecs.make_codec("bf16", 128)(0, x, x)[0].dtype == torch.float32
    f8 = codecs.fp8_e4m3_roundtrip(x)
    rel = ((f8 - x).norm() / x.norm()).item()
    assert 0 < rel < 0.05  # e4m3: 3 mantissa bits
    assert codecs.fp8_e4m3_roundtrip(torch.zeros(3)).abs().max() == 0
    assert codecs.make_codec("tq3", 128).bytes_per_token(128) == 104
    assert codecs.make_codec("bf16", 128).bytes_per_token(128) == 512
    assert codecs.make_codec("fp8_e4m3", 128).bytes_per_token(128) == 256
    cal = codecs.TurboQuantCodec("tq3.5", 128, {0: (tuple(range(64, 128)), tuple(range(64)))})
    assert cal.name == "tq3.5+cal" and cal.layer_format(0).key_outlier_channels == tuple(range(64, 128))
    assert cal.layer_format(1).key_outlier_channels is None  # layers without calibration: defaults
    with pytest.raises(ValueError, match="codec"):
        codecs.make_codec("tq5", 128)
    with pytest.raises(ValueError, match="outlier split"):
        codecs.TurboQuantCodec("tq3", 128, {0: ((1,), (2,))})
    with pytest.raises(ValueError, match="head_size"):
        codecs.make_codec("tq3", 128)(0, torch.zeros(1, 1, 2, 64), torch.zeros(1, 1, 2, 64))


def test_capture_is_post_rope_and_does_not_change_the_forward(tiny_llama):
    x = ids(b=1, t=16)
    acts = activations.capture(tiny_llama, x)
    assert [a.layer for a in acts] == [0, 1]
    a = acts[0]
    assert a.q.shape == (1, 4, 16, 64) and a.k.shape == a.v.shape == (1, 2, 16, 64) and a.group == 2
    assert a.scaling == pytest.approx(64 ** -0.5)
    attn = tiny_llama.model.layers[0].self_attn
    with torch.no_grad():
        h = tiny_llama.model.layers[0].input_layernorm(tiny_llama.model.embed_tokens(x))
        k = attn.k_proj(h).view(1, 16, 2, 64).transpose(1, 2).numpy()
        v = attn.v_proj(h).view(1, 16, 2, 64).transpose(1, 2).numpy()
    np.testing.assert_allclose(a.v, v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.k[:, :, 0], k[:, :, 0], rtol=1e-5, atol=1e-5)  # RoPE is the identity at position 0
    assert np.abs(a.k[:, :, 1:] - k[:, :, 1:]).max() > 1e-3  # and rotates later positions
    np.testing.assert_allclose(np.linalg.norm(a.k, axis=-1), np.linalg.norm(k, axis=-1), rtol=1e-4)  # a rotation
    with pytest.raises(ValueError, match="input_ids"):
        activations.capture(tiny_llama, np.zeros(5, np.int64))


def test_layer_formats_use_layer_seeds():
    c = codecs.TurboQuantCodec("tq3", 128)
    assert c.layer_format(0).seed("rotation", 0) != c.layer_format(1).seed("rotation", 0)
    assert c.layer_format(2) == tqf.LayerFormat(tqf.get_preset("tq3"), 128, layer=2)
