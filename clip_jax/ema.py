"""Weight EMA: an exponential moving average of the parameters, kept in the train state.

``ema.decay`` > 0 turns it on (0, the default, is off: no extra state). The average
(``TrainState.ema``) has the params' tree and shardings, in float32 (a bfloat16 parameter's
average would lose every update below its resolution). It is updated inside the jitted step,
after the optimizer, from the new params; for the 1-based step ``s`` and ``k = s - start_step``:

- ``k <= 0``: the average is the params (a copy: the average starts at ``ema.start_step``);
- ``k > 0`` and ``k % every_steps == 0`` (the ``t = k // every_steps``-th update):
  ``ema = d_t * ema + (1 - d_t) * params`` with ``d_t = decay``, or with
  ``ema.warmup_power = p > 0`` the warm-up of timm / diffusers, ``d_t = min(decay,
  1 - (1 + t) ** -p)`` (p = 3/4 reaches 0.999 after ~10k updates, 2/3 after ~31k);
- otherwise (and at a step whose update :mod:`clip_jax.stability` skipped) it is unchanged.

``decay`` is per update, so ``every_steps = N`` averages over about ``N / (1 - decay)`` steps.
BatchNorm running statistics (a ResNet tower) are not averaged: they are a running average of
their own, used as they are with the EMA weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enabled(cfg) -> bool:
    """Whether ``cfg`` (``config.ema``) keeps an average."""
    return float(cfg.decay) > 0


def init(params):
    """A new average: the params, copied into float32 leaves (their own buffers, so that a
    donated state never holds one buffer twice)."""
    return jax.tree.map(lambda p: jnp.array(p, _dtype(p), copy=True), params)


def _dtype(p):
    return jnp.float32 if jnp.issubdtype(p.dtype, jnp.floating) else p.dtype


def abstract(params):
    """The average's shapes and dtypes for ``params`` (abstract or concrete)."""
    return jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, _dtype(p)), params)


def weight(cfg, step, applied=True) -> jax.Array:
    """The weight of the old average at the 1-based ``step`` (traced): 0 = copy the params,
    1 = unchanged, else the update's decay ``d_t`` (see the module's docstring)."""
    k = jnp.asarray(step, jnp.int32) - int(cfg.start_step)
    every = int(cfg.every_steps)
    t = (k // every).astype(jnp.float32)
    d = jnp.float32(cfg.decay)
    if float(cfg.warmup_power) > 0:
        d = jnp.minimum(d, 1.0 - jnp.power(1.0 + t, -jnp.float32(cfg.warmup_power)))
    w = jnp.where(k <= 0, 0.0, jnp.where(k % every == 0, d, 1.0))
    return jnp.where(applied, w, 1.0).astype(jnp.float32)


def update(cfg, ema, params, step, applied=True):
    """The average after the 1-based ``step`` whose new params are ``params``; ``applied``
    False (the guard skipped the update) leaves it as it was."""
    w = weight(cfg, step, applied)

    def mix():
        return jax.tree.map(lambda e, p: w * e + (1.0 - w) * p.astype(e.dtype), ema, params)

    if int(cfg.every_steps) == 1 and int(cfg.start_step) == 0:
        return mix()  # due at every step (w = 1 when skipped: exactly the old average)
    return jax.lax.cond(w < 1.0, mix, lambda: ema)


def as_params(ema, params):
    """The average as parameters: each leaf in its parameter's dtype."""
    return jax.tree.map(lambda e, p: e.astype(p.dtype), ema, params)


def reset(params, shardings):
    """A new average of ``params`` (:func:`init`), born on ``shardings``."""
    return jax.jit(init, out_shardings=shardings)(params)
