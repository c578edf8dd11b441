"""The loss of a global batch and its gradient: the forward of both towers under the logical
sharding rules, the run's objective (:mod:`clip_jax.objectives`, its losses all-gather the
embeddings inside one ``shard_map``) and the gradient cache (``accum_steps > 1``), the same for
every objective. :func:`loss_and_grads` is what :func:`clip_jax.train.train_step`
differentiates; a BatchNorm tower's running statistics (``batch_stats``) come back updated
beside the gradient. Self-distillation (:mod:`clip_jax.objectives.silc`, ``.tips``): the terms
the batch carries views for run (:meth:`~clip_jax.objectives.Objectives.for_batch`), their
targets from the EMA of the params (:func:`ema_teacher`), their own student forwards of the
views beside the main one, through the gradient cache like it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clip_jax import ema, input_pipeline, models, optimizer, sharding
from clip_jax.objectives.base import Teacher


class LossAndGrads(NamedTuple):
    """What :func:`loss_and_grads` returns."""

    loss: jax.Array  # the objective's weighted sum
    parts: dict  # its unweighted named parts ({"clip", "kd", "feature"}, those in use)
    grads: Any  # d loss / d params (the model's and the objective's own)
    batch_stats: Any  # a BatchNorm tower's updated running statistics (as given otherwise)


def image_frozen(setup) -> bool:
    """Whether the whole image tower is frozen (LiT): its BatchNorm then runs in inference
    mode, on the running statistics, which stay as they are."""
    opt = setup.config.optimizer
    if not opt.frozen:
        return False
    params = models.abstract_params(setup.model_cfg)
    mask = optimizer.frozen_mask({k: v for k, v in params.items() if k != models.STATS},
                                 opt.frozen, setup.config.model.lock_image_unlocked_groups)
    return all(jax.tree.leaves(mask["visual"]))


def forward(setup, params, images, text, rng, batch_stats=None):
    """Training forward: frozen params behind stop_gradient, patch dropout drawn from rng.
    Returns ``((img, txt, log logit scale, logit bias or None), batch_stats)``: with
    ``batch_stats`` (a BatchNorm tower) the statistics of this (global) batch normalise it
    and update the running ones that come back, unless the image tower is frozen; without,
    ``batch_stats`` comes back as given."""
    out, _, batch_stats = forward_rows(setup, params, images, text, rng, batch_stats)
    return out, batch_stats


def apply_fn(model, params):
    """``model.apply`` on ``params`` under the logical sharding rules."""
    def apply(*args, **kw):
        with nn.logical_axis_rules(sharding.RULES):
            return model.apply({"params": params}, *args, **kw)
    return apply


def ema_teacher(setup, average, params) -> Teacher:
    """The EMA ``average`` (``TrainState.ema``) as self-distillation's teacher, no gradient."""
    if not average:
        raise ValueError("self-distillation (silc / tips) needs the EMA teacher: ema.decay > 0")
    avg = jax.lax.stop_gradient(ema.as_params(average, params))
    return Teacher(apply_fn(setup.model, setup.objective.model_params(avg)), avg, {})


def forward_rows(setup, params, images, text, rng, batch_stats=None, inputs=None, fields=None):
    """:func:`forward`, and the objective's per-example values (``{}`` unless it reads the
    captioning decoder, which then runs on the same image forward with the objective's
    ``inputs``: :meth:`~clip_jax.objectives.Objectives.forward_inputs` rows, or runs its own
    student forwards of the batch ``fields``: self-distillation's views). Returns
    ``(outputs, rows, batch_stats)``."""
    objective, inputs, whole = setup.objective, inputs or {}, params
    params = optimizer.stop_frozen(objective.model_params(params), setup.config.optimizer,
                                   setup.config.model.lock_image_unlocked_groups)
    pixels = input_pipeline.device_pixels(images)
    kw = dict(train=True, rngs={"patch_dropout": rng})
    if objective.decoder:
        kw.update(method=models.CLIP.caption_forward, parallel=inputs.get("parallel"),
                  decoder_ids=inputs.get("decoder_ids"))  # LocCa's task sequences
    variables = {"params": params}
    if batch_stats is not None:
        variables[models.STATS] = batch_stats
        if image_frozen(setup):
            kw["image_train"] = False
        else:
            kw["mutable"] = [models.STATS]
    with nn.logical_axis_rules(sharding.RULES):
        out = setup.model.apply(variables, pixels, text, **kw)
    if "mutable" in kw:
        out, new = out
        batch_stats = new[models.STATS]
    rows = {}
    if objective.decoder:
        out, logits = out
        rows = objective.rows(logits, text, inputs)
    if fields:
        rows = {**rows, **objective.view_rows(apply_fn(setup.model, params), whole, fields,
                                              inputs)}
    return out, rows, batch_stats


