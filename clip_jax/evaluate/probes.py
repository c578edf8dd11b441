"""Linear and few-shot probes on frozen embeddings (multinomial logistic regression).

Pure functions of arrays, like :mod:`clip_jax.evaluate.metrics` (whose input checks and
pessimistic tie rule they share): the logistic-regression solver is a jitted JAX L-BFGS, the
rest float32 / float64 NumPy. Accuracies are fractions in [0, 1].

API::

    linear_probe(train_x, train_y, test_x, test_y, val_x=None, val_y=None, ...)
        -> {"acc1", "acc5", "mean_per_class_recall", "best_l2", "val_acc1", "sweep", ...}
    fewshot_linear_probe(train_x, train_y, test_x, test_y, shots=DEFAULT_SHOTS, seeds=(0, 1, 2))
        -> {"1shot": mean acc1 over seeds, "1shot_std", "1shot_per_seed", "metrics", ...}
    sample_few_shot(labels, k, seed, num_classes=None) -> indices, exactly k per class

Few-shot means one thing everywhere (``--eval fewshot``, ``eval.fewshot``, the suite): the CLIP
paper's k-shot linear probe, the same L-BFGS logistic regression as the full probe, fitted on
exactly k images per class (:func:`fewshot_linear_probe`); ``{k}shot`` is its acc1.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from clip_jax.config import DEFAULT_SHOTS
from clip_jax.evaluate.metrics import as_f32, as_labels, classification_metrics, pessimistic_rank
from clip_jax.inference import l2_normalize


def _infer_num_classes(num_classes, *label_arrays) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(max(int(a.max()) for a in label_arrays if a.size)) + 1


def _accuracy_from_logits(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pessimistic_rank(logits, y) < 1))


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(logits - m), axis=1)) + m[:, 0]
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def _preprocess_stats(x: np.ndarray, mode: str | None):
    """Returns (shift, scale) such that the model sees ``(x - shift) * scale``."""
    if mode == "l2":
        return None
    if mode is None or mode == "none":
        return np.zeros((1, x.shape[1]), np.float32), np.ones((1, x.shape[1]), np.float32)
    if mode == "zscore":
        mean = x.mean(axis=0, keepdims=True)
        std = x.std(axis=0, keepdims=True)
        return mean, 1.0 / (std + 1e-6)
    raise ValueError(f"unknown preprocess {mode!r} (zscore | l2 | none)")


def _preprocess(x: np.ndarray, mode: str | None, stats) -> np.ndarray:
    if mode == "l2":
        return l2_normalize(x) * np.float32(math.sqrt(x.shape[1]))
    shift, scale = stats
    return ((x - shift) * scale).astype(np.float32)


def _logreg_objective(params, x, y, sw, l2):
    logits = x @ params["w"] + params["b"]
    lse = jax.nn.logsumexp(logits, axis=1)
    true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    ce = jnp.sum(sw * (lse - true)) / jnp.sum(sw)
    return ce + 0.5 * l2 * jnp.sum(params["w"] * params["w"])


@functools.partial(jax.jit, static_argnames=("max_iter", "memory_size"))
def _lbfgs_fit(params, x, y, sw, l2, tol, ftol, max_iter: int, memory_size: int):
    """Full-batch L-BFGS (optax, zoom line search) on the L2-regularised weighted softmax CE.

    Stops when the gradient L2 norm < ``tol``, when an iteration decreased the objective by
    less than ``ftol * max(1, |f|)`` (converged to float32 precision / stalled line search), or
    after ``max_iter`` iterations. Deterministic: full batch, fixed initial point.
    """
    fun = lambda p: _logreg_objective(p, x, y, sw, l2)
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def body(carry):
        p, state, it, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(p, updates), state, it + 1, value

    def cond(carry):
        _, state, it, prev = carry
        value = otu.tree_get(state, "value")
        gnorm = otu.tree_norm(otu.tree_get(state, "grad"))
        stalled = (prev - value) <= ftol * jnp.maximum(1.0, jnp.abs(value))
        return (it == 0) | ((it < max_iter) & (gnorm >= tol) & ~stalled)

    state = opt.init(params)
    carry = (params, state, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, jnp.float32))
    params, state, it, _ = jax.lax.while_loop(cond, body, carry)
    gnorm = otu.tree_norm(otu.tree_get(state, "grad"))
    return params, it, otu.tree_get(state, "value"), gnorm


def fit_logistic_regression(
    x, y, num_classes: int, l2: float, sample_weight=None, init=None,
    max_iter: int = 1000, tol: float = 1e-5, ftol: float = 1e-9, memory_size: int = 10,
) -> dict:
    """Multinomial logistic regression: minimise
    ``sum_i w_i CE(x_i W + b, y_i) / sum_i w_i + (l2 / 2) ||W||^2`` (bias not regularised).

    ``x`` (n, d) float32 (already preprocessed), ``y`` (n,). Returns ``{"w": (d, C), "b": (C,),
    "iterations", "objective", "grad_norm"}`` as NumPy. One compilation per (n, d, C) shape.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    sw = jnp.ones(x.shape[0], jnp.float32) if sample_weight is None else jnp.asarray(
        sample_weight, jnp.float32)
    if init is None:
        init = {"w": np.zeros((x.shape[1], num_classes), np.float32),
                "b": np.zeros((num_classes,), np.float32)}
    params = {"w": jnp.asarray(init["w"], jnp.float32), "b": jnp.asarray(init["b"], jnp.float32)}
    params, it, value, gnorm = _lbfgs_fit(
        params, x, y, sw, jnp.float32(l2), jnp.float32(tol), jnp.float32(ftol),
        max_iter=int(max_iter), memory_size=int(memory_size))
    return {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]),
            "iterations": int(it), "objective": float(value), "grad_norm": float(gnorm)}


