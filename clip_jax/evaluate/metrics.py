"""Model-agnostic evaluation metrics on embeddings: zero-shot classification and retrieval.

Everything here is a pure function of arrays (NumPy or JAX; computed in float32 NumPy). No model,
no data loading: the caller encodes images / texts and passes the embeddings. Accuracies /
recalls are fractions in [0, 1]. Linear and few-shot probes are in
:mod:`clip_jax.evaluate.probes`, which uses the input checks and the tie rule defined here.

API::

    zeroshot_metrics(image_embeddings, classifier, labels, topk=(1, 5))
        -> {"acc1", "acc5", "per_class_recall", "mean_per_class_recall", "num_samples",
            "predictions", "confusion_matrix"}
    retrieval_metrics(image_embeddings, text_embeddings, text_to_image, ks=(1, 5, 10))
        -> {"image_to_text_recall@k", "text_to_image_recall@k", "mean_recall",
            "image_to_text_median_rank", "text_to_image_median_rank", ...}
    classification_metrics(scores, labels) -> {"acc1", "acc5" (5 classes or more),
        "mean_per_class_recall"}   (the suite's per-dataset numbers)
    jsonable(metrics) -> the same dict with NumPy arrays / scalars turned into lists / floats

Metric names are CLIP_benchmark's, one per metric everywhere (reports, ``metrics.jsonl``,
the suite): ``acc{k}`` (top-k accuracy), ``per_class_recall`` / ``mean_per_class_recall``
(balanced accuracy). Files written before this naming (``top1``, ``top5``,
``mean_per_class_accuracy``) are read through
:func:`clip_jax.evaluate.plots.canonical_name`.

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
exact ties the confusion-matrix diagonal can therefore exceed the pessimistic ``acc1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from clip_jax.inference import l2_normalize

# Score-matrix chunks hold at most this many float32 entries (64 MiB).
_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def as_f32(x, name: str, ndim: int = 2) -> np.ndarray:
    """``x`` as a finite float32 array of ``ndim`` dimensions (ValueError naming ``name``)."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def as_labels(y, name: str, n: int, num_classes: int | None = None) -> np.ndarray:
    """``y`` as ``n`` int64 labels in ``[0, num_classes)`` (ValueError naming ``name``)."""
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


def _chunk_rows(num_cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, num_cols))


def pessimistic_rank(scores: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
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


def zeroshot_metrics(
    image_embeddings,
    classifier,
    labels,
    topk: Sequence[int] = (1, 5),
    normalize: bool = True,
) -> dict:
    """Zero-shot classification metrics of ``image_embeddings @ classifier.T``.

    ``image_embeddings`` (N, D), ``classifier`` (C, D) (from
    :func:`clip_jax.inference.build_zeroshot_classifier`),
    ``labels`` (N,) ints in [0, C). Returns ``acc{k}`` for each k (pessimistic tie rule, see the
    module docstring), ``per_class_recall`` (list of C top-1 accuracies, ``None`` for classes
    without samples), ``mean_per_class_recall`` (over classes with samples), ``num_samples``,
    ``predictions`` ((N,) argmax) and ``confusion_matrix`` ((C, C) int64, rows = true class,
    columns = predicted class). ``normalize`` L2-normalises both inputs first (rankings per
    image do not depend on the image norm; it guards against unnormalised classifiers).
    """
    img = as_f32(image_embeddings, "image_embeddings")
    cls = as_f32(classifier, "classifier")
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"embedding dims differ: {img.shape[1]} vs {cls.shape[1]}")
    num_classes = cls.shape[0]
    y = as_labels(labels, "labels", img.shape[0], num_classes)
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
        ranks[s:s + step] = pessimistic_rank(scores, y[s:s + step])
        preds[s:s + step] = np.argmax(scores, axis=1)
    out: dict = {f"acc{k}": float(np.mean(ranks < k)) for k in topk}
    hit1 = (ranks < 1).astype(np.float64)
    support = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y, weights=hit1, minlength=num_classes)
    per_class = [float(c / s) if s > 0 else None for c, s in zip(correct, support)]
    present = support > 0
    out["per_class_recall"] = per_class
    out["mean_per_class_recall"] = float(np.mean(correct[present] / support[present]))
    out["num_samples"] = int(n)
    out["predictions"] = preds
    out["confusion_matrix"] = np.bincount(
        y * num_classes + preds, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    return out


def classification_metrics(scores, labels) -> dict:
    """``acc1``, ``acc5`` (only with 5 classes or more) and ``mean_per_class_recall`` of class
    ``scores`` (N, C) (logits, similarities: any monotone score) against ``labels`` (N,):
    the mean over the classes that have samples of the fraction of each class's samples whose
    top-1 is right (pessimistic tie rule, as everywhere here)."""
    s = as_f32(scores, "scores")
    num_classes = s.shape[1]
    y = as_labels(labels, "labels", s.shape[0], num_classes)
    if s.shape[0] == 0:
        raise ValueError("no samples")
    ranks = np.concatenate([pessimistic_rank(s[i:i + _chunk_rows(num_classes)],
                                             y[i:i + _chunk_rows(num_classes)])
                            for i in range(0, s.shape[0], _chunk_rows(num_classes))])
    hit = (ranks < 1).astype(np.float64)
    support = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y, weights=hit, minlength=num_classes)
    out = {"acc1": float(hit.mean())}
    if num_classes >= 5:
        out["acc5"] = float(np.mean(ranks < 5))
    out["mean_per_class_recall"] = float(np.mean(correct[support > 0] / support[support > 0]))
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
    img = as_f32(image_embeddings, "image_embeddings")
    txt = as_f32(text_embeddings, "text_embeddings")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"embedding dims differ: {img.shape[1]} vs {txt.shape[1]}")
    n_img, n_txt = img.shape[0], txt.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError("need at least one image and one caption")
    t2i = as_labels(text_to_image, "text_to_image", n_txt, n_img)
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
        t2i_rank[s:s + step] = pessimistic_rank(scores, t2i[s:s + step])

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
