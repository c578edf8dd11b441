"""Training: the sharded train step and the loop around it.

    python -m clip_jax.train --config configs/tiny.py --workdir /tmp/run [--config.key=value ...]

The train step is one ``jax.jit`` with explicit in/out shardings and a donated state: forward both
towers on the global batch (sharded over ``data`` x ``fsdp``), the contrastive loss in a
``shard_map`` that all-gathers embeddings, backward, AdamW, logit-scale clamp. Parameters and
optimizer state are born sharded (``jax.eval_shape`` then a jitted init with ``out_shardings``).
The loss (the run's :mod:`clip_jax.objectives`) and its gradients come from
:mod:`clip_jax.gradients`; :mod:`clip_jax.stability` guards the update (non-finite or
spiking steps are skipped, counted, and may stop or roll back the run); :mod:`clip_jax.ema`
keeps the weight average."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from clip_jax import (
    checkpoint,
    cli,
    distill,
    distributed,
    ema,
    gradients,
    input_pipeline,
    models,
    monitor,
    objectives,
    optimizer,
    preemption,
    sharding,
    sources,
    stability,
)
from clip_jax import config as config_lib
from clip_jax import params as params_lib
from clip_jax import workdir as workdir_lib
from clip_jax.data import prepare
from clip_jax.evaluate import evaluators

LOGIT_SCALE_MAX = math.log(100.0)  # the learned temperature is clamped to 1/100 (CLIP)
_MIN_SECONDS = 1e-9  # a time span's floor where it divides (a rate over no time)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    guard: stability.GuardState  # skipped updates, loss EMA, rollbacks (checkpointed)
    # BatchNorm running statistics (a ResNet tower; empty otherwise), replicated, checkpointed
    batch_stats: Any = flax.struct.field(default_factory=dict)
    ema: Any = flax.struct.field(default_factory=dict)  # the params' average (clip_jax.ema)


@dataclasses.dataclass
class Setup:
    """Everything built from the config before any array exists."""

    config: ml_collections.ConfigDict
    model_cfg: models.ModelConfig
    model: models.CLIP
    mesh: jax.sharding.Mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState
    abstract_state: TrainState
    batch_sharding: jax.sharding.NamedSharding
    objective: objectives.Objectives  # what the step computes (its params, fields, loss)
    teachers: list = dataclasses.field(default_factory=list)  # frozen (clip_jax.distill)
    stored: list = dataclasses.field(default_factory=list)  # stored teacher embeddings
    accum_unroll: int = 1  # the gradient cache's loops' scan unroll (the plan costs one trip)

    @property
    def local_batch_size(self) -> int:
        return self.config.batch_size // jax.process_count()


def check_batch(config, mesh, num_processes: int) -> int:
    """Raise unless the global batch splits over the batch shards, micro-batches and processes;
    returns the number of batch shards (data x fsdp)."""
    shards = sharding.batch_size_per_shard(mesh)
    if config.batch_size % (shards * config.accum_steps):
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by data*fsdp={shards} times "
            f"accum_steps={config.accum_steps}")
    if config.batch_size % num_processes:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{num_processes} processes")
    return shards


def plan_state(config, model_cfg, mesh, objective=None):
    """(model, tx, schedule, abstract TrainState, TrainState of PartitionSpecs) for ``mesh``
    (a Mesh or an AbstractMesh): shapes from ``jax.eval_shape``, nothing allocated; the
    ``objective``'s own params (``param_shapes``) beside the model's, replicated."""
    model = models.CLIP(model_cfg)
    tx, schedule = optimizer.make_optimizer(config.optimizer, config.total_steps,
                                            config.model.lock_image_unlocked_groups, model_cfg)
    rng = jax.random.key(config.seed)
    boxed = jax.eval_shape(lambda r: model.init(r, *models.init_inputs(model_cfg))["params"], rng)
    extra = objective.param_shapes() if objective is not None else {}
    param_specs = {**sharding.param_specs(boxed, mesh), **jax.tree.map(lambda _: P(), extra)}
    abstract = jax.eval_shape(functools.partial(_init_state, model, model_cfg, tx,
                                                objective=objective, ema_cfg=config.ema), rng)
    opt_specs = sharding.opt_state_specs(tx, abstract.opt_state, param_specs)
    stats_specs = jax.tree.map(lambda _: P(), abstract.batch_stats)
    return model, tx, schedule, abstract, TrainState(
        P(), param_specs, opt_specs, stability.guard_specs(), stats_specs,
        param_specs if ema.enabled(config.ema) else {})


def check_config(config: ml_collections.ConfigDict, devices=None):
    """Every check of a config that needs no array and no file written: the keys' values, the
    model preset, image size, the mesh on these devices, the batch split. Returns
    ``(model config, mesh)``; raises ValueError naming the problem."""
    config_lib.validate(config)
    distill.check_config(config)
    model_cfg = config_lib.resolve_model_config(config.model)
    if config.data.image_size is not None and config.data.image_size != (
            model_cfg.vision.image_size):
        raise ValueError(f"data.image_size={config.data.image_size} differs from the model's "
                         f"vision.image_size={model_cfg.vision.image_size}")
    mesh = sharding.make_mesh(config.mesh, devices)
    check_batch(config, mesh, jax.process_count())
    return model_cfg, mesh


def build(config: ml_collections.ConfigDict, devices=None) -> Setup:
    model_cfg, mesh = check_config(config, devices)
    teachers = distill.load(config, mesh, model_cfg) if config.distill.teachers else []
    stored = distill.load_stored(config)
    objective = objectives.build(config, model_cfg, teachers, stored)
    model, tx, schedule, abstract, specs = plan_state(config, model_cfg, mesh, objective)
    return Setup(config, model_cfg, model, mesh, tx, schedule,
                 sharding.to_shardings(specs, mesh), abstract, sharding.batch_sharding(mesh),
                 objective, teachers, stored)


def _init_state(model, model_cfg, tx, rng, objective=None, ema_cfg=None) -> TrainState:
    variables = nn.unbox(model.init(rng, *models.init_inputs(model_cfg)))
    params = {**variables["params"], **(objective.init_params(rng) if objective else {})}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=stability.init_guard(), batch_stats=variables.get(models.STATS, {}),
                      ema=ema.init(params) if ema_cfg and ema.enabled(ema_cfg) else {})


def init_state(setup: Setup, rng=None) -> TrainState:
    """Initialise parameters directly in their shards (never whole on one device)."""
    rng = jax.random.key(setup.config.seed) if rng is None else rng
    init = functools.partial(_init_state, setup.model, setup.model_cfg, setup.tx,
                             objective=setup.objective, ema_cfg=setup.config.ema)
    return jax.jit(init, out_shardings=setup.state_shardings)(rng)


# ---------------------------------------------------------------------------------------------
# The step


def train_step(setup: Setup, state: TrainState, batch, teachers=()) -> tuple[TrainState, dict]:
    """One update; :mod:`clip_jax.stability` keeps the old parameters and optimizer state when
    the loss or gradients are not finite or the loss spikes (the step and the data advance).
    ``teachers``: the frozen teachers' params (distillation), read, never updated."""
    cfg, step = setup.config, state.step + 1
    loss, parts, grads, stats = gradients.loss_and_grads(setup, state.params, batch, state.step,
                                                         teachers, state.batch_stats, state.ema)
    loss, grads = stability.inject_faults(cfg.debug, step, state.guard, loss, grads)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = dict(optax.apply_updates(state.params, updates))
    params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, LOGIT_SCALE_MAX)
    parts = parts if setup.objective.report_parts else {}
    metrics = {"loss": loss, "lr": setup.schedule(state.step),  # + the objective's parts
               **{f"loss_{k}": v for k, v in parts.items()},
               **stability.diagnostics(grads, params, updates)}
    apply, guard = stability.decide(cfg.stability, state.guard, step, loss, metrics)
    if stability.active(cfg.stability):
        params, opt_state, stats = stability.select(
            apply, (params, opt_state, stats), (state.params, state.opt_state, state.batch_stats))
    average = ema.update(cfg.ema, state.ema, params, step, apply) if state.ema else state.ema
    metrics.update(stability.metrics(guard))
    metrics["logit_scale"] = jnp.exp(params["logit_scale"])
    metrics.update({"logit_bias": params["logit_bias"]} if "logit_bias" in params else {})
    return TrainState(step=step, params=params, opt_state=opt_state, guard=guard,
                      batch_stats=stats, ema=average), metrics


