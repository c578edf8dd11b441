"""The Hugging Face encoders of :mod:`clip_jax.models.hf_text`, in Flax Linen.

BERT / RoBERTa / XLM-R (transformers' ``BertModel`` / ``XLMRobertaModel``): word + position
(RoBERTa-likes: from ``pad_id + 1``, counting only the unpadded tokens, as transformers'
``create_position_ids_from_input_ids``) + token type 0 embeddings, LayerNorm, then post-norm
blocks ``x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))`` with padded keys masked, and the pooler
``tanh(dense(x[:, 0]))``::

    transformer/{token_embedding, positional_embedding, type_embedding, ln_embed,
                 resblocks_i/{attn/{kernel_in, bias_in, kernel_out, bias_out}, ln_1,
                              mlp/{c_fc, c_proj}, ln_2}, pooler}

T5 / mT5 (``T5EncoderModel``, ``MT5Model.encoder``): token embedding, pre-norm blocks with RMS
norms, attention without biases nor 1/sqrt(d) scaling plus the bidirectional relative position
bias (one table, block 0's in transformers, shared by every block), a ReLU or gated MLP, and a
final RMS norm::

    transformer/{token_embedding, rel_bias, resblocks_i/{ln_1, attn/{kernel_in, kernel_out},
                 ln_2, mlp/{wi | wi_0, wi_1, wo}}, ln_final}

``kernel_in`` is (width, 3, heads, head_dim) as :class:`clip_jax.layers.Attention`'s (which the
BERT blocks use). Blocks are ``resblocks_i`` or, with ``model.scan``, one stacked ``resblocks``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import remat as remat_lib
from clip_jax.layers import MLP, Attention, LayerNorm, logical_init

_ACT = {"relu": jax.nn.relu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def _stack(block, cfg, kw: dict, x, *args):
    """``cfg.text.layers`` blocks (scanned or not, rematerialised under ``cfg.remat``)."""
    block = remat_lib.remat(block, cfg.remat, cfg.scan)
    if cfg.scan:
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * len(args), length=cfg.text.layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(name="resblocks", **kw)(x, *args)
        return x
    for i in range(cfg.text.layers):
        x, _ = block(name=f"resblocks_{i}", **kw)(x, *args)
    return x


class BertBlock(nn.Module):
    heads: int
    mlp_dim: int
    act: str
    eps: float
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        y = Attention(self.heads, 0.02, False, self.attention, name="attn", **kw)(x, mask)
        x = LayerNorm(self.eps, name="ln_1", **kw)(x + y)
        y = MLP(self.mlp_dim, self.act, 0.02, name="mlp", **kw)(x)
        return LayerNorm(self.eps, name="ln_2", **kw)(x + y), None


class BertEncoder(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, ids, mask):
        c, t = self.cfg, self.cfg.text
        h = t.hf
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        init = nn.initializers.normal(0.02)
        tok = self.param("token_embedding", logical_init(init, ("vocab", "embed")),
                         (t.vocab_size, t.width), pdtype)
        pos = self.param("positional_embedding", logical_init(init, (None, "embed")),
                         (h.positions, t.width), pdtype)
        typ = self.param("type_embedding", logical_init(init, (None, "embed")),
                         (h.type_vocab, t.width), pdtype)
        if h.model_type == "bert":
            positions = jnp.arange(ids.shape[1])[None]
        else:  # transformers' create_position_ids_from_input_ids
            m = mask.astype(jnp.int32)
            positions = jnp.cumsum(m, axis=1) * m + t.pad_id
        x = jnp.take(tok, ids, axis=0) + typ[0] + jnp.take(pos, positions, axis=0)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        x = LayerNorm(h.ln_eps, name="ln_embed", **kw)(x.astype(dtype))
        x = _stack(BertBlock, c, dict(heads=t.heads, mlp_dim=t.mlp_dim, act=t.act, eps=h.ln_eps,
                                      attention=c.attention, **kw), x, mask)
        pooled = None
        if h.pooler == "cls_pooler":  # open_clip builds the HF pooler for this one only
            pooled = jnp.tanh(nn.Dense(t.width, name="pooler", kernel_init=logical_init(
                init, ("embed", "proj")), bias_init=logical_init(nn.initializers.zeros,
                                                                 ("proj",)), **kw)(x[:, 0]))
        return x, pooled


class RMSNorm(nn.Module):
    """T5's ``T5LayerNorm``: ``x / sqrt(mean(x^2) + eps) * scale`` in float32, no bias."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", logical_init(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        return (scale.astype(jnp.float32) * y).astype(self.dtype)


