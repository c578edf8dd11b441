"""Model-agnostic evaluation metrics on embeddings: zero-shot, retrieval, linear / few-shot probes.

Everything here is a pure function of arrays (NumPy or JAX; computed in float32 NumPy, except the
logistic-regression solver which is a jitted JAX L-BFGS). No model, no data loading: the caller
encodes images / texts and passes the embeddings. Accuracies / recalls are fractions in [0, 1].

API::

    build_zeroshot_classifier(encode_text, class_names, templates, batch_size=256)
        -> (num_classes, D) float32, L2-normalised rows (CLIP prompt ensembling)
    zeroshot_metrics(image_embeddings, classifier, labels, topk=(1, 5))
        -> {"top1", "top5", "per_class_accuracy", "mean_per_class_accuracy", "num_samples",
            "predictions", "confusion_matrix"}
    retrieval_metrics(image_embeddings, text_embeddings, text_to_image, ks=(1, 5, 10))
        -> {"image_to_text_recall@k", "text_to_image_recall@k", "mean_recall",
            "image_to_text_median_rank", "text_to_image_median_rank", ...}
    linear_probe(train_x, train_y, test_x, test_y, val_x=None, val_y=None, ...)
        -> {"top1", "best_l2", "val_top1", "sweep", ...}   (multinomial logistic regression)
    fewshot_linear_probe(train_x, train_y, test_x, test_y, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2))
        -> {"1shot": mean top-1 over seeds, "1shot_std", "1shot_per_seed", ...}
    fewshot_lstsq(train_x, train_y, test_x, test_y, shots=..., seeds=..., l2_reg=2**10)
        -> same keys (big_vision's closed-form ridge-regression few-shot probe)
    sample_few_shot(labels, k, seed, num_classes=None) -> indices, exactly k per class
    jsonable(metrics) -> the same dict with NumPy arrays / scalars turned into lists / floats

Tie rule (one rule for every ranking metric here)
-------------------------------------------------
Ties are counted **against** the true item ("pessimistic" rank): the rank of the true item is
the number of *other* candidates whose score is ``>=`` the true score, and the true item is in
the top k iff that rank is ``< k``. So an exact tie for the maximum is a top-1 miss (whatever the
indices), a fully collapsed model (all scores equal) scores 0 at every k < number of
candidates, and the metrics do not depend on the order of classes / images / captions. For
retrieval, image -> text counts only *negative* captions (other images' captions) against the
image's best-scoring caption: a hit at k iff any of its captions is in the top k. Ties are
exact float comparisons on the score matrix, which is computed in one matmul per chunk.
``predictions`` / ``confusion_matrix`` in :func:`zeroshot_metrics` use ``argmax`` (the lowest
class index wins a tie), since a single predicted class must be chosen; in the presence of
exact ties the confusion-matrix diagonal can therefore exceed the pessimistic ``top1``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

# Score-matrix chunks hold at most this many float32 entries (64 MiB).
_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_f32(x, name: str, ndim: int = 2) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _as_labels(y, name: str, n: int, num_classes: int | None = None) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer labels")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} has negative entries")
    if num_classes is not None and a.size and a.max() >= num_classes:
        raise ValueError(f"{name} has entries >= {num_classes}")
    return a


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 NumPy (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, eps)


def _chunk_rows(num_cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, num_cols))


def _pessimistic_rank(scores: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of ``scores[i, true_idx[i]]`` in row i; ties count against it."""
    true = scores[np.arange(scores.shape[0]), true_idx]
    return np.sum(scores >= true[:, None], axis=1) - 1


def jsonable(metrics):
    """Recursively convert NumPy arrays / scalars to lists / Python numbers (for json.dump)."""
    if isinstance(metrics, dict):
        return {str(k): jsonable(v) for k, v in metrics.items()}
    if isinstance(metrics, list | tuple):
        return [jsonable(v) for v in metrics]
    if isinstance(metrics, np.ndarray | jax.Array):
        return jsonable(np.asarray(metrics).tolist())
    if isinstance(metrics, np.generic):
        return metrics.item()
    return metrics


# --------------------------------------------------------------------------------------------
# zero-shot classification
# --------------------------------------------------------------------------------------------


def format_prompt(template: str | Callable[[str], str], class_name: str) -> str:
    """``template`` is a callable, or a ``str.format`` string with ``{}`` or ``{c}``."""
    if callable(template):
        return template(class_name)
    if "{c}" in template:
        return template.format(c=class_name)
    return template.format(class_name)


