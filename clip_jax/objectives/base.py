"""What an objective is, and the one table of loss functions.

An :class:`Objective` is built once from the config. It declares the parameters it adds beside
the model's (:meth:`~Objective.param_shapes`, under ``params[name]``), the batch fields it reads
beyond ``image`` and ``text`` (:meth:`~Objective.batch_fields`), what it computes without
gradients before the loss (:meth:`~Objective.targets`: teacher embeddings), and its loss terms on
the global batch's embeddings (:meth:`~Objective.parts`, run inside the one ``shard_map`` of
:class:`clip_jax.objectives.Objectives`, each device holding its rows). Each part has a weight;
the loss is the weighted sum of every objective's parts.

An objective that reads the captioning decoder (``decoder = True``) also gives the forward
per-example inputs drawn once on the whole global batch (:meth:`~Objective.forward_inputs`:
which rows CapPa predicts in parallel) and turns the decoder's logits into per-example values
(:meth:`~Objective.rows`, e.g. summed token NLL), which reach :meth:`~Objective.parts` as
``local.rows``: so the gradient cache carries them like the embeddings and stays exact.

Self-distillation (SILC, TIPS) adds two more hooks. A term's own student forwards of extra
batch fields (:meth:`~Objective.student_fields`, split by the gradient cache like ``image``)
give per-example values (:meth:`~Objective.view_rows`, e.g. the pooled features of local
crops), carried to :meth:`~Objective.parts` as ``local.rows`` too. A term with ``ema_teacher``
computes its targets from the EMA of the params (:meth:`~Objective.self_targets`, a
:class:`Teacher`). A term that :meth:`~Objective.requires` batch fields runs only on batches
that carry them: the input pipeline adds them from the term's switch-on step, so before it the
step is compiled without the term and costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from clip_jax import kd_losses, losses

# (config.loss or a distillation term, config.loss_impl) -> the loss function on embeddings
LOSSES = {
    ("clip", "dense"): losses.clip_loss,
    ("clip", "blockwise"): losses.clip_loss_blockwise,
    ("siglip", "dense"): losses.siglip_loss,
    ("siglip", "blockwise"): losses.siglip_loss_blockwise,
    ("kd", "dense"): kd_losses.kd_loss,
    ("kd", "blockwise"): kd_losses.kd_loss_blockwise,
}


def loss_fn(name: str, config):
    """The :data:`LOSSES` entry for ``(name, config.loss_impl)``; a blockwise one gets
    ``config.loss_block_size`` (0: its default)."""
    fn = LOSSES[(name, config.loss_impl)]
    if config.loss_impl == "dense":
        return fn
    return functools.partial(fn, block_size=config.loss_block_size or None)


class Local(NamedTuple):
    """What :meth:`Objective.parts` sees on each device: its rows of the global batch's
    L2-normalised embeddings, the exponentiated logit scale and the bias (0 without one), all
    inside ``shard_map`` over ``axes``."""

    img: jax.Array
    txt: jax.Array
    scale: jax.Array
    bias: jax.Array
    axes: Any
    rows: dict = {}  # this device's rows of the objectives' per-example values (Objective.rows)


class Teacher(NamedTuple):
    """The EMA of the params as a teacher, no gradient: ``apply(*args, method=...)`` runs the
    model (:class:`clip_jax.models.CLIP`) on the average; ``own[name]``: the average of term
    ``name``'s own params (its teacher head); ``cache``: shared by the terms within one step
    (one teacher forward of a view serves several terms)."""

    apply: Callable
    own: dict
    cache: dict


class Objective:
    """One training objective (subclasses: one file each in this package)."""

    name = ""  # its key in the params, when it adds any
    decoder = False  # whether the forward runs the model's captioning decoder for it
    ema_teacher = False  # whether its targets come from the EMA teacher (self_targets)

    def weights(self) -> dict[str, float]:
        """Its parts in order and their weights (a part of weight 0 is never computed). A part
        :meth:`parts` returns that is not listed here is reported (``loss_<name>``) but is not
        in the loss: a breakdown of a listed part."""
        raise NotImplementedError

    def param_shapes(self) -> dict:
        """The parameters it adds (``ShapeDtypeStruct`` tree, under ``params[name]``)."""
        return {}

    def init_params(self, rng) -> dict:
        return {}

    def batch_fields(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch fields it reads beyond ``image`` and ``text``."""
        return {}

    def targets(self, teacher_params, batch):
        """What it needs from the whole global batch without gradient (None: nothing)."""
        return None

    def requires(self) -> tuple[str, ...]:
        """Batch fields without which it does not run (its switch-on: the pipeline adds them)."""
        return ()

    def self_targets(self, teacher: Teacher, batch, inputs):
        """With ``ema_teacher``: its targets from the EMA ``teacher`` on the whole global
        batch (``inputs``: :meth:`forward_inputs`), instead of :meth:`targets`."""
        return None

    def student_fields(self) -> tuple[str, ...]:
        """Batch fields its own student forwards read (:meth:`view_rows`)."""
        return ()

    def view_rows(self, apply, own, fields, inputs) -> dict:
        """Per-example values (N, ...) of its own student forwards (with gradient) of
        ``fields`` (:meth:`student_fields`): ``apply(*args, method=...)`` runs the model on
        the student's params, ``own`` its own params; read by :meth:`parts` as
        ``local.rows``."""
        return {}

    def target_specs(self, targets):
        """The ``PartitionSpec`` tree of :meth:`targets` inside the loss's ``shard_map``."""
        return None

    def forward_inputs(self, batch, rng) -> dict:
        """Per-example inputs of the forward (N, ...) drawn on the whole global batch, no
        gradient (``parallel``: (N,) bool, the decoder rows CapPa predicts in parallel)."""
        return {}

    def rows(self, logits, text, inputs) -> dict:
        """Per-example values (N,) from the decoder's teacher-forced ``logits`` (N, L-1, V)
        of ``text`` (N, L), read by :meth:`parts` as ``local.rows``."""
        return {}

    def parts(self, local: Local, targets, params) -> dict[str, jax.Array]:
        """Its unweighted loss terms (global means) from this device's rows; ``params``: its
        own (:meth:`param_shapes`)."""
        raise NotImplementedError
