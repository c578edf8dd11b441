"""Offline demo corpus: compositional pictures of coloured, patterned shapes with captions.

In the spirit of CLIP's zebra ("the outline of a horse, the stripes of a tiger, the colours of a
panda"), every picture is composed from independent attributes: shape, colour, pattern (solid,
striped, dotted, checkered), count, size, position and background. Captions are generated from
templates with synonyms, varied word order and omitted attributes.

Held-out scheme: of the ``6 x 6`` colour x shape pairs, 12 never occur in training (no image, no
caption). They are chosen as a "two per row and column" design: every colour is held out with
exactly two shapes and every shape with exactly two colours. The zero-shot task classifies
images of the held-out pairs among the 12 held-out class names ("red star", ...), so:

* chance is 1/12;
* a model that knows only colour (or only shape) is left with 2 candidates: at most 50%;
* 100% needs composing a colour and a shape never seen together.

Layout written by :func:`generate` (or ``python -m clip_jax.data.demo --out DIR``)::

    DIR/train/00000.tar ...   key.png, key.txt (caption), key.json (attributes; the objects'
                              "boxes" and "box_captions", e.g. "red circle": data/boxes.py)
    DIR/train/sizes.json      {"00000.tar": 1000, ...}
    DIR/eval/00000.tar ...    key.png, key.txt, key.json, key.cls (class index, as text)
    DIR/eval/sizes.json
    DIR/zeroshot.json         classes, templates, shard patterns, held-out pairs, chance, ...

Determinism: sample ``i`` of a split is a pure function of ``(seed, split, i, image_size)``
(its own NumPy generator), shards are written by ``webdataset.TarWriter`` with fixed metadata
(:func:`clip_jax.data.write_shards.open_tar_writer`), so the same arguments give byte-identical
files however many worker processes write them. Pictures and captions:
:mod:`clip_jax.data.demo_render`. ``zeroshot.json`` is
written last: its presence marks a complete corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Sequence

import numpy as np

from clip_jax import files
from clip_jax.data import demo_strip
from clip_jax.data.demo_render import BACKGROUNDS, COLOURS, caption, plural_of, referring, render
from clip_jax.data.progress import Progress
from clip_jax.data.write_shards import open_tar_writer

VERSION = 2  # 2: KEY.json also holds each object's box and referring expression
DEFAULT_TRAIN_SAMPLES = 30000
DEFAULT_EVAL_SAMPLES = 1200  # 100 per held-out class
# "": square pictures; "strip": 4:1 and 1:4 strips with the object at one end, cut off by any
# square centre crop (clip_jax.data.demo_strip; NaFlex's demo, configs/naflex_demo.py)
VARIANTS = ("", "strip")

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {s: plural_of(s) for s in SHAPES}
PATTERNS = ("solid", "striped", "dotted", "checkered")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
COUNTS = (1, 2, 3)
COUNT_PROBS = (0.6, 0.25, 0.15)
SIZES = ("small", "large")

TEMPLATES = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {}.",
    "a rendering of a {}.",
)

_SPLIT_IDS = {"train": 0, "eval": 1}
_SHARD_RE = re.compile(r"^\d{5}\.tar$")

# ----------------------------------------------------------------------------- attributes


def heldout_pairs(seed: int) -> list[tuple[str, str]]:
    """The 12 held-out (colour, shape) pairs: colour i with shapes perm[i] and perm[i+1]."""
    rng = np.random.default_rng([seed, 104729])
    colours, perm = list(COLOURS), rng.permutation(len(SHAPES))
    pairs = []
    for i, c in enumerate(colours):
        for j in (perm[i], perm[(i + 1) % len(SHAPES)]):
            pairs.append((c, SHAPES[int(j)]))
    return pairs


def class_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def _sample_attributes(rng: np.random.Generator, colour: str, shape: str) -> dict:
    count = int(rng.choice(COUNTS, p=COUNT_PROBS))
    attrs = {
        "colour": colour,
        "shape": shape,
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "count": count,
        "background": list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        "position": POSITIONS[rng.integers(len(POSITIONS))] if count == 1 else None,
        "size": SIZES[rng.integers(len(SIZES))] if count == 1 else None,
    }
    return attrs



# ----------------------------------------------------------------------------- samples


def _draw(split: str, index: int, seed: int, image_size: int,
          heldout: Sequence[tuple[str, str]], variant: str = "", coverage=None):
    """``(picture, attrs, KEY.json content, caption, class index or None)`` of a sample, every
    draw of its generator in the order the corpus makes them."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, 0x5EED])
    held = [tuple(p) for p in heldout]
    if split == "train":
        allowed = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]
        colour, shape = allowed[rng.integers(len(allowed))]
        label = None
    else:
        label = index % len(held)  # balanced classes
        colour, shape = held[label]
    attrs = _sample_attributes(rng, colour, shape)
    if variant == "strip":
        attrs = demo_strip.strip_attributes(attrs, rng)
        img, describe = demo_strip.render(attrs, image_size, rng), demo_strip.caption
        meta = attrs
    else:  # the objects' boxes and referring expressions too (LocCa; clip_jax.data.boxes)
        boxes: list = []
        img, describe = render(attrs, image_size, rng, boxes, coverage), caption
        meta = {**attrs, "boxes": boxes, "box_captions": referring(attrs, boxes)}
    return img, attrs, meta, describe(attrs, rng), label