def _split_train_val(n: int, val_fraction: float, seed: int):
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError("not enough training samples to hold out a validation split")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def linear_probe(
    train_x, train_y, test_x, test_y, val_x=None, val_y=None, *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] | None = None,
    refine_steps: int = 2,
    val_fraction: float = 0.2,
    refit: bool = True,
    preprocess: str | None = "zscore",
    max_iter: int = 1000,
    tol: float = 1e-5,
    seed: int = 0,
) -> dict:
    """Full linear probe on frozen features (the CLIP paper's protocol, with an L-BFGS solver).

    Multinomial logistic regression (:func:`fit_logistic_regression`) on preprocessed features
    (``"zscore"``: train mean / std; ``"l2"``: unit norm times sqrt(D); ``None``). The L2
    strength is chosen on a validation split (``val_x``/``val_y``, or a seeded ``val_fraction``
    hold-out of the training set): a coarse sweep over ``l2_grid`` (default ``DEFAULT_L2_GRID``,
    ``1e-6 .. 1``, one per decade; fitted from strong to weak regularisation, each warm-started
    from the previous solution), then ``refine_steps`` rounds of a CLIP-style parametric search
    that tries the best value times ``10**(+-step/2)``, halving the step each round. The best l2
    has the highest validation acc1; ties are broken by the lower validation cross-entropy
    (then the larger l2). With ``refit`` the final model is re-fitted with the best l2 on
    train + validation (warm-started from the selected model). Returns the test split's
    :func:`~clip_jax.evaluate.metrics.classification_metrics` (``acc1``, ``acc5`` with 5
    classes or more, ``mean_per_class_recall``) and ``{"best_l2", "val_acc1", "sweep": [{"l2",
    "val_acc1", "val_loss", "iterations"}, ...], "iterations", "num_classes", "seconds"}``.
    """
    t0 = time.perf_counter()
    tr_x = as_f32(train_x, "train_x")
    te_x = as_f32(test_x, "test_x")
    tr_y = as_labels(train_y, "train_y", tr_x.shape[0])
    te_y = as_labels(test_y, "test_y", te_x.shape[0])
    if val_x is None:
        if val_y is not None:
            raise ValueError("val_y given without val_x")
        tr_idx, va_idx = _split_train_val(tr_x.shape[0], val_fraction, seed)
        fit_x, fit_y, va_x, va_y = tr_x[tr_idx], tr_y[tr_idx], tr_x[va_idx], tr_y[va_idx]
    else:
        va_x = as_f32(val_x, "val_x")
        va_y = as_labels(val_y, "val_y", va_x.shape[0])
        fit_x, fit_y = tr_x, tr_y
    C = _infer_num_classes(num_classes, tr_y, te_y, va_y)
    for name, a in (("train_y", tr_y), ("test_y", te_y), ("val_y", va_y)):
        if a.size and a.max() >= C:
            raise ValueError(f"{name} has labels >= num_classes={C}")
    grid = sorted((float(v) for v in (l2_grid if l2_grid is not None else DEFAULT_L2_GRID)),
                  reverse=True)
    if not grid or min(grid) <= 0:
        raise ValueError("l2_grid must hold positive values")

    stats = _preprocess_stats(fit_x, preprocess)
    fx, vx = _preprocess(fit_x, preprocess, stats), _preprocess(va_x, preprocess, stats)
    results: dict[float, tuple[float, float, dict]] = {}

    def evaluate(l2, init):
        if l2 not in results:
            m = fit_logistic_regression(fx, fit_y, C, l2, init=init, max_iter=max_iter, tol=tol)
            logits = vx @ m["w"] + m["b"]
            results[l2] = (_accuracy_from_logits(logits, va_y), _cross_entropy(logits, va_y), m)
        return results[l2]

    def best():
        return max(results, key=lambda v: (results[v][0], -results[v][1], v))

    init = None
    for l2 in grid:
        init = evaluate(l2, init)[2]
    log_step = (np.log10(grid[0]) - np.log10(grid[-1])) / max(1, len(grid) - 1) or 1.0
    for _ in range(refine_steps):
        log_step /= 2.0
        b = best()
        for l2 in (b * 10.0 ** log_step, b * 10.0 ** -log_step):
            evaluate(float(l2), results[b][2])
    b = best()
    val_acc1, _, model = results[b]
    if refit:
        all_x = np.concatenate([fit_x, va_x], axis=0)
        all_y = np.concatenate([fit_y, va_y], axis=0)
        stats = _preprocess_stats(all_x, preprocess)
        model = fit_logistic_regression(_preprocess(all_x, preprocess, stats), all_y, C, b,
                                        init=model, max_iter=max_iter, tol=tol)
    logits = _preprocess(te_x, preprocess, stats) @ model["w"] + model["b"]
    sweep = [{"l2": v, "val_acc1": results[v][0], "val_loss": results[v][1],
              "iterations": results[v][2]["iterations"]} for v in sorted(results)]
    return {**classification_metrics(logits, te_y),
            "best_l2": b, "val_acc1": val_acc1, "sweep": sweep,
            "iterations": model["iterations"], "num_classes": C,
            "seconds": time.perf_counter() - t0}


