"""Captioning on the image tokens (CoCa, SigLIP 2's decoder loss, CapPa): part ``caption``.

The model's decoder (``model.decoder``, :mod:`clip_jax.models.decoder`) reads the image tower's
un-pooled tokens and, teacher-forced on ``text[:, :-1]``, predicts ``text[:, 1:]``. The part is
the mean token cross-entropy over the global batch's target tokens that are not
``model.decoder.pad_id`` (open_clip's ``CoCaLoss`` caption term, big_vision's normalised
``weighted_softmax_xent``), weighted by ``caption.weight`` beside the contrastive loss.

CapPa (``caption.masked_pred_prob`` p, big_vision ``configs/proj/cappa``: 0.75): each step
``round(p * N)`` examples of the global batch, drawn from the step's key, are predicted in
parallel: every decoder input is the mask embedding and attention goes both ways; the rest are
autoregressive. The draw is made once on the whole global batch (:meth:`forward_inputs`), so
the gradient cache and any mesh see the same rows.

Each example's summed NLL and target count are per-example values (:meth:`rows`) the loss sums
over the global batch; with the gradient cache they travel with the embeddings, so the cached
loss and gradient equal the global batch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax.models import decoder as decoder_lib
from clip_jax.objectives.base import Objective

PARALLEL = "parallel"  # forward_inputs' key: (N,) bool, rows CapPa predicts in parallel
_RNG_SALT = 33  # folded into the step's key for the CapPa draw (patch dropout uses the key)


def active(config, model_cfg) -> bool:
    """Whether the run trains the decoder: the model has one and ``caption.weight`` > 0."""
    return model_cfg.decoder is not None and float(config.caption.weight) > 0


def parallel_rows(rng, n: int, prob: float):
    """(n,) bool: exactly ``round(prob * n)`` rows, a random subset drawn from ``rng``."""
    k = round(prob * n)
    if k == 0:
        return jnp.zeros((n,), bool)
    order = jax.random.permutation(jax.random.fold_in(rng, _RNG_SALT), n)
    return jnp.zeros((n,), bool).at[order[:k]].set(True)


class Captioning(Objective):
    decoder = True

    def __init__(self, config, model_cfg):
        self.weight = float(config.caption.weight)
        self.masked_pred_prob = float(config.caption.masked_pred_prob)
        self.pad_id = model_cfg.decoder.pad_id
        if self.masked_pred_prob and model_cfg.decoder.input == "text":
            raise ValueError(f"caption.masked_pred_prob={self.masked_pred_prob}: CapPa's parallel "
                             "prediction needs the decoder's own embeddings; model.decoder."
                             "input='text' (open_clip CoCa) has none (set it to 0)")

    def weights(self) -> dict[str, float]:
        return {"caption": self.weight}

    def forward_inputs(self, batch, rng) -> dict:
        if self.masked_pred_prob == 0:
            return {}
        return {PARALLEL: parallel_rows(rng, batch["text"].shape[0], self.masked_pred_prob)}

    def rows(self, logits, text, inputs) -> dict:
        _, labels, w = decoder_lib.caption_targets(text, self.pad_id)
        nll = decoder_lib.token_nll(logits, labels)
        return {"caption_nll": jnp.sum(nll * w, axis=1),
                "caption_tokens": jax.lax.stop_gradient(jnp.sum(w, axis=1))}

    def parts(self, local, targets, params):
        nll = jax.lax.psum(jnp.sum(local.rows["caption_nll"]), local.axes)
        count = jax.lax.psum(jnp.sum(local.rows["caption_tokens"]), local.axes)
        return {"caption": nll / jnp.maximum(count, 1.0)}
