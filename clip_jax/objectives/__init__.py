"""Training objectives: what the step computes from the global batch, one file per objective.

    objective = objectives.build(config, model_cfg, teachers, stored)    # once, from the config

:class:`Objectives` is the run's weighted sum of :class:`~clip_jax.objectives.base.Objective`
terms: the student's contrastive loss (:mod:`.contrastive` softmax or :mod:`.sigmoid`, by
``config.loss``; weight ``distill.clip_weight`` when distilling, left out at 0) and, with
teachers or stored embeddings, :mod:`.distillation`; with a decoder, :mod:`.captioning` (or
:mod:`.locca`'s decoder tasks). It gathers what the terms declare (the
params they add beside the model's, the batch fields they read, their no-gradient targets) and
computes the loss and its named parts in one ``shard_map`` over the batch axes, where the
losses all-gather the embeddings. :mod:`clip_jax.gradients` differentiates it, with or without
the gradient cache; :data:`.base.LOSSES` is the one table of ``(loss, loss_impl)`` -> function.
With ``silc.weight`` / ``tips.weight`` it adds :mod:`.silc` / :mod:`.tips`, self-distillation
from the EMA teacher, which run only on the batches that carry their views
(:meth:`Objectives.for_batch`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clip_jax import distill, sharding
from clip_jax.objectives import captioning, contrastive, distillation, locca, sigmoid, silc, tips
from clip_jax.objectives.base import LOSSES, Local, Objective, Teacher, loss_fn

__all__ = ["LOSSES", "Local", "Objective", "Objectives", "Teacher", "build", "loss_fn"]

HEAD = ("logit_scale", "logit_bias")  # the model's params the loss reads besides embeddings
CONTRASTIVE = {"clip": contrastive.Contrastive, "siglip": sigmoid.Sigmoid}


class Objectives:
    """The weighted sum of ``terms``' parts (in order); see the module docstring."""

    def __init__(self, terms, param_keys=None):
        self.terms = list(terms)
        names = [t.name for t in self.terms if t.param_shapes()]
        self.param_keys = tuple(names) if param_keys is None else param_keys
        self.weights = {k: w for t in self.terms for k, w in t.weights().items()}
        self.decoder = any(t.decoder for t in self.terms)  # the forward runs the decoder
        self.ema_teacher = any(t.ema_teacher for t in self.terms)  # targets from the EMA

    def for_batch(self, batch) -> Objectives:
        """The terms that run on ``batch``: those whose required fields it carries (the
        params' keys stay those of every term, so the unused heads get zero gradients)."""
        terms = [t for t in self.terms if all(k in batch for k in t.requires())]
        return self if len(terms) == len(self.terms) else Objectives(terms, self.param_keys)

    @property
    def report_parts(self) -> bool:
        """Whether the parts say more than the loss (several, or one weighted)."""
        return len(self.weights) > 1 or any(w != 1 for w in self.weights.values())

    def param_shapes(self) -> dict:
        """``{name: {...}}``: the params the terms add beside the model's (replicated)."""
        return {t.name: s for t in self.terms if (s := t.param_shapes())}

    def init_params(self, rng) -> dict:
        return {t.name: t.init_params(rng) for t in self.terms if t.param_shapes()}

    def model_params(self, params) -> dict:
        """``params`` (or a tree shaped like them: shardings, specs) without the terms' own."""
        return {k: v for k, v in params.items() if k not in self.param_keys}

    def head_params(self, params) -> dict:
        """What the loss reads of ``params`` besides the embeddings: the logit scale (and bias)
        and the terms' own params."""
        return {k: params[k] for k in (*HEAD, *self.param_keys) if k in params}

    def batch_fields(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch fields the terms read beyond ``image`` and ``text``."""
        return {k: v for t in self.terms for k, v in t.batch_fields(batch_size).items()}

    def forward_inputs(self, batch, rng) -> dict:
        """The terms' per-example forward inputs on the whole global batch (no gradient)."""
        return {k: v for t in self.terms for k, v in t.forward_inputs(batch, rng).items()}

    def rows(self, logits, text, inputs) -> dict:
        """The terms' per-example values from the decoder's logits (``{}`` without one)."""
        return {k: v for t in self.terms for k, v in t.rows(logits, text, inputs).items()}

    def targets(self, teacher_params, batch, teacher=None, inputs=None) -> list:
        """Each term's no-gradient targets on the whole global batch (``teacher``: a
        :class:`~.base.Teacher` on the EMA, for the terms with ``ema_teacher``)."""
        return [t.self_targets(teacher, batch, inputs or {}) if t.ema_teacher
                else t.targets(teacher_params, batch) for t in self.terms]

    def student_fields(self) -> tuple[str, ...]:
        """The batch fields the terms' own student forwards read (split like ``image``)."""
        return tuple(dict.fromkeys(k for t in self.terms for k in t.student_fields()))

    def view_rows(self, apply, params, fields, inputs) -> dict:
        """The terms' per-example values from their own student forwards (``{}`` without);
        ``params``: the whole tree (each term reads its own)."""
        return {k: v for t in self.terms
                for k, v in t.view_rows(apply, params.get(t.name, {}), fields, inputs).items()}

    def loss(self, mesh, img, txt, head, targets, rows=None):
        """``(total, parts)`` on globally sharded embeddings: ``total = sum weight * part``,
        ``parts`` unweighted; ``head`` from :meth:`head_params` (``logit_scale`` is the
        log-parameter), ``targets`` from :meth:`targets`, ``rows`` from :meth:`rows` (sharded
        like the embeddings)."""
        axes = sharding.BATCH_AXES
        scale = jnp.exp(head["logit_scale"])
        bias = head.get("logit_bias")
        bias = jnp.zeros((), jnp.float32) if bias is None else bias
        own = [dict(head.get(t.name, {})) if t.name else {} for t in self.terms]
        weights = self.weights

        rows = {} if rows is None else rows

        def body(i, t, s, b, targets, own, rows):
            local, parts = Local(i, t, s, b, axes, rows), {}
            for term, tg, p in zip(self.terms, targets, own, strict=True):
                parts.update(term.parts(local, tg, p))
            return sum(weights[k] * v for k, v in parts.items() if k in weights), parts

        specs = (P(axes), P(axes), P(), P(),
                 [t.target_specs(tg) for t, tg in zip(self.terms, targets, strict=True)],
                 jax.tree.map(lambda _: P(), own), jax.tree.map(lambda _: P(axes), rows))
        return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P())(
            img, txt, scale, bias, targets, own, rows)


def build(config, model_cfg, teachers=(), stored=()) -> Objectives:
    """The run's objective from the config: the contrastive loss (``config.loss``), plus
    distillation with ``teachers`` (:func:`clip_jax.distill.load`) or ``stored``
    (:func:`clip_jax.distill.load_stored`)."""
    own = CONTRASTIVE[config.loss]
    decoder = locca.LocCa if locca.active(config, model_cfg) else captioning.Captioning
    caption = [decoder(config, model_cfg)] if captioning.active(config, model_cfg) else []
    selfd = [cls(config, model_cfg) for cls in (silc.SILC, tips.TIPS)
             if float(config[cls.name].weight) > 0]  # self-distillation from the EMA teacher
    if not distill.active(config):
        return Objectives([own(config), *caption, *selfd])
    w = float(config.distill.clip_weight)
    terms = [own(config, w)] if w > 0 else []
    return Objectives([*terms, distillation.Distillation(config, model_cfg.embed_dim, teachers,
                                                         stored), *caption, *selfd])
