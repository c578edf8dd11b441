"""Runs that cannot diverge silently: the guard inside the train step and its host side.

In the jitted step (no host sync): when the loss, the global gradient norm or the new
parameters' norm is not finite (``stability.skip_nonfinite``), or the loss exceeds
``stability.spike_factor`` times the running mean of the applied steps' losses (an EMA kept in
the train state, so a resume is exact; checked after ``stability.spike_warmup_steps``), the
update is not applied: parameters and optimizer state are selected back, bit for bit (the
optimizer's own step count included, so the learning-rate schedule waits too). The step
counter and the data advance; :class:`GuardState` counts what was skipped and is checkpointed.

On the host, at the loop's sync points only (log steps and checkpoint saves, where metrics are
pulled anyway): ``stability.max_skips_in_a_row`` consecutive skips stop the run
(:class:`DivergedError`, exit 1, without saving), and with ``stability.rollback`` a loss spike
restores the last checkpoint and skips the data of ``stability.rollback_skip_steps`` steps
after it (PaLM); ``stability.max_rollbacks`` rollbacks to one checkpoint stop the run.

The fire drill (``debug.nonfinite_steps``, ``debug.spike_steps``) makes gradients NaN, or
scales the loss and gradients by ``debug.spike_scale``, at those steps inside the step: it is
compiled in only when a list is non-empty, so the normal step is unchanged. An injected spike
fires only on a step's first run: a step re-run after a rollback has other data, as a spike
caused by a bad batch would not recur.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clip_jax.cli import RunError

LOGIT_KEYS = ("logit_scale", "logit_bias")
_TOWERS = {"visual": "image", "text": "text"}


@flax.struct.dataclass
class GuardState:
    """The guard's counters (int32 scalars but ``loss_ema``), part of the train state."""

    skipped: jax.Array  # updates not applied, all time (non-finite or spike)
    in_a_row: jax.Array  # consecutive skipped updates up to the last step
    spikes: jax.Array  # updates skipped as loss spikes, all time
    loss_ema: jax.Array  # float32 EMA of applied steps' losses (biased: see _running_mean)
    ema_count: jax.Array  # applied steps in the EMA
    last_spike: jax.Array  # step of the latest spike (0: none)
    rollbacks: jax.Array  # rollbacks done
    replay_until: jax.Array  # steps up to this one were re-run after a rollback


def init_guard() -> GuardState:
    zero = jnp.zeros((), jnp.int32)
    return GuardState(zero, zero, zero, jnp.zeros((), jnp.float32), zero, zero, zero, zero)


def guard_specs() -> GuardState:
    return GuardState(*[P()] * len(dataclasses.fields(GuardState)))


def check_config(c) -> None:
    """The ``stability`` and ``debug`` keys; raises ValueError naming the bad one."""
    s, d = c.stability, c.debug
    for key in ("max_skips_in_a_row", "spike_warmup_steps", "rollback_skip_steps",
                "max_rollbacks"):
        if not isinstance(s[key], int) or s[key] < 0:
            raise ValueError(f"config stability.{key}={s[key]!r} must be an integer >= 0")
    if s.spike_factor and s.spike_factor <= 1:
        raise ValueError(f"config stability.spike_factor={s.spike_factor} must be > 1 "
                         "(0 = off)")
    if not 0 < s.spike_ema_decay < 1:
        raise ValueError(f"config stability.spike_ema_decay={s.spike_ema_decay} must be in "
                         "(0, 1)")
    if s.rollback and not s.spike_factor:
        raise ValueError("config stability.rollback=True needs stability.spike_factor > 1 "
                         "(what a spike is)")
    for key in ("nonfinite_steps", "spike_steps"):
        steps = d[key]
        if not isinstance(steps, list | tuple) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in steps):
            raise ValueError(f"config debug.{key}={steps!r} must be a tuple of steps >= 1")
    if not d.spike_scale > 0:
        raise ValueError(f"config debug.spike_scale={d.spike_scale} must be > 0")


# ---------------------------------------------------------------------------------------------
# Inside the step


