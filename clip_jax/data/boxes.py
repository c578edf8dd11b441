"""Boxes in the data (LocCa's decoder tasks): read from a sample's ``KEY.json``, checked, and
carried through the train crop.

A sample may carry objects in its JSON member (beside any other keys, e.g. the demo's
attributes)::

    {"boxes": [[x0, y0, x1, y1], ...],      # normalised to [0, 1] of the image's width/height
     "box_captions": ["red circle", ...]}   # one referring expression / region caption per box

``x0 < x1`` and ``y0 < y1`` (left, top, right, bottom). A sample without ``boxes`` has none
(its decoder task falls back to captioning); a present but malformed field (not a list of 4
numbers, outside [0, 1], ``x1 <= x0``, a caption count that differs) is a
:class:`clip_jax.cli.UserError` of one line naming the shard and the key.

In a batch (``max_boxes`` K > 0, :class:`clip_jax.data.stream.WorkerSpec`) the boxes become
fixed-shape fields: ``boxes`` float32 (b, K, 4) in the *crop's* normalised coordinates,
``box_valid`` bool (b, K) and ``box_text`` int32 (b, K, L), each box's caption tokenised like
the text. A box follows the random resized crop (:func:`crop`): shifted, scaled, clipped to the
crop, and dropped (invalid) when less than :data:`MIN_VISIBLE` of its area is left in it; the
first K surviving boxes are kept, the rest invalid.
"""

from __future__ import annotations

import json
import math

import numpy as np

from clip_jax.cli import UserError

MIN_VISIBLE = 0.5  # a box keeps at least this fraction of its area in the crop, or is dropped
FIELDS = ("boxes", "box_valid", "box_text")  # the batch fields (batch_fields of the objective)


def check(meta, where: str) -> tuple[np.ndarray, list[str]]:
    """``(boxes float64 (k, 4), captions)`` of a decoded JSON object (``{}`` / no ``boxes``:
    none); a malformed field is a one-line :class:`UserError` starting with ``where``."""
    if not isinstance(meta, dict) or "boxes" not in meta:
        return np.zeros((0, 4)), []
    raw, caps = meta["boxes"], meta.get("box_captions")
    if not isinstance(raw, list) or not all(
            isinstance(b, list | tuple) and len(b) == 4 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in b) for b in raw):
        raise UserError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1] number lists, got "
                        f"{json.dumps(raw)[:80]}")
    boxes = np.asarray(raw, np.float64).reshape(-1, 4)
    bad = [i for i, b in enumerate(boxes) if b.min() < 0 or b.max() > 1]
    if bad:
        raise UserError(f"{where}: box {bad[0]} {boxes[bad[0]].tolist()} is outside [0, 1] "
                        "(boxes are normalised to the image's width and height)")
    bad = [i for i, b in enumerate(boxes) if b[2] <= b[0] or b[3] <= b[1]]
    if bad:
        raise UserError(f"{where}: box {bad[0]} {boxes[bad[0]].tolist()} has x1 <= x0 or "
                        "y1 <= y0 (boxes are [left, top, right, bottom])")
    if not isinstance(caps, list) or len(caps) != len(boxes) or not all(
            isinstance(c, str) and c.strip() for c in caps):
        raise UserError(f"{where}: 'box_captions' must be a list of {len(boxes)} non-empty "
                        f"strings, one per box, got {json.dumps(caps)[:80]}")
    return boxes, [c.strip() for c in caps]


def parse(data: bytes, where: str) -> tuple[np.ndarray, list[str]]:
    """:func:`check` of a ``KEY.json`` member's bytes (empty or not JSON: no boxes, as the
    caption reader treats it)."""
    if not data:
        return np.zeros((0, 4)), []
    try:
        meta = json.loads(data)
    except ValueError:
        return np.zeros((0, 4)), []
    return check(meta, where)


def crop(boxes, width: int, height: int, left: int, top: int, w: int, h: int):
    """Normalised ``boxes`` (k, 4) of a ``width x height`` image -> ``(boxes in the normalised
    coordinates of the crop (left, top, w, h), clipped to it; (k,) bool kept)``: a box keeps
    at least :data:`MIN_VISIBLE` of its area inside the crop."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    px = boxes * np.array([width, height, width, height], np.float64)
    clipped = np.clip(px, [left, top, left, top], [left + w, top + h, left + w, top + h])
    area = lambda b: np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    keep = area(clipped) >= MIN_VISIBLE * area(px)
    out = (clipped - np.array([left, top, left, top])) / np.array([w, h, w, h], np.float64)
    return np.clip(out, 0.0, 1.0), keep & (area(clipped) > 0)


def pad(boxes, captions, keep, k: int):
    """The kept boxes as fixed-shape rows: ``(float32 (k, 4), bool (k,), k captions)``, the
    first ``k`` kept in order, the rest zero / invalid / ``""``."""
    idx = [i for i, ok in enumerate(keep) if ok][:k]
    out, valid = np.zeros((k, 4), np.float32), np.zeros((k,), bool)
    out[:len(idx)] = np.asarray(boxes, np.float32).reshape(-1, 4)[idx]
    valid[:len(idx)] = True
    return out, valid, [captions[i] for i in idx] + [""] * (k - len(idx))
