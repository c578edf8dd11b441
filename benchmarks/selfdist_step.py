"""What self-distillation's terms (SILC, TIPS: clip_jax/objectives/silc.py, tips.py) cost per
train step, each alone and together, against the same run without them (the EMA on in all).

    python benchmarks/selfdist_step.py --config configs/siglip_demo.py --batch 32 --steps 6

Builds the run four times (``off``, ``silc``, ``tips``, ``both``: the terms' weights > 0,
switched on from step 0), compiles each step and times them interleaved (a shared machine's
load falls on all alike), on synthetic batches that carry the views (the host-side cropping is
not in the step and not timed). Prints one JSON line: the median wall and CPU seconds per step
of each and each one's extra fraction over ``off``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/siglip_demo.py")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each (interleaved)")
    ap.add_argument("--local-crops", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=0, help="both heads' prototypes (0: theirs)")
    args = ap.parse_args()

    import jax
    import numpy as np

    from clip_jax import input_pipeline, train
    from clip_jax.data import views
    from clip_jax.data.synthetic import SyntheticSource

    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def config_for(name):
        c = module.get_config()
        c.batch_size, c.accum_steps, c.total_steps = args.batch, 1, 10 * args.steps + 10
        c.data.source = "synthetic"
        c.ema.decay = 0.996
        c.silc.local_crops = args.local_crops
        for t in ("silc", "tips"):
            c[t].start_fraction = 0.0
            c[t].weight = 1.0 if name in (t, "both") else 0.0
            c[t].head_dim = args.head_dim or c[t].head_dim
        return c

    runs = {}
    for name in ("off", "silc", "tips", "both"):
        setup = train.build(config_for(name))
        runs[name] = (setup, train.init_state(setup), train.make_train_step(setup))
    c, m = config_for("both"), runs["both"][0].model_cfg
    data = SyntheticSource(args.batch, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, views=views.spec_from_config(
                               c, m.vision.image_size, m.vision.patch_size))
    sharding = runs["off"][0].batch_sharding
    states, compile_s = {k: v[1] for k, v in runs.items()}, {}
    for name, (_, _, step) in runs.items():  # compile + warm up
        t = time.perf_counter()
        states[name], metrics = step(states[name], input_pipeline.to_global(sharding,
                                                                            next(data)))
        jax.block_until_ready(metrics)
        compile_s[name] = round(time.perf_counter() - t, 1)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(args.steps):
        batch = input_pipeline.to_global(sharding, next(data))
        for name, (_, _, step) in runs.items():
            t, c0 = time.perf_counter(), time.process_time()
            states[name], metrics = step(states[name], batch)
            jax.block_until_ready(metrics)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c0)
    med = {k: float(np.median(v)) for k, v in wall.items()}
    print(json.dumps({
        "config": args.config, "batch": args.batch, "local_crops": args.local_crops,
        "local_size": views.local_size(c.silc, m.vision.image_size, m.vision.patch_size),
        "image_size": m.vision.image_size, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "head_dims": [int(c.silc.head_dim), int(c.tips.head_dim)],
        "first_step_seconds": compile_s,
        "step_seconds": {k: round(v, 4) for k, v in med.items()},
        "cpu_seconds": {k: round(float(np.median(v)), 4) for k, v in cpu.items()},
        "extra_fraction": {k: round(med[k] / med["off"] - 1, 3) for k in med if k != "off"},
    }))


if __name__ == "__main__":
    main()