def make_train_step(setup: Setup):
    teacher_sh = (distill.shardings(setup.teachers, setup.mesh),) if setup.teachers else ()
    placed = []  # the teachers' params, placed on the first call (plan only lowers)
    step = jax.jit(
        functools.partial(train_step, setup),
        in_shardings=(setup.state_shardings, setup.batch_sharding, *teacher_sh),  # any fields
        out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)),
        donate_argnums=(0,),
    )

    def teacher_params():
        if setup.teachers and not placed:  # the loop steps under transfer_guard("disallow")
            with jax.transfer_guard("allow"):
                placed.append(distill.place(setup.teachers, setup.mesh,
                                            setup.config.distill.dtype))
        return placed

    def run(state, batch):
        with jax.set_mesh(setup.mesh):
            return step(state, batch, *teacher_params())

    run.jitted, run.teacher_params = step, teacher_params  # lower(state, batch[, teachers])
    return run


# ---------------------------------------------------------------------------------------------
# The loop


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
    """Train (or resume) a run in ``workdir``; returns the last logged metrics.

    Nothing is written to ``workdir`` before the config has passed :func:`check_config`; the
    workdir is then locked for this run (:class:`clip_jax.workdir.WorkdirLock`), and on resume
    the config is checked against the saved one (:func:`clip_jax.config.check_resume`) before
    ``config.json`` is rewritten. ``config`` itself is left as it was: the run works on a copy
    (the demo corpus and the tokenizer fill in data paths and the vocabulary size)."""
    config = config.copy_and_resolve_references()
    check_config(config, devices)
    is_main = jax.process_index() == 0
    with workdir_lib.WorkdirLock(workdir, enabled=is_main,
                                 log=print if is_main else lambda _: None):
        return _train_locked(config, workdir, devices, is_main)


