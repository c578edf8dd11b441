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

    DIR/train/00000.tar ...   key.png, key.txt (caption), key.json (attributes)
    DIR/train/sizes.json      {"00000.tar": 1000, ...}
    DIR/eval/00000.tar ...    key.png, key.txt, key.json, key.cls (class index, as text)
    DIR/eval/sizes.json
    DIR/zeroshot.json         classes, templates, shard patterns, held-out pairs, chance, ...

Determinism: sample ``i`` of a split is a pure function of ``(seed, split, i, image_size)``
(its own NumPy generator), shards are written with fixed tar metadata, so the same arguments
give byte-identical files however many worker processes write them. ``zeroshot.json`` is
written last: its presence marks a complete corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
DEFAULT_TRAIN_SAMPLES = 30000
DEFAULT_EVAL_SAMPLES = 1200  # 100 per held-out class

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 230),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {s: s + "es" if s.endswith("s") else s + "s" for s in SHAPES}
PATTERNS = ("solid", "striped", "dotted", "checkered")
# Background names never collide with object colour names, so a caption's colour word is the
# object's colour (the tests rely on this to check held-out pairs never appear in training).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light grey": (185, 185, 185),
    "dark grey": (75, 75, 75),
    "black": (12, 12, 12),
}
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


# ----------------------------------------------------------------------------- rendering

_SS = 4  # supersampling factor: draw at 4x, box-downsample (anti-aliasing)


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Vertices in units of the object radius, y pointing down; None for a circle."""
    if shape == "square":
        h = 0.82
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
        return pts
    if shape == "cross":
        a, b = 0.95, 0.33
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                (-b, b), (-a, b), (-a, -b), (-b, -b)]
    return None


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: int) -> np.ndarray:
    c = np.asarray(rgb, np.float32) + rng.integers(-amount, amount + 1, size=3)
    return np.clip(c, 0, 255)


def _pattern_params(rng: np.random.Generator, pattern: str, size: int) -> dict:
    """Random parameters of ``pattern`` (in supersampled pixels), drawn once per picture."""
    scale = size / 64.0 * _SS
    if pattern == "solid":
        return {}
    if pattern == "striped":
        period = rng.uniform(4.5, 6.0) * scale
        angle = math.radians(float(rng.choice([0, 45, 90, 135])) + rng.uniform(-8, 8))
        return {"period": period, "angle": angle, "phase": rng.uniform(0, period)}
    if pattern == "dotted":
        period = rng.uniform(5.0, 6.5) * scale
        return {"period": period, "offset": rng.uniform(0, period, size=2)}
    if pattern == "checkered":
        cell = rng.uniform(3.0, 4.0) * scale
        return {"cell": cell, "offset": rng.uniform(0, 2 * cell, size=2)}
    raise ValueError(f"unknown pattern {pattern!r}")


def _pattern_mask(pattern: str, params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where the second colour shows, at supersampled pixel coordinates x (1, w), y (h, 1)."""
    if pattern == "solid":
        return np.zeros((y.shape[0], x.shape[1]), bool)
    if pattern == "striped":
        period, angle = params["period"], params["angle"]
        t = x * math.cos(angle) + (y * math.sin(angle) + params["phase"])
        return (t % period) < 0.45 * period
    if pattern == "dotted":
        period = params["period"]
        ox, oy = params["offset"]
        dx = (x + ox) % period - period / 2
        dy = (y + oy) % period - period / 2
        return dx * dx + dy * dy < (0.28 * period) ** 2
    cell = params["cell"]
    ox, oy = params["offset"]
    return (np.floor((x + ox) / cell) % 2 == 1) ^ (np.floor((y + oy) / cell) % 2 == 1)


