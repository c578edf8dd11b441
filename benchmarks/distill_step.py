"""Step time of distillation on the demo: from scratch, online (the teacher in the step) and from
stored teacher embeddings (the batch's rows), the same student, interleaved rounds.

    python benchmarks/distill_step.py --teacher workdirs/teacher --steps 20 --rounds 3

Builds ``configs/distill_demo.py``'s student three ways and times its jitted train step on the
same random batch (uint8 images, token ids, and for the stored run float16 rows of the
teacher's width): wall and CPU seconds per step (all threads; other load on a shared machine
disturbs CPU time less than wall time). Prints one JSON line per round and mode, then the
medians and the ratios to from-scratch. The data pipeline is not in it (the train loop's
``samples_per_sec`` has it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from clip_jax import input_pipeline, sources, train
from clip_jax.data import stored

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import distill_demo  # noqa: E402


def _setup(mode: str, teacher: str, emb_dir: str, vocab: int):
    c = distill_demo.get_config(teacher if mode == "online" else f"{teacher},scratch")
    c.model.text.vocab_size = vocab
    if mode == "stored":
        c.distill.embeddings = emb_dir
    return train.build(c)


def _batch(setup, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    c, m = setup.config, setup.model_cfg
    n, s = c.batch_size, m.vision.image_size
    host = {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
            "text": rng.integers(1, m.text.vocab_size, (n, m.text.context_length),
                                 dtype=np.int32)}
    for k in range(len(setup.stored)):
        for key in stored.field_names(k):
            rows = rng.normal(size=(n, width))
            host[key] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
    return input_pipeline.to_global(setup.batch_sharding, host)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher (any model source)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    src = sources.resolve(args.teacher)
    width, vocab = src.cfg.embed_dim, src.cfg.text.vocab_size
    emb_dir = tempfile.mkdtemp()
    with open(os.path.join(emb_dir, stored.REPORT), "w") as f:
        json.dump({"embed_dim": width, "logit_scale": 100.0}, f)
    runs = {}
    for mode in ("scratch", "stored", "online"):
        setup = _setup(mode, args.teacher, emb_dir, vocab)
        step = train.make_train_step(setup)
        state, batch = train.init_state(setup), _batch(setup, width)
        t0 = time.time()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        runs[mode] = [setup, step, state, batch, time.time() - t0]
    times = {m: [] for m in runs}
    for r in range(args.rounds):
        for mode, run in runs.items():
            _, step, state, batch, _ = run
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                state, m = step(state, batch)
            jax.block_until_ready(m)
            wall = (time.perf_counter() - w0) / args.steps
            cpu = (time.process_time() - c0) / args.steps
            run[2] = state
            times[mode].append((wall, cpu))
            print(json.dumps({"round": r, "mode": mode, "step_seconds": round(wall, 4),
                              "cpu_seconds_per_step": round(cpu, 4)}), flush=True)
    med = {m: [float(np.median([t[i] for t in v])) for i in (0, 1)] for m, v in times.items()}
    print(json.dumps({
        "batch": runs["scratch"][0].config.batch_size, "steps": args.steps,
        "rounds": args.rounds, "load_avg_1min": os.getloadavg()[0],
        **{f"{m}_step_seconds": round(v[0], 4) for m, v in med.items()},
        **{f"{m}_cpu_seconds_per_step": round(v[1], 4) for m, v in med.items()},
        **{f"{m}_vs_scratch_cpu": round(v[1] / med["scratch"][1], 3)
           for m, v in med.items() if m != "scratch"},
        **{f"{m}_vs_scratch_wall": round(v[0] / med["scratch"][0], 3)
           for m, v in med.items() if m != "scratch"}}))


if __name__ == "__main__":
    main()
