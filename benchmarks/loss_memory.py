"""Peak memory and time of the contrastive loss + its gradient: dense vs blockwise.

One configuration (prints one JSON line; runs in a fresh child process with XLA_FLAGS set, so
that the peak RSS is this configuration's alone)::

    python benchmarks/loss_memory.py --global-batch 16384 --dim 512 --devices 8 --impl blockwise

A sweep over the global batch (4096 .. 131072 by default), both implementations, writing
``loss_memory.md`` (a table), ``loss_memory.png`` (a plot) and ``loss_memory.jsonl`` to --out::

    python benchmarks/loss_memory.py --sweep --dim 512 --devices 8 --out /tmp/loss_memory
    # add --resume to reuse the finished runs of an interrupted sweep in the same --out

The loss runs inside ``jax.shard_map`` over ``--devices`` simulated CPU devices (0 = the real
devices of the default backend), the global batch sharded over them, and differentiates
w.r.t. both feature matrices and the scale. ``peak_rss_mb`` is the child's peak resident set
(``ru_maxrss``): on simulated CPU devices, the sum over all of them, plus the JAX runtime and
the features; ``baseline_rss_mb`` is the RSS before compiling the loss (runtime + features), and
``loss_rss_mb`` the difference, which is what the loss itself costs. ``seconds`` is one
compiled execution (compile time apart). In a sweep, a dense configuration whose memory --
extrapolated quadratically from the previous size -- would pass ``--mem-limit-gb`` (default
80% of available memory) is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD_ENV = "CLIP_JAX_LOSS_MEMORY_CHILD"
REPO = Path(__file__).resolve().parents[1]
SWEEP_SIZES = (4096, 8192, 16384, 32768, 65536, 131072)


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--global-batch", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices (0 = real)")
    ap.add_argument("--impl", default="blockwise", choices=["dense", "blockwise"])
    ap.add_argument("--loss", default="clip", choices=["clip", "siglip"])
    ap.add_argument("--block-size", type=int, default=512,
                    help="blockwise tile width (columns); 0 = the local batch")
    ap.add_argument("--sweep", action="store_true", help="sweep --sizes for both impls")
    ap.add_argument("--sizes", default=",".join(map(str, SWEEP_SIZES)))
    ap.add_argument("--out", default="benchmarks/results/loss_memory")
    ap.add_argument("--mem-limit-gb", type=float, default=0.0,
                    help="sweep: skip dense sizes predicted above this (0 = 80%% of available)")
    ap.add_argument("--resume", action="store_true",
                    help="sweep: reuse the successful runs already in --out/loss_memory.jsonl")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per configuration, seconds")
    return ap.parse_args()


# ---------------------------------------------------------------------------------------------
# The measurement (child process)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(args) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, str(REPO))
    from clip_jax import losses

    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,))
    n_global, dim = args.global_batch, args.dim
    if n_global % len(devices):
        raise SystemExit(f"--global-batch {n_global} is not a multiple of {len(devices)} devices")
    batch = NamedSharding(mesh, P("data"))

    @functools.partial(jax.jit, out_shardings=(batch, batch))
    def features(key):
        k1, k2 = jax.random.split(key)
        x = jax.random.normal(k1, (n_global, dim), jnp.float32)
        y = x + jax.random.normal(k2, (n_global, dim), jnp.float32)
        norm = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)
        return norm(x), norm(y)

    img, txt = jax.block_until_ready(features(jax.random.key(0)))
    scale, bias = jnp.float32(1 / 0.07), jnp.float32(-10.0)
    baseline = _rss_mb()

    block = args.block_size or None
    if args.loss == "clip":
        fn = (losses.clip_loss if args.impl == "dense" else
              functools.partial(losses.clip_loss_blockwise, block_size=block))
        body = lambda i, t, s, b: fn(i, t, s, axis_name="data")
    else:
        fn = (losses.siglip_loss if args.impl == "dense" else
              functools.partial(losses.siglip_loss_blockwise, block_size=block))
        body = lambda i, t, s, b: fn(i, t, s, b, axis_name="data")
    loss = jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()),
                         out_specs=P())
    argnums = (0, 1, 2) if args.loss == "clip" else (0, 1, 2, 3)
    step = jax.jit(jax.value_and_grad(loss, argnums=argnums))

    t0 = time.perf_counter()
    compiled = step.lower(img, txt, scale, bias).compile()
    compile_s = time.perf_counter() - t0
    stats = compiled.memory_analysis()
    temp_mb = stats.temp_size_in_bytes / 2**20 if stats is not None else None

    t0 = time.perf_counter()
    value, grads = jax.block_until_ready(compiled(img, txt, scale, bias))
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mb()
    return {
        "impl": args.impl, "loss": args.loss, "global_batch": n_global, "dim": dim,
        "devices": len(devices), "device": devices[0].device_kind,
        "block_size": (block or n_global // len(devices)) if args.impl == "blockwise" else None,
        "peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
        "loss_rss_mb": round(peak - baseline, 1),
        "xla_temp_mb": None if temp_mb is None else round(temp_mb, 1),
        "seconds": round(seconds, 3), "compile_seconds": round(compile_s, 2),
        "loss_value": float(value), "d_scale": float(grads[2]),
    }


# ---------------------------------------------------------------------------------------------
# Parent: re-exec per configuration, sweep, report


def run_child(args, impl: str, n_global: int) -> dict:
    """One configuration in a fresh process; returns its JSON or a failure record."""
    env = dict(os.environ, **{CHILD_ENV: "1"})
    if args.devices:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={args.devices}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--global-batch", str(n_global),
           "--dim", str(args.dim), "--devices", str(args.devices), "--impl", impl,
           "--loss", args.loss, "--block-size", str(args.block_size)]
    record = {"impl": impl, "loss": args.loss, "global_batch": n_global, "dim": args.dim}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**record, "status": f"timeout>{args.timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else (
            f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        return {**record, "status": f"failed: {why}"}
    return {**json.loads(lines[-1]), "status": "ok"}


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = {ln.split(":")[0]: ln.split()[1] for ln in f}
    return int(info.get("MemAvailable", info["MemTotal"])) / 1024


def _cell(v, fmt="{:,.0f}"):
    return "--" if v is None else fmt.format(v)


def write_report(records: list[dict], out: Path, args) -> str:
    sizes = sorted({r["global_batch"] for r in records})
    by = {(r["impl"], r["global_batch"]): r for r in records}
    lines = [
        f"Loss + gradient (`{args.loss}`, dim {args.dim}, {args.devices or 'real'} devices, "
        f"blockwise tile {args.block_size or 'local batch'} columns): peak RSS of a fresh "
        "process (MiB), the part above the runtime + features baseline, and one compiled "
        "execution (s).",
        "",
        "| global batch | local batch | dense peak RSS | dense loss RSS | dense s | "
        "blockwise peak RSS | blockwise loss RSS | blockwise s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        row = [f"{n:,}", f"{n // max(args.devices, 1):,}"]
        for impl in ("dense", "blockwise"):
            r = by.get((impl, n))
            if r is None or r.get("status") != "ok":
                why = "not run" if r is None else r["status"]
                row += [why, "--", "--"]
            else:
                row += [_cell(r["peak_rss_mb"]), _cell(r["loss_rss_mb"]),
                        _cell(r["seconds"], "{:.2f}")]
        lines.append("| " + " | ".join(row) + " |")
    ok = [by[k] for k in sorted(by) if by[k].get("status") == "ok" and k[0] == "blockwise"]
    if len(ok) >= 2:
        per = [f"{r['loss_rss_mb'] * 1024 / r['global_batch']:.1f} KiB at "
               f"N={r['global_batch']:,}" for r in (ok[0], ok[-1])]
        lines += ["", f"Blockwise loss RSS per sample: {per[0]}, {per[1]} "
                  "(flat = linear growth in N)."]
    table = "\n".join(lines) + "\n"
    (out / "loss_memory.md").write_text(table)
    _plot(records, out / "loss_memory.png", args)
    return table


def _plot(records, path: Path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl, style, color in (("dense", "o-", "C0"), ("blockwise", "s-", "C1")):
        rs = sorted((r for r in records if r["impl"] == impl and r.get("status") == "ok"),
                    key=lambda r: r["global_batch"])
        if not rs:
            continue
        ns = [r["global_batch"] for r in rs]
        ax_mem.plot(ns, [r["peak_rss_mb"] for r in rs], style, color=color,
                    label=f"{impl}: peak RSS")
        ax_mem.plot(ns, [max(r["loss_rss_mb"], 1.0) for r in rs], "--", marker=style[0],
                    color=color, alpha=0.6, label=f"{impl}: above baseline")
        ax_t.plot(ns, [r["seconds"] for r in rs], style, color=color, label=impl)
    for ax in (ax_mem, ax_t):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("global batch N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_mem.set_ylabel("MiB")
    ax_mem.set_title(f"{args.loss} loss + grad memory ({args.devices} devices, dim {args.dim})")
    ax_t.set_ylabel("seconds")
    ax_t.set_title("one loss + grad execution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _key(rec) -> tuple:
    return (rec["impl"], rec["loss"], rec["global_batch"], rec["dim"], rec.get("devices"),
            rec.get("block_size") if rec["impl"] == "blockwise" else None)


def sweep(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    limit_mb = args.mem_limit_gb * 1024 or 0.8 * _available_mb()
    path = out / "loss_memory.jsonl"
    done = {}
    if args.resume and path.exists():  # reuse successful measurements of the same configuration
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("status") == "ok":
                done[_key(rec)] = rec
    records = []
    with path.open("w") as log:
        for impl in ("blockwise", "dense"):
            last_ok, failed = None, False
            for n in sizes:
                base = {"impl": impl, "loss": args.loss, "global_batch": n, "dim": args.dim}
                block = args.block_size or n // max(args.devices, 1)
                key = _key({**base, "devices": args.devices or None, "block_size": block})
                predicted = None
                if impl == "dense" and last_ok is not None:  # memory ~ a + b N^2
                    r = n / last_ok["global_batch"]
                    predicted = last_ok["baseline_rss_mb"] * r + last_ok["loss_rss_mb"] * r * r
                if failed:
                    rec = {**base, "status": "skipped (a smaller size failed)"}
                elif predicted is not None and predicted > limit_mb:
                    rec = {**base, "status": f"skipped (predicted ~{predicted / 1024:.0f} GiB > "
                                             f"{limit_mb / 1024:.0f} GiB)"}
                elif key in done:
                    rec = done[key]
                else:
                    rec = run_child(args, impl, n)
                if rec.get("status") == "ok":
                    last_ok = rec
                elif rec["status"].startswith(("failed", "timeout")):
                    failed = True
                records.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
    print(write_report(records, out, args))


def main():
    args = _parse()
    if os.environ.get(CHILD_ENV):
        print(json.dumps(measure(args)), flush=True)
    elif args.sweep:
        sweep(args)
    else:
        rec = run_child(args, args.impl, args.global_batch)
        print(json.dumps(rec), flush=True)
        if rec.get("status") != "ok":
            sys.exit(1)


if __name__ == "__main__":
    main()
