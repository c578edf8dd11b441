"""What the weight EMA (``ema.decay`` > 0, clip_jax/ema.py) costs per train step.

    python benchmarks/ema_step.py --model tiny --batch 64 --steps 20
    python benchmarks/ema_step.py --model ViT-B-16 --batch 16 --steps 6 --every-steps 1

Builds the same run twice, EMA off and on (``--decay``, ``--every-steps``), compiles both steps
and times them interleaved (off, on, off, on, ...: a shared machine's load falls on both
alike); also times the average's update alone (``ema.update`` on the params, jitted with their
shardings, every step due) and counts the memory the average adds (float32, sharded like the
params). Prints one JSON line: median wall and CPU seconds per step of each, the difference,
and the update alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="a preset name")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each (interleaved)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--decay", type=float, default=0.9999)
    ap.add_argument("--every-steps", type=int, default=1)
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1 = fill)")
    ap.add_argument("--devices", type=int, default=0, help="simulated CPU devices (0 = real)")
    args = ap.parse_args()
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")

    import jax
    import numpy as np

    from clip_jax import config as config_lib
    from clip_jax import ema, input_pipeline, train
    from clip_jax.data.synthetic import SyntheticSource

    def setup_for(decay):
        c = config_lib.base_config()
        c.model.name, c.model.dtype = args.model, args.dtype
        c.batch_size, c.total_steps = args.batch, 10 * args.steps + 10
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in args.mesh.split(","))
        c.ema.decay, c.ema.every_steps = decay, args.every_steps
        setup = train.build(c)
        return setup, train.init_state(setup), train.make_train_step(setup)

    runs = {"off": setup_for(0.0), "on": setup_for(args.decay)}
    m = runs["off"][0].model_cfg
    data = SyntheticSource(runs["off"][0].local_batch_size, m.vision.image_size,
                           m.text.context_length, m.text.vocab_size)
    sharding = runs["off"][0].batch_sharding
    states = {k: v[1] for k, v in runs.items()}
    for name, (_, _, step) in runs.items():  # compile + warm up
        states[name], metrics = step(states[name], input_pipeline.to_global(sharding,
                                                                            next(data)))
        jax.block_until_ready(metrics)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(args.steps):
        for name, (_, _, step) in runs.items():
            batch = input_pipeline.to_global(sharding, next(data))
            t, c0 = time.perf_counter(), time.process_time()
            states[name], metrics = step(states[name], batch)
            jax.block_until_ready(metrics)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c0)

    # the average's update alone, every step due
    setup_on, state = runs["on"][0], states["on"]
    cfg = setup_on.config.ema.copy_and_resolve_references()
    cfg.every_steps, cfg.start_step = 1, 0
    shard = setup_on.state_shardings
    update = jax.jit(functools.partial(ema.update, cfg), in_shardings=(
        shard.ema, shard.params, None), out_shardings=shard.ema, donate_argnums=(0,))
    avg = jax.block_until_ready(update(state.ema, state.params, np.int32(1)))
    alone = []
    for i in range(max(5, args.steps)):
        t = time.perf_counter()
        avg = jax.block_until_ready(update(avg, state.params, np.int32(i + 2)))
        alone.append(time.perf_counter() - t)

    med = {k: float(np.median(v)) for k, v in wall.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    n = int(sum(x.size for x in jax.tree.leaves(state.params)))
    print(json.dumps({
        "model": args.model, "batch": args.batch, "dtype": args.dtype,
        "mesh": dict(setup_on.mesh.shape), "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "params": n, "decay": args.decay,
        "every_steps": args.every_steps,
        "ema_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.ema))),
        "step_seconds_off": round(med["off"], 5), "step_seconds_on": round(med["on"], 5),
        "extra_seconds_per_step": round(med["on"] - med["off"], 5),
        "extra_fraction": round(med["on"] / med["off"] - 1, 4),
        "cpu_seconds_off": round(med_cpu["off"], 5), "cpu_seconds_on": round(med_cpu["on"], 5),
        "update_alone_seconds": round(float(np.median(alone)), 5),
        "update_alone_fraction_of_step": round(float(np.median(alone)) / med["off"], 4),
    }))


if __name__ == "__main__":
    main()
