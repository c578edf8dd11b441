"""An image tower's training forward + backward alone: seconds per call and, with ``--profile``,
where the op time goes (XLA ops grouped by the primitive they came from, forward and backward
apart, and the slowest single ops).

    python benchmarks/image_tower.py                          # RN50.json at batch 8
    python benchmarks/image_tower.py --model-config benchmarks/model_configs/convnext_base.json
    python benchmarks/image_tower.py --batch 8 --reps 6 --profile

The tower of an open_clip model-config JSON (``--model-config``) in training mode (BatchNorm on
the batch's statistics, updating them), the gradient of a scalar of its output with respect to
its params: the image half of ``benchmarks/vs_open_clip.py``'s step without the text tower, the
loss and AdamW, so a change to a convolution or a norm shows in seconds, not minutes. Prints
the best and median wall seconds and the best CPU seconds (all threads) of ``--reps`` calls
after a warm-up, and the compiled call's temporary memory (XLA's buffer assignment: the
activations kept for the backward, not the compiler's own), then one JSON line. The op times
of ``--profile`` are summed over threads.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_META = re.compile(r"^\s*%?([\w.\-]+) = \S+ [\w-]+\(.*?metadata=\{op_name=\"([^\"]*)\"", re.M)


def build(config_path: str, batch: int):
    import jax
    import jax.numpy as jnp

    from clip_jax import models

    with open(config_path) as f:
        cfg = models.from_open_clip_config(json.load(f))
    tower = models.CLIP(cfg)
    size = cfg.vision.image_size
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    variables = jax.jit(tower.init)(jax.random.key(1), *models.init_inputs(cfg))
    stats = variables.get(models.STATS, {})

    params = dict(variables["params"])
    visual = params.pop("visual")

    def loss(visual, stats):  # the gradient of the image tower's params only
        v = {"params": {**params, "visual": visual}, **({models.STATS: stats} if stats else {})}
        y, new = tower.apply(v, images, train=True, method="encode_image",
                             mutable=[models.STATS] if stats else [],
                             rngs={"patch_dropout": jax.random.key(2)})  # ConvNeXt drop path
        return jnp.sum(jnp.square(y)) * 1e-3, new

    return jax.jit(jax.grad(loss, has_aux=True)), (visual, stats)


def profile(fn, args) -> tuple[dict, dict, dict]:
    import jax

    meta = dict(_META.findall(fn.lower(*args).compile().as_text()))
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            jax.block_until_ready(fn(*args))
        trace = glob.glob(f"{out}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(trace))["traceEvents"]
    kinds: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, float] = collections.defaultdict(float)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "Thunk", "end:")):
            continue
        op = meta.get(name, "")
        prim = re.sub(r"\d+$", "", op.split("/")[-1]) or "(runtime)"
        way = "backward" if "transpose(" in op else "forward"
        kinds[f"{way} {prim} [{re.sub(r'[.0-9]+$', '', name)}]"] += e["dur"] / 1e3
        ops[name] += e["dur"] / 1e3
    return kinds, ops, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", default=os.path.join(HERE, "model_configs", "RN50.json"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="op time by kind, and the top ops")
    args = ap.parse_args()
    import jax

    fn, params = build(args.model_config, args.batch)
    compiled = fn.lower(*params).compile()
    temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2**30
    jax.block_until_ready(compiled(*params))
    wall, cpu = [], []
    for _ in range(args.reps):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*params))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(f"{os.path.basename(args.model_config)} batch {args.batch}: wall best {min(wall):.3f} s, "
          f"median {statistics.median(wall):.3f} s; CPU best {min(cpu):.3f} s; "
          f"XLA temporaries {temp_gib:.2f} GiB")
    result = {"model_config": os.path.basename(args.model_config), "batch": args.batch,
              "wall_best": round(min(wall), 4), "wall_median": round(statistics.median(wall), 4),
              "cpu_best": round(min(cpu), 4), "temp_gib": round(temp_gib, 3)}
    if args.profile:
        kinds, ops, meta = profile(fn, params)
        result["op_ms_total"] = round(sum(ops.values()))
        print(f"op time, summed over threads: {result['op_ms_total']} ms")
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:20]:
            print(f"{v:9.1f} ms  {k}")
        print("slowest ops:")
        for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
            print(f"{v:9.1f} ms  {k:28s} {meta.get(k, '')[-80:]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
