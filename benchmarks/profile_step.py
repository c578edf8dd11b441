"""Where a training step's time goes, clip_jax against open_clip, grouped by what each op computes.

    python benchmarks/profile_step.py                    # bench-tiny.json at batch 128
    python benchmarks/profile_step.py --preset ViT-B-32  # open_clip's ViT-B-32 at batch 16

clip_jax: ``jax.profiler.trace`` of ``--steps`` steps of the same runner as
``benchmarks/vs_open_clip.py``; each executed op (an XLA fusion or thunk) is matched to the
compiled HLO's ``op_name`` metadata, which names the Flax module and the JAX primitive it came
from (``.../resblocks_3/mlp/erf``), and grouped. open_clip: ``torch.profiler`` (CPU) on its step,
aten ops grouped the same way. Prints a Markdown table of milliseconds per step and a JSON line.
The forward and backward of each part are counted together: XLA runs independent ops
concurrently, so its sum of op durations exceeds its wall time; torch's CPU ops run one after
another. Without torch/open_clip only the clip_jax column is printed.

    python benchmarks/profile_step.py --ablate

measures instead what each part really costs inside clip_jax's step, where the sum of op
durations overstates element-wise ops that run beside a matmul: the step time with the layer
norms, the GELUs or the attention core (scores, softmax, values) replaced by a pass-through
(``x * scale + bias``, ``x``, ``v``), each in a fresh process, minus the full step's time,
and the MFU each ablated step reaches (analytic FLOPs of :mod:`clip_jax.flops` over the
measured matmul peak, as ``train_step.py`` reports it): the ceiling if that part were free.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_open_clip import PRESETS, _JaxRunner, _TorchRunner  # noqa: E402

PARTS = ("projection + MLP matmuls", "attention core (scores, softmax, values)", "GELU",
         "layer norm", "other (embedding, residual adds, loss, AdamW, copies)",
         "runtime (thread pool, dispatch)")
_PROJ = ("btd,dshk", "bthk,hkd", "bhtk,hkd", "/mlp/c_fc/dot", "/mlp/c_proj/dot", "conv1",
         "/proj", "text_projection")
_META = re.compile(r"^\s*%?([\w.\-]+) = \S+ [\w-]+\(.*?metadata=\{op_name=\"([^\"]*)\"", re.M)


def _jax_part(op_name: str) -> str:
    if not op_name:
        return PARTS[5]
    proj = any(k in op_name for k in _PROJ)
    dot = "dot_general" in op_name
    if "/attn/" in op_name and not proj:
        return PARTS[1]
    if proj or (dot and ("/attn/" in op_name or "/mlp/" in op_name)):
        return PARTS[0]
    if "/mlp/" in op_name:
        return PARTS[2]
    if "/ln" in op_name:
        return PARTS[3]
    return PARTS[4]


def profile_jax(config_path: str, batch: int, steps: int) -> dict[str, float]:
    import jax

    r = _JaxRunner(config_path, batch)
    with jax.set_mesh(r.setup.mesh):
        hlo = r.step.jitted.lower(r.state, r.batch).compile().as_text()
    meta = dict(_META.findall(hlo))
    r.run(2)
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            r.run(steps)
        trace = glob.glob(f"{out}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(trace))["traceEvents"]
    parts: dict[str, float] = collections.defaultdict(float)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "Thunk", "end:")):
            continue
        parts[_jax_part(meta.get(name, ""))] += e["dur"] / steps / 1e3
    return parts


def _torch_part(op: str) -> str:
    if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution",
              "aten::convolution_backward"):
        return PARTS[0]
    if "scaled_dot_product" in op or "softmax" in op:
        return PARTS[1]
    if "gelu" in op:
        return PARTS[2]
    if "layer_norm" in op:
        return PARTS[3]
    if op.startswith(("autograd::", "Optimizer")) or op.endswith("Backward0"):
        return PARTS[5]
    return PARTS[4]


def profile_torch(config_path: str, batch: int, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    r = _TorchRunner(config_path, batch)
    r.run(2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        r.run(steps)
    parts: dict[str, float] = collections.defaultdict(float)
    for e in prof.key_averages():
        parts[_torch_part(e.key)] += e.self_cpu_time_total / steps / 1e3
    return parts


ABLATIONS = ("none", "layer norm", "GELU", "attention core", "all three")


def _ablated_step(what: str, config_path: str, batch: int, rounds: int, conn) -> None:
    from clip_jax import layers

    if what in ("layer norm", "all three"):
        layers.layer_norm = lambda x, scale, bias, eps=1e-5: x * scale + bias
    if what in ("GELU", "all three"):
        layers.ACTIVATIONS["gelu"] = lambda x: x
    if what in ("attention core", "all three"):
        layers.attention = lambda q, k, v, causal, implementation="auto": v
    r = _JaxRunner(config_path, batch)
    r.run(2)
    conn.send(min(r.run(2)[0] / 2 for _ in range(rounds)))


def _flops_and_peak(config_path: str, batch: int, conn) -> None:
    """Analytic model FLOPs of one step (the MFU numerator of ``train_step.py``) and the
    measured matmul peak (TFLOP/s), in a fresh process like the ablations."""
    from train_step import measured_peak_tflops

    from clip_jax import flops, models

    with open(config_path) as f:
        cfg = models.from_open_clip_config(json.load(f))
    conn.send((flops.train_step_flops(cfg, batch).model / 1e12, measured_peak_tflops("float32")))


def ablate(config_path: str, batch: int, rounds: int = 4) -> dict[str, float]:
    """Best step seconds of clip_jax's step with each part replaced by a pass-through."""
    return {what: _in_child(_ablated_step, what, config_path, batch, rounds)
            for what in ABLATIONS}