def _train_locked(config, workdir: str, devices, is_main: bool) -> dict:
    saved_config = workdir_lib.saved_config(workdir)
    tokenizer = prepare.prepare_run(config, config_lib.resolve_model_config(config.model),
                                    workdir)
    changes = [] if saved_config is None else config_lib.check_resume(
        saved_config, config, workdir)
    setup = build(config, devices)
    distill.check_tokenizers(setup.teachers, tokenizer, setup.model_cfg.text.vocab_size)
    writer = monitor.MetricsWriter.from_config(config, workdir, enabled=is_main)
    writer.log(monitor.welcome(config, setup.mesh,
                               models.count_params(setup.abstract_state.params)))
    if changes:
        writer.log(f"config changed on resume: {config_lib.format_diff(changes)}")
    data = input_pipeline.make_data(config, setup.model_cfg, setup.local_batch_size,
                                    distill.host_tokenizer(setup, tokenizer))  # + teachers' ids
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, setup.state_shardings,
                                   setup.abstract_state, tokenizer)
    try:
        restored = ckpt.restore_latest(log=writer.log)
    except BaseException:
        _close(ckpt, data)
        raise
    if is_main:
        workdir_lib.write_config(workdir, config.to_json_best_effort(indent=2))
    if restored is not None:
        state, data_state = restored
        if int(state.step) >= config.total_steps:
            return _already_complete(int(state.step), config, workdir, writer, ckpt, data)
        data.set_state(data_state)
        writer.log(f"resumed from step {int(state.step)} in {workdir}")
        state = _fresh_ema(setup, state, writer.log) if state.ema is None else state
    else:
        state = init_from(setup, config) if config.checkpoint.init_from else init_state(setup)
    start_step = int(state.step)
    writer.truncate_after(start_step)
    evaluator = evaluators.make_train_evaluator(setup, tokenizer, workdir)

    step_fn = make_train_step(setup)
    feed = input_pipeline.Prefetcher(setup.batch_sharding, data, config.data.prefetch)
    guard = stability.HostGuard(config.stability, jax.device_get(state.guard))
    last: dict = {}
    t_mark, step_mark, compile_s = time.time(), start_step, None
    try:
        with preemption.Preemption(ckpt) as preempt:
            step = start_step
            while step < config.total_steps:
                step += 1
                batch = next(feed)
                t0 = time.time()
                with jax.transfer_guard("disallow"):
                    state, metrics = step_fn(state, batch)
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.time() - t0
                    writer.log(f"first step (XLA compile + run): {compile_s:.1f} s")
                    t_mark, step_mark = time.time(), step
                log = step % config.log_every_steps == 0 or step == config.total_steps
                if log:
                    metrics = jax.device_get(metrics)
                    now = time.time()
                    rate = (step - step_mark) / max(now - t_mark, _MIN_SECONDS) \
                        if step > step_mark else float("nan")
                    last = {k: float(v) for k, v in metrics.items()}
                    last.update(steps_per_sec=rate, samples_per_sec=rate * config.batch_size,
                                compile_seconds=compile_s)
                    last.update({f"data/{k}": v for k, v in feed.stats.items()})
                    t_mark, step_mark = now, step
                if evaluator and evaluator.due(step):  # each eval at its own every_steps
                    t_eval = time.time()
                    extra = evaluator(_eval_variables(setup, state, state.params), step)
                    if state.ema:  # the average's metrics beside: eval_ema/<name>/<metric>
                        extra.update({k.replace("eval/", "eval_ema/", 1): v for k, v in evaluator(
                            _eval_variables(setup, state, state.ema), step, tag="ema_").items()})
                    last.update(extra)
                    t_mark += time.time() - t_eval  # throughput counts training time only
                    if not log:
                        writer.write(step, extra)
                if log:
                    writer.write(step, last)
                    writer.progress(step, last)
                stop = preempt.reached(step)
                final = step == config.total_steps
                ckpt.check()  # a failed background save stops the run here
                save = stop or final or ckpt.should_save(step)
                # the guard's host side, at sync points only: may stop the run or roll back
                g = jax.device_get(state.guard) if log or save else None
                if g is not None and guard.check(step, g, ckpt):
                    back = _rollback(setup, ckpt, data, feed, guard, step, int(g.last_spike),
                                     writer)
                    if back is not None:
                        state, feed, step = back
                        t_mark, step_mark = time.time(), step
                        continue
                if save:
                    ckpt.save(step, state, feed.state, config.to_json_best_effort(),
                              force=stop or final)
                if stop:
                    writer.log(f"SIGTERM: saved step {step}, exiting")
                    break
    finally:
        feed.close()
        _close(ckpt, data)
        writer.close()
    return writer.finish(last)