def inject_faults(debug, step, guard: GuardState, loss, grads):
    """The fire drill at the 1-based ``step``; nothing is traced for empty step lists."""
    if debug.nonfinite_steps:
        bad = jnp.isin(step, jnp.asarray(debug.nonfinite_steps, jnp.int32))
        grads = jax.tree.map(lambda g: jnp.where(bad, jnp.asarray(jnp.nan, g.dtype), g), grads)
    if debug.spike_steps:
        hit = jnp.isin(step, jnp.asarray(debug.spike_steps, jnp.int32)) & (
            step > guard.replay_until)
        factor = jnp.where(hit, jnp.float32(debug.spike_scale), jnp.float32(1.0))
        loss = loss * factor
        grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
    return loss, grads


def _sq(tree) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(jnp.square(x.astype(jnp.float32)))
    return total


def diagnostics(grads, params, updates) -> dict:
    """Norms of one step: the global gradient norm (before clipping) and its parts per tower
    and of the logit parameters, the new parameters' norm, the update norm and their ratio."""
    parts = {f"grad_norm/{_TOWERS.get(k, k)}": _sq(v) for k, v in grads.items()
             if k not in LOGIT_KEYS}
    parts["grad_norm/logit"] = _sq({k: grads[k] for k in LOGIT_KEYS if k in grads})
    out = {"grad_norm": jnp.sqrt(sum(parts.values()))}
    out.update({k: jnp.sqrt(v) for k, v in parts.items()})
    out["param_norm"] = jnp.sqrt(_sq(params))
    out["update_norm"] = jnp.sqrt(_sq(updates))
    out["update_to_param"] = out["update_norm"] / jnp.maximum(out["param_norm"], 1e-30)
    return out


def active(cfg) -> bool:
    """Whether the step selects between the new and the old state at all."""
    return bool(cfg.skip_nonfinite or cfg.spike_factor)


def _running_mean(cfg, g: GuardState):
    debias = 1.0 - jnp.power(jnp.float32(cfg.spike_ema_decay), g.ema_count.astype(jnp.float32))
    return g.loss_ema / jnp.maximum(debias, 1e-30)


def decide(cfg, g: GuardState, step, loss, norms) -> tuple[jax.Array, GuardState]:
    """``(apply, next guard state)`` for the 1-based ``step``: whether to keep the update."""
    finite = jnp.isfinite(loss) & jnp.isfinite(norms["grad_norm"]) & jnp.isfinite(
        norms["param_norm"])
    apply = finite if cfg.skip_nonfinite else jnp.bool_(True)
    spike = jnp.bool_(False)
    if cfg.spike_factor:
        spike = finite & (step > cfg.spike_warmup_steps) & (g.ema_count > 0) & (
            loss > cfg.spike_factor * _running_mean(cfg, g))
        apply = apply & ~spike
    learn = apply & finite
    d = jnp.float32(cfg.spike_ema_decay)
    return apply, g.replace(
        skipped=g.skipped + (~apply).astype(jnp.int32),
        in_a_row=jnp.where(apply, 0, g.in_a_row + 1),
        spikes=g.spikes + spike.astype(jnp.int32),
        loss_ema=jnp.where(learn, d * g.loss_ema + (1 - d) * loss.astype(jnp.float32),
                           g.loss_ema),
        ema_count=g.ema_count + learn.astype(jnp.int32),
        last_spike=jnp.where(spike, step, g.last_spike))


def select(apply, new, old):
    """``new`` where ``apply``, else ``old``, leaf by leaf (bit-identical when not applied)."""
    return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)


def metrics(g: GuardState) -> dict:
    return {"skipped_steps": g.skipped, "skips_in_a_row": g.in_a_row, "spike_skips": g.spikes,
            "rollbacks": g.rollbacks}


# ---------------------------------------------------------------------------------------------
# On the host, at the sync points


def nonfinite_leaves(tree) -> list[str]:
    """The ``/``-joined paths of the floating-point leaves of ``tree`` holding a NaN or inf:
    one jitted reduction per leaf, one small transfer (cached per tree structure)."""
    named = [(jax.tree_util.keystr(p, simple=True, separator="/"), x)
             for p, x in jax.tree_util.tree_leaves_with_path(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not named:
        return []
    sh = getattr(named[0][1], "sharding", None)
    out = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec()) \
        if isinstance(sh, jax.sharding.NamedSharding) else None
    ok = np.asarray(jax.device_get(_all_finite(out)([x for _, x in named])))
    return [name for (name, _), good in zip(named, ok) if not good]


@functools.cache
def _all_finite(out_sharding):
    return jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]),
                   out_shardings=out_sharding)



