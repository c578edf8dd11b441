"""The two towers with the logit parameters (:class:`CLIP`), and helpers on its parameter tree."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

import clip_jax.models.family as families
from clip_jax.layers import logical_init
from clip_jax.models.config import ModelConfig
from clip_jax.models.decoder import TextDecoder


def l2_normalize(x, eps: float = 1e-12):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class CLIP(nn.Module):
    """Two towers + learned temperature (and optional bias for the sigmoid loss), and with
    ``cfg.decoder`` a captioning decoder (``text_decoder``) on the image tower's tokens."""

    cfg: ModelConfig

    def setup(self):
        self.visual = families.vision(self.cfg).module(self.cfg)  # the registered families'
        self.text = families.text(self.cfg).module(self.cfg)
        self.logit_scale = self.param(
            "logit_scale", logical_init(nn.initializers.constant(self.cfg.init_logit_scale), ()),
            (), jnp.float32)
        if self.cfg.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", logical_init(nn.initializers.constant(self.cfg.init_logit_bias), ()),
                (), jnp.float32)
        if self.cfg.decoder is not None:
            self.text_decoder = TextDecoder(self.cfg)

    def encode_image(self, images, normalize: bool = True, train: bool = False):
        x = self.visual(images, train)
        return l2_normalize(x) if normalize else x

    def _coca(self) -> bool:
        return self.cfg.decoder is not None and self.cfg.decoder.input == "text"

    def encode_image_tokens(self, images, train: bool = False):
        """``(L2-normalised embedding, un-pooled tokens (B, T, width))`` of a ViT tower; with
        ``decoder.input='text'`` open_clip CoCa's ``tokens``: those after the pooled one."""
        x, tokens = self.visual(images, train, tokens=True)
        return l2_normalize(x), tokens[:, 1:] if self._coca() else tokens

    def encode_views(self, images, patch_mask=None, mask_token=None):
        """Self-distillation's views through a ViT tower (any size multiple of the patch, no
        patch dropout): ``(pooled embedding, unnormalised float32 (B, D), patch tokens (B, n,
        width))``; ``patch_mask`` (B, n) bool replaces those patches by ``mask_token``."""
        x, tokens = self.visual(images, False, tokens=True, any_size=True,
                                patch_mask=patch_mask, mask_token=mask_token)
        return x.astype(jnp.float32), tokens[:, int(self.cfg.vision.class_token):]

    def decode(self, image_tokens, ids, parallel=None):
        """The decoder's float32 logits (B, T, vocab) for input ``ids`` (B, T) given
        :meth:`encode_image_tokens`' tokens (:class:`~clip_jax.models.decoder.TextDecoder`);
        with ``decoder.input='text'`` (CoCa) the decoder reads the text tower's tokens of
        ``ids``."""
        if self._coca():
            return self.text_decoder(image_tokens, self.text(ids, tokens=True)[1], parallel)
        return self.text_decoder(image_tokens, ids, parallel)

    def caption_forward(self, images, text, train: bool = False,
                        image_train: bool | None = None, parallel=None, decoder_ids=None):
        """:meth:`__call__`'s outputs and the decoder's teacher-forced logits (B, L-1, vocab)
        for inputs ``text[:, :-1]`` (open_clip CoCa's shift: position i predicts
        ``text[:, i + 1]``), from the same image forward; ``decoder_ids`` (B, L), when given,
        are the decoder's sequences instead of ``text`` (LocCa's tasks,
        :mod:`clip_jax.models.locca`)."""
        bias = self.logit_bias if self.cfg.init_logit_bias is not None else None
        image_train = train if image_train is None else image_train
        img, tokens = self.encode_image_tokens(images, train=image_train)
        if self._coca():  # open_clip CoCa: one text forward, its tokens but the last decoded
            txt, text_tokens = self.text(text, tokens=True)
            logits = self.text_decoder(tokens, text_tokens[:, :-1], parallel)
            return (img, l2_normalize(txt), self.logit_scale, bias), logits
        ids = text if decoder_ids is None else decoder_ids
        logits = self.decode(tokens, ids[:, :-1], parallel)
        return (img, self.encode_text(text), self.logit_scale, bias), logits

    def encode_text(self, text, normalize: bool = True):
        x = self.text(text)
        return l2_normalize(x) if normalize else x

    def __call__(self, images, text, train: bool = False, image_train: bool | None = None):
        """Returns (image_features, text_features, logit_scale_param, logit_bias or None).
        ``train``: patch dropout on (needs the ``patch_dropout`` rng when it is configured), a
        ResNet's BatchNorm on batch statistics (``batch_stats`` mutable); ``image_train``
        overrides it for the image tower (False: a frozen tower in inference mode).

        Features are L2-normalised float32; ``logit_scale_param`` is the log-temperature
        parameter (exponentiate, clamped at ln 100 by the optimiser step, for the loss).
        """
        if self.cfg.decoder is not None and self.is_initializing():  # the decoder's params too
            return self.caption_forward(images, text, train, image_train)[0]
        bias = self.logit_bias if self.cfg.init_logit_bias is not None else None
        image_train = train if image_train is None else image_train
        return (self.encode_image(images, train=image_train), self.encode_text(text),
                self.logit_scale, bias)


def init_inputs(cfg: ModelConfig, batch: int = 1):
    """Dummy inputs of the right shapes, for init and eval_shape."""
    v, t = cfg.vision, cfg.text
    return (jnp.zeros((batch, v.image_size, v.image_size, 3), jnp.float32),
            jnp.zeros((batch, t.context_length), jnp.int32))


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


# Outside training (bundles, open_clip / HF state dicts, inference) a model's variables travel
# as one tree: the params, plus a top-level ``batch_stats`` subtree for a tower with BatchNorm
# (the train state keeps them apart: TrainState.params and TrainState.batch_stats).
STATS = "batch_stats"


def merge_variables(params, batch_stats=None) -> dict:
    """One tree of ``params`` and (when there are any) ``batch_stats`` under ``batch_stats``."""
    params = dict(params)
    if batch_stats and jax.tree.leaves(batch_stats):
        params[STATS] = batch_stats
    return params


def variables(tree) -> dict:
    """Flax's variables ``{"params": ..., ["batch_stats": ...]}`` of a merged tree."""
    tree = dict(tree)
    stats = tree.pop(STATS, None)
    return {"params": tree} if stats is None else {"params": tree, STATS: stats}


@functools.lru_cache(maxsize=16)
def abstract_params(cfg: ModelConfig):
    """The unboxed variable tree of ``cfg`` (params, and ``batch_stats`` of a BatchNorm tower
    under that key: :func:`merge_variables`) as ShapeDtypeStructs (nothing is allocated)."""
    model = CLIP(cfg)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(cfg)))
    boxed = nn.meta.unbox(boxed)
    return merge_variables(boxed["params"], boxed.get(STATS))
