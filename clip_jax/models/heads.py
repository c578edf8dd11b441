"""Pooling heads of the image tower: the class token, the mean over patch tokens, and MAP
(multi-head attention pooling with a learned probe, big_vision's ``MAPHead``, HF
``SiglipMultiheadAttentionPoolingHead``, timm's ``AttentionPoolLatent``).

MAP: ``y = MHA(probe, tokens)`` (the probe queries the tokens; q, k, v and output projections
with biases), ``y = y + MLP(LN(y))``, token 0. Parameters::

    map_head/probe (1, 1, D)
    map_head/attn/{kernel_q (D, H, hd), bias_q (H, hd), kernel_kv (D, 2, H, hd), bias_kv (2, H, hd),
                   kernel_out (H, hd, D), bias_out (D,)}
    map_head/ln/{scale, bias}, map_head/mlp/{c_fc, c_proj}/{kernel, bias}
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clip_jax.layers import MLP, LayerNorm, attention, logical_init
from clip_jax.models.decoder import CrossAttention

POOLS = ("tok", "map", "gap")


class ProbeAttention(nn.Module):
    """Multi-head attention of ``q`` (B, Tq, D) over ``kv`` (B, T, D): separate q and fused k|v
    projections, all with biases; the core is :func:`clip_jax.layers.attention` (float32 logits
    and softmax)."""

    heads: int
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q, kv, mask=None):
        d = kv.shape[-1]
        h, hd = self.heads, d // self.heads
        init = nn.initializers.xavier_uniform()
        p = lambda name, ini, names, shape: self.param(
            name, logical_init(ini, names), shape, self.param_dtype).astype(self.dtype)
        w_q = p("kernel_q", init, ("embed", "heads", "kv"), (d, h, hd))
        b_q = p("bias_q", nn.initializers.zeros, ("heads", "kv"), (h, hd))
        w_kv = p("kernel_kv", init, ("embed", None, "heads", "kv"), (d, 2, h, hd))
        b_kv = p("bias_kv", nn.initializers.zeros, (None, "heads", "kv"), (2, h, hd))
        w_out = p("kernel_out", init, ("heads", "kv", "embed"), (h, hd, d))
        b_out = p("bias_out", nn.initializers.zeros, ("embed",), (d,))
        q = jnp.einsum("btd,dhk->bhtk", q, w_q) + b_q[None, :, None]
        kv = jnp.einsum("btd,dshk->sbhtk", kv, w_kv) + b_kv[:, None, :, None]
        out = attention(q, kv[0], kv[1], False, self.implementation, mask)
        return jnp.einsum("bhtk,hkd->btd", out, w_out) + b_out


class MAPHead(nn.Module):
    """Multi-head attention pooling: (B, T, D) tokens -> (B, D)."""

    heads: int
    mlp_dim: int
    act: str = "gelu_tanh"
    ln_eps: float = 1e-6
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        """``mask``: None, or (B, T) bool, False for padded tokens the probe ignores."""
        b, _, d = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param("probe", logical_init(nn.initializers.xavier_uniform(),
                                                 (None, None, "embed")), (1, 1, d),
                           self.param_dtype)
        q = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d))
        y = ProbeAttention(self.heads, self.implementation, name="attn", **kw)(q, x, mask)
        z = LayerNorm(self.ln_eps, name="ln", **kw)(y)
        y = y + MLP(self.mlp_dim, self.act, (2 * d) ** -0.5, name="mlp", **kw)(z)
        return y[:, 0]


class AttentionalPooler(nn.Module):
    """open_clip CoCa's ``AttentionalPooler``: ``queries`` learned (Q, dim) vectors, each
    LayerNormed (``ln_q``), attend to the LayerNormed tokens (``ln_k``) with ``heads`` heads
    (torch ``nn.MultiheadAttention`` with ``kdim = vdim`` the tokens' width): (B, T, W) ->
    (B, Q, dim)::

        attn_pool/{query (Q, dim), ln_q, ln_k,
                   attn/{kernel_q (dim, H, hd), bias_q, kernel_kv (W, 2, H, hd), bias_kv,
                         kernel_out (H, hd, dim), bias_out}}
    """

    dim: int
    queries: int
    heads: int
    ln_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        query = self.param("query", logical_init(nn.initializers.normal(1.0), (None, "embed")),
                           (self.queries, self.dim), self.param_dtype)
        x = LayerNorm(self.ln_eps, name="ln_k", **kw)(x)
        q = LayerNorm(self.ln_eps, name="ln_q", **kw)(query.astype(self.dtype))
        q = jnp.broadcast_to(q, (x.shape[0], *q.shape))
        return CrossAttention(self.heads, self.dim**-0.5, name="attn", **kw)(q, x)


def pool_tokens(x, pool: str, prefix: int):
    """Token 0 (``tok``) or the mean of the patch tokens after the ``prefix`` ones (``gap``)."""
    if pool == "tok":
        return x[:, 0]
    if pool == "gap":
        return x[:, prefix:].astype(jnp.float32).mean(axis=1).astype(x.dtype)
    raise ValueError(f"pool {pool!r}: must be one of {POOLS}")