def _in_child(target, *args):
    """``target(*args, conn)`` in a fresh spawned process; what it sends back."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    child.close()  # so recv() raises EOFError, not waits forever, if the child dies
    try:
        return parent.recv()
    except EOFError:
        proc.join()
        raise SystemExit(f"{target.__name__} {args[0]!r} died (exit code {proc.exitcode}); "
                         "run it alone to see its error") from None
    finally:
        proc.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ablate", action="store_true",
                    help="marginal cost of each part in clip_jax's step (see above)")
    args = ap.parse_args()
    path, batch = PRESETS[args.preset]
    if args.ablate:
        t = ablate(path, batch)
        tflop, peak = _in_child(_flops_and_peak, path, batch)
        # MFU with the part removed: the ceiling if that part cost nothing
        print("| step with ... removed | step s | the part costs | MFU |")
        print("| --- | ---: | ---: | ---: |")
        for what, sec in t.items():
            cost = t["none"] - sec
            print(f"| {what} | {sec:.3f} | " + ("" if what == "none" else
                  f"{cost:.3f} s ({cost / t['none']:.0%})") + f" | {tflop / sec / peak:.0%} |")
        print(json.dumps({"preset": args.preset, "batch": batch, "step_seconds": t,
                          "model_tflop_per_step": round(tflop, 4),
                          "peak_tflops_measured": round(peak, 4),
                          "mfu": {k: round(tflop / v / peak, 3) for k, v in t.items()}}))
        return
    cols = {"clip_jax": profile_jax(path, batch, args.steps)}
    try:
        import open_clip  # noqa: F401
    except ImportError as e:
        print(f"open_clip not importable ({e}): clip_jax only", file=sys.stderr)
    else:
        cols["open_clip"] = profile_torch(path, batch, args.steps)
    print("| part (ms per step) | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{c[part]:,.0f}" for c in cols.values()) + " |")
    print("| **total op time** | " + " | ".join(
        f"**{sum(c.values()):,.0f}**" for c in cols.values()) + " |")
    print(json.dumps({"preset": args.preset, "batch": batch, "ms_per_step": {
        k: {p: round(v[p], 1) for p in PARTS} for k, v in cols.items()}}))


if __name__ == "__main__":
    main()