def _place_objects(rng: np.random.Generator, attrs: dict, size: int) -> list[tuple]:
    """[(cx, cy, r, rotation_degrees)] in output-pixel units."""
    s = size / 64.0
    objs: list[tuple] = []
    if attrs["count"] == 1:
        r = (rng.uniform(7.0, 9.5) if attrs["size"] == "small" else rng.uniform(12.5, 15.5)) * s
        centres = {"top left": (0.27, 0.27), "top right": (0.73, 0.27),
                   "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73),
                   "center": (0.5, 0.5)}
        fx, fy = centres[attrs["position"]]
        cx = fx * size + rng.uniform(-3, 3) * s
        cy = fy * size + rng.uniform(-3, 3) * s
        cx = float(np.clip(cx, r + s, size - r - s))
        cy = float(np.clip(cy, r + s, size - r - s))
        objs.append((cx, cy, r, rng.uniform(-10, 10)))
        return objs
    for _ in range(attrs["count"]):
        r = rng.uniform(8.0, 10.5) * s
        for _attempt in range(100):
            cx, cy = rng.uniform(r + s, size - r - s, size=2)
            if all((cx - ox) ** 2 + (cy - oy) ** 2 > (r + orr + 2 * s) ** 2
                   for ox, oy, orr, _ in objs):
                break
        objs.append((float(cx), float(cy), r, rng.uniform(-10, 10)))
    return objs


