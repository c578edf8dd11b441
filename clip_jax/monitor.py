"""What a run tells: the opening line, metrics (one JSON object per line in
``<workdir>/metrics.jsonl``), a progress line per log step and the closing summary.

On resume the file is cut back to the restored step, so a run that was killed and restarted
leaves the same file as one that never stopped. Only process 0 writes and prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

from clip_jax import sharding


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, enabled: bool = True,
                 stream=sys.stdout):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps, self.enabled, self.stream = total_steps, enabled, stream
        self.start = time.time()

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they belong to work a restart will redo)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def last_record(self, step: int | None = None) -> dict:
        """The metrics logged at the last step (``<= step``), all lines of that step merged."""
        records = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        records = [r for r in records if step is None or r.get("step", 0) <= step]
        if not records:
            return {}
        last = max(r.get("step", 0) for r in records)
        out: dict = {}
        for r in records:
            if r.get("step", 0) == last:
                out.update(r)
        out.pop("step", None)
        return out

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            record[k] = v if isinstance(v, str | int) else float(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def progress(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        parts = [f"step {step}/{self.total_steps}"]
        for key, fmt in (("loss", "{:.4f}"), ("logit_scale", "{:.2f}"), ("lr", "{:.2e}"),
                         ("grad_norm", "{:.3f}"), ("samples_per_sec", "{:.1f}")):
            if key in metrics:
                parts.append(f"{key} " + fmt.format(float(metrics[key])))
        for key in sorted(metrics):
            if key.startswith("eval/"):
                parts.append(f"{key} {float(metrics[key]):.4f}")
        for key in sorted(metrics):  # skipped shards/images: shown once there are any
            if key.startswith("data/skipped") and metrics[key]:
                parts.append(f"{key[5:]} {int(metrics[key])}")
        rate = metrics.get("steps_per_sec")
        if rate:
            parts.append(f"eta {_fmt_seconds((self.total_steps - step) / rate)}")
        parts.append(f"elapsed {_fmt_seconds(elapsed)}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)


def welcome(config, mesh, num_params: int) -> str:
    """The opening line: processes, devices, mesh, the batch split and the model."""
    n_dev = jax.device_count()
    return (f"clip_jax | process {jax.process_index()}/{jax.process_count()} | "
            f"{jax.local_device_count()} local of {n_dev} {jax.devices()[0].platform} devices | "
            f"mesh {sharding.describe(mesh)} | batch {config.batch_size} global = "
            f"{config.batch_size // jax.process_count()}/process = "
            f"{config.batch_size // n_dev}/device | "
            f"model {config.model.open_clip_config or config.model.name} ({num_params:,} params)")


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
