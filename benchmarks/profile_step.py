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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    path, batch = PRESETS[args.preset]
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