def build_zeroshot_classifier(
    encode_text: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    batch_size: int = 256,
    pad_batches: bool = True,
) -> np.ndarray:
    """CLIP prompt ensembling: ``(num_classes, D)`` float32 classifier with unit-norm rows.

    For each class every template is formatted and encoded; each prompt embedding is
    L2-normalised (a no-op for the normalised output ``encode_text`` is expected to return), the
    embeddings are averaged over templates and the mean is re-normalised (as open_clip's
    ``build_zero_shot_classifier``). Prompts are encoded class-major in batches of
    ``batch_size``; with ``pad_batches`` the last batch is padded (repeating its last prompt) to
    ``batch_size`` so a jitted encoder sees a single shape, and the padding is discarded.
    """
    class_names = list(class_names)
    templates = list(templates)
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    texts = [format_prompt(t, c) for c in class_names for t in templates]
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        n = len(batch)
        if pad_batches and n < batch_size:
            batch = batch + [batch[-1]] * (batch_size - n)
        emb = np.asarray(encode_text(batch), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {emb.shape} for {len(batch)} texts")
        chunks.append(emb[:n])
    emb = l2_normalize(np.concatenate(chunks, axis=0))
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return l2_normalize(emb)


def zeroshot_metrics(
    image_embeddings,
    classifier,
    labels,
    topk: Sequence[int] = (1, 5),
    normalize: bool = True,
) -> dict:
    """Zero-shot classification metrics of ``image_embeddings @ classifier.T``.

    ``image_embeddings`` (N, D), ``classifier`` (C, D) (from :func:`build_zeroshot_classifier`),
    ``labels`` (N,) ints in [0, C). Returns ``top{k}`` for each k (pessimistic tie rule, see the
    module docstring), ``per_class_accuracy`` (list of C top-1 accuracies, ``None`` for classes
    without samples), ``mean_per_class_accuracy`` (over classes with samples), ``num_samples``,
    ``predictions`` ((N,) argmax) and ``confusion_matrix`` ((C, C) int64, rows = true class,
    columns = predicted class). ``normalize`` L2-normalises both inputs first (rankings per
    image do not depend on the image norm; it guards against unnormalised classifiers).
    """
    img = _as_f32(image_embeddings, "image_embeddings")
    cls = _as_f32(classifier, "classifier")
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"embedding dims differ: {img.shape[1]} vs {cls.shape[1]}")
    num_classes = cls.shape[0]
    y = _as_labels(labels, "labels", img.shape[0], num_classes)
    topk = tuple(int(k) for k in topk)
    if not topk or min(topk) < 1:
        raise ValueError("topk must be non-empty positive integers")
    if img.shape[0] == 0:
        raise ValueError("no samples")
    if normalize:
        img, cls = l2_normalize(img), l2_normalize(cls)
    n = img.shape[0]
    ranks = np.empty(n, np.int64)
    preds = np.empty(n, np.int64)
    step = _chunk_rows(num_classes)
    for s in range(0, n, step):
        scores = img[s:s + step] @ cls.T
        ranks[s:s + step] = _pessimistic_rank(scores, y[s:s + step])
        preds[s:s + step] = np.argmax(scores, axis=1)
    out: dict = {f"top{k}": float(np.mean(ranks < k)) for k in topk}
    hit1 = (ranks < 1).astype(np.float64)
    support = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y, weights=hit1, minlength=num_classes)
    per_class = [float(c / s) if s > 0 else None for c, s in zip(correct, support)]
    present = support > 0
    out["per_class_accuracy"] = per_class
    out["mean_per_class_accuracy"] = float(np.mean(correct[present] / support[present]))
    out["num_samples"] = int(n)
    out["predictions"] = preds
    out["confusion_matrix"] = np.bincount(
        y * num_classes + preds, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    return out


# --------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------


def retrieval_metrics(
    image_embeddings,
    text_embeddings,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    normalize: bool = True,
) -> dict:
    """Image <-> text retrieval recall@k with several captions per image (COCO / Flickr30k).

    ``image_embeddings`` (N, D), ``text_embeddings`` (M, D), ``text_to_image`` (M,) the index of
    each caption's image. Scores are cosine similarities (``normalize`` L2-normalises both
    inputs). text -> image: a hit at k iff the caption's image is in the top k of the N images.
    image -> text: a hit at k iff *any* of the image's captions is in the top k of the M
    captions, i.e. fewer than k captions of other images score ``>=`` its best caption
    (pessimistic tie rule); it is averaged over the images that have at least one caption
    (images without captions are still retrieval candidates for text -> image).
    Median ranks are 1-based.
    """
    img = _as_f32(image_embeddings, "image_embeddings")
    txt = _as_f32(text_embeddings, "text_embeddings")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"embedding dims differ: {img.shape[1]} vs {txt.shape[1]}")
    n_img, n_txt = img.shape[0], txt.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError("need at least one image and one caption")
    t2i = _as_labels(text_to_image, "text_to_image", n_txt, n_img)
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError("ks must be non-empty positive integers")
    if normalize:
        img, txt = l2_normalize(img), l2_normalize(txt)

    # text -> image: chunks of captions, scores over all images.
    t2i_rank = np.empty(n_txt, np.int64)
    step = _chunk_rows(n_img)
    for s in range(0, n_txt, step):
        scores = txt[s:s + step] @ img.T
        t2i_rank[s:s + step] = _pessimistic_rank(scores, t2i[s:s + step])

    # image -> text: chunks of images, scores over all captions; rank of the best positive
    # among the negatives only.
    has_caption = np.bincount(t2i, minlength=n_img) > 0
    i2t_rank = np.full(n_img, -1, np.int64)
    step = _chunk_rows(n_txt)
    for s in range(0, n_img, step):
        idx = np.arange(s, min(s + step, n_img))
        scores = img[idx] @ txt.T
        pos = t2i[None, :] == idx[:, None]
        best = np.max(np.where(pos, scores, -np.inf), axis=1)
        i2t_rank[idx] = np.sum((~pos) & (scores >= best[:, None]), axis=1)
    i2t_rank = i2t_rank[has_caption]

    out: dict = {}
    for k in ks:
        out[f"image_to_text_recall@{k}"] = float(np.mean(i2t_rank < k))
    for k in ks:
        out[f"text_to_image_recall@{k}"] = float(np.mean(t2i_rank < k))
    out["mean_recall"] = float(np.mean([out[f"{d}_recall@{k}"] for k in ks
                                        for d in ("image_to_text", "text_to_image")]))
    out["image_to_text_median_rank"] = float(np.median(i2t_rank) + 1)
    out["text_to_image_median_rank"] = float(np.median(t2i_rank) + 1)
    out["num_images"] = int(n_img)
    out["num_images_with_captions"] = int(has_caption.sum())
    out["num_texts"] = int(n_txt)
    return out


