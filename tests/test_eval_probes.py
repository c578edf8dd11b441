"""Tests for clip_jax.evaluate.probes: linear probe, few-shot sampling, few-shot probes."""

import numpy as np
import pytest

from clip_jax.evaluate import probes as P


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _separable(n, d, num_classes, seed, scale=0.2):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(100).normal(size=(num_classes, d))
    y = rng.integers(0, num_classes, n)
    return _unit(means[y] + scale * rng.normal(size=(n, d))), y


def test_linear_probe_separable_reaches_100():
    xtr, ytr = _separable(600, 32, 5, 0)
    xte, yte = _separable(300, 32, 5, 1)
    r = P.linear_probe(xtr, ytr, xte, yte, refine_steps=1)
    assert r["acc1"] == 1.0 and r["val_acc1"] == 1.0
    assert r["num_classes"] == 5
    vals = [s["val_acc1"] for s in r["sweep"]]
    assert len(r["sweep"]) == 7 + 2 and r["best_l2"] in [s["l2"] for s in r["sweep"]]
    # selection rule: max val accuracy, ties broken by the lowest val loss, then larger l2
    best = max(r["sweep"], key=lambda s: (s["val_acc1"], -s["val_loss"], s["l2"]))
    assert best["l2"] == r["best_l2"] and max(vals) == r["val_acc1"]


def test_linear_probe_sweep_avoids_over_regularisation():
    # class signal only in x0 - x1; x0 and x1 share a large nuisance: a strongly regularised
    # model (~ the class-mean direction x0) is near chance, a weakly regularised one is perfect
    rng = np.random.default_rng(5)

    def data(n):
        y = rng.integers(0, 2, n)
        nuisance = rng.normal(size=n) * 3.0
        s = np.where(y == 1, 0.3, -0.3)
        x = np.stack([s + nuisance, nuisance] + [rng.normal(size=n) for _ in range(6)], 1)
        return x.astype(np.float32), y

    (xtr, ytr), (xva, yva), (xte, yte) = data(600), data(300), data(300)
    r = P.linear_probe(xtr, ytr, xte, yte, xva, yva, l2_grid=10.0 ** np.arange(-5, 3),
                       refine_steps=0)
    by_l2 = {s["l2"]: s["val_acc1"] for s in r["sweep"]}
    assert by_l2[100.0] < 0.8  # over-regularised
    assert r["best_l2"] <= 1e-2
    assert r["acc1"] > 0.97


def test_sample_few_shot_exact_k_nested():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 7, 500)
    prev = set()
    for k in (1, 2, 4, 8):
        idx = P.sample_few_shot(y, k, seed=3)
        assert len(np.unique(idx)) == len(idx) == 7 * k
        np.testing.assert_array_equal(np.bincount(y[idx], minlength=7), [k] * 7)
        assert prev <= set(idx.tolist())  # nested across k for a fixed seed
        prev = set(idx.tolist())
    assert not np.array_equal(P.sample_few_shot(y, 4, 0), P.sample_few_shot(y, 4, 1))
    np.testing.assert_array_equal(P.sample_few_shot(y, 4, 0), P.sample_few_shot(y, 4, 0))
    with pytest.raises(ValueError):
        P.sample_few_shot(np.array([0, 0, 1]), 2, 0)


def test_fewshot_probes_separable():
    xtr, ytr = _separable(400, 32, 5, 2)
    xte, yte = _separable(200, 32, 5, 3)
    shots, seeds = (1, 4, 16), (0, 1)
    r = P.fewshot_linear_probe(xtr, ytr, xte, yte, shots=shots, seeds=seeds)
    assert set(k for k in r if k.endswith("shot")) == {"1shot", "4shot", "16shot"}
    assert len(r["16shot_per_seed"]) == 2
    assert r["16shot"] == pytest.approx(np.mean(r["16shot_per_seed"]))
    assert r["16shot"] > 0.98, r
    assert 0.0 <= r["1shot"] <= 1.0


def test_fewshot_harder_data_improves_with_shots():
    xtr, ytr = _separable(2000, 64, 10, 4, scale=2.0)
    xte, yte = _separable(1000, 64, 10, 5, scale=2.0)
    r = P.fewshot_linear_probe(xtr, ytr, xte, yte, shots=(1, 16), seeds=(0, 1, 2))
    assert 0.1 < r["1shot"] < r["16shot"] < 1.0


def test_fewshot_is_the_logistic_regression_probe_scipy_fits_the_same():
    """``fewshot`` means one thing (the CLIP paper's k-shot linear probe): per seed, a
    multinomial logistic regression (l2 1e-2 on sqrt(D)-scaled unit features) on exactly k
    images per class; scipy's L-BFGS on the same objective gives the same test accuracy."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    xtr, ytr = _separable(300, 16, 4, 6, scale=1.5)
    xte, yte = _separable(400, 16, 4, 7, scale=1.5)
    r = P.fewshot_linear_probe(xtr, ytr, xte, yte, shots=(2, 8), seeds=(0, 1))
    d, c, l2 = 16, 4, 1e-2

    def scaled(x):
        return _unit(x) * np.sqrt(d)

    for k in (2, 8):
        for i, seed in enumerate((0, 1)):
            idx = P.sample_few_shot(ytr, k, seed)
            x, y = scaled(xtr[idx]).astype(np.float64), ytr[idx]

            def objective(wb, x=x, y=y):
                w, b = wb[:d * c].reshape(d, c), wb[d * c:]
                z = x @ w + b
                z = z - z.max(1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
                loss = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.5 * l2 * np.sum(w * w)
                g = (p - np.eye(c)[y]) / len(y)
                return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])

            fit = scipy_optimize.minimize(objective, np.zeros(d * c + c), jac=True,
                                          method="L-BFGS-B", options={"gtol": 1e-10})
            w, b = fit.x[:d * c].reshape(d, c), fit.x[d * c:]
            acc = np.mean(np.argmax(scaled(xte) @ w + b, 1) == yte)
            assert r[f"{k}shot_per_seed"][i] == pytest.approx(acc, abs=1.5 / len(yte)), (k, seed)
    assert 0.3 < r["2shot"] < r["8shot"] < 1.0  # not a trivially separable case