def make_sample(split: str, index: int, seed: int, image_size: int,
                heldout: Sequence[tuple[str, str]],
                variant: str = "") -> tuple[str, dict[str, bytes]]:
    """Sample ``index`` of ``split``: (key, {ext: bytes}). Pure function of its arguments."""
    img, _, meta, text, label = _draw(split, index, seed, image_size, heldout, variant)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    files = {
        "png": buf.getvalue(),
        "txt": text.encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    if label is not None:
        files["cls"] = str(label).encode()
    return f"{split}-{index:08d}", files


# Segmentation classes of the demo's pictures: background, then each shape (any colour).
SEGMENTATION_CLASSES = ("background", *SHAPES)


def segmentation_sample(split: str, index: int, seed: int, image_size: int,
                        heldout: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of ``split`` re-drawn with its per-pixel shape mask: ``(picture uint8
    (S, S, 3), mask uint8 (S, S))``, the mask's class :data:`SEGMENTATION_CLASSES`' index
    (0 background, ``1 + SHAPES.index(shape)`` where an object covers at least half of the
    pixel). The picture is the corpus's own (same generator draws); nothing is stored, so the
    corpus's files are unchanged. Square pictures only (not the strip variant)."""
    coverage = np.zeros((image_size, image_size), np.float32)
    img, attrs, _, _, _ = _draw(split, index, seed, image_size, heldout, "", coverage)
    mask = np.where(coverage >= 0.5, 1 + SHAPES.index(attrs["shape"]), 0).astype(np.uint8)
    return np.asarray(img, np.uint8), mask


def _write_tar(path: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write a webdataset tar deterministically (fixed metadata) and atomically; returns count."""
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    try:
        with open_tar_writer(tmp) as sink:
            for key, files in samples:
                sink.write({"__key__": key, **files})
                n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n


def _write_shard_job(job: tuple) -> tuple[str, int]:
    split, shard, start, stop, seed, image_size, heldout, directory, variant = job
    name = f"{shard:05d}.tar"
    samples = (make_sample(split, i, seed, image_size, heldout, variant)
               for i in range(start, stop))
    return name, _write_tar(os.path.join(directory, name), samples)


def _atomic_json(path: str, obj) -> None:
    files.write_json(path, obj, sort_keys=True)


def _brace(split: str, n_shards: int) -> str:
    return f"{split}/{{00000..{n_shards - 1:05d}}}.tar"


# ----------------------------------------------------------------------------- public API


def generate(out_dir: str, train_samples: int = DEFAULT_TRAIN_SAMPLES,
             eval_samples: int = DEFAULT_EVAL_SAMPLES,
             image_size: int = 64, seed: int = 0, samples_per_shard: int = 1000,
             workers: int | None = None, verbose: bool = False, variant: str = "") -> dict:
    """Write the demo corpus into ``out_dir``; returns the content of ``zeroshot.json``.

    Shard paths in the result are relative to ``out_dir``. Eval sample ``i`` has class
    ``i % 12`` (balanced when ``eval_samples`` is a multiple of 12). ``workers`` processes
    (default ``min(2, cpu_count)``) write whole shards; they are started with "spawn" (safe when
    the caller already runs JAX threads) and the output does not depend on their number.
    Leftover ``NNNNN.tar`` shards of an earlier, larger corpus in ``out_dir`` are removed.
    ``variant``: one of :data:`VARIANTS` (recorded in ``zeroshot.json`` when not "").
    """
    if variant not in VARIANTS:
        raise ValueError(f"demo corpus variant {variant!r}: must be one of {VARIANTS}")
    if train_samples < 1 or eval_samples < 1 or samples_per_shard < 1:
        raise ValueError("train_samples, eval_samples and samples_per_shard must be >= 1")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    t0 = time.time()
    heldout = heldout_pairs(seed)
    jobs, n_shards = [], {}
    for split, total in (("train", train_samples), ("eval", eval_samples)):
        directory = os.path.join(out_dir, split)
        files.make_dir(directory)
        n_shards[split] = -(-total // samples_per_shard)
        keep = {f"{k:05d}.tar" for k in range(n_shards[split])}
        for name in os.listdir(directory):  # shards left over from a larger earlier corpus
            if _SHARD_RE.match(name) and name not in keep:
                os.remove(os.path.join(directory, name))
        for k in range(n_shards[split]):
            start = k * samples_per_shard
            jobs.append((split, k, start, min(total, start + samples_per_shard), seed,
                         image_size, heldout, directory, variant))
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    progress = Progress("demo corpus", train_samples + eval_samples, "images") \
        if verbose else None

    def done(results):  # shards in job order, counted as they come
        for job, result in zip(jobs, results):
            if progress:
                progress.update(job[3] - job[2])
            yield result

    if workers == 1:
        results = list(done(_write_shard_job(j) for j in jobs))
    else:
        # spawn, not fork: the caller (the train entry point) may have JAX threads running.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            results = list(done(pool.imap(_write_shard_job, jobs, chunksize=1)))
    sizes: dict[str, dict[str, int]] = {"train": {}, "eval": {}}
    for job, (name, count) in zip(jobs, results):
        sizes[job[0]][name] = count
    for split in sizes:
        _atomic_json(os.path.join(out_dir, split, "sizes.json"), sizes[split])

    classes = [class_name(c, s) for c, s in heldout]
    info = {
        "version": VERSION,
        "classes": classes,
        "templates": list(TEMPLATES),
        "eval_shards": _brace("eval", n_shards["eval"]),
        "train_shards": _brace("train", n_shards["train"]),
        "heldout": [{"colour": c, "shape": s} for c, s in heldout],
        "chance": 1.0 / len(classes),
        "single_attribute_ceiling": 0.5,
        "task": ("zero-shot classification of eval images (only held-out colour x shape pairs, "
                 "never seen in training) among the held-out class names; every colour and "
                 "every shape occurs in exactly 2 classes, so a colour-only or shape-only model "
                 "scores at most single_attribute_ceiling"),
        "label_key": "cls",
        "image_key": "png",
        "text_key": "txt",
        "attributes": {
            "colours": list(COLOURS), "shapes": list(SHAPES), "patterns": list(PATTERNS),
            "backgrounds": list(BACKGROUNDS), "positions": list(POSITIONS),
            "counts": list(COUNTS), "sizes": list(SIZES),
        },
        "num_train": train_samples,
        "num_eval": eval_samples,
        "image_size": image_size,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
    }
    if variant:
        info["variant"] = variant
    _atomic_json(os.path.join(out_dir, "zeroshot.json"), info)
    if progress:
        progress.close(f"demo corpus: {train_samples} train / {eval_samples} eval samples "
                       f"({n_shards['train']} + {n_shards['eval']} shards, {image_size}px) in "
                       f"{out_dir} with {workers} worker(s): {time.time() - t0:.1f} s")
    return info


def load_or_generate(out_dir: str, **kwargs) -> dict:
    """Return ``out_dir/zeroshot.json`` if it exists and matches ``kwargs``; else generate."""
    path = os.path.join(out_dir, "zeroshot.json")
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
        wanted = {"num_train": kwargs.get("train_samples", DEFAULT_TRAIN_SAMPLES),
                  "num_eval": kwargs.get("eval_samples", DEFAULT_EVAL_SAMPLES),
                  "image_size": kwargs.get("image_size", 64), "seed": kwargs.get("seed", 0),
                  "samples_per_shard": kwargs.get("samples_per_shard", 1000),
                  "version": VERSION}
        if all(info.get(k) == v for k, v in wanted.items()) and info.get(
                "variant", "") == kwargs.get("variant", ""):
            return info
    return generate(out_dir, **kwargs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train-samples", type=int, default=DEFAULT_TRAIN_SAMPLES)
    p.add_argument("--eval-samples", type=int, default=DEFAULT_EVAL_SAMPLES)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, cpus))")
    p.add_argument("--variant", default="", choices=VARIANTS,
                   help="'strip': 4:1 strips, the object at one end (NaFlex's demo)")
    a = p.parse_args(argv)
    info = generate(a.out, a.train_samples, a.eval_samples, a.image_size, a.seed,
                    a.samples_per_shard, a.workers, verbose=True, variant=a.variant)
    print(json.dumps({k: info[k] for k in ("classes", "chance", "eval_shards", "train_shards")}))


if __name__ == "__main__":
    main()