def render(attrs: dict, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the picture described by ``attrs`` (consumes ``rng``).

    Each object is drawn supersampled (x4) inside its own bounding box and box-filtered down to
    colour + coverage, then blended over the background: anti-aliased, and cheap.
    """
    bg_name = attrs["background"]
    bg = _jitter(rng, BACKGROUNDS[bg_name], 6)
    primary = _jitter(rng, COLOURS[attrs["colour"]], 18)
    # The pattern's second colour contrasts with the background, so the outline stays visible.
    if bg_name in ("white", "light grey"):
        secondary = primary * 0.3
    else:
        secondary = primary * 0.35 + 255 * 0.65
    params = _pattern_params(rng, attrs["pattern"], size)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = bg
    poly = _unit_polygon(attrs["shape"])
    for cx, cy, r, rot in _place_objects(rng, attrs, size):
        x0, y0 = max(0, math.floor(cx - r) - 1), max(0, math.floor(cy - r) - 1)
        x1, y1 = min(size, math.ceil(cx + r) + 1), min(size, math.ceil(cy + r) + 1)
        w, h = (x1 - x0) * _SS, (y1 - y0) * _SS
        lx, ly, lr = (cx - x0) * _SS, (cy - y0) * _SS, r * _SS
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        if poly is None:
            draw.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=255)
        else:
            a = math.radians(rot)
            ca, sa = math.cos(a), math.sin(a)
            draw.polygon([(lx + lr * (px * ca - py * sa), ly + lr * (px * sa + py * ca))
                          for px, py in poly], fill=255)
        cover = np.asarray(mask, np.float32) / 255.0
        xs = np.arange(x0 * _SS, x1 * _SS, dtype=np.float32)[None, :]
        ys = np.arange(y0 * _SS, y1 * _SS, dtype=np.float32)[:, None]
        second = _pattern_mask(attrs["pattern"], params, xs, ys) * cover
        first = cover - second
        colour = first[..., None] * primary + second[..., None] * secondary
        shape = (y1 - y0, _SS, x1 - x0, _SS)
        alpha = cover.reshape(shape).mean(axis=(1, 3))[..., None]
        colour = colour.reshape(shape + (3,)).mean(axis=(1, 3))
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1.0 - alpha) + colour
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- captions

_PATTERN_ADJ = {
    "solid": ["solid", "plain", "solid-coloured"],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "polka-dot", "spotted"],
    "checkered": ["checkered", "checked", "chequered"],
}
_PATTERN_WITH = {
    "solid": ["with no pattern", "filled in solid"],
    "striped": ["with stripes", "covered in stripes", "with a striped pattern"],
    "dotted": ["with dots", "with polka dots", "covered in dots", "with spots"],
    "checkered": ["with a checkerboard pattern", "with a checkered pattern", "with checks"],
}
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
_COUNT_WORDS = {2: ["two", "2", "a pair of"], 3: ["three", "3", "a group of three"]}
_POSITION_WORDS = {
    "top left": ["in the top left", "in the top left corner", "at the upper left",
                 "in the upper-left corner"],
    "top right": ["in the top right", "in the top right corner", "at the upper right",
                  "in the upper-right corner"],
    "bottom left": ["in the bottom left", "in the bottom left corner", "at the lower left",
                    "in the lower-left corner"],
    "bottom right": ["in the bottom right", "in the bottom right corner", "at the lower right",
                     "in the lower-right corner"],
    "center": ["in the center", "in the middle", "in the centre", "at the center of the image"],
}
_BG_WORDS = {
    "white": ["white"],
    "light grey": ["light grey", "light gray", "pale grey"],
    "dark grey": ["dark grey", "dark gray", "charcoal"],
    "black": ["black"],
}
_BG_PHRASES = ["on a {} background", "against a {} background", "on {}", "over a {} backdrop"]
_PREFIXES = ["", "", "a photo of ", "a picture of ", "an image of ", "a drawing of ",
             "an illustration of ", "a rendering of ", "a close-up of "]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: dict, rng: np.random.Generator) -> str:
    """A natural caption for ``attrs``: templates, synonyms, word order, omitted attributes."""
    count, plural = attrs["count"], attrs["count"] > 1
    drop_colour = rng.random() < 0.08
    drop_shape = not drop_colour and rng.random() < 0.08
    noun = _pick(rng, ["shape", "object", "figure"]) if drop_shape else attrs["shape"]
    if plural:
        noun = PLURALS.get(noun, noun + "s")
    colour = None if drop_colour else attrs["colour"]
    pattern = attrs["pattern"]
    show_pattern = rng.random() < (0.3 if pattern == "solid" else 0.85)
    pattern_as_adj = rng.random() < 0.55
    size_word = _pick(rng, _SIZE_WORDS[attrs["size"]]) if (
        attrs["size"] and rng.random() < 0.5) else None

    # Noun phrase, in one of two word orders.
    adjs = [a for a in (size_word, colour) if a]
    if show_pattern and pattern_as_adj:
        adjs.append(_pick(rng, _PATTERN_ADJ[pattern]))
    if rng.random() < 0.8 or not colour:
        core = " ".join(adjs + [noun])
        if show_pattern and not pattern_as_adj:
            core += " " + _pick(rng, _PATTERN_WITH[pattern])
    else:  # "a star that is red and striped"
        pre = [a for a in (size_word,) if a]
        props = [colour]
        if show_pattern:
            props.append(_pick(rng, _PATTERN_ADJ[pattern]))
        verb = "that are" if plural else _pick(rng, ["that is", "which is"])
        core = " ".join(pre + [noun, verb, " and ".join(props)])
    if plural:
        if rng.random() < 0.1:
            np_ = _pick(rng, ["some", "several", "a few"]) + " " + core
        else:
            np_ = _pick(rng, _COUNT_WORDS[count]) + " " + core
    else:
        det = _pick(rng, ["a", "a", "a", "one", "a single"])
        np_ = (_article(core) if det == "a" else det) + " " + core

    pos = None
    if attrs["position"] and rng.random() < 0.7:
        pos = _pick(rng, _POSITION_WORDS[attrs["position"]])
    bg = None
    if rng.random() < 0.5:
        bg = _pick(rng, _BG_PHRASES).format(_pick(rng, _BG_WORDS[attrs["background"]]))

    form = rng.integers(5)
    if form == 0 and pos:  # "in the top left, a red circle on a white background"
        text = ", ".join([pos, " ".join(p for p in (np_, bg) if p)])
    elif form == 1 and bg:  # "a white background with a red circle in the top left"
        bgw = _pick(rng, _BG_WORDS[attrs["background"]])
        text = " ".join(p for p in (f"{_article(bgw)} {bgw} background with", np_, pos) if p)
    elif form == 2:
        text = " ".join(p for p in (np_, bg, pos) if p)
    else:
        prefix = _pick(rng, _PREFIXES)
        if prefix == "" and rng.random() < 0.2:
            prefix = "there are " if plural else "there is "
        text = prefix + " ".join(p for p in (np_, pos, bg) if p)
    if rng.random() < 0.5:
        text += "."
    return text


# ----------------------------------------------------------------------------- samples


def make_sample(split: str, index: int, seed: int, image_size: int,
                heldout: Sequence[tuple[str, str]]) -> tuple[str, dict[str, bytes]]:
    """Sample ``index`` of ``split``: (key, {ext: bytes}). Pure function of its arguments."""
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
    img = render(attrs, image_size, rng)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    files = {
        "png": buf.getvalue(),
        "txt": caption(attrs, rng).encode(),
        "json": json.dumps(attrs, sort_keys=True).encode(),
    }
    if label is not None:
        files["cls"] = str(label).encode()
    return f"{split}-{index:08d}", files


def _write_tar(path: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write a webdataset tar deterministically (fixed metadata) and atomically; returns count."""
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, files in samples:
                for ext in sorted(files):
                    data = files[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
                n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n


def _write_shard_job(job: tuple) -> tuple[str, int]:
    split, shard, start, stop, seed, image_size, heldout, directory = job
    name = f"{shard:05d}.tar"
    samples = (make_sample(split, i, seed, image_size, heldout) for i in range(start, stop))
    return name, _write_tar(os.path.join(directory, name), samples)


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _brace(split: str, n_shards: int) -> str:
    return f"{split}/{{00000..{n_shards - 1:05d}}}.tar"


# ----------------------------------------------------------------------------- public API


def generate(out_dir: str, train_samples: int = DEFAULT_TRAIN_SAMPLES,
             eval_samples: int = DEFAULT_EVAL_SAMPLES,
             image_size: int = 64, seed: int = 0, samples_per_shard: int = 1000,
             workers: int | None = None, verbose: bool = False) -> dict:
    """Write the demo corpus into ``out_dir``; returns the content of ``zeroshot.json``.

    Shard paths in the result are relative to ``out_dir``. Eval sample ``i`` has class
    ``i % 12`` (balanced when ``eval_samples`` is a multiple of 12). ``workers`` processes
    (default ``min(2, cpu_count)``) write whole shards; they are started with "spawn" (safe when
    the caller already runs JAX threads) and the output does not depend on their number.
    Leftover ``NNNNN.tar`` shards of an earlier, larger corpus in ``out_dir`` are removed.
    """
    if train_samples < 1 or eval_samples < 1 or samples_per_shard < 1:
        raise ValueError("train_samples, eval_samples and samples_per_shard must be >= 1")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    t0 = time.time()
    heldout = heldout_pairs(seed)
    jobs, n_shards = [], {}
    for split, total in (("train", train_samples), ("eval", eval_samples)):
        directory = os.path.join(out_dir, split)
        os.makedirs(directory, exist_ok=True)
        n_shards[split] = -(-total // samples_per_shard)
        keep = {f"{k:05d}.tar" for k in range(n_shards[split])}
        for name in os.listdir(directory):  # shards left over from a larger earlier corpus
            if _SHARD_RE.match(name) and name not in keep:
                os.remove(os.path.join(directory, name))
        for k in range(n_shards[split]):
            start = k * samples_per_shard
            jobs.append((split, k, start, min(total, start + samples_per_shard), seed,
                         image_size, heldout, directory))
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        results = [_write_shard_job(j) for j in jobs]
    else:
        # spawn, not fork: the caller (the train entry point) may have JAX threads running.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            results = pool.map(_write_shard_job, jobs, chunksize=1)
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
    _atomic_json(os.path.join(out_dir, "zeroshot.json"), info)
    if verbose:
        print(f"demo corpus: {train_samples} train / {eval_samples} eval samples "
              f"({n_shards['train']} + {n_shards['eval']} shards, {image_size}px) in {out_dir} "
              f"with {workers} worker(s): {time.time() - t0:.1f} s", file=sys.stderr)
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
        if all(info.get(k) == v for k, v in wanted.items()):
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
    a = p.parse_args(argv)
    info = generate(a.out, a.train_samples, a.eval_samples, a.image_size, a.seed,
                    a.samples_per_shard, a.workers, verbose=True)
    print(json.dumps({k: info[k] for k in ("classes", "chance", "eval_shards", "train_shards")}))


if __name__ == "__main__":
    main()
