"""The captioning decoder (``model.decoder``): causal self-attention over the caption and
cross-attention to the image tower's un-pooled tokens, then logits over the text vocabulary.

open_clip CoCa's ``MultimodalTransformer`` block for block, with big_vision CapPa's parallel
prediction (an example whose inputs are all the mask embedding, attending in both
directions)::

    text_decoder/{token_embedding (V, W), positional_embedding (L, W), mask_embedding (W,),
                  resblocks_i   (causal self-attention block: ln_1, attn/{kernel_in, bias_in,
                                 kernel_out, bias_out}, ln_2, mlp/{c_fc, c_proj}, [ls_1, ls_2]),
                  cross_attn_i  (ln_1, ln_1_kv, attn/{kernel_q, bias_q, kernel_kv, bias_kv,
                                 kernel_out, bias_out}, ln_2, mlp, [ls_1, ls_2]),
                  ln_final, text_projection (W, V)}

With ``model.scan`` the pairs are one scanned ``blocks/{resblocks, cross_attn}`` with a leading
``layers`` axis. ``resblocks_i``/``cross_attn_i``/``ln_final``/``text_projection`` are open_clip's
``text_decoder.resblocks.i`` / ``.cross_attn.i`` / ``.ln_final`` / ``.text_projection`` (its
fused cross ``in_proj_weight`` is ``kernel_q`` | ``kernel_kv`` when the image tokens are as wide
as the decoder); the embeddings are the decoder's own, or with ``decoder.input='text'``
(open_clip CoCa's wiring) there are none: its inputs are the text tower's un-pooled tokens.
Every parameter carries logical axis names, so it shards on ``fsdp``/``tensor`` like the towers.

:func:`greedy` and :func:`beam_search` generate token ids from any ``logits(ids)`` function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax import remat as remat_lib
from clip_jax.layers import MLP, LayerNorm, LayerScale, attention, logical_init
from clip_jax.models.config import ModelConfig


def _attend(q, k, v, mask):
    """Softmax attention on (B, H, T, hd) q and (B, H, S, hd) k, v; ``mask`` (B, 1, T, S) bool
    (True: attend) or None."""
    if mask is None:
        return attention(q, k, v, False, "xla")
    s = jnp.einsum("bhtk,bhsk->bhts", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k,
                   preferred_element_type=jnp.float32)
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhts,bhsk->bhtk", jax.nn.softmax(s, axis=-1).astype(v.dtype), v)


class SelfAttention(nn.Module):
    """Multi-head self-attention with the towers' fused ``kernel_in`` (d, q|k|v, heads, hd)
    layout and a per-example mask."""

    heads: int
    out_init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        hd = d // self.heads
        w_in = self.param("kernel_in", logical_init(nn.initializers.normal(d**-0.5),
                                                    ("embed", None, "heads", "kv")),
                          (d, 3, self.heads, hd), self.param_dtype)
        b_in = self.param("bias_in", logical_init(nn.initializers.zeros, (None, "heads", "kv")),
                          (3, self.heads, hd), self.param_dtype)
        qkv = jnp.einsum("btd,dshk->sbhtk", x, w_in.astype(self.dtype)) + b_in.astype(
            self.dtype)[:, None, :, None]
        out = _attend(qkv[0], qkv[1], qkv[2], mask)
        return _out_proj(self, out, d)


class CrossAttention(nn.Module):
    """Queries from the caption, keys and values from the image tokens (their own width)."""

    heads: int
    out_init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, kv):
        d, dkv = x.shape[-1], kv.shape[-1]
        hd = d // self.heads
        init = lambda fan: logical_init(nn.initializers.normal(d**-0.5), fan)
        w_q = self.param("kernel_q", init(("embed", "heads", "kv")), (d, self.heads, hd),
                         self.param_dtype)
        b_q = self.param("bias_q", logical_init(nn.initializers.zeros, ("heads", "kv")),
                         (self.heads, hd), self.param_dtype)
        w_kv = self.param("kernel_kv", init(("embed", None, "heads", "kv")),
                          (dkv, 2, self.heads, hd), self.param_dtype)
        b_kv = self.param("bias_kv", logical_init(nn.initializers.zeros, (None, "heads", "kv")),
                          (2, self.heads, hd), self.param_dtype)
        q = jnp.einsum("btd,dhk->bhtk", x, w_q.astype(self.dtype)) + b_q.astype(
            self.dtype)[None, :, None]
        k_v = jnp.einsum("bsd,dchk->cbhsk", kv, w_kv.astype(self.dtype)) + b_kv.astype(
            self.dtype)[:, None, :, None]
        out = _attend(q, k_v[0], k_v[1], None)
        return _out_proj(self, out, d)


def _out_proj(mod, out, d):
    out = nn.with_logical_constraint(out, ("batch", "act_heads", "length", "kv"))
    w = mod.param("kernel_out", logical_init(nn.initializers.normal(mod.out_init_std),
                                             ("heads", "kv", "embed")),
                  (mod.heads, d // mod.heads, d), mod.param_dtype)
    b = mod.param("bias_out", logical_init(nn.initializers.zeros, ("embed",)), (d,),
                  mod.param_dtype)
    return jnp.einsum("bhtk,hkd->btd", out, w.astype(mod.dtype)) + b.astype(mod.dtype)


class DecoderBlock(nn.Module):
    """open_clip's ``ResidualAttentionBlock``: ``x + ls_1(attn(ln_1(x)[, ln_1_kv(kv)]))`` then
    ``x + ls_2(mlp(ln_2(x)))``; ``cross``: attention to ``kv`` (the image tokens), else
    self-attention under ``mask``."""

    heads: int
    mlp_dim: int
    layers: int
    act: str
    cross: bool
    ln_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ls_init_value: float | None = None

    @nn.compact
    def __call__(self, x, kv, mask):
        d = x.shape[-1]
        proj_std = d**-0.5 * (2 * self.layers) ** -0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        ls = self.ls_init_value
        y = LayerNorm(self.ln_eps, name="ln_1", **kw)(x)
        if self.cross:
            kv = LayerNorm(self.ln_eps, name="ln_1_kv", **kw)(kv)
            y = CrossAttention(self.heads, proj_std, name="attn", **kw)(y, kv)
        else:
            y = SelfAttention(self.heads, proj_std, name="attn", **kw)(y, mask)
        x = x + (y if ls is None else LayerScale(ls, name="ls_1", **kw)(y))
        y = LayerNorm(self.ln_eps, name="ln_2", **kw)(x)
        y = MLP(self.mlp_dim, self.act, proj_std, name="mlp", **kw)(y)
        return x + (y if ls is None else LayerScale(ls, name="ls_2", **kw)(y))


class DecoderLayer(nn.Module):
    """One self-attention block then one cross-attention block (scanned with ``model.scan``)."""

    kw: dict

    @nn.compact
    def __call__(self, x, kv, mask):
        x = DecoderBlock(cross=False, name="resblocks", **self.kw)(x, None, mask)
        return DecoderBlock(cross=True, name="cross_attn", **self.kw)(x, kv, None), None


def _remat(block, policy, scan: bool):
    """``block`` rematerialised under the ``model.remat`` policy (:mod:`clip_jax.remat`; the
    decoder's MLPs carry the policies' names, its attentions none: they are recomputed)."""
    return remat_lib.remat(block, policy, scan)


def vocab_size(cfg: ModelConfig) -> int:
    """The decoder's vocabulary: the text tower's, then LocCa's 3 task tokens and
    ``decoder.loc_bins`` coordinate tokens when it has any (:mod:`clip_jax.models.locca`)."""
    bins = cfg.decoder.loc_bins
    return cfg.text.vocab_size + (3 + bins if bins else 0)


def causal_mask(t: int, parallel=None):
    """(B or 1, 1, t, t) bool: causal, and all True for the rows where ``parallel`` (B,) is."""
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if parallel is None:
        return mask
    return mask | parallel[:, None, None, None]


class TextDecoder(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, image_tokens, ids, parallel=None):
        """``image_tokens`` (B, S, Wv) from :meth:`VisionTransformer.__call__` (``tokens``);
        ``ids`` (B, T) the decoder's input token ids (T <= the text context), or with
        ``decoder.input='text'`` (open_clip CoCa) the text tower's (B, T, W) tokens. ``parallel``
        (B,) bool or None: CapPa's parallel prediction for those rows (every input is the mask
        embedding, attention in both directions); the rest are causal. Returns float32 logits
        (B, T, vocab)."""
        c, dc, t = self.cfg, self.cfg.decoder, self.cfg.text
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if ids.shape[1] > t.context_length:
            raise ValueError(f"decoder input of length {ids.shape[1]} exceeds the text context "
                             f"length {t.context_length}")
        if dc.input == "text":  # open_clip CoCa: ``ids`` are the text tower's (B, T, W) tokens
            if parallel is not None:
                raise ValueError("model.decoder.input='text' (CoCa) has no CapPa parallel "
                                 "prediction (caption.masked_pred_prob must be 0)")
            x = ids.astype(dtype)
        else:
            x = self._embed(ids, parallel, dtype, pdtype)
        mask = causal_mask(ids.shape[1], parallel)
        image_tokens = image_tokens.astype(dtype)
        kw = dict(heads=dc.heads, mlp_dim=dc.mlp_dim, layers=dc.layers,
                  act=t.act or c.act, ln_eps=c.ln_eps, dtype=dtype, param_dtype=pdtype,
                  ls_init_value=c.ls_init_value)
        if c.scan:
            layer = _remat(DecoderLayer, c.remat, scan=True)
            stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=dc.layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(kw, name="blocks")(x, image_tokens, mask)
        else:
            block = _remat(DecoderBlock, c.remat, scan=False)
            for i in range(dc.layers):
                x = block(cross=False, name=f"resblocks_{i}", **kw)(x, None, mask)
                x = block(cross=True, name=f"cross_attn_{i}", **kw)(x, image_tokens, None)
        x = LayerNorm(c.ln_eps, name="ln_final", dtype=dtype, param_dtype=pdtype)(x)
        proj = self.param("text_projection",
                          logical_init(nn.initializers.normal(dc.width**-0.5),
                                       ("embed", "vocab")),
                          (dc.width, vocab_size(self.cfg)), pdtype)
        return jnp.dot(x, proj.astype(dtype)).astype(jnp.float32)

    def _embed(self, ids, parallel, dtype, pdtype):
        """The decoder's own embeddings of ``ids`` (``input='embed'``), CapPa's mask
        embedding on the ``parallel`` rows."""
        dc, t = self.cfg.decoder, self.cfg.text
        tok = self.param("token_embedding",
                         logical_init(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (vocab_size(self.cfg), dc.width), pdtype)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(0.01), (None, "embed")),
                         (t.context_length, dc.width), pdtype)
        mask_emb = self.param("mask_embedding",
                              logical_init(nn.initializers.normal(0.02), ("embed",)),
                              (dc.width,), pdtype)
        x = jnp.take(tok, ids, axis=0).astype(dtype)
        if parallel is not None:
            x = jnp.where(parallel[:, None, None], mask_emb.astype(dtype), x)
        return x + pos[: ids.shape[1]].astype(dtype)


# ---------------------------------------------------------------------------------------------
# Generation from a logits function (no cache: each step runs the whole prefix; captions are
# short and this keeps one code path, the training forward's)


def greedy(logits_fn: Callable, prompt, length: int, eot_id: int, pad_id: int):
    """Greedy decoding: ``prompt`` (B, P) int ids, ``logits_fn(ids (B, length)) -> (B, length,
    V)`` (positions after the current one may hold anything: the attention is causal). Returns
    (B, length) ids: the prompt, then each step's argmax, ``pad_id`` after a row's
    ``eot_id`` (or after a ``pad_id`` it emitted: a row stops there, as open_clip's
    ``generate`` stops it)."""
    b, p = prompt.shape
    ids = jnp.full((b, length), pad_id, jnp.int32).at[:, :p].set(prompt)
    done = jnp.zeros((b,), bool)

    def step(carry, i):
        ids, done = carry
        nxt = jnp.argmax(logits_fn(ids)[:, i - 1], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        ids = ids.at[:, i].set(nxt)
        return (ids, done | (nxt == eot_id) | (nxt == pad_id)), None

    (ids, _), _ = jax.lax.scan(step, (ids, done), jnp.arange(p, length))
    return ids


def beam_search(logits_fn: Callable, prompt, length: int, eot_id: int, pad_id: int,
                beams: int = 4, length_penalty: float = 0.0):
    """Beam search: the ``beams`` best continuations of each prompt row by summed token
    log-probability (divided by ``generated length ** length_penalty``); a beam that emits
    ``eot_id`` is finished and kept, padded with ``pad_id``. Returns ((B, length) ids of the
    best beam, (B,) its score)."""
    b, p = prompt.shape
    k = beams
    ids = jnp.full((b, k, length), pad_id, jnp.int32).at[:, :, :p].set(prompt[:, None])
    score = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, 0)  # one live beam
    done = jnp.zeros((b, k), bool)
    gen = jnp.zeros((b, k), jnp.float32)

    def step(carry, i):
        ids, score, done, gen = carry
        logp = jax.nn.log_softmax(logits_fn(ids.reshape(b * k, length))[:, i - 1], axis=-1)
        v = logp.shape[-1]
        logp = logp.reshape(b, k, v)
        # a finished beam continues only with pad, at no cost
        frozen = jnp.full((v,), -jnp.inf).at[pad_id].set(0.0)
        logp = jnp.where(done[..., None], frozen, logp)
        cand = (score[..., None] + logp).reshape(b, k * v)
        top, idx = jax.lax.top_k(cand, k)
        src, tok = idx // v, (idx % v).astype(jnp.int32)
        ids = jnp.take_along_axis(ids, src[..., None], axis=1).at[:, :, i].set(tok)
        was_done = jnp.take_along_axis(done, src, axis=1)
        gen = jnp.take_along_axis(gen, src, axis=1) + (~was_done)
        return (ids, top, was_done | (tok == eot_id), gen), None

    (ids, score, _, gen), _ = jax.lax.scan(step, (ids, score, done, gen), jnp.arange(p, length))
    final = score / jnp.maximum(gen, 1.0) ** length_penalty
    best = jnp.argmax(final, axis=1)
    return ids[jnp.arange(b), best], final[jnp.arange(b), best]


def caption_targets(text, pad_id: int):
    """open_clip CoCa's teacher forcing: inputs ``text[:, :-1]``, targets ``text[:, 1:]``, and
    the (B, T-1) float32 weights of the targets that are not ``pad_id``."""
    text = jnp.asarray(text)
    labels = text[:, 1:]
    return text[:, :-1], labels, (labels != pad_id).astype(jnp.float32)


def token_nll(logits, labels):
    """(B, T) negative log-likelihood of ``labels`` under float32 ``logits`` (B, T, V)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]

