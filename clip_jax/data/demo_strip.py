"""The demo corpus's ``strip`` variant: what a square crop cuts off is the whole picture.

Each picture is a strip four times as long as it is high, wide (``4S x S``) or tall
(``S x 4S``), of one plain background (``S``: the corpus's ``image_size``). The demo's object
(one large coloured, patterned shape, drawn by :func:`clip_jax.data.demo_render.render` and
enlarged to fill most of an ``S x S`` tile) sits in the tile at one end of the strip
(``end``: left / right, top / bottom); the rest is blank. A square centre crop (evaluation:
shorter side to ``S``, the centre ``S x S``) keeps strip positions ``[1.5S, 2.5S)`` and the
training crop of the fixed-resolution pipeline (a 4:1 image is too long for its aspect-ratio
range, so it falls back to the centre ``4/3`` box) keeps ``[1.33S, 2.67S)``: neither holds any
pixel of the end tiles ``[0, S)`` and ``[3S, 4S)``, so a model fed square crops sees the
background only, and its held-out zero-shot accuracy is chance. A NaFlex model sees the whole
strip (at 16 patches: a 2 x 8 grid).

Captions describe the object as the plain corpus does (no tile position: the tile is not the
picture) and often say at which end it is. Labels and held-out pairs are the plain corpus's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clip_jax.data.demo_render import caption as plain_caption
from clip_jax.data.demo_render import render as render_tile

ASPECT = 4  # the strip's long side over its short side
ENDS = {"wide": ("left", "right"), "tall": ("top", "bottom")}
_END_WORDS = {
    "left": ["on the left", "at the left end", "on the far left"],
    "right": ["on the right", "at the right end", "on the far right"],
    "top": ["at the top", "at the top end", "at the very top"],
    "bottom": ["at the bottom", "at the bottom end", "at the very bottom"],
}


def strip_attributes(attrs: dict, rng: np.random.Generator) -> dict:
    """The plain corpus's attributes of one picture made a strip's: one large object in the
    centre of its end tile, the strip's ``orientation`` and the ``end`` the object is at."""
    orientation = ("wide", "tall")[rng.integers(2)]
    return {**attrs, "count": 1, "size": "large", "position": "center",
            "orientation": orientation, "end": ENDS[orientation][rng.integers(2)]}


def tile_box(attrs: dict, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the object's tile in the strip."""
    long = ASPECT * size
    at_start = attrs["end"] in ("left", "top")
    lo = 0 if at_start else long - size
    if attrs["orientation"] == "wide":
        return lo, 0, lo + size, size
    return 0, lo, size, lo + size


ZOOM = 40 / 64  # the tile is the centre of the demo's picture, enlarged (object: 0.6-0.8 of it)


def render(attrs: dict, size: int, rng: np.random.Generator) -> Image.Image:
    """The strip of :func:`strip_attributes`' ``attrs`` (consumes ``rng``). The tile is the
    centre ``ZOOM`` of the plain corpus's picture of the object (centred, radius at most
    18.5 / 64 of it with its jitter, so it stays inside) resized back to ``size``: a large
    object, as at 16 patches the NaFlex model sees the strip at half the tile's resolution."""
    picture = render_tile(attrs, size, rng)
    lo = round(size * (1 - ZOOM) / 2)
    tile = np.asarray(picture.crop((lo, lo, size - lo, size - lo)).resize(
        (size, size), Image.Resampling.BICUBIC))
    w, h = (ASPECT * size, size) if attrs["orientation"] == "wide" else (size, ASPECT * size)
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = tile[0, 0]  # the tile's background (objects keep off its border)
    left, top, right, bottom = tile_box(attrs, size)
    canvas[top:bottom, left:right] = tile
    return Image.fromarray(canvas)


def caption(attrs: dict, rng: np.random.Generator) -> str:
    """The plain caption of the object, with the end it is at in 70% of captions."""
    text = plain_caption({**attrs, "position": None}, rng)
    if rng.random() < 0.7:
        words = _END_WORDS[attrs["end"]]
        where = words[rng.integers(len(words))]
        end = text.endswith(".")
        text = (f"{where}, {text}" if rng.random() < 0.4
                else f"{text.rstrip('.')} {where}{'.' if end else ''}")
    return text
