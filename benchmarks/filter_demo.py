"""CLIP-score filtering on the demo corpus with deliberately mismatched captions mixed in.

    python benchmarks/filter_demo.py [--model workdirs/demo] [--noise 0.3] [--steps 800]

1. Noisy shards: a copy of the demo training shards (``data/demo/train``, made by
   ``python -m clip_jax.train --config configs/demo.py --workdir workdirs/demo``) where a
   fraction ``--noise`` of each shard's samples get the caption of another sample of the same
   shard whose colour *and* shape both differ (so the caption is wrong about what it names);
   every other member is kept byte for byte. The mismatched keys are recorded.
2. ``clip_jax.filter.filter_shards`` with the demo-trained model and ``--top-fraction
   1 - noise``: precision and recall of the removed samples against the mismatched ones, and the
   ROC AUC of the score as a mismatch detector.
3. Two runs of ``configs/demo.py`` (same steps, same seed), one on the noisy shards and one on
   the filtered shards, and their held-out zero-shot top-1 (the demo card's 12 unseen pairs).

Everything goes under ``--root`` (default ``/tmp/clip_jax_filter_demo``); each stage is skipped
when its output is already there. Prints one JSON object (also ``ROOT/result.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from clip_jax import embed, inference
from clip_jax import filter as filter_lib
from clip_jax.data import tario
from clip_jax.data.write_shards import open_tar_writer
from clip_jax.evaluate import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_noisy(src: str, dst: str, noise: float, seed: int) -> set[str]:
    """Copy ``src`` shards to ``dst`` with a ``noise`` fraction of captions swapped."""
    marker = os.path.join(dst, "mismatched.json")
    if os.path.isfile(marker):
        return set(embed.read_json(marker))
    os.makedirs(dst, exist_ok=True)
    rng = np.random.default_rng(seed)
    bad: list[str] = []
    for url in embed.list_shards(src):
        groups = list(tario.iter_groups(url, frozenset(("png", "txt", "json"))))
        attrs = [json.loads(g["json"]) for g in groups]
        pairs = np.array([f"{a['colour']}|{a['shape']}" for a in attrs])
        colours = np.array([a["colour"] for a in attrs])
        shapes = np.array([a["shape"] for a in attrs])
        chosen = rng.choice(len(groups), size=round(noise * len(groups)), replace=False)
        captions = [g["txt"] for g in groups]
        for i in sorted(chosen):
            donors = np.flatnonzero((colours != colours[i]) & (shapes != shapes[i]))
            j = int(rng.choice(donors))
            assert pairs[j] != pairs[i]
            captions[i] = groups[j]["txt"]
            bad.append(groups[i]["__key__"])
        tmp = os.path.join(dst, os.path.basename(url) + ".tmp")
        with open_tar_writer(tmp) as sink:
            for g, c in zip(groups, captions, strict=True):
                sink.write({**g, "txt": c})
        os.replace(tmp, os.path.join(dst, os.path.basename(url)))
    embed.write_json(marker, bad)
    return set(bad)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive < score of a negative): how well a low score flags a positive."""
    order = np.argsort(-scores, kind="stable")  # rank 1 = highest score
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(workdir: str, shards: str, steps: int, log: str) -> float:
    """A demo-config run on ``shards``; its final held-out zero-shot top-1."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    done = os.path.isfile(metrics) and plots.read_metrics_jsonl(metrics)  # reads old top1 too
    if not (done and any("eval/zeroshot/acc1" in r for r in done)):
        cmd = [sys.executable, "-m", "clip_jax.train", "--config", "configs/demo.py",
               "--workdir", workdir, f"--config.data.train={shards}",
               f"--config.total_steps={steps}", "--config.eval.every_steps=0",
               "--config.eval.zeroshot=data/demo/zeroshot.json",
               f"--config.checkpoint.every_steps={steps}"]
        with open(log, "w") as f:
            subprocess.run(cmd, cwd=REPO, check=True, stdout=f, stderr=subprocess.STDOUT)
    records = plots.read_metrics_jsonl(metrics)
    return float([r for r in records if "eval/zeroshot/acc1" in r][-1]["eval/zeroshot/acc1"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(REPO, "workdirs/demo"))
    p.add_argument("--data", default=os.path.join(REPO, "data/demo/train/{00000..00029}.tar"))
    p.add_argument("--root", default="/tmp/clip_jax_filter_demo")
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-training", action="store_true")
    a = p.parse_args()
    noisy, filtered = os.path.join(a.root, "noisy"), os.path.join(a.root, "filtered")
    t0 = time.time()
    bad = make_noisy(a.data, noisy, a.noise, a.seed)
    n_shards = len(embed.list_shards(a.data))
    pattern = f"{{00000..{n_shards - 1:05d}}}.tar"
    t1 = time.time()
    model = inference.load(a.model, batch_size=256)
    report = filter_lib.filter_shards(model, embed.list_shards(os.path.join(noisy, pattern)),
                                      filtered, os.path.abspath(a.model),
                                      top_fraction=1 - a.noise, log=print)
    t2 = time.time()
    emb_dir = os.path.join(filtered, filter_lib.EMBEDDINGS)
    names = embed.shard_names(embed.list_shards(os.path.join(noisy, pattern)))
    keys, scores = [], []
    for n in names:
        s = embed.load_shard(emb_dir, n)
        keys += s.keys
        scores.append(s.scores())
    scores = np.concatenate(scores)
    mismatched = np.array([k in bad for k in keys])
    removed = scores < report["threshold"]
    tp = int((removed & mismatched).sum())
    result = {
        "samples": len(keys), "mismatched": int(mismatched.sum()), "removed": int(removed.sum()),
        "precision": tp / max(1, int(removed.sum())), "recall": tp / int(mismatched.sum()),
        "roc_auc": roc_auc(scores, mismatched),
        "threshold": report["threshold"],
        # what LAION-400M's fixed cut (cosine >= 0.3) would have removed from the same scores
        "min_score_0.3": {"removed": int((scores < 0.3).sum()),
                          "precision": float(mismatched[scores < 0.3].mean()),
                          "recall": float((scores[mismatched] < 0.3).mean())},
        "mean_score_matched": float(scores[~mismatched].mean()),
        "mean_score_mismatched": float(scores[mismatched].mean()),
        "noisy_copy_seconds": round(t1 - t0, 1), "filter_seconds": round(t2 - t1, 1),
        "embed_samples_per_sec": round(len(keys) / max(1e-9, t2 - t1), 1),
    }
    print(json.dumps(result), flush=True)
    if not a.skip_training:
        for name, shards in (("noisy", noisy), ("filtered", filtered)):
            t = time.time()
            result[f"zeroshot_top1_{name}"] = train(
                os.path.join(a.root, f"run_{name}"), os.path.join(shards, pattern), a.steps,
                os.path.join(a.root, f"train_{name}.log"))
            result[f"train_{name}_seconds"] = round(time.time() - t, 1)
            print(json.dumps(result), flush=True)
    embed.write_json(os.path.join(a.root, "result.json"), result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
