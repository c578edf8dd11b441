"""Train-step throughput: samples/s, step time, compile time and an MFU estimate.

    python benchmarks/train_step.py --model tiny --batch 64 --steps 20
    python benchmarks/train_step.py --model ViT-B-32 --batch 256 --dtype bfloat16 --remat \\
        --mesh 1,-1,1 --peak-tflops 989      # e.g. on one H100 (bf16 dense peak)

FLOPs per step come from XLA's cost analysis of the compiled step (forward + backward +
optimizer, what actually runs), so MFU = flops / step_time / peak. ``--peak-tflops`` defaults to a
table for known accelerators; on CPU it estimates cores x (64 with AVX-512, else 32) fp32
FLOP/cycle x 3 GHz,
which is a rough ceiling: treat CPU MFU as indicative only. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

PEAK_TFLOPS = {"TPU v4": 275, "TPU v5 lite": 197, "TPU v5p": 459, "H100": 989, "H200": 989,
               "A100": 312}


def _cpu_flops_per_cycle() -> int:
    """fp32 FLOP/cycle/core: 64 with AVX-512 (2 x 512-bit FMA), else 32 (2 x 256-bit FMA)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return 32
    return 64 if " avx512f" in flags else 32


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--scan", action="store_true")
    ap.add_argument("--loss", default="clip", choices=["clip", "siglip"])
    ap.add_argument("--loss-impl", default="dense", choices=["dense", "blockwise"])
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1 = fill)")
    ap.add_argument("--devices", type=int, default=0, help="simulated CPU devices (0 = real)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    args = ap.parse_args()
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")

    import jax
    import numpy as np

    from clip_jax import config as config_lib
    from clip_jax import train
    from clip_jax.data.synthetic import SyntheticSource

    c = config_lib.base_config()
    c.model.name = args.model
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    c.model.scan = args.scan
    c.batch_size = args.batch
    c.total_steps = args.steps
    c.loss, c.loss_impl = args.loss, args.loss_impl
    if args.loss == "siglip":
        c.model.init_logit_bias = -10.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in args.mesh.split(","))

    setup = train.build(c)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(setup.local_batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 256, 0.5, 0)
    batch = train.to_global(setup, next(data))

    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        compiled = step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        batch = train.to_global(setup, next(data))
        t = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))

    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in kind), 0.0)
    if not peak and jax.default_backend() == "cpu":
        peak = (os.cpu_count() or 1) * _cpu_flops_per_cycle() * 3.0e9 / 1e12
    # The cost analysis is of the per-device SPMD program; simulated CPU devices share the cores.
    flops *= jax.device_count()
    peak_total = peak * (1 if jax.default_backend() == "cpu" else jax.device_count())
    achieved = flops / step_s / 1e12
    print(json.dumps({
        "model": args.model, "batch": args.batch, "dtype": args.dtype, "remat": args.remat,
        "mesh": dict(setup.mesh.shape), "device": kind, "devices": jax.device_count(),
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_seconds": round(compile_s, 2), "step_seconds": round(step_s, 4),
        "samples_per_sec": round(args.batch / step_s, 1),
        "tflops_per_step": round(flops / 1e12, 4), "achieved_tflops": round(achieved, 4),
        "peak_tflops": round(peak_total, 3),
        "mfu": round(achieved / peak_total, 4) if peak_total else None,
        "final_loss": float(metrics["loss"]),
    }))


if __name__ == "__main__":
    main()