def relative_buckets(length: int, buckets: int, max_distance: int) -> np.ndarray:
    """(T, T) int32: transformers' bidirectional ``_relative_position_bucket`` of key - query
    (its float32 logarithm reproduced in float32)."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    n = buckets // 2
    out = (rel > 0).astype(np.int64) * n
    rel = np.abs(rel)
    exact = n // 2
    with np.errstate(divide="ignore"):
        large = np.log(rel.astype(np.float32) / np.float32(exact)) / np.float32(
            math.log(max_distance / exact)) * np.float32(n - exact)
    large = exact + np.where(rel < exact, 0, large).astype(np.int64)
    large = np.minimum(large, n - 1)
    return (out + np.where(rel < exact, rel, large)).astype(np.int32)


class T5Block(nn.Module):
    heads: int
    head_dim: int
    mlp_dim: int
    act: str
    gated: bool
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, mask):
        """``bias``: (H, T, T) float32 relative position bias; ``mask``: (B, T) keys."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        y = RMSNorm(self.eps, name="ln_1", **kw)(x)
        x = x + T5Attention(self.heads, self.head_dim, name="attn", **kw)(y, bias, mask)
        y = RMSNorm(self.eps, name="ln_2", **kw)(x)
        y = T5MLP(self.mlp_dim, self.act, self.gated, name="mlp", **kw)(y)
        return x + y, None


class T5Attention(nn.Module):
    heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, mask):
        d, hn, hd = x.shape[-1], self.heads, self.head_dim
        w_in = self.param("kernel_in", logical_init(nn.initializers.normal(d**-0.5),
                                                    ("embed", None, "heads", "kv")),
                          (d, 3, hn, hd), self.param_dtype)
        w_out = self.param("kernel_out", logical_init(nn.initializers.normal(
            (hn * hd) ** -0.5), ("heads", "kv", "embed")), (hn, hd, d), self.param_dtype)
        q, k, v = jnp.einsum("btd,dshk->sbhtk", x, w_in.astype(self.dtype))
        s = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) + bias
        s = jnp.where(mask[:, None, None, :], s, jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bhsk->bhtk", p, v)
        return jnp.einsum("bhtk,hkd->btd", out, w_out.astype(self.dtype))


class T5MLP(nn.Module):
    mlp_dim: int
    act: str
    gated: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        init = logical_init(nn.initializers.normal(d**-0.5), ("embed", "mlp"))
        if self.gated:
            h = _ACT[self.act](nn.Dense(self.mlp_dim, name="wi_0", kernel_init=init, **kw)(x))
            h = h * nn.Dense(self.mlp_dim, name="wi_1", kernel_init=init, **kw)(x)
        else:
            h = _ACT[self.act](nn.Dense(self.mlp_dim, name="wi", kernel_init=init, **kw)(x))
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
        return nn.Dense(d, name="wo", kernel_init=logical_init(
            nn.initializers.normal(self.mlp_dim**-0.5), ("mlp", "embed")), **kw)(h)


class T5Encoder(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, ids, mask):
        c, t = self.cfg, self.cfg.text
        h = t.hf
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        tok = self.param("token_embedding", logical_init(nn.initializers.normal(1.0),
                                                         ("vocab", "embed")),
                         (t.vocab_size, t.width), pdtype)
        rel = self.param("rel_bias", logical_init(nn.initializers.normal(t.width**-0.5),
                                                  (None, "heads")), (h.buckets, t.heads), pdtype)
        n = ids.shape[1]
        bias = jnp.take(rel.astype(jnp.float32), relative_buckets(n, h.buckets, h.max_distance),
                        axis=0).transpose(2, 0, 1)  # (H, T, T)
        x = jnp.take(tok, ids, axis=0).astype(dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        x = _stack(T5Block, c, dict(heads=t.heads, head_dim=h.head_dim or t.width // t.heads,
                                    mlp_dim=t.mlp_dim, act=t.act, gated=h.gated, eps=h.ln_eps,
                                    **kw), x, bias, mask)
        return RMSNorm(h.ln_eps, name="ln_final", **kw)(x), None
