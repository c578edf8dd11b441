"""What TensorBoard logging costs a run: the demo's metrics replayed through MetricsWriter.

    python benchmarks/logging_overhead.py --metrics workdirs/demo/metrics.jsonl

Every record of a finished run's ``metrics.jsonl`` (the demo: a record every 50 steps, the
eval records at steps 400 and 800 with their zero-shot confusion-matrix PNGs when the run's
``eval/`` directory holds them) is written again through :class:`clip_jax.monitor.MetricsWriter`
into a fresh temporary workdir, ``--rounds`` times with ``logging.tensorboard`` off and on,
alternating. Each round times every ``write`` (wall clock of the calling thread: what the train
loop waits for) and the CPU seconds of the whole process from opening to ``close``
(``time.process_time``: includes tensorboardX's writer thread, which shares the cores with
training). Opening (``truncate_after``, which the train loop calls before its first step)
creates the event file; in the first round it also imports tensorboardX, which imports torch
when torch is installed: reported apart, as run time outside the steps.

The step-rate overhead is the extra cost of the on-rounds' writes and close over the
off-rounds' (medians), summed over the run, relative to the run's training time,
``total_steps / steps_per_sec`` with the median ``steps_per_sec`` the run itself logged.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from clip_jax import monitor  # noqa: E402
from clip_jax.evaluate import plots  # noqa: E402


def _round(records: list[dict], eval_dir: str | None, tensorboard: bool) -> dict:
    work = tempfile.mkdtemp(prefix="logging_overhead_")
    try:
        if eval_dir:  # the confusion matrices the writer picks up for the eval records
            shutil.copytree(eval_dir, os.path.join(work, "eval"))
        writer = monitor.MetricsWriter(work, records[-1]["step"], tensorboard=tensorboard,
                                       config={"benchmark": "logging_overhead"})
        per_write = []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        writer.truncate_after(0)  # what the train loop calls before its first step: opens
        open_s = time.perf_counter() - t0
        for record in records:
            metrics = {k: v for k, v in record.items() if k != "step"}
            t0 = time.perf_counter()
            writer.write(record["step"], metrics)
            per_write.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        writer.close()
        close_s = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        events = os.path.join(work, monitor.TENSORBOARD_DIR)
        size = sum(os.path.getsize(os.path.join(events, f)) for f in os.listdir(events)) \
            if os.path.isdir(events) else 0
        return {"open_s": open_s, "writes_s": sum(per_write),
                "close_s": close_s, "cpu_s": cpu, "event_bytes": size}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="workdirs/demo/metrics.jsonl",
                    help="a finished run's metrics.jsonl (its eval/ beside it is used too)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if not os.path.isfile(args.metrics):
        ap.error(f"--metrics {args.metrics}: no such file (run the demo first: README "
                 "command 1)")
    records = plots.read_metrics_jsonl(args.metrics)
    rates = [r["steps_per_sec"] for r in records
             if isinstance(r.get("steps_per_sec"), float) and r["steps_per_sec"] > 0]
    if not records or not rates:
        ap.error(f"--metrics {args.metrics}: no records with steps_per_sec")
    eval_dir = os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "eval")
    eval_dir = eval_dir if os.path.isdir(eval_dir) else None
    pngs = len([f for f in os.listdir(eval_dir) if f.endswith("confusion.png")]) \
        if eval_dir else 0
    steps_per_sec = statistics.median(rates)
    train_s = records[-1]["step"] / steps_per_sec

    off, on = [], []
    for _ in range(args.rounds):
        off.append(_round(records, eval_dir, tensorboard=False))
        on.append(_round(records, eval_dir, tensorboard=True))

    def med(rounds, key):
        return statistics.median(r[key] for r in rounds)

    # every write, then close: what the run pays over its steps
    extra_wall = (med(on, "writes_s") + med(on, "close_s")) - (
        med(off, "writes_s") + med(off, "close_s"))
    extra_cpu = med(on, "cpu_s") - med(off, "cpu_s")
    open_s = med(on, "open_s")  # before the first step: run time, not step time
    first_open_s = on[0]["open_s"]  # the first round also imports tensorboardX
    n = len(records)
    result = {
        "metrics": args.metrics, "records": n, "total_steps": records[-1]["step"],
        "confusion_pngs_in_eval_dir": pngs, "steps_per_sec_of_the_run": round(steps_per_sec, 3),
        "train_seconds": round(train_s, 1), "rounds": args.rounds,
        "torch_installed": "torch" in sys.modules,
        "write_ms_without_tensorboard": round(1e3 * med(off, "writes_s") / n, 3),
        "write_ms_with_tensorboard": round(1e3 * med(on, "writes_s") / n, 3),
        "close_ms_with_tensorboard": round(1e3 * med(on, "close_s"), 2),
        "open_ms": round(1e3 * open_s, 1),
        "open_ms_incl_the_import": round(1e3 * first_open_s, 1),
        "tensorboard_wall_s_over_the_steps": round(extra_wall, 4),
        "tensorboard_cpu_s_over_the_run_incl_writer_thread": round(extra_cpu, 4),
        "step_rate_overhead_percent": round(100 * extra_wall / train_s, 4),
        "run_time_overhead_percent_incl_the_import": round(
            100 * (extra_wall + first_open_s) / train_s, 3),
        "event_file_bytes": on[0]["event_bytes"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
