"""The loss of a global batch and its gradient: the forward of both towers under the logical
sharding rules, the contrastive loss in a ``shard_map`` that all-gathers embeddings, and the
gradient cache (``accum_steps > 1``). What :func:`clip_jax.train.train_step` differentiates.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clip_jax import distill, input_pipeline, losses, optimizer, sharding


def contrastive_loss(config, mesh, img, txt, logit_scale_param, logit_bias):
    """The configured loss on globally sharded embeddings, via shard_map + all-gather."""
    scale = jnp.exp(logit_scale_param)
    axes = sharding.BATCH_AXES
    block = config.loss_block_size or None
    if config.loss == "clip":
        fn = losses.clip_loss if config.loss_impl == "dense" else functools.partial(
            losses.clip_loss_blockwise, block_size=block)
        body = lambda i, t, s: fn(i, t, s, axis_name=axes)
        args, specs = (img, txt, scale), (P(axes), P(axes), P())
    else:
        fn = losses.siglip_loss if config.loss_impl == "dense" else functools.partial(
            losses.siglip_loss_blockwise, block_size=block)
        body = lambda i, t, s, b: fn(i, t, s, b, axis_name=axes)
        args, specs = (img, txt, scale, logit_bias), (P(axes), P(axes), P(), P())
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P())(*args)


def forward(setup, params, images, text, rng):
    """Training forward: frozen params behind stop_gradient, patch dropout drawn from rng."""
    params = optimizer.stop_frozen(params, setup.config.optimizer,
                                   setup.config.model.lock_image_unlocked_groups)
    with nn.logical_axis_rules(sharding.RULES):
        return setup.model.apply({"params": params}, input_pipeline.device_pixels(images), text,
                                 train=True, rngs={"patch_dropout": rng})


def _head(setup, teacher_params, batch):
    """The loss on embeddings: the contrastive loss, or with teachers the distillation
    objective against their embeddings of the whole batch (computed once, no gradient)."""
    if not teacher_params:
        return functools.partial(contrastive_loss, setup.config, setup.mesh)
    batch, own_text = distill.split_text(setup, batch)
    teach = distill.targets(setup, teacher_params, batch, own_text)
    return lambda i, t, s, b: distill.objective(setup.config, setup.mesh, i, t, s, b, teach)


def loss_and_grads(setup, params, batch, step=0, teacher_params=()):
    """Loss of the whole global batch and its gradient (with gradient caching if
    ``accum_steps > 1``); the step seeds the patch dropout, so a resume redraws it exactly.
    ``teacher_params`` (:mod:`clip_jax.distill`): frozen teachers to distil from."""
    rng = jax.random.fold_in(jax.random.key(setup.config.seed), step)
    head = _head(setup, teacher_params, batch)
    batch = distill.split_text(setup, batch)[0] if teacher_params else batch
    if setup.config.accum_steps > 1:
        return _loss_and_grads_cached(setup, params, batch, rng, head)

    def loss_fn(p):
        img, txt, log_scale, bias = forward(setup, p, batch["image"], batch["text"], rng)
        return head(img, txt, log_scale, bias)

    return jax.value_and_grad(loss_fn)(params)


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


def _loss_and_grads_cached(setup, params, batch, rng, head_loss):
    """Gradient cache (Gao et al. 2021): the exact global-batch loss with the activation memory
    of one micro-batch. 1) embed every micro-batch, keeping no activations; 2) the contrastive
    loss of all embeddings and its gradient w.r.t. them; 3) re-run each micro-batch forward
    and push its slice of that gradient through (``jax.vjp``), summing parameter gradients.
    Costs one extra forward pass. All inside the one jitted step, with ``lax.scan``."""
    mesh, k = setup.mesh, setup.config.accum_steps
    shards = sharding.batch_size_per_shard(mesh)
    micro = {key: _split_micro(batch[key], shards, k, mesh) for key in ("image", "text")}
    micro["rng"] = jax.random.split(rng, k)  # each micro-batch's patch dropout, in both passes

    def embed(p, mb):
        img, txt, _, _ = forward(setup, p, mb["image"], mb["text"], mb["rng"])
        return img, txt

    _, (img, txt) = jax.lax.scan(lambda c, mb: (c, embed(params, mb)), None, micro)
    img, txt = _merge_micro(img, shards, mesh), _merge_micro(txt, shards, mesh)
    bias = params.get("logit_bias")

    loss, (g_img, g_txt, g_scale, g_bias) = jax.value_and_grad(head_loss, argnums=(0, 1, 2, 3))(
        img, txt, params["logit_scale"], bias)
    g_img, g_txt = _split_micro(g_img, shards, k, mesh), _split_micro(g_txt, shards, k, mesh)

    def accumulate(acc, xs):
        mb, gi, gt = xs
        _, vjp = jax.vjp(lambda p: embed(p, mb), params)
        (g,) = vjp((gi, gt))
        return jax.tree.map(jnp.add, acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (micro, g_img, g_txt))
    grads = dict(grads)
    grads["logit_scale"] = grads["logit_scale"] + g_scale
    if bias is not None:
        grads["logit_bias"] = grads["logit_bias"] + g_bias
    return loss, grads