def _eval_variables(setup: Setup, state: TrainState, params):
    """The model's variables to evaluate: ``params`` (or the average) + BatchNorm statistics."""
    params = ema.as_params(params, state.params)
    return models.merge_variables(setup.objective.model_params(params), state.batch_stats)


def _fresh_ema(setup: Setup, state: TrainState, log=None) -> TrainState:
    """``state`` with its average restarted from its params (after ``init_from``, or when a
    checkpoint saved without one is resumed with ``ema.decay`` > 0: said to ``log``)."""
    if not ema.enabled(setup.config.ema):
        return state
    if log is not None:
        log(f"checkpoint step {int(state.step)} has no EMA: the average starts from its params")
    return state.replace(ema=ema.reset(state.params, setup.state_shardings.ema))


def _rollback(setup: Setup, ckpt, data, feed, guard, step: int, spike: int, writer):
    """PaLM's remedy for the loss spike at step ``spike``: restore the newest checkpoint and
    skip the data of the ``stability.rollback_skip_steps`` steps after it (the steps up to
    ``step`` count as re-run: the drill's spikes do not fire there again). Returns ``(state,
    feed, its step)``, or None when there is no checkpoint yet (the update was skipped)."""
    cfg = setup.config.stability
    ckpt.wait()
    target = ckpt.latest_step()
    if target is None:
        writer.log(f"loss spike at step {spike}: no checkpoint to roll back to yet; its "
                   "update was skipped")
        return None
    guard.rollback_to(target, spike)  # raises on a rollback loop
    feed.close()
    state, data_state = ckpt.restore(target)
    state = _fresh_ema(setup, state, writer.log) if state.ema is None else state
    g = jax.device_get(state.guard)
    guard.restored(g)
    g = g.replace(rollbacks=g.rollbacks + 1, replay_until=np.int32(step))
    state = state.replace(guard=jax.device_put(g, setup.state_shardings.guard))
    data.set_state(data_state)
    for _ in range(cfg.rollback_skip_steps):
        next(data)
    writer.rewind(target)
    writer.log(f"loss spike at step {spike}: rolled back to checkpoint step {target}, "
               f"skipping the data of steps {target + 1}-{target + cfg.rollback_skip_steps} "
               f"(rollback {int(g.rollbacks)}; restores of step {target}: "
               f"{guard.rollbacks_to[target]} of at most {cfg.max_rollbacks})")
    return state, input_pipeline.Prefetcher(setup.batch_sharding, data,
                                            setup.config.data.prefetch), target


