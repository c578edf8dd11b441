"""How a demo sample looks and reads: pictures and captions drawn from an attribute dict.

:func:`render` draws the coloured, patterned shapes of ``attrs`` (see
:func:`clip_jax.data.demo._sample_attributes`) anti-aliased on a plain background;
:func:`caption` describes them in varied English (templates, synonyms, word order, omitted
attributes). Both consume the generator they are given, so a sample is a pure function of its
seed. The corpus itself (held-out pairs, splits, shards) is :mod:`clip_jax.data.demo`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 230),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 10),
}
# Background names never collide with object colour names, so a caption's colour word is the
# object's colour (the tests rely on this to check held-out pairs never appear in training).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light grey": (185, 185, 185),
    "dark grey": (75, 75, 75),
    "black": (12, 12, 12),
}


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


def render(attrs: dict, size: int, rng: np.random.Generator,
           boxes: list | None = None, coverage: np.ndarray | None = None) -> Image.Image:
    """Draw the picture described by ``attrs`` (consumes ``rng``).

    Each object is drawn supersampled (x4) inside its own bounding box and box-filtered down to
    colour + coverage, then blended over the background: anti-aliased, and cheap. ``boxes``: a
    list that receives each object's tight box ``[x0, y0, x1, y1]`` (the pixels it covers,
    normalised to [0, 1]); ``coverage``: a float32 (size, size) array that receives, per pixel,
    the largest fraction of it any object covers (the segmentation masks of
    :func:`clip_jax.data.demo.segmentation_sample`). The picture and ``rng`` are the same with
    or without either.
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
        if coverage is not None:
            np.maximum(coverage[y0:y1, x0:x1], alpha[..., 0], out=coverage[y0:y1, x0:x1])
        if boxes is not None:
            rows, cols = np.nonzero(alpha[..., 0] > 0)
            boxes.append([float(v) / size for v in (x0 + cols.min(), y0 + rows.min(),
                                                    x0 + cols.max() + 1, y0 + rows.max() + 1)])
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


def referring(attrs: dict, boxes: list) -> list[str]:
    """Each object's referring expression: ``"red circle"``, or with several (identical)
    objects their place along the axis they spread most on (``"left red circle"``,
    ``"middle ..."``, ``"top ..."``)."""
    name = f"{attrs['colour']} {attrs['shape']}"
    if len(boxes) == 1:
        return [name]
    centres = np.asarray([[b[0] + b[2], b[1] + b[3]] for b in boxes]) / 2
    axis = int(np.ptp(centres[:, 1]) > np.ptp(centres[:, 0]))
    words = (("left", "right"), ("top", "bottom"))[axis]
    if len(boxes) == 3:
        words = (words[0], "middle", words[1])
    order = np.argsort(centres[:, axis], kind="stable")
    out = [""] * len(boxes)
    for word, i in zip(words, order, strict=True):
        out[int(i)] = f"{word} {name}"
    return out


def plural_of(noun: str) -> str:
    """``circle`` -> ``circles``, ``cross`` -> ``crosses``."""
    return noun + "es" if noun.endswith("s") else noun + "s"


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
        noun = plural_of(noun)
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