# --------------------------------------------------------------------------------------------
# linear probes
# --------------------------------------------------------------------------------------------


def _infer_num_classes(num_classes, *label_arrays) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(max(int(a.max()) for a in label_arrays if a.size)) + 1


def _accuracy_from_logits(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_pessimistic_rank(logits, y) < 1))


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
    has the highest validation top-1; ties are broken by the lower validation cross-entropy
    (then the larger l2). With ``refit`` the final model is re-fitted with the best l2 on
    train + validation (warm-started from the selected model). Returns ``{"top1", "best_l2",
    "val_top1", "sweep": [{"l2", "val_top1", "val_loss", "iterations"}, ...], "iterations",
    "num_classes", "seconds"}``.
    """
    t0 = time.perf_counter()
    tr_x = _as_f32(train_x, "train_x")
    te_x = _as_f32(test_x, "test_x")
    tr_y = _as_labels(train_y, "train_y", tr_x.shape[0])
    te_y = _as_labels(test_y, "test_y", te_x.shape[0])
    if val_x is None:
        if val_y is not None:
            raise ValueError("val_y given without val_x")
        tr_idx, va_idx = _split_train_val(tr_x.shape[0], val_fraction, seed)
        fit_x, fit_y, va_x, va_y = tr_x[tr_idx], tr_y[tr_idx], tr_x[va_idx], tr_y[va_idx]
    else:
        va_x = _as_f32(val_x, "val_x")
        va_y = _as_labels(val_y, "val_y", va_x.shape[0])
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
    val_top1, _, model = results[b]
    if refit:
        all_x = np.concatenate([fit_x, va_x], axis=0)
        all_y = np.concatenate([fit_y, va_y], axis=0)
        stats = _preprocess_stats(all_x, preprocess)
        model = fit_logistic_regression(_preprocess(all_x, preprocess, stats), all_y, C, b,
                                        init=model, max_iter=max_iter, tol=tol)
    tx = _preprocess(te_x, preprocess, stats)
    top1 = _accuracy_from_logits(tx @ model["w"] + model["b"], te_y)
    sweep = [{"l2": v, "val_top1": results[v][0], "val_loss": results[v][1],
              "iterations": results[v][2]["iterations"]} for v in sorted(results)]
    return {"top1": top1, "best_l2": b, "val_top1": val_top1, "sweep": sweep,
            "iterations": model["iterations"], "num_classes": C,
            "seconds": time.perf_counter() - t0}


def sample_few_shot(labels, k: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of exactly ``k`` samples per class (sorted), drawn without replacement.

    Per class, a seeded permutation of its indices is truncated to ``k`` (as big_vision), so for
    a fixed seed the k-shot sets are nested across k. Raises if a class has fewer than k samples.
    """
    y = _as_labels(labels, "labels", np.asarray(labels).shape[0])
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


