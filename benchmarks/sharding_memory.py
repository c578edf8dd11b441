"""Per-device parameter + optimizer memory under FSDP / tensor-parallel meshes.

    python benchmarks/sharding_memory.py --model ViT-L-14 --devices 8
    python benchmarks/sharding_memory.py --model ViT-B-16 --devices 1 --meshes 1,1,1 \
        --frozen image                       # LiT: no optimizer state for the image tower
    python benchmarks/sharding_memory.py --model ViT-bigG-14 --devices 256 \\
        --meshes 256,1,1 1,256,1 1,64,4 4,64,1

Computed from the real shardings (the logical rules of clip_jax.sharding applied to the model's
parameters and AdamW state) on an abstract mesh: nothing is allocated, so a pod's plan runs on
a laptop. Prints a markdown table and one JSON line per mesh.
"""

from __future__ import annotations

import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--meshes", nargs="*", default=["8,1,1", "1,8,1", "2,4,1", "1,4,2", "1,2,4"],
                    help="data,fsdp,tensor triples")
    ap.add_argument("--param-dtype", default="float32")
    ap.add_argument("--frozen", nargs="*", default=[],
                    help="optimizer.frozen (regexes or presets image / text): also report the "
                         "optimizer state with those parameters frozen")
    args = ap.parse_args()

    from clip_jax import config as config_lib
    from clip_jax import plan

    rows = []
    for triple in args.meshes:
        c = config_lib.base_config()
        c.model.name = args.model
        c.model.param_dtype = args.param_dtype
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in triple.split(","))
        c.batch_size = args.devices * 8
        p = plan.abstract_plan(c, args.devices)
        total = p["param_gib_per_device"] + p["opt_gib_per_device"]
        replicated = 3 * p["param_gib_replicated"]  # params + Adam mu + nu
        rows.append((triple, p, total, replicated))
        if args.frozen:
            c.optimizer.frozen = tuple(args.frozen)
            f = plan.abstract_plan(c, args.devices)
            print(json.dumps({"model": args.model, "mesh": p["mesh"], "frozen": args.frozen,
                              "opt_bytes_per_device": round(p["opt_gib_per_device"] * 2**30),
                              "opt_bytes_per_device_frozen": round(
                                  f["opt_gib_per_device"] * 2**30),
                              "opt_gib_saved_per_device": round(
                                  p["opt_gib_per_device"] - f["opt_gib_per_device"], 4),
                              "opt_state_fraction_left": round(
                                  f["opt_gib_per_device"] / p["opt_gib_per_device"], 4)}))
        print(json.dumps({"model": args.model, "mesh": p["mesh"], "params": p["params"],
                          "param_gib_per_device": round(p["param_gib_per_device"], 4),
                          "opt_gib_per_device": round(p["opt_gib_per_device"], 4),
                          "total_gib_per_device": round(total, 4),
                          "replicated_gib": round(replicated, 4),
                          "saving": round(replicated / total, 2)}))
    print(f"\n{args.model}: {rows[0][1]['params']:,} parameters, {args.devices} devices, "
          f"{args.param_dtype} params + AdamW (mu, nu)\n")
    print("| mesh (data,fsdp,tensor) | params GiB/device | optimizer GiB/device | total | "
          "vs replicated |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for triple, p, total, replicated in rows:
        print(f"| {triple} | {p['param_gib_per_device']:.3f} | {p['opt_gib_per_device']:.3f} | "
              f"{total:.3f} | {replicated / total:.1f}x smaller |")


if __name__ == "__main__":
    main()
