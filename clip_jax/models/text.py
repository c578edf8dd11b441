"""The Transformer text tower (open_clip's ``text``; with the SigLIP switches big_vision's
text ``_Model`` / HF ``SiglipTextTransformer``).

``token + position embedding -> blocks (causal or bidirectional) -> ln_final -> pool
(argmax: the end token | last | first) -> text_projection [+ bias]``; with ``text.embed_cls``
(open_clip CoCa) a class token appended, padding keys masked, and the class token pooled.

The ``transformer`` text family (:mod:`clip_jax.models.family`, ``model.text.family``): its
switches, FLOPs and layer ids are here; its open_clip JSON is
:mod:`clip_jax.models.openclip_config`'s ``text_cfg``, its key maps the image families'.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

import clip_jax.models.family as families
from clip_jax.layers import LayerNorm, Transformer, logical_init
from clip_jax.models.config import (
    ACTS,
    TEXT_POOLS,
    ModelConfig,
    TextConfig,
    _choice,
    _flag,
    _heads,
    _positive_int,
)


def pool_positions(text, t: TextConfig):
    """The position pooled in each row of ``text`` (B, L): ``argmax``: the first ``eot_id``
    (with ``eot_id`` None the largest id, open_clip's ``argmax``: CLIP BPE's end token has the
    largest id), ``last``: L - 1, ``first``: 0."""
    if t.pool == "last":
        return jnp.full(text.shape[:1], text.shape[1] - 1, jnp.int32)
    if t.pool == "first":
        return jnp.zeros(text.shape[:1], jnp.int32)
    if t.eot_id is None:
        return jnp.argmax(text, axis=-1)
    return jnp.argmax(text == t.eot_id, axis=-1)


class TextTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, text, tokens: bool = False):
        """text: (B, L) int token ids; features are taken at the position ``text.pool`` names
        (with ``text.embed_cls``: at the appended class token, after ``ln_final``).
        ``tokens``: returns ``(pooled, tokens)``, ``tokens`` (B, L, width) open_clip's
        un-pooled token outputs (with ``embed_cls`` before ``ln_final``, as open_clip's CoCa
        gives them to its decoder; else after it)."""
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
                         (t.context_length + t.embed_cls, t.width), pdtype)
        x = jnp.take(tok, text, axis=0).astype(dtype)
        mask = None
        if t.embed_cls:  # open_clip CoCa: the class token after the text, padding keys masked
            cls = self.param("cls_emb", logical_init(nn.initializers.normal(0.01), ("embed",)),
                             (t.width,), pdtype)
            x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1,
                                                                          t.width))], 1)
            mask = cls_key_mask(text, t)
        x = x + pos[: x.shape[1]].astype(dtype)
        x = Transformer(t.layers, t.heads, t.mlp_dim, t.act or c.act, t.causal, c.ln_eps,
                        c.remat, c.scan, c.attention, dtype, pdtype, qk_norm=c.qk_norm,
                        ls_init_value=c.ls_init_value, name="transformer")(x, mask)
        ln_final = LayerNorm(c.ln_eps, name="ln_final", dtype=dtype, param_dtype=pdtype)
        if t.embed_cls:
            seq, x = x[:, :-1], ln_final(x[:, -1])
        else:
            x = seq = ln_final(x)
            x = x[jnp.arange(x.shape[0]), pool_positions(text, t)]
        proj = self.param("text_projection",
                          logical_init(nn.initializers.normal(t.width**-0.5), ("embed", "proj")),
                          (t.width, c.embed_dim), pdtype)
        x = jnp.dot(x, proj.astype(dtype))
        if t.proj_bias:
            bias = self.param("text_projection_bias",
                              logical_init(nn.initializers.zeros, ("proj",)), (c.embed_dim,),
                              pdtype)
            x = x + bias.astype(dtype)
        return (x, seq) if tokens else x


def cls_key_mask(text, t: TextConfig):
    """(B, L + 1) bool over the keys of text + class token, open_clip's ``_build_additive_mask``
    as its CoCa builds it (``correct_cls_mask`` false, the mask its released weights were trained
    with): True where the token is not ``pad_id``, and the class token's True comes first, so
    the text's flags reach the keys one position to the right."""
    valid = text != t.pad_id
    return jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)


def check(t: TextConfig) -> None:
    if t.hf is not None:
        raise ValueError("model.text.hf: the switches of model.text.family='hf' (this tower "
                         f"is {t.family!r})")
    _flag("model.text.embed_cls", t.embed_cls)
    if isinstance(t.pad_id, bool) or not isinstance(t.pad_id, int) or t.pad_id < 0:
        raise ValueError(f"model.text.pad_id={t.pad_id!r}: must be a token id >= 0")
    for name in ("context_length", "vocab_size", "width", "layers", "heads", "mlp_dim"):
        _positive_int(f"model.text.{name}", getattr(t, name))
    for name in ("causal", "proj_bias"):
        _flag(f"model.text.{name}", getattr(t, name))
    _choice("model.text.pool", t.pool, TEXT_POOLS)
    if t.act is not None:
        _choice("model.text.act", t.act, ACTS)
    _heads("model.text", t.width, t.heads)
    e = t.eot_id
    if e is not None and (isinstance(e, bool) or not isinstance(e, int)
                          or not 0 <= e < t.vocab_size):
        raise ValueError(f"model.text.eot_id={e!r}: must be null or a token id in "
                         f"[0, {t.vocab_size})")


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Per sample: the blocks over the whole context (the full T x T attention) and the
    projection."""
    t = cfg.text
    block, redo = families.block_flops(t.context_length, t.width, t.mlp_dim, remat)
    return float(t.layers * block + 2 * t.width * cfg.embed_dim), float(t.layers * redo)


def layer_id(cfg: ModelConfig, path: str, shape: tuple):
    """Token and position embeddings 0, block i i + 1, ln_final L, the projection L + 1."""
    return families.transformer_layer_id(
        path, shape, cfg.text.layers, ("token_embedding", "positional_embedding"),
        ("ln_final",), ("text_projection", "text_projection_bias"))


FAMILY = families.register(families.Family(
    "transformer", TextTransformer, check, tower="text", flops=flops,
    depth=lambda cfg: cfg.text.layers, layer_id=layer_id, scanned=True))