def loss_and_grads(setup, params, batch, step=0, teacher_params=(),
                   batch_stats=None, average=None) -> LossAndGrads:
    """Loss of the whole global batch (the run's objective), its named parts and its gradient
    (through the gradient cache if ``accum_steps > 1``), and the updated BatchNorm statistics
    (``batch_stats`` None or empty: a tower without BatchNorm, returned as given). The step
    seeds the patch dropout, so a resume redraws it exactly. ``teacher_params``
    (:mod:`clip_jax.distill`): frozen teachers the objective distils from; ``average``: the
    params' EMA (``TrainState.ema``), self-distillation's teacher."""
    objective = setup.objective.for_batch(batch)  # the terms whose fields the batch carries
    if objective is not setup.objective:
        setup = dataclasses.replace(setup, objective=objective)
    rng = jax.random.fold_in(jax.random.key(setup.config.seed), step)
    stats = batch_stats if batch_stats and jax.tree.leaves(batch_stats) else None
    inputs = objective.forward_inputs(batch, rng)  # no gradient, the whole batch at once
    teacher = ema_teacher(setup, average, params) if objective.ema_teacher else None
    targets = objective.targets(teacher_params, batch, teacher, inputs)  # likewise
    fields = {k: batch[k] for k in objective.student_fields()}  # the terms' own forwards

    def head_loss(img, txt, head, rows):
        return objective.loss(setup.mesh, img, txt, head, targets, rows)

    if setup.config.accum_steps > 1:
        loss, parts, grads, new = _loss_and_grads_cached(setup, params, batch, rng, head_loss,
                                                         stats, inputs, fields)
        return LossAndGrads(loss, parts, grads, batch_stats if stats is None else new)

    def loss_fn(p):
        (img, txt, log_scale, bias), rows, new = forward_rows(
            setup, p, batch["image"], batch["text"], rng, stats, inputs, fields)
        head = {**objective.head_params(p), "logit_scale": log_scale}  # the model's (frozen?)
        head.update({} if bias is None else {"logit_bias": bias})
        loss, parts = head_loss(img, txt, head, rows)
        return loss, (parts, new)

    (loss, (parts, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return LossAndGrads(loss, parts, grads, batch_stats if stats is None else new)


def _split_micro(x, shards: int, k: int, mesh):
    """(N, ...) with N split over ``shards`` devices -> (k, N/k, ...): micro-batch j holds the
    j-th chunk of every device's rows, so each stays evenly sharded with no communication."""
    m = x.shape[0] // (shards * k)
    y = x.reshape(shards, k, m, *x.shape[1:]).swapaxes(0, 1)
    y = y.reshape(k, shards * m, *x.shape[1:])
    return jax.lax.with_sharding_constraint(
        y, jax.sharding.NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def _merge_micro(y, shards: int, mesh):
    """Inverse of :func:`_split_micro`: (k, N/k, ...) -> (N, ...) in the original order."""
    k, n = y.shape[:2]
    x = y.reshape(k, shards, n // shards, *y.shape[2:]).swapaxes(0, 1)
    x = x.reshape(k * n, *y.shape[2:])
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharding(mesh))


def _loss_and_grads_cached(setup, params, batch, rng, head_loss, stats=None, inputs=None,
                           fields=None):
    """Gradient cache (Gao et al. 2021): the exact global-batch loss with the activation memory
    of one micro-batch. 1) embed every micro-batch, keeping no activations; 2) the contrastive
    loss of all embeddings and its gradient w.r.t. them; 3) re-run each micro-batch forward
    and push its slice of that gradient through (``jax.vjp``), summing parameter gradients.
    Costs one extra forward pass. All inside the one jitted step, with ``lax.scan``.
    ``head_loss(img, txt, head params, rows) -> (loss, parts)``: the objective on the
    embeddings and its per-example values (``rows``, e.g. a caption's summed NLL: carried and
    differentiated like the embeddings; ``inputs``, the objective's per-example forward inputs,
    and ``fields``, the batch fields its own student forwards read, are split like the batch).

    BatchNorm (``stats``): each micro-batch is normalised by its own statistics (as open_clip's
    ``--accum-freq``), the same in both passes; the running statistics are updated once per
    micro-batch, in the first pass. Returns ``(loss, parts, grads, stats)``."""
    mesh, k = setup.mesh, setup.config.accum_steps
    shards = sharding.batch_size_per_shard(mesh)
    micro = {key: _split_micro(batch[key], shards, k, mesh) for key in ("image", "text")}
    micro["inputs"] = {key: _split_micro(v, shards, k, mesh) for key, v in (inputs or {}).items()}
    micro["fields"] = {key: _split_micro(v, shards, k, mesh) for key, v in (fields or {}).items()}
    micro["rng"] = jax.random.split(rng, k)  # each micro-batch's patch dropout, in both passes

    def embed_stats(p, mb, st):
        (img, txt, _, _), rows, new = forward_rows(setup, p, mb["image"], mb["text"], mb["rng"],
                                                   st, mb["inputs"], mb["fields"])
        return (img, txt, rows), new

    def embed(p, mb, st=stats):  # the second pass: normalised alike, statistics not kept
        return embed_stats(p, mb, st)[0]

    def first(st, mb):
        emb, new = embed_stats(params, mb, st)
        return new, emb

    stats, emb = jax.lax.scan(first, stats, micro, unroll=setup.accum_unroll)
    img, txt, rows = jax.tree.map(lambda x: _merge_micro(x, shards, mesh), emb)

    (loss, parts), g_emb = jax.value_and_grad(head_loss, argnums=(0, 1, 2, 3), has_aux=True)(
        img, txt, setup.objective.head_params(params), rows)
    g_head = g_emb[2]
    g_emb = jax.tree.map(lambda x: _split_micro(x, shards, k, mesh),
                         (g_emb[0], g_emb[1], g_emb[3]))

    def accumulate(acc, xs):
        mb, g_mb = xs
        _, vjp = jax.vjp(lambda p: embed(p, mb), params)
        (g,) = vjp(g_mb)
        return jax.tree.map(jnp.add, acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (micro, g_emb), unroll=setup.accum_unroll)
    grads = dict(grads)
    for key, g in g_head.items():  # the logit parameters, the objective's own: the head's
        grads[key] = jax.tree.map(jnp.add, grads[key], g)
    return loss, parts, grads, stats
