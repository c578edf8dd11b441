"""Train-step throughput: samples/s, step time, compile time and MFU against a measured peak.

    python benchmarks/train_step.py --model tiny --batch 64 --steps 20
    python benchmarks/train_step.py --model-config benchmarks/model_configs/bench-tiny.json \\
        --batch 128 --steps 5                      # any open_clip JSON, same as vs_open_clip.py
    python benchmarks/train_step.py --model ViT-B-32 --batch 256 --dtype bfloat16 --remat \\
        --mesh 1,-1,1                              # e.g. on one H100

``--patch-dropout P`` (FLIP) and ``--frozen image`` (LiT) time those steps; FLOPs and MFU are
still counted for the full model (every patch, both towers' backward), so compare their
``step_seconds``, not their MFU.

FLOPs per step are counted analytically (``clip_jax.flops``: the matmuls of forward + backward,
the standard MFU numerator; XLA's cost analysis counts a scanned block once, so it is printed
only as a cross-check, ``xla_tflops_per_step``, valid without ``--scan``). MFU is reported
twice: against the *measured* peak (the best
rate of a large matmul in the step's dtype on the same devices, timed first: what this machine
can really do) and against the *nominal* peak (a table for known accelerators; on CPU, cores x
(64 with AVX-512, else 32) fp32 FLOP/cycle x 3 GHz). ``--peak-tflops`` overrides the nominal
one. Images are sent as uint8 and normalised inside the step, as the train loop does. Besides
wall time it reports CPU seconds per step (all threads), which other load on a shared machine
disturbs less. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import ast
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


def _as_uint8(batch: dict) -> dict:
    """Synthetic float images -> uint8 pixels, as the webdataset pipeline delivers them."""
    import numpy as np

    img = np.clip(batch["image"] * 64 + 128, 0, 255).astype(np.uint8)
    return {**batch, "image": img}


def measured_peak_tflops(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    """The best rate (TFLOP/s) of an n x n @ n x n matmul in ``dtype`` over all local devices
    (one matmul per device, sharded over a 1-D mesh; on CPU the simulated devices share the
    cores, so this is the machine's rate either way)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    sh = NamedSharding(mesh, PartitionSpec("d"))
    k = len(devices)
    a = jax.device_put(jnp.ones((k, n, n), dtype) * 0.01, sh)
    b = jax.device_put(jnp.ones((k, n, n), dtype) * 0.01, sh)
    mm = jax.jit(lambda x, y: jnp.einsum("kij,kjl->kil", x, y), out_shardings=sh)
    jax.block_until_ready(mm(a, b))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * k * n**3 / best / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="a preset name")
    ap.add_argument("--model-config", default="",
                    help="an open_clip model-config JSON (overrides --model)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", nargs="?", const="full", default="none",
                    help="a model.remat policy (bare --remat: full)")
    ap.add_argument("--scan", action="store_true")
    ap.add_argument("--loss", default="clip", choices=["clip", "siglip"])
    ap.add_argument("--loss-impl", default="dense", choices=["dense", "blockwise"])
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1 = fill)")
    ap.add_argument("--devices", type=int, default=0, help="simulated CPU devices (0 = real)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="nominal peak override")
    ap.add_argument("--peak-size", type=int, default=2048,
                    help="matmul size (n x n @ n x n) timed for the measured peak")
    ap.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    ap.add_argument("--patch-dropout", type=float, default=0.0,
                    help="FLIP: fraction of image patches dropped in training (0 = off)")
    ap.add_argument("--frozen", nargs="*", default=[],
                    help="optimizer.frozen: regexes or the presets image / text (LiT: image)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any config key, e.g. --set model.vision.pool=map "
                         "--set stability.skip_nonfinite=False (repeatable)")
    args = ap.parse_args()
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")

    import jax
    import numpy as np

    from clip_jax import config as config_lib
    from clip_jax import flops as flops_lib
    from clip_jax import input_pipeline, train
    from clip_jax.data.synthetic import SyntheticSource

    c = config_lib.base_config()
    c.model.name = args.model
    c.model.open_clip_config = args.model_config
    if args.attention != "auto":
        c.model.attention = args.attention
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    c.model.scan = args.scan
    c.model.vision.patch_dropout = args.patch_dropout
    c.optimizer.frozen = tuple(args.frozen)
    c.batch_size = args.batch
    c.total_steps = args.steps
    c.loss, c.loss_impl = args.loss, args.loss_impl
    if args.loss == "siglip":
        c.model.init_logit_bias = -10.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in args.mesh.split(","))
    for item in args.set:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value

    setup = train.build(c)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(setup.local_batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 256, 0.5, 0)
    batch = input_pipeline.to_global(setup.batch_sharding, _as_uint8(next(data)))
    peak_measured = measured_peak_tflops(args.dtype, args.peak_size)

    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        compiled = step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # per-device SPMD program; simulated CPU devices share the cores
    xla_flops = (float(cost.get("flops", 0.0)) if cost else 0.0) * jax.device_count()
    counted = flops_lib.train_step_flops(setup.model_cfg, args.batch, remat=args.remat,
                                         loss=args.loss, loss_impl=args.loss_impl)
    flops = counted.model  # forward + backward of the whole global batch

    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times, cpu = [], []
    for _ in range(args.steps):
        batch = input_pipeline.to_global(setup.batch_sharding, _as_uint8(next(data)))
        t, c0 = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c0)
    step_s = float(np.median(times))

    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in kind), 0.0)
    if not peak and jax.default_backend() == "cpu":
        peak = (os.cpu_count() or 1) * _cpu_flops_per_cycle() * 3.0e9 / 1e12
    peak_total = peak * (1 if jax.default_backend() == "cpu" else jax.device_count())
    achieved = flops / step_s / 1e12
    print(json.dumps({
        "model": os.path.basename(args.model_config) if args.model_config else args.model,
        "patch_dropout": args.patch_dropout, "frozen": args.frozen, "set": args.set,
        "batch": args.batch, "dtype": args.dtype, "remat": args.remat, "scan": args.scan,
        "mesh": dict(setup.mesh.shape), "device": kind, "devices": jax.device_count(),
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_seconds": round(compile_s, 2), "step_seconds": round(step_s, 4),
        "cpu_seconds_per_step": round(float(np.median(cpu)), 4),
        "samples_per_sec": round(args.batch / step_s, 1),
        "tflops_per_step": round(flops / 1e12, 4), "achieved_tflops": round(achieved, 4),
        "xla_tflops_per_step": round(xla_flops / 1e12, 4),
        "peak_tflops_measured": round(peak_measured, 4),
        "mfu_measured": round(achieved / peak_measured, 4) if peak_measured else None,
        "peak_tflops_nominal": round(peak_total, 3),
        "mfu_nominal": round(achieved / peak_total, 4) if peak_total else None,
        "final_loss": float(metrics["loss"]),
    }))


if __name__ == "__main__":
    main()
