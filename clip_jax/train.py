"""Training: the sharded train step and the loop around it.

    python -m clip_jax.train --config configs/tiny.py --workdir /tmp/run [--config.key=value ...]

The train step is one ``jax.jit`` with explicit in/out shardings and a donated state: forward both
towers on the global batch (sharded over ``data`` x ``fsdp``), the contrastive loss in a
``shard_map`` that all-gathers embeddings, backward, AdamW, logit-scale clamp. Parameters and
optimizer state are born sharded (``jax.eval_shape`` then a jitted init with ``out_shardings``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import queue
import signal
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from clip_jax import cli, losses, models, monitor, optimizer, sharding
from clip_jax import config as config_lib
from clip_jax import workdir as workdir_lib
from clip_jax.data import transforms

LOGIT_SCALE_MAX = math.log(100.0)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


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

    @property
    def local_batch_size(self) -> int:
        return self.config.batch_size // jax.process_count()


def _check_batch(config, mesh, num_processes: int) -> int:
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


def _plan_state(config, model_cfg, mesh):
    """(model, tx, schedule, abstract TrainState, TrainState of PartitionSpecs) for ``mesh``
    (a Mesh or an AbstractMesh): shapes from ``jax.eval_shape``, nothing allocated."""
    model = models.CLIP(model_cfg)
    tx, schedule = optimizer.make_optimizer(config.optimizer, config.total_steps)
    rng = jax.random.key(config.seed)
    boxed = jax.eval_shape(lambda r: model.init(r, *models.init_inputs(model_cfg))["params"], rng)
    param_specs = sharding.param_specs(boxed, mesh)
    abstract = jax.eval_shape(functools.partial(_init_state, model, model_cfg, tx), rng)
    opt_specs = sharding.opt_state_specs(abstract.opt_state, abstract.params, param_specs)
    return model, tx, schedule, abstract, TrainState(P(), param_specs, opt_specs)


def check_config(config: ml_collections.ConfigDict, devices=None):
    """Every check of a config that needs no array and no file written: the keys' values, the
    model preset, image size, the mesh on these devices, the batch split. Returns
    ``(model config, mesh)``; raises ValueError naming the problem."""
    config_lib.validate(config)
    model_cfg = config_lib.resolve_model_config(config.model)
    if config.data.image_size is not None and config.data.image_size != (
            model_cfg.vision.image_size):
        raise ValueError(f"data.image_size={config.data.image_size} differs from the model's "
                         f"vision.image_size={model_cfg.vision.image_size}")
    mesh = sharding.make_mesh(config.mesh, devices)
    _check_batch(config, mesh, jax.process_count())
    return model_cfg, mesh


def build(config: ml_collections.ConfigDict, devices=None) -> Setup:
    model_cfg, mesh = check_config(config, devices)
    model, tx, schedule, abstract, specs = _plan_state(config, model_cfg, mesh)
    return Setup(config, model_cfg, model, mesh, tx, schedule,
                 sharding.to_shardings(specs, mesh), abstract, sharding.batch_sharding(mesh))


def plan(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> dict:
    """The memory/batch arithmetic of a run on ``num_devices`` devices, computed abstractly
    (``jax.eval_shape`` on an AbstractMesh: no device, no allocation). Raises on a config
    that cannot run there (mesh, batch divisibility)."""
    config_lib.validate(config)
    model_cfg = config_lib.resolve_model_config(config.model)
    mesh = sharding.abstract_mesh(config.mesh, num_devices)
    shards = _check_batch(config, mesh, num_processes)
    _, _, _, abstract, specs = _plan_state(config, model_cfg, mesh)
    replicated = jax.tree.map(lambda _: P(), abstract.params)
    gib = 2.0**30
    return {
        "mesh": dict(mesh.shape),
        "params": models.count_params(abstract.params),
        "global_batch": config.batch_size,
        "per_process_batch": config.batch_size // num_processes,
        "batch_per_data_shard": config.batch_size // shards,
        "micro_batch_per_data_shard": config.batch_size // shards // config.accum_steps,
        "param_gib_per_device": sharding.bytes_per_device(
            abstract.params, specs.params, mesh) / gib,
        "opt_gib_per_device": sharding.bytes_per_device(
            abstract.opt_state, specs.opt_state, mesh) / gib,
        "param_gib_replicated": sharding.bytes_per_device(
            abstract.params, replicated, mesh) / gib,
    }


def _init_state(model, model_cfg, tx, rng) -> TrainState:
    params = nn.unbox(model.init(rng, *models.init_inputs(model_cfg))["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_state(setup: Setup, rng=None) -> TrainState:
    """Initialise parameters directly in their shards (never whole on one device)."""
    rng = jax.random.key(setup.config.seed) if rng is None else rng
    init = functools.partial(_init_state, setup.model, setup.model_cfg, setup.tx)
    return jax.jit(init, out_shardings=setup.state_shardings)(rng)


# ---------------------------------------------------------------------------------------------
# The step


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


def device_pixels(images: jax.Array) -> jax.Array:
    """Batches may carry raw ``uint8`` pixels (4x less host-to-device traffic, no float work on
    the input cores): they are CLIP-normalised here, inside the jitted step. Float images are
    taken as already normalised."""
    if images.dtype != jnp.uint8:
        return images
    mean = jnp.asarray(transforms.CLIP_MEAN, jnp.float32) * 255
    inv_std = 1 / (jnp.asarray(transforms.CLIP_STD, jnp.float32) * 255)
    return (images.astype(jnp.float32) - mean) * inv_std


def _forward(model, params, images, text):
    with nn.logical_axis_rules(sharding.RULES):
        return model.apply({"params": params}, device_pixels(images), text)


def loss_and_grads(setup: Setup, params, batch):
    """Loss of the whole global batch and its gradient (with gradient caching if
    ``accum_steps > 1``)."""
    if setup.config.accum_steps > 1:
        return _loss_and_grads_cached(setup, params, batch)
    config = setup.config

    def loss_fn(p):
        img, txt, log_scale, bias = _forward(setup.model, p, batch["image"], batch["text"])
        return contrastive_loss(config, setup.mesh, img, txt, log_scale, bias)

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


def _loss_and_grads_cached(setup: Setup, params, batch):
    """Gradient cache (Gao et al. 2021): the exact global-batch loss with the activation memory
    of one micro-batch. 1) embed every micro-batch, keeping no activations; 2) the contrastive
    loss of all embeddings and its gradient w.r.t. them; 3) re-run each micro-batch forward
    and push its slice of that gradient through (``jax.vjp``), summing parameter gradients.
    Costs one extra forward pass. All inside the one jitted step, with ``lax.scan``."""
    config, mesh, k = setup.config, setup.mesh, setup.config.accum_steps
    shards = sharding.batch_size_per_shard(mesh)
    micro = {key: _split_micro(batch[key], shards, k, mesh) for key in ("image", "text")}

    def embed(p, mb):
        img, txt, _, _ = _forward(setup.model, p, mb["image"], mb["text"])
        return img, txt

    _, (img, txt) = jax.lax.scan(lambda c, mb: (c, embed(params, mb)), None, micro)
    img, txt = _merge_micro(img, shards, mesh), _merge_micro(txt, shards, mesh)
    bias = params.get("logit_bias")

    def head_loss(i, t, log_scale, b):
        return contrastive_loss(config, mesh, i, t, log_scale, b)

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


def _l2(tree) -> jax.Array:
    return optax.tree.norm(tree)


def train_step(setup: Setup, state: TrainState, batch) -> tuple[TrainState, dict]:
    loss, grads = loss_and_grads(setup, state.params, batch)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = dict(params)
    params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, LOGIT_SCALE_MAX)
    metrics = {
        "loss": loss,
        "logit_scale": jnp.exp(params["logit_scale"]),
        "lr": setup.schedule(state.step),
        "grad_norm": _l2(grads),
        "param_norm": _l2(params),
        "update_norm": _l2(updates),
    }
    if "logit_bias" in params:
        metrics["logit_bias"] = params["logit_bias"]
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(setup: Setup):
    batch_sh = {"image": setup.batch_sharding, "text": setup.batch_sharding}
    step = jax.jit(
        functools.partial(train_step, setup),
        in_shardings=(setup.state_shardings, batch_sh),
        out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)),
        donate_argnums=(0,),
    )

    def run(state, batch):
        with jax.set_mesh(setup.mesh):
            return step(state, batch)

    run.jitted = step
    return run


# ---------------------------------------------------------------------------------------------
# Data


def make_data(setup: Setup, workdir: str, tokenizer=None):
    """The host-local batch iterator for this process (``get_state``/``set_state``)."""
    c, m = setup.config, setup.model_cfg
    if c.data.source == "synthetic":
        from clip_jax.data.synthetic import SyntheticSource

        return SyntheticSource(
            setup.local_batch_size, m.vision.image_size, m.text.context_length,
            m.text.vocab_size, c.data.synthetic_classes, c.data.synthetic_noise, c.seed,
            jax.process_index())
    from clip_jax.data import pipeline

    return pipeline.make_train_iterator(
        c.data, tokenizer, m.vision.image_size, setup.local_batch_size, c.seed,
        jax.process_index(), jax.process_count(), context_length=m.text.context_length)


def to_global(setup: Setup, local_batch: dict[str, np.ndarray]):
    return {k: jax.make_array_from_process_local_data(setup.batch_sharding, v)
            for k, v in local_batch.items() if k in ("image", "text")}


class Prefetcher:
    """Global batches placed on the devices ``depth`` steps ahead, by a background thread, so
    input (host pipeline + host-to-device copy) overlaps compute.

    Each item carries the iterator state *after* its batch, so a checkpoint saves the state of
    what the loop has consumed, not of what was prefetched: resume stays exact. ``depth=0``
    reads in the calling thread.
    """

    def __init__(self, setup: Setup, data, depth: int):
        self.setup, self.data, self.depth = setup, data, int(depth)
        self.state, self.stats = data.get_state(), dict(getattr(data, "stats", {}))
        if self.depth > 0:
            self._queue = queue.Queue(self.depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="clip_jax-prefetch")
            self._thread.start()

    def _produce(self):
        batch = to_global(self.setup, next(self.data))
        return batch, self.data.get_state(), dict(getattr(self.data, "stats", {}))

    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._produce()
            except BaseException as e:  # delivered to the consumer, raised there
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __next__(self):
        item = self._produce() if self.depth == 0 else self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self.state, self.stats = item
        return batch

    def close(self):
        if self.depth > 0:
            self._stop.set()
            self._thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# The loop


class _Preemption:
    """When to save and exit on a preemption notice (SIGTERM).

    One process: a SIGTERM handler sets a flag, read at the next step boundary. Several
    processes: each host may get the signal at a different step, and a save is a collective, so
    they must agree on the step: JAX's preemption sync manager (which owns SIGTERM once
    ``jax.distributed`` is initialised) propagates the notice and names the same sync step on
    every host (``reached_preemption_sync_point``, a local check each step).
    """

    def __init__(self):
        self.requested = False
        self._old = None
        self._multi = jax.process_count() > 1

    def __enter__(self):
        if not self._multi:
            try:
                self._old = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread
                self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(
                step)
        return self.requested

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def welcome(setup: Setup) -> str:
    c = setup.config
    n_dev = jax.device_count()
    return (f"clip_jax | process {jax.process_index()}/{jax.process_count()} | "
            f"{jax.local_device_count()} local of {n_dev} {jax.devices()[0].platform} devices | "
            f"mesh {sharding.describe(setup.mesh)} | batch {c.batch_size} global = "
            f"{setup.local_batch_size}/process = {c.batch_size // n_dev}/device | "
            f"model {c.model.open_clip_config or c.model.name} "
            f"({models.count_params(setup.abstract_state.params):,} params)")


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
    """Train (or resume) a run in ``workdir``; returns the last logged metrics.

    Nothing is written to ``workdir`` before the config has passed :func:`check_config`; the
    workdir is then locked for this run (:class:`clip_jax.workdir.WorkdirLock`), and on resume
    the config is checked against the saved one (:func:`clip_jax.config.check_resume`) before
    ``config.json`` is rewritten."""
    check_config(config, devices)
    is_main = jax.process_index() == 0
    with workdir_lib.WorkdirLock(workdir, enabled=is_main,
                                 log=print if is_main else lambda _: None):
        return _train_locked(config, workdir, devices, is_main)


def _train_locked(config, workdir: str, devices, is_main: bool) -> dict:
    from clip_jax import checkpoint

    saved_config = workdir_lib.saved_config(workdir)
    if config.data.demo and not config.data.train:  # shards of one's own replace the demo
        prepare_demo(config)
    tokenizer = prepare_tokenizer(config, workdir)
    changes = [] if saved_config is None else config_lib.check_resume(
        saved_config, config, workdir)
    setup = build(config, devices)
    writer = monitor.MetricsWriter(workdir, config.total_steps, enabled=is_main)
    writer.log(welcome(setup))
    if changes:
        writer.log(f"config changed on resume: {config_lib.format_diff(changes)}")
    data = make_data(setup, workdir, tokenizer)
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
    else:
        state = init_from(setup, config) if config.checkpoint.init_from else init_state(setup)
    start_step = int(state.step)
    writer.truncate_after(start_step)
    evaluator = _make_evaluator(setup, workdir, tokenizer)

    step_fn = make_train_step(setup)
    feed = Prefetcher(setup, data, config.data.prefetch)
    last: dict = {}
    t_mark, step_mark, compile_s = time.time(), start_step, None
    try:
        with _Preemption() as preempt:
            for step in range(start_step + 1, config.total_steps + 1):
                batch = next(feed)
                t0 = time.time()
                with jax.transfer_guard("disallow"):
                    state, metrics = step_fn(state, batch)
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.time() - t0
                    t_mark, step_mark = time.time(), step
                log = step % config.log_every_steps == 0 or step == config.total_steps
                if log:
                    metrics = jax.device_get(metrics)
                    now = time.time()
                    rate = (step - step_mark) / max(now - t_mark, 1e-9) if step > step_mark \
                        else float("nan")
                    last = {k: float(v) for k, v in metrics.items()}
                    last.update(steps_per_sec=rate, samples_per_sec=rate * config.batch_size,
                                compile_seconds=compile_s)
                    last.update({f"data/{k}": v for k, v in feed.stats.items()})
                    t_mark, step_mark = now, step
                if evaluator and _due(config.eval.every_steps, step, config.total_steps,
                                      config.eval.at_end):
                    t_eval = time.time()
                    extra = evaluator(state.params, step)
                    last.update(extra)
                    t_mark += time.time() - t_eval  # throughput counts training time only
                    if not log:
                        writer.write(step, extra)
                if log:
                    writer.write(step, last)
                    writer.progress(step, last)
                stop = preempt.reached(step)
                ckpt.check()  # a failed background save stops the run here
                if ckpt.should_save(step) or stop or step == config.total_steps:
                    ckpt.save(step, state, feed.state, config.to_json_best_effort(),
                              force=stop or step == config.total_steps)
                if stop:
                    writer.log(f"SIGTERM: saved step {step}, exiting")
                    break
    finally:
        feed.close()
        _close(ckpt, data)
    if is_main:
        from clip_jax.evaluate import plots

        plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"),
                                   os.path.join(workdir, "training_curves.png"))
    return last


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


def prepare_demo(config) -> None:
    """Make sure the demo corpus exists (process 0 writes it), and point ``data.train`` /
    ``eval.zeroshot`` / ``retrieval`` / ``fewshot`` at it unless they were given."""
    from clip_jax.data import demo

    root = os.path.abspath(config.data.demo)
    kwargs = dict(train_samples=config.data.demo_train_samples,
                  image_size=config_lib.resolve_model_config(config.model).vision.image_size,
                  seed=config.seed)
    if jax.process_index() == 0:
        meta = demo.load_or_generate(root, **kwargs)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("demo corpus ready")
    if jax.process_index() != 0:
        with open(os.path.join(root, "zeroshot.json")) as f:
            meta = json.load(f)
    if not config.data.train:
        config.data.train = os.path.join(root, meta["train_shards"])
    card = os.path.join(root, "zeroshot.json")
    for key in ("zeroshot", "retrieval", "fewshot"):
        if not config.eval[key]:
            config.eval[key] = card


def _due(every: int, step: int, total: int, at_end: bool) -> bool:
    return (every > 0 and step % every == 0) or (at_end and step == total)


TOKENIZER_TRAIN_CAPTIONS = 100_000


def prepare_tokenizer(config, workdir: str):
    """The run's tokenizer, saved in ``<workdir>/tokenizer`` (and reused from there on resume).

    ``data.tokenizer``: ``clip_bpe:PATH`` | ``hf:PATH`` | ``train`` (fit a byte-level BPE on the
    first captions of ``data.train``). The model's ``text.vocab_size`` follows the tokenizer
    unless it was set explicitly, in which case a mismatch is an error.
    """
    if config.data.source == "synthetic":
        return None
    from clip_jax.data import tokenizer as tok_lib

    tok_dir = os.path.join(workdir, "tokenizer")
    spec = config.data.tokenizer
    if os.path.exists(os.path.join(tok_dir, "tokenizer_config.json")):
        tok = tok_lib.load_tokenizer(tok_dir)
    elif spec == "train":
        from clip_jax.data import pipeline

        size = config.data.tokenizer_vocab_size or config_lib.resolve_model_config(
            config.model).text.vocab_size
        captions = []
        for _, _, caption in pipeline.iterate_samples(config.data.train, decode=False):
            if caption:
                captions.append(caption)
            if len(captions) >= TOKENIZER_TRAIN_CAPTIONS:
                break
        # Every process fits the same tokenizer from the same captions (deterministic), so no
        # shared filesystem is needed; process 0 keeps the copy in the workdir.
        out = tok_dir if jax.process_index() == 0 else os.path.join(
            workdir, f".tokenizer.{jax.process_index()}")
        tok = tok_lib.train_tokenizer(captions, size, out)
    else:
        tok = tok_lib.load_tokenizer(spec)
        if jax.process_index() == 0:
            tok.save(tok_dir)
    explicit = config.model.text.vocab_size
    if explicit is not None and explicit != tok.vocab_size:
        raise ValueError(f"the tokenizer ({spec}) has {tok.vocab_size} tokens but "
                         f"model.text.vocab_size={explicit}; drop the override or make them equal")
    preset = config_lib.resolve_model_config(config.model).text.vocab_size
    if preset != tok.vocab_size:
        config.model.text.vocab_size = tok.vocab_size
    return tok


def _make_evaluator(setup: Setup, workdir: str, tokenizer):
    from clip_jax.evaluate import evaluators

    return evaluators.make_train_evaluator(setup, tokenizer, workdir)


def init_from(setup: Setup, config) -> TrainState:
    """Fresh optimizer state, parameters from a checkpoint/bundle (fine-tuning)."""
    from clip_jax import checkpoint

    params = checkpoint.load_params(config.checkpoint.init_from, setup.abstract_state.params,
                                    setup.state_shardings.params)
    state = init_state(setup)
    return state.replace(params=params)


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str]) -> int:
    """``python -m clip_jax.train --config FILE --workdir DIR [--config.key=value ...]
    [--verbose]``; errors are reported by :func:`clip_jax.cli.run`."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    config, workdir = parse_flags(["clip_jax.train", *argv])
    from clip_jax import distributed

    distributed.initialize()
    last = train(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps({"final": last}, sort_keys=True))
        print(summary(last, workdir))
    return 0


