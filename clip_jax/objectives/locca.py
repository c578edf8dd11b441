"""LocCa's decoder tasks on the captioning decoder (``model.decoder.loc_bins`` > 0): part
``caption``, now over three tasks (:mod:`clip_jax.models.locca`).

Each example of the global batch gets one task, drawn from the step's key with
``caption.task_probs`` (captioning, referring expression -> box "AREF", box -> region
caption "GCAP"; uniform by default) and, for AREF / GCAP, one of its valid boxes uniformly;
an example without a box (the batch's ``box_valid``, :mod:`clip_jax.data.boxes`) captions.
The draw and the sequences are built once on the whole global batch
(:meth:`forward_inputs`), so the gradient cache and any mesh see the same rows. The decoder is
teacher-forced on each sequence and the part is the mean token cross-entropy over every
example's *output* tokens (the task token, AREF's expression and GCAP's box are inputs, not
scored). CapPa's parallel prediction (``caption.masked_pred_prob``) applies only to the rows
that caption. Each task's own mean token cross-entropy is reported beside the loss
(``loss_caption_cap``, ``loss_caption_aref``, ``loss_caption_gcap``; 0 for a task no example of
the batch drew): ``caption`` is their token-weighted mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax import config_schema
from clip_jax.data import boxes as boxes_lib
from clip_jax.models import decoder as decoder_lib
from clip_jax.models import locca
from clip_jax.objectives.captioning import PARALLEL, Captioning, parallel_rows

IDS, WEIGHTS = "decoder_ids", "decoder_weights"  # forward_inputs: each row's sequence
TASK = "locca_task"  # forward_inputs: each row's task (models.locca.CAP, AREF, GCAP)


def active(config, model_cfg) -> bool:
    """Whether the decoder trains LocCa's tasks (:func:`clip_jax.config_schema.locca_boxes`)."""
    return config_schema.locca_boxes(config, model_cfg) > 0


class LocCa(Captioning):

    def __init__(self, config, model_cfg):
        super().__init__(config, model_cfg)
        probs = tuple(config.caption.task_probs)  # checked by config_schema.check
        self.probs = tuple(float(p) / sum(probs) for p in probs)
        self.max_boxes, self.length = int(config.caption.max_boxes), model_cfg.text.context_length
        self.vocab, self.bins = model_cfg.text.vocab_size, model_cfg.decoder.loc_bins

    def batch_fields(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        n, k = batch_size, self.max_boxes
        shapes = {"boxes": ((n, k, 4), jnp.float32), "box_valid": ((n, k), jnp.bool_),
                  "box_text": ((n, k, self.length), jnp.int32)}
        return {f: jax.ShapeDtypeStruct(*shapes[f]) for f in boxes_lib.FIELDS}

    def forward_inputs(self, batch, rng) -> dict:
        task, pick = locca.draw(rng, self.probs, batch["box_valid"])
        take = lambda x: jnp.take_along_axis(x, pick.reshape((-1,) + (1,) * (x.ndim - 1)),
                                             axis=1)[:, 0]
        ids, w = locca.sequences(task, batch["text"], take(batch["boxes"]),
                                 take(batch["box_text"]), self.pad_id, self.vocab, self.bins)
        out = {IDS: ids, WEIGHTS: w, TASK: task}
        if self.masked_pred_prob:
            out[PARALLEL] = parallel_rows(rng, ids.shape[0], self.masked_pred_prob) & (
                task == locca.CAP)
        return out

    def rows(self, logits, text, inputs) -> dict:
        labels, w = inputs[IDS][:, 1:], inputs[WEIGHTS]
        nll = decoder_lib.token_nll(logits, labels)
        return {"caption_nll": jnp.sum(nll * w, axis=1),
                "caption_tokens": jax.lax.stop_gradient(jnp.sum(w, axis=1)),
                TASK: jax.nn.one_hot(inputs[TASK], len(locca.TASKS))}  # float: differentiable

    def parts(self, local, targets, params):
        out = super().parts(local, targets, params)
        rows, task = local.rows, jax.lax.stop_gradient(local.rows[TASK])
        nll, count = (jax.lax.psum(jnp.sum(rows[k][:, None] * task, axis=0), local.axes)
                      for k in ("caption_nll", "caption_tokens"))
        per_task = jax.lax.stop_gradient(nll) / jnp.maximum(count, 1.0)
        out.update({f"caption_{name}": per_task[t] for t, name in enumerate(locca.TASKS)})
        return out