def _fewshot_summary(accs: dict[int, list[float]]) -> dict:
    out: dict = {}
    for k, vals in accs.items():
        out[f"{k}shot"] = float(np.mean(vals))
        out[f"{k}shot_std"] = float(np.std(vals))
        out[f"{k}shot_per_seed"] = [float(v) for v in vals]
    return out


def fewshot_linear_probe(
    train_x, train_y, test_x, test_y, *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
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
    padded to ``max(shots) * C`` rows with zero sample weight. Returns ``{"{k}shot": mean top-1,
    "{k}shot_std", "{k}shot_per_seed", "l2": {k: [chosen l2 per seed]}}``.
    """
    tr_x = _as_f32(train_x, "train_x")
    te_x = _as_f32(test_x, "test_x")
    tr_y = _as_labels(train_y, "train_y", tr_x.shape[0])
    te_y = _as_labels(test_y, "test_y", te_x.shape[0])
    C = _infer_num_classes(num_classes, tr_y, te_y)
    grid = [float(l2)] if np.ndim(l2) == 0 else [float(v) for v in l2]
    if len(grid) > 1 and (val_x is None or val_y is None):
        raise ValueError("an l2 sweep needs val_x / val_y")
    if len(grid) > 1:
        va_x = _as_f32(val_x, "val_x")
        va_y = _as_labels(val_y, "val_y", va_x.shape[0], C)
    shots = [int(k) for k in shots]
    n_pad = max(shots) * C
    accs: dict[int, list[float]] = {k: [] for k in shots}
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
            tx = _preprocess(te_x, preprocess, stats)
            accs[k].append(_accuracy_from_logits(tx @ m["w"] + m["b"], te_y))
            chosen[k].append(v)
    out = _fewshot_summary(accs)
    out["l2"] = chosen
    return out


BIG_VISION_BIAS_CONSTANT = 100.0


def _lstsq_fit_predict(x, y, num_classes, x_test, l2_reg):
    """big_vision ``fewshot_lsr``: whiten with the k-shot set's mean/std, append a constant
    feature (100, so the bias is almost unregularised), regress on one-hot targets in {-1, +1}
    with ridge ``l2_reg`` through an eigendecomposition of x^T x or x x^T. Float64 NumPy."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + 1e-5
    x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIG_VISION_BIAS_CONSTANT)
    t = 2.0 * np.eye(num_classes)[y] - 1.0
    n, d = x.shape
    if n >= d:
        eigs, q = np.linalg.eigh(x.T @ x)
        rhs, lhs = q.T @ (x.T @ t), q
    else:
        eigs, q = np.linalg.eigh(x @ x.T)
        rhs, lhs = q.T @ t, x.T @ q
    w = (lhs / (eigs + l2_reg)[None, :]) @ rhs
    xt = (np.asarray(x_test, np.float64) - mean) / std
    xt = np.pad(xt, ((0, 0), (0, 1)), constant_values=BIG_VISION_BIAS_CONSTANT)
    return xt @ w


def fewshot_lstsq(
    train_x, train_y, test_x, test_y, *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    num_classes: int | None = None,
    l2_reg: float = 2.0 ** 10,
) -> dict:
    """big_vision's closed-form least-squares few-shot probe (ridge ``l2_reg = 2**10``),
    with the same k-shot sampling and output keys as :func:`fewshot_linear_probe`."""
    tr_x = _as_f32(train_x, "train_x")
    te_x = _as_f32(test_x, "test_x")
    tr_y = _as_labels(train_y, "train_y", tr_x.shape[0])
    te_y = _as_labels(test_y, "test_y", te_x.shape[0])
    C = _infer_num_classes(num_classes, tr_y, te_y)
    accs: dict[int, list[float]] = {int(k): [] for k in shots}
    for seed in seeds:
        for k in accs:
            idx = sample_few_shot(tr_y, k, seed, C)
            logits = _lstsq_fit_predict(tr_x[idx], tr_y[idx], C, te_x, float(l2_reg))
            accs[k].append(_accuracy_from_logits(logits, te_y))
    return _fewshot_summary(accs)
