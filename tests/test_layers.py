"""The building blocks in clip_jax.layers against the library versions they replace."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import layers


def test_fast_layers_equal_their_references():
    """The speed-motivated layers compute the same function, and the same gradients, as the
    straightforward versions they replace (jax.nn.gelu, jax.nn.dot_product_attention, nn.Conv,
    the two-pass layer norm)."""
    x = jax.random.normal(jax.random.key(0), (4096,)) * 4
    np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False),
                               atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: layers.gelu(v).sum())(x),
                               jax.grad(lambda v: jax.nn.gelu(v, approximate=False).sum())(x),
                               atol=2e-6, rtol=1e-6)

    ks = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(key, (3, 4, 9, 16)) for key in ks[:3])  # (B, H, T, D)
    g = jax.random.normal(ks[3], (3, 4, 9, 16))
    sw = lambda a: a.swapaxes(1, 2)
    for causal in (False, True):
        ref = lambda q, k, v, c=causal: sw(jax.nn.dot_product_attention(
            sw(q), sw(k), sw(v), is_causal=c))
        got = lambda q, k, v, c=causal: layers.attention(q, k, v, c, "xla")
        np.testing.assert_allclose(got(q, k, v), ref(q, k, v), atol=1e-5)
        for a, b in zip(jax.vjp(got, q, k, v)[1](g), jax.vjp(ref, q, k, v)[1](g)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="attention implementation"):
        layers.attention(q, k, v, False, "flash")

    images = jax.random.normal(jax.random.key(2), (2, 20, 20, 3))  # 20 % 8: a remainder
    embed = layers.PatchEmbed(8, 12)
    params = embed.init(jax.random.key(3), images)
    conv = nn.Conv(12, (8, 8), strides=8, padding="VALID", use_bias=False)
    want = conv.apply({"params": {"kernel": params["params"]["kernel"]}}, images)
    np.testing.assert_allclose(embed.apply(params, images), want.reshape(2, 4, 12),
                               atol=1e-5)

    h = jax.random.normal(jax.random.key(4), (5, 7, 64)) * 3 + 2
    scale = jax.random.normal(jax.random.key(5), (64,))
    bias = jax.random.normal(jax.random.key(6), (64,))
    gh = jax.random.normal(jax.random.key(7), (5, 7, 64))

    def two_pass(h, scale, bias):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5) * scale + bias

    np.testing.assert_allclose(layers.layer_norm(h, scale, bias, 1e-5),
                               two_pass(h, scale, bias), atol=2e-5)
    for a, b in zip(jax.vjp(lambda *xs: layers.layer_norm(*xs, 1e-5), h, scale, bias)[1](gh),
                    jax.vjp(two_pass, h, scale, bias)[1](gh)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
