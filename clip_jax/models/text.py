"""The Transformer text tower (open_clip's ``text``)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from clip_jax.layers import LayerNorm, Transformer, logical_init
from clip_jax.models.config import ModelConfig


class TextTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, text):
        """text: (B, L) int token ids; features are taken at argmax(ids) (the end token)."""
        c, t = self.cfg, self.cfg.text
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if text.shape[1] > t.context_length:
            raise ValueError(f"text of length {text.shape[1]} exceeds the model's context "
                             f"length {t.context_length}")
        tok = self.param("token_embedding",
                         logical_init(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (t.vocab_size, t.width), pdtype)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(0.01), (None, "embed")),
                         (t.context_length, t.width), pdtype)
        x = jnp.take(tok, text, axis=0).astype(dtype) + pos[: text.shape[1]].astype(dtype)
        x = Transformer(t.layers, t.heads, t.mlp_dim, c.act, True, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, name="transformer")(x)
        x = LayerNorm(c.ln_eps, name="ln_final", dtype=dtype, param_dtype=pdtype)(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(text, axis=-1)]
        proj = self.param("text_projection",
                          logical_init(nn.initializers.normal(t.width**-0.5), ("embed", "proj")),
                          (t.width, c.embed_dim), pdtype)
        return jnp.dot(x, proj.astype(dtype))
