"""Encoding datasets with an encoder (:mod:`clip_jax.evaluate.evaluators` describes one):
labelled sets into (features, labels), captioned sets into retrieval metrics."""

from __future__ import annotations

import numpy as np

from clip_jax.evaluate import datasets, metrics


def mean_std(encoder) -> tuple:
    """The encoder's pixel normalisation (a bundle may carry its own), else CLIP's."""
    pre = getattr(encoder, "preprocess_cfg", None) or {}
    return pre.get("mean"), pre.get("std")


def naflex_of(encoder) -> tuple | None:
    """A NaFlex encoder's (patch size, patch budget, resampling), else None: its images go in
    whole, at their own aspect ratio (:func:`clip_jax.evaluate.datasets.batches`)."""
    return getattr(encoder, "naflex", None)


def image_batches(encoder, samples, batch_size: int):
    """:func:`clip_jax.evaluate.datasets.batches` of a set's ``samples(size)`` as ``encoder``
    takes them: centre squares of its ``image_size``, or a NaFlex encoder's whole images."""
    spec = naflex_of(encoder)
    return datasets.batches(samples(0 if spec else encoder.image_size), batch_size,
                            *mean_std(encoder), naflex=spec)


def image_features(encoder, dataset: datasets.LabelledSet, batch_size: int,
                   max_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,)) of a labelled set; with ``max_per_class`` only the first
    that many images of each class are kept (reading stops once every class is full)."""
    feats, labels = [], []
    counts = np.zeros(len(dataset.class_names), np.int64)

    def items(size):
        for img, label in dataset.samples(size):
            if max_per_class:
                if counts[label] >= max_per_class:
                    if counts.min() >= max_per_class:
                        return
                    continue
            counts[label] += 1
            yield img, label

    for images, ys, n in image_batches(encoder, items, batch_size):
        feats.append(encoder.encode_image(images)[:n])
        labels.extend(ys)
    if not feats:
        raise ValueError(f"dataset {dataset.name} yielded no images ({dataset.stats})")
    return np.concatenate(feats), np.asarray(labels, np.int64)


def pad_encode(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode with the last batch padded to ``batch_size`` (one compiled shape)."""
    n = len(texts)
    return encoder.encode_text(texts + [texts[-1]] * (batch_size - n))[:n]


def retrieval(encoder, ds: datasets.CaptionedSet, batch_size: int) -> dict:
    """:func:`clip_jax.evaluate.metrics.retrieval_metrics` of a captioned set (every caption
    of every image; R@1/5/10 both ways)."""
    feats, captions = [], []
    for images, caps, n in image_batches(encoder, ds.samples, batch_size):
        feats.append(encoder.encode_image(images)[:n])
        captions.extend(caps)
    if not feats:
        raise ValueError(f"retrieval set {ds.name} yielded no images ({ds.stats})")
    texts = [c for caps in captions for c in caps]
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    text_feats = np.concatenate([pad_encode(encoder, texts[s:s + batch_size], batch_size)
                                 for s in range(0, len(texts), batch_size)])
    return metrics.retrieval_metrics(np.concatenate(feats), text_feats, text_to_image)
