"""What ``fewshot`` costs now that it is the CLIP paper's k-shot logistic regression everywhere
(issue 36 item 7), against the closed-form ridge probe (big_vision's ``fewshot_lsr``) the
non-suite path used before: seconds for k in (1, 2, 4, 8, 16) x 3 seeds on synthetic features,
and the accuracies both reach.

    python benchmarks/fewshot_probe.py [--classes 10,100] [--dim 512] [--test 10000]

Prints one JSON line per class count. The ridge probe is reproduced here (as it was in
clip_jax/evaluate/probes.py before the change) only to compare against.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from clip_jax.config import DEFAULT_SHOTS
from clip_jax.evaluate import probes


def _features(n: int, dim: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1000).normal(size=(classes, dim))
    y = np.arange(n) % classes
    x = means[y] + 4.0 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _ridge(x, y, classes, x_test, l2=2.0 ** 10):
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
    x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
    t = 2.0 * np.eye(classes)[y] - 1.0
    if x.shape[0] >= x.shape[1]:  # the smaller eigendecomposition, as it did
        eigs, q = np.linalg.eigh(x.T @ x)
        rhs, lhs = q.T @ (x.T @ t), q
    else:
        eigs, q = np.linalg.eigh(x @ x.T)
        rhs, lhs = q.T @ t, x.T @ q
    w = (lhs / (eigs + l2)[None, :]) @ rhs
    xt = np.pad((np.asarray(x_test, np.float64) - mean) / std, ((0, 0), (0, 1)),
                constant_values=100.0)
    return xt @ w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default="10,100")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--test", type=int, default=10000)
    args = p.parse_args()
    seeds = (0, 1, 2)
    for classes in (int(c) for c in args.classes.split(",")):
        x, y = _features(max(DEFAULT_SHOTS) * classes * 2, args.dim, classes, 0)
        tx, ty = _features(args.test, args.dim, classes, 1)
        probes.fewshot_linear_probe(x, y, tx, ty, shots=(1,), seeds=(0,))  # compile
        t0 = time.perf_counter()
        lr = probes.fewshot_linear_probe(x, y, tx, ty, shots=DEFAULT_SHOTS, seeds=seeds)
        lr_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ridge = {}
        for k in DEFAULT_SHOTS:
            accs = []
            for seed in seeds:
                idx = probes.sample_few_shot(y, k, seed, classes)
                accs.append(float(np.mean(np.argmax(_ridge(x[idx], y[idx], classes, tx), 1)
                                          == ty)))
            ridge[f"{k}shot"] = float(np.mean(accs))
        ridge_s = time.perf_counter() - t0
        print(json.dumps({
            "classes": classes, "dim": args.dim, "test": args.test,
            "shots": list(DEFAULT_SHOTS), "seeds": len(seeds),
            "logreg_seconds": round(lr_s, 2), "ridge_seconds": round(ridge_s, 2),
            "logreg_acc1": {f"{k}shot": round(lr[f"{k}shot"], 4) for k in DEFAULT_SHOTS},
            "ridge_acc1": {k: round(v, 4) for k, v in ridge.items()}}), flush=True)


if __name__ == "__main__":
    main()