def _close(ckpt, data) -> None:
    """Stop the data workers and the checkpointer (waits for a save in flight)."""
    if hasattr(data, "close"):
        data.close()
    ckpt.close()


def _already_complete(step: int, config, workdir: str, writer, ckpt, data) -> dict:
    """A finished run re-run: nothing to train; its last logged metrics."""
    _close(ckpt, data)
    last = writer.last_record(step)
    writer.log(f"{workdir}: the run is already complete at step {step} "
               f"(total_steps={config.total_steps}); nothing to do")
    return last


def init_from(setup: Setup, config) -> TrainState:
    """Fresh optimizer state; parameters (and a BatchNorm tower's statistics) from any model
    source (:mod:`clip_jax.sources`): all, or those matching ``checkpoint.init_from_params``
    (LiT: ``^visual/``; the statistics of the matching layers come too), the rest fresh."""
    state, ck = init_state(setup), config.checkpoint
    merge, own = models.merge_variables, setup.objective.model_params  # its own: fresh
    if ck.init_from_params:
        src = dict(sources.resolve(ck.init_from).params)
        src_stats, pick = src.pop(models.STATS, {}), (ck.init_from_params, ck.init_from)
        params = {**state.params, **params_lib.take(own(state.params), src, *pick,
                                                    ck.init_from_blocks)}
        stats, rx = state.batch_stats, re.compile(ck.init_from_params)
        if any(rx.search(k) for k in params_lib.flatten_params(stats)):
            stats = params_lib.take(stats, src_stats, *pick)
        return _fresh_ema(setup, state.replace(params=params, batch_stats=stats))
    tree = dict(sources.load_params(
        ck.init_from, merge(own(setup.abstract_state.params), setup.abstract_state.batch_stats),
        merge(own(setup.state_shardings.params), setup.state_shardings.batch_stats),
        ck.init_from_blocks))
    stats = tree.pop(models.STATS, state.batch_stats)
    return _fresh_ema(setup, state.replace(params={**state.params, **tree}, batch_stats=stats))


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str]) -> int:
    """``python -m clip_jax.train --config FILE --workdir DIR [--config.key=value ...]
    [--verbose]``; errors are reported by :func:`clip_jax.cli.run`."""
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    config, workdir = config_lib.parse_flags(["clip_jax.train", *argv], __doc__)
    distributed.initialize()
    last = train(config, workdir)
    if jax.process_index() == 0:
        print(monitor.summary(last, workdir))  # all of ``last``: <workdir>/final_metrics.json
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
