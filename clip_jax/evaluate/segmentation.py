"""Patch-level evaluation: a linear probe on a ViT's frozen patch tokens for semantic
segmentation (``--eval segmentation``; the suite's ``segmentation`` sets).

    python -m clip_jax.evaluate --model RUN --eval segmentation --dataset data/demo/zeroshot.json
    python -m clip_jax.evaluate --model RUN --suite segmentation --data-dir DIR

Datasets (:func:`open_set`):

* the demo corpus's card (``zeroshot.json``, :mod:`clip_jax.data.demo`): each picture re-drawn
  with its per-pixel shape mask (:func:`clip_jax.data.demo.segmentation_sample`; 7 classes,
  background and the 6 shapes whatever their colour). The probe is fitted on the first
  :data:`DEMO_IMAGES` pictures of the train split (seen colour x shape pairs) and scored on the
  first :data:`DEMO_IMAGES` of the eval split (held-out pairs only);
* a Pascal VOC 2012 folder (``JPEGImages/``, ``SegmentationClass/`` palette PNGs,
  ``ImageSets/Segmentation/{train,val}.txt``: the devkit's layout): fitted on ``train``, scored
  on ``val``; label 255 (object boundaries) is ignored.

Protocol. Images and masks take the evaluation transform (shorter side to the model's size,
centre crop; masks nearest-neighbour). The tower's last-layer patch tokens (no class token;
:meth:`clip_jax.models.CLIP.encode_views`) form a ``g x g`` grid; each patch's target is the
fraction of its (not ignored) pixels in each class (soft labels). The probe is closed-form ridge
regression on those targets (features and targets centred, the L2 strength relative to the
features' mean variance), its strength chosen among :data:`L2S` by mIoU on the last
:data:`VAL_FRACTION` of the fitting images and refitted on all of them. Predicted patch scores
are upsampled bilinearly to pixels (half-pixel centres, like ``F.interpolate(...,
align_corners=False)``) and the argmax is the pixel's class. Reported: ``miou`` (the mean over
classes present in the truth or the prediction of ``TP / (TP + FP + FN)``, summed over the test
set), ``pixel_accuracy``, per-class IoU and the chosen ``l2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from PIL import Image

from clip_jax import models
from clip_jax.data import demo, transforms
from clip_jax.evaluate import datasets, encode

DEMO_IMAGES = 600  # per split, at most the corpus's own count
L2S = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VAL_FRACTION = 0.2
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
               "potted plant", "sheep", "sofa", "train", "tv monitor")
VOC_IGNORE = 255


@dataclasses.dataclass
class SegmentationSet:
    """``fit(size)`` / ``test(size)``: iterators of ``(uint8 image (S, S, 3), uint8 mask (S,
    S))`` at the model's size ``S``; mask values ``>= len(class_names)`` other than ``ignore``
    are an error."""

    name: str
    class_names: tuple[str, ...]
    fit: Callable[[int], Iterator]
    test: Callable[[int], Iterator]
    ignore: int | None = None


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A label map through the evaluation transform (:func:`clip_jax.data.transforms.
    resize_center_crop`'s geometry, nearest-neighbour so labels stay labels)."""
    h, w = mask.shape
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = Image.fromarray(np.asarray(mask, np.uint8))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.NEAREST)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)