def sample_few_shot(labels, k: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of exactly ``k`` samples per class (sorted), drawn without replacement.

    Per class, a seeded permutation of its indices is truncated to ``k`` (as big_vision), so for
    a fixed seed the k-shot sets are nested across k. Raises if a class has fewer than k samples.
    """
    y = as_labels(labels, "labels", np.asarray(labels).shape[0])
    C = _infer_num_classes(num_classes, y)
    if k < 1:
        raise ValueError("k must be >= 1")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(C):
        idx = np.flatnonzero(y == c)
        if idx.size < k:
            raise ValueError(f"class {c} has {idx.size} training samples, fewer than k={k}")
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked))


def _fewshot_summary(accs: dict[int, list[float]], per_k: dict[int, list[dict]]) -> dict:
    """Per k: mean / std / per-seed acc1, and ``metrics``: {k: the seeds' mean of each
    :func:`~clip_jax.evaluate.metrics.classification_metrics` number}."""
    out: dict = {}
    for k, vals in accs.items():
        out[f"{k}shot"] = float(np.mean(vals))
        out[f"{k}shot_std"] = float(np.std(vals))
        out[f"{k}shot_per_seed"] = [float(v) for v in vals]
    out["metrics"] = {k: {m: float(np.mean([d[m] for d in ds])) for m in ds[0]}
                      for k, ds in per_k.items() if ds}
    return out


def fewshot_linear_probe(
    train_x, train_y, test_x, test_y, *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    num_classes: int | None = None,
    l2: float | Sequence[float] = 1e-2,
    val_x=None, val_y=None,
    preprocess: str | None = "l2",
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> dict:
    """k-shot logistic-regression probes, averaged over seeds (CLIP paper, Fig. 6 style).

    For each k and seed, :func:`sample_few_shot` picks exactly k training samples per class and
    a multinomial logistic regression is fitted on them (features preprocessed with a
    data-independent ``"l2"`` map by default: unit norm times sqrt(D)). ``l2`` is a fixed
    strength, or a sequence selected per (k, seed) on ``val_x``/``val_y`` (required then; note
    that uses more labels than k per class). All fits share one compilation: each k-shot set is
    padded to ``max(shots) * C`` rows with zero sample weight. Returns ``{"{k}shot": mean acc1,
    "{k}shot_std", "{k}shot_per_seed", "l2": {k: [chosen l2 per seed]}}``.
    """
    tr_x = as_f32(train_x, "train_x")
    te_x = as_f32(test_x, "test_x")
    tr_y = as_labels(train_y, "train_y", tr_x.shape[0])
    te_y = as_labels(test_y, "test_y", te_x.shape[0])
    C = _infer_num_classes(num_classes, tr_y, te_y)
    grid = [float(l2)] if np.ndim(l2) == 0 else [float(v) for v in l2]
    if len(grid) > 1 and (val_x is None or val_y is None):
        raise ValueError("an l2 sweep needs val_x / val_y")
    if len(grid) > 1:
        va_x = as_f32(val_x, "val_x")
        va_y = as_labels(val_y, "val_y", va_x.shape[0], C)
    shots = [int(k) for k in shots]
    n_pad = max(shots) * C
    accs: dict[int, list[float]] = {k: [] for k in shots}
    per_k: dict[int, list[dict]] = {k: [] for k in shots}
    chosen: dict[int, list[float]] = {k: [] for k in shots}
    for seed in seeds:
        for k in shots:
            idx = sample_few_shot(tr_y, k, seed, C)
            x, y = tr_x[idx], tr_y[idx]
            stats = _preprocess_stats(x, preprocess)
            xp = np.zeros((n_pad, tr_x.shape[1]), np.float32)
            yp = np.zeros((n_pad,), np.int64)
            sw = np.zeros((n_pad,), np.float32)
            xp[:len(idx)], yp[:len(idx)], sw[:len(idx)] = _preprocess(x, preprocess, stats), y, 1
            vx = _preprocess(va_x, preprocess, stats) if len(grid) > 1 else None
            best = None
            for v in sorted(grid, reverse=True):
                m = fit_logistic_regression(xp, yp, C, v, sample_weight=sw,
                                            max_iter=max_iter, tol=tol)
                score = 0.0 if vx is None else _accuracy_from_logits(vx @ m["w"] + m["b"], va_y)
                if best is None or score > best[0]:  # ties: the larger l2 (tried first)
                    best = (score, v, m)
            _, v, m = best
            logits = _preprocess(te_x, preprocess, stats) @ m["w"] + m["b"]
            accs[k].append(_accuracy_from_logits(logits, te_y))
            per_k[k].append(classification_metrics(logits, te_y))
            chosen[k].append(v)
    out = _fewshot_summary(accs, per_k)
    out["l2"] = chosen
    return out