def parse_flags(argv: list[str]):
    """``(config, workdir)`` from the command line, or a :class:`clip_jax.cli.UserError` in one
    line (a mistyped key, a bad value, a missing or broken config file)."""
    from absl import flags
    from ml_collections.config_flags import config_flags

    if "config" not in flags.FLAGS:
        _define_flags()
    try:
        flags.FLAGS(argv)
    except Exception as e:  # absl raises KeyError/AttributeError for a mistyped key
        what = "unknown config key" if isinstance(e, KeyError | AttributeError) else \
            "command line"
        raise cli.UserError(f"{what}: {cli.one_line(e)}") from None
    config = flags.FLAGS.config
    if not isinstance(config, ml_collections.ConfigDict):  # absl keeps the load error inside
        path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
        if not os.path.isfile(path):
            raise cli.UserError(f"--config {path}: no such file")
        error = object.__getattribute__(config, "_error")
        cause = error.__cause__ or error
        raise cli.UserError(f"--config {path} could not be loaded: "
                            f"{cli.one_line(cause)}") from None
    return config, flags.FLAGS.workdir


def summary(last: dict, workdir: str) -> str:
    """The closing lines a person reads: final loss and the evaluation headline numbers."""
    lines = [f"done: {workdir} | loss {last.get('loss', float('nan')):.4f}"]
    zs = last.get("eval/zeroshot/top1")
    if zs is not None:
        report = os.path.join(workdir, "eval")
        lines.append(f"zero-shot top-1 accuracy: {zs:.1%} (reports and plots in {report})")
    for key in sorted(k for k in last if k.startswith("eval/") and k != "eval/zeroshot/top1"):
        lines.append(f"  {key[5:]}: {last[key]:.4f}")
    return "\n".join(lines)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
    flags.DEFINE_bool("verbose", False, "Print the full traceback on errors.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    import sys

    sys.exit(cli.run(main))