def _pair(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if img.shape[:2] != mask.shape:
        raise ValueError(f"an image of {img.shape[1]}x{img.shape[0]} has a mask of "
                         f"{mask.shape[1]}x{mask.shape[0]}")
    return transforms.resize_center_crop(Image.fromarray(img), size), resize_mask(mask, size)


def demo_set(card: str, images: int = DEMO_IMAGES) -> SegmentationSet:
    """The demo corpus of ``card`` (its ``zeroshot.json``) as a segmentation set."""
    with open(card) as f:
        info = json.load(f)
    need = ("seed", "image_size", "heldout", "num_train", "num_eval")
    if not isinstance(info, dict) or any(k not in info for k in need):
        raise ValueError(f"{card}: not a demo corpus card (clip_jax.data.demo's zeroshot.json "
                         f"has {', '.join(need)})")
    if info.get("variant"):
        raise ValueError(f"{card}: the demo's {info['variant']!r} variant has no masks (only "
                         "the square pictures do)")
    held = [(p["colour"], p["shape"]) for p in info["heldout"]]

    def split(name: str, count: int):
        def samples(size: int):
            for i in range(min(int(count), images)):
                yield _pair(*demo.segmentation_sample(name, i, int(info["seed"]),
                                                      int(info["image_size"]), held), size)
        return samples

    return SegmentationSet(f"demo:{os.path.basename(os.path.dirname(os.path.abspath(card)))}",
                           demo.SEGMENTATION_CLASSES, split("train", info["num_train"]),
                           split("eval", info["num_eval"]))


def voc_set(root: str, fit: str = "train", test: str = "val") -> SegmentationSet:
    """A Pascal VOC 2012 devkit folder (``root/{JPEGImages,SegmentationClass,ImageSets/
    Segmentation}``) as a segmentation set."""
    lists = os.path.join(root, "ImageSets", "Segmentation")

    def split(name: str):
        path = os.path.join(lists, f"{name}.txt")
        if not os.path.isfile(path):
            raise ValueError(f"{root}: no ImageSets/Segmentation/{name}.txt (the VOC 2012 "
                             "devkit's layout)")
        with open(path) as f:
            ids = [line.strip() for line in f if line.strip()]
        if not ids:
            raise ValueError(f"{path} lists no image")

        def samples(size: int):
            for i in ids:
                img = os.path.join(root, "JPEGImages", f"{i}.jpg")
                png = os.path.join(root, "SegmentationClass", f"{i}.png")
                if not (os.path.isfile(img) and os.path.isfile(png)):
                    raise ValueError(f"{root}: {name}.txt lists {i!r} but JPEGImages/{i}.jpg "
                                     f"or SegmentationClass/{i}.png is missing")
                with Image.open(img) as a, Image.open(png) as m:
                    if m.mode not in ("P", "L"):
                        raise ValueError(f"{png}: a mask must be a palette or grey PNG of "
                                         f"class indices, not mode {m.mode}")
                    yield _pair(np.asarray(transforms.to_rgb(a)), np.asarray(m), size)
        return samples

    return SegmentationSet(f"voc2012:{fit}->{test}", VOC_CLASSES, split(fit), split(test),
                           ignore=VOC_IGNORE)


def open_set(spec: str) -> SegmentationSet:
    """A dataset spec: the demo's card (``.json``) or a VOC 2012 folder (``folder:PATH`` or
    ``PATH``)."""
    path = spec.removeprefix("folder:")
    if path.endswith(".json") and os.path.isfile(path):
        return demo_set(path)
    if os.path.isdir(os.path.join(path, "SegmentationClass")):
        return voc_set(path)
    raise ValueError(f"segmentation dataset {spec!r}: give the demo corpus's zeroshot.json or "
                     "a Pascal VOC 2012 folder (JPEGImages/, SegmentationClass/, "
                     "ImageSets/Segmentation/)")


# ----------------------------------------------------------------------------- the probe


def patch_targets(masks: np.ndarray, grid: int, num_classes: int,
                  ignore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(soft targets (N, grid*grid, C) float64, weights (N, grid*grid))`` of label maps
    ``masks`` (N, S, S): each patch's fraction of its counted pixels in each class; weight 0
    where every pixel of the patch is ignored."""
    n, s, _ = masks.shape
    p = s // grid
    m = masks.reshape(n, grid, p, grid, p).transpose(0, 1, 3, 2, 4).reshape(n, grid * grid, -1)
    bad = (m >= num_classes) & (m != ignore if ignore is not None else True)
    if bad.any():
        raise ValueError(f"a mask has label {int(m[bad].max())}, outside the "
                         f"{num_classes} classes")
    onehot = (m[..., None] == np.arange(num_classes)).sum(axis=2).astype(np.float64)
    counted = onehot.sum(-1)
    return onehot / np.maximum(counted, 1)[..., None], (counted > 0).astype(np.float64)


class Ridge:
    """Sufficient statistics of a weighted ridge regression, accumulated batch by batch."""

    def __init__(self, dim: int, classes: int):
        self.n, self.sx, self.sy = 0.0, np.zeros(dim), np.zeros(classes)
        self.xx, self.xy = np.zeros((dim, dim)), np.zeros((dim, classes))

    def add(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Ridge:
        x, y = np.asarray(x, np.float64)[w > 0], y[w > 0]
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        return self

    def merged(self, other: Ridge) -> Ridge:
        out = Ridge(len(self.sx), len(self.sy))
        for k in ("n", "sx", "sy", "xx", "xy"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        return out

    def solve(self, l2: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W (D, C), b (C,))``: ``argmin |X W + b - Y|^2 + lam |W|^2`` with ``lam = l2 * n
        * trace(cov(X)) / D``."""
        if self.n < 1:
            raise ValueError("the segmentation probe has no labelled patch to fit on")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx - self.n * np.outer(mx, mx)
        cxy = self.xy - self.n * np.outer(mx, my)
        lam = l2 * max(np.trace(cxx), 1e-12) / len(mx)
        w = np.linalg.solve(cxx + lam * np.eye(len(mx)), cxy)
        return w, my - mx @ w


def upsample(scores: np.ndarray, size: int) -> np.ndarray:
    """Patch scores (N, g, g, C) -> pixel scores (N, size, size, C), bilinear with half-pixel
    centres (``F.interpolate(..., mode='bilinear', align_corners=False)``)."""
    n, g, _, c = scores.shape
    return np.asarray(jax.image.resize(np.asarray(scores, np.float32), (n, size, size, c),
                                       "bilinear", antialias=False))


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int,
              ignore: int | None = None) -> np.ndarray:
    """(C, C) counts [true class, predicted class] over the pixels not ignored."""
    keep = truth != ignore if ignore is not None else np.ones(truth.shape, bool)
    t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def scores(conf: np.ndarray) -> dict:
    """``miou`` (over classes in the truth or the prediction), ``pixel_accuracy``, ``iou``."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
            "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1)), "iou": iou}


# ----------------------------------------------------------------------------- the model


def check_model(cfg) -> int:
    """The patch grid's side; a one-line error for a tower without a patch grid."""
    v = cfg.vision
    why = (f"its image tower is {v.family!r}, not a ViT" if v.family != "vit" else
           "its attentional pooler's tokens are not patches" if v.attn_pooler_queries else
           f"image_size {v.image_size} is not a multiple of the patch {v.patch_size}"
           if v.image_size % v.patch_size else "")
    if why:
        raise ValueError(f"segmentation probes a ViT's patch tokens: {why}")
    return v.image_size // v.patch_size


def token_fn(model) -> Callable[[np.ndarray], np.ndarray]:
    """Normalised pixels (N, S, S, 3) -> patch tokens (N, g*g, width) float32 of ``model`` (an
    :class:`clip_jax.inference.InferenceModel`), rows split over its devices."""
    module = models.CLIP(model.cfg)
    mesh = jax.sharding.Mesh(np.asarray(model.devices), ("batch",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    fn = jax.jit(lambda p, x: module.apply(models.variables(p), x,
                                           method=models.CLIP.encode_views)[1])
    return lambda x: np.asarray(fn(model.params, jax.device_put(x, rows)), np.float32)


def _encoded(tokens, ds: SegmentationSet, which: str, size: int, grid: int, batch: int,
             mean_std) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(tokens (n, g, g, width), masks (n, S, S))`` batch by batch."""
    for x, masks, n in datasets.batches(getattr(ds, which)(size), batch, *mean_std):
        yield tokens(x)[:n].reshape(n, grid, grid, -1), np.stack(masks[:n])


def _predict(w, b, feats: np.ndarray, size: int) -> np.ndarray:
    return upsample(feats @ w + b, size).argmax(-1)


def probe(fit_batches, test_batches, num_classes: int, ignore: int | None = None,
          l2s=L2S, val_fraction: float = VAL_FRACTION) -> dict:
    """The probe on ``(tokens (n, g, g, D), masks (n, S, S))`` batches (see the module
    docstring): the fitting batches are held in memory, the test batches streamed."""
    fit = list(fit_batches)
    if not fit:
        raise ValueError("the segmentation probe has no image to fit on")
    feats = np.concatenate([f for f, _ in fit])
    masks = np.concatenate([m for _, m in fit])
    n, grid, _, dim = feats.shape
    size = masks.shape[1]
    if size % grid:
        raise ValueError(f"masks of {size} pixels do not split into a {grid}x{grid} grid")
    cut = n - max(1, int(round(n * val_fraction))) if n > 1 else n

    def stats(lo: int, hi: int) -> Ridge:  # 64 images at a time (float64 copies)
        out = Ridge(dim, num_classes)
        for s in range(lo, hi, 64):
            e = min(hi, s + 64)
            y, wt = patch_targets(masks[s:e], grid, num_classes, ignore)
            out.add(feats[s:e].reshape(-1, dim), y.reshape(-1, num_classes), wt.reshape(-1))
        return out

    train = stats(0, cut)
    sweep = {}
    if cut < n:
        for l2 in l2s:
            w, b = train.solve(l2)
            pred = _predict(w, b, feats[cut:], size)
            sweep[l2] = scores(confusion(pred, masks[cut:], num_classes, ignore))["miou"]
        best = max(sweep, key=lambda k: (sweep[k], k))
        train = train.merged(stats(cut, n))
    else:
        best = l2s[len(l2s) // 2]
    w, b = train.solve(best)
    conf, tested = np.zeros((num_classes, num_classes), np.int64), 0
    for tf, tm in test_batches:
        conf += confusion(_predict(w, b, tf, tm.shape[1]), tm, num_classes, ignore)
        tested += len(tm)
    if not tested:
        raise ValueError("the segmentation probe has no image to test on")
    return {**scores(conf), "l2": best, "val_miou": sweep, "num_fit": n, "num_test": tested,
            "grid": grid, "confusion_matrix": conf}


def segmentation(model, spec) -> dict:
    """The ``segmentation`` evaluation of ``model`` (an InferenceModel) on ``spec.dataset``."""
    return evaluate_set(model, open_set(spec.dataset))


def evaluate_set(model, ds: SegmentationSet) -> dict:
    """The probe of ``model`` on the set ``ds`` (reports the dataset and classes too)."""
    t0 = time.perf_counter()
    if not hasattr(model, "params"):
        raise ValueError("segmentation probes patch tokens: it runs from the evaluate CLI on "
                         "a loaded model, not during training")
    grid, size = check_model(model.cfg), model.image_size
    tokens, batch, ms = token_fn(model), int(model.batch_size), encode.mean_std(model)
    out = probe(_encoded(tokens, ds, "fit", size, grid, batch, ms),
                _encoded(tokens, ds, "test", size, grid, batch, ms), len(ds.class_names),
                ds.ignore)
    return {"dataset": ds.name, **out, "class_names": list(ds.class_names),
            "per_class_iou": {c: (None if np.isnan(v) else float(v))
                              for c, v in zip(ds.class_names, out.pop("iou"), strict=True)},
            "seconds": time.perf_counter() - t0}
