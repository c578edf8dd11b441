"""Referring-expression accuracy of a LocCa-trained decoder (``model.decoder.loc_bins`` > 0).

    python -m clip_jax.evaluate --model RUN --eval referring --dataset data/demo/zeroshot.json

On shards whose ``KEY.json`` carries boxes and their expressions (:mod:`clip_jax.data.boxes`;
the demo corpus's eval split does), each (image, box) pair is one query: the decoder is given
the image and ``[aref, expression]`` and decodes four coordinate tokens greedily
(:meth:`clip_jax.evaluate.captioning.Captioner.refer`); the query is right when the decoded
box's IoU with the true box exceeds 0.5 (RefCOCO's Acc@0.5). The images are preprocessed as
for every evaluation (shorter side to the model's size, centre crop) and the boxes moved with
that crop (a box with less than half its area left in it is skipped and counted). Reports
``accuracy@0.5``, ``mean_iou``, the number of ``queries`` and a few ``examples``.
"""

from __future__ import annotations

import time

import numpy as np

from clip_jax.data import boxes as boxes_lib
from clip_jax.data import shards, tario, transforms
from clip_jax.evaluate import captioning, datasets
from clip_jax.models import locca

EXAMPLES = 8
THRESHOLD = 0.5


def _spec(dataset: str) -> str:
    if dataset.endswith(".json"):
        return datasets.read_card(dataset)["shards"]
    shards.expand_shards(dataset)  # a clear error for a bad spec, now
    return dataset


def queries(dataset: str, image_size: int, max_images: int = 0):
    """``(images uint8 (n, S, S, 3), expressions [n], boxes (n, 4), skipped)``: one row per
    box of the shards' samples, the boxes in the centre crop's coordinates."""
    images, exprs, out, skipped = [], [], [], 0
    for seen, (key, data, _cap, extras) in enumerate(tario.iterate_samples(
            _spec(dataset), decode=False, extra_fields=("json",))):
        if max_images and seen >= max_images:
            break
        found, caps = boxes_lib.parse(extras.get("json", ""), f"{dataset} key {key!r}")
        if not len(found):
            continue
        img = transforms.decode_image(data)
        w, h = img.size
        side = min(w, h)
        moved, keep = boxes_lib.crop(found, w, h, (w - side) / 2, (h - side) / 2, side, side)
        pixels = transforms.resize_center_crop(img, image_size)
        for b, c, ok in zip(moved, caps, keep, strict=True):
            if not ok:
                skipped += 1
                continue
            images.append(pixels)
            exprs.append(c)
            out.append(b)
    if not out:
        raise ValueError(f"referring set {dataset}: no sample with boxes (KEY.json 'boxes' and "
                         "'box_captions', clip_jax/data/boxes.py)")
    return np.stack(images), exprs, np.asarray(out, np.float32), skipped


def score(predicted, truth) -> dict:
    """``accuracy@0.5`` (IoU > 0.5) and ``mean_iou`` of predicted vs true boxes (n, 4)."""
    iou = np.asarray(locca.iou(predicted, truth), np.float64)
    return {"accuracy@0.5": float(np.mean(iou > THRESHOLD)), "mean_iou": float(np.mean(iou)),
            "queries": int(len(iou))}


def referring(model, spec) -> dict:
    """The ``referring`` evaluation of ``model`` (an InferenceModel) on ``spec.dataset``."""
    t0 = time.perf_counter()
    cap = captioning.Captioner(model)
    images, exprs, truth, skipped = queries(spec.dataset, model.image_size)
    predicted = cap.refer(images, model.tokenize(exprs))
    report = score(predicted, truth)
    return {"dataset": spec.dataset, **report, "skipped_out_of_crop": skipped,
            "bins": model.cfg.decoder.loc_bins,
            "examples": [{"expression": e, "truth": t.round(3).tolist(),
                          "predicted": p.round(3).tolist()}
                         for e, t, p in zip(exprs[:EXAMPLES], truth, predicted, strict=False)],
            "seconds": time.perf_counter() - t0}