class DivergedError(RunError):
    """Too many updates skipped in a row, or a rollback loop: the run stops (exit 1)."""


class HostGuard:
    """The loop's side of the guard: ``check(step, guard, ckpt)`` at each sync point raises
    :class:`DivergedError` or returns True when a rollback is due.

    It also knows which checkpoint is *good*, since finite is not good (at a far too high
    learning rate the weights reach 1e13 with the loss still in its band, a few steps before it
    turns NaN): one taken at a sync point with no update skipped since the one before, and
    confirmed by ``max(1, stability.max_skips_in_a_row)`` steps without a skipped update after
    it (a skip before that disowns it). The good one and those awaiting confirmation are
    protected from ``checkpoint.keep``'s rotation; a stop names the good one and moves the
    later checkpoints aside (``<step>.diverged-<time>``, kept), so that a resume (at a lower
    learning rate) starts from it. The checkpoint a run resumed from counts as good."""

    def __init__(self, cfg, guard: GuardState):
        self.cfg = cfg
        self.spikes_seen = int(guard.spikes)  # spikes already dealt with
        self.rollbacks_to: dict[int, int] = {}
        self.skipped, self.healthy_at = int(guard.skipped), {}
        self.good: int | None = None
        self.pending: list[int] = []  # healthy saves awaiting confirmation
        self.seen: int | None = None  # the newest checkpoint step already judged
        self.started = False

    def _judge(self, step: int, g: GuardState, ckpt) -> None:
        healthy = int(g.skipped) == self.skipped  # no update skipped since the last sync point
        self.skipped = int(g.skipped)
        saved = ckpt.latest_step()  # saves follow a check at the same step: judged at the next
        if not self.started:
            self.started, self.good = True, saved  # the step this run started from
            self.seen = saved
        elif saved is not None and saved != self.seen:
            self.seen = saved
            if self.healthy_at.get(saved):
                self.pending.append(saved)
        if not healthy:
            self.pending = []
        horizon = max(1, self.cfg.max_skips_in_a_row)
        for c in [c for c in self.pending if step - c >= horizon]:
            self.good = c
            self.pending.remove(c)
        ckpt.protect(self.good, self.pending)
        self.healthy_at = {step: healthy}

    def _stop(self, ckpt, why: str) -> DivergedError:
        moved = ckpt.set_aside_after(self.good, "diverged")
        where = "none" if self.good is None else f"step {self.good} ({ckpt.directory}/" \
                                                 f"{self.good})"
        aside = f"; the {len(moved)} later checkpoints were moved aside and kept (" \
                f"{', '.join(moved[:2])}{', ...' * (len(moved) > 2)})" if moved else ""
        return DivergedError(f"{why}; last good checkpoint: {where}{aside}; a resume starts "
                             f"{'afresh' if self.good is None else 'from it'}: lower the "
                             "learning rate")

    def check(self, step: int, g: GuardState, ckpt) -> bool:
        self._judge(step, g, ckpt)
        n, most = int(g.in_a_row), self.cfg.max_skips_in_a_row
        if most and n >= most:
            raise self._stop(ckpt, (
                f"step {step}: the updates of steps {step - n + 1}-{step} were all skipped "
                f"({n} in a row >= stability.max_skips_in_a_row={most}: non-finite loss or "
                f"gradients, or loss spikes); stopped without saving"))
        due = self.cfg.rollback and int(g.spikes) > self.spikes_seen
        self.spikes_seen = int(g.spikes)
        return bool(due)

    def rollback_to(self, target: int, spike_step: int) -> None:
        """Count a rollback to checkpoint ``target``; raise on the one too many."""
        self.rollbacks_to[target] = count = self.rollbacks_to.get(target, 0) + 1
        if count > self.cfg.max_rollbacks:
            raise DivergedError(
                f"loss spike at step {spike_step}: checkpoint step {target} was restored "
                f"{count - 1}x already (stability.max_rollbacks="
                f"{self.cfg.max_rollbacks}); a rollback loop, the run stops; lower the "
                "learning rate or raise stability.rollback_skip_steps")

    def restored(self, g: GuardState) -> None:
        self.spikes_seen, self.skipped = int(g.spikes), int(g.skipped)
