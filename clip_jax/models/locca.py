"""LocCa's decoder tasks (Wan et al. 2024, arXiv 2403.19596; SigLIP 2's decoder loss) as token
sequences for the captioning decoder (:mod:`clip_jax.models.decoder`).

With ``model.decoder.loc_bins`` B > 0 the decoder's vocabulary is the text tower's V ids, then
three task tokens (``V + task``) and B coordinate tokens (``V + 3 + bin``): a coordinate
``v`` in [0, 1] is bin ``min(floor(v * B), B - 1)`` and reads back as the bin's centre. Each
example's sequence (length L, the text context) is one task's; only its output part is scored
(the weights of the next-token targets ``ids[:, 1:]``):

* ``CAP``  ``[cap, caption...]``: the caption (its non-pad tokens);
* ``AREF`` ``[aref, expression..., x0, y0, x1, y1]``: the box of a referring expression, the
  four coordinate tokens (the expression truncated to L - 5 tokens);
* ``GCAP`` ``[gcap, x0, y0, x1, y1, region caption...]``: the caption of a given box (its
  non-pad tokens).

:func:`decode_boxes` reads AREF's four coordinates back greedily (the argmax among the
coordinate tokens); :func:`iou` scores them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

CAP, AREF, GCAP = 0, 1, 2
TASKS = ("cap", "aref", "gcap")


def coord_offset(vocab: int) -> int:
    """The id of coordinate bin 0 (after the text ids and the task tokens)."""
    return vocab + len(TASKS)


def quantise(boxes, bins: int):
    """Normalised coordinates -> int32 bins in [0, bins)."""
    return jnp.clip(jnp.floor(jnp.asarray(boxes) * bins), 0, bins - 1).astype(jnp.int32)


def dequantise(q, bins: int):
    """Bins -> the normalised coordinate of their centres."""
    return (jnp.asarray(q, jnp.float32) + 0.5) / bins


def _nonpad(ids, pad_id: int):
    return jnp.sum((ids != pad_id).astype(jnp.int32), axis=1)


def sequences(task, text, box, box_text, pad_id: int, vocab: int, bins: int):
    """``(ids (N, L) int32, weights (N, L - 1) float32)``: each example's sequence for its
    ``task`` (N,) from its caption ``text`` (N, L), its box (N, 4) and the box's caption
    ``box_text`` (N, L) (pad-terminated; ignored for CAP), and the weights of the targets
    ``ids[:, 1:]`` (1 on the task's output). See the module docstring."""
    text, box_text = jnp.asarray(text, jnp.int32), jnp.asarray(box_text, jnp.int32)
    n, length = text.shape
    if length < 6:
        raise ValueError(f"LocCa sequences need a text context of at least 6, got {length}")
    rows = jnp.arange(n)[:, None]
    tid = (vocab + jnp.asarray(task, jnp.int32))[:, None]
    coords = coord_offset(vocab) + quantise(box, bins)  # (N, 4)
    expr = box_text[:, :length - 5]
    e_len = jnp.minimum(_nonpad(box_text, pad_id), length - 5)
    pos = jnp.arange(1, length)[None]  # the targets' positions in ids
    # CAP
    cap = jnp.concatenate([tid, text[:, :-1]], axis=1)
    cap_w = cap[:, 1:] != pad_id
    # AREF: the expression, then the four coordinates right after its last token
    at = 1 + e_len[:, None] + jnp.arange(4)[None]
    aref = jnp.full((n, length), pad_id, jnp.int32).at[:, :1].set(tid)
    aref = aref.at[:, 1:length - 4].set(expr).at[rows, at].set(coords)
    aref_w = (pos >= at[:, :1]) & (pos <= at[:, 3:])
    # GCAP: the four coordinates, then the region caption
    gcap = jnp.concatenate([tid, coords, expr], axis=1)
    gcap_w = (pos >= 5) & (gcap[:, 1:] != pad_id)
    t = jnp.asarray(task)[:, None]
    ids = jnp.where(t == CAP, cap, jnp.where(t == AREF, aref, gcap))
    w = jnp.where(t == CAP, cap_w, jnp.where(t == AREF, aref_w, gcap_w))
    return ids, w.astype(jnp.float32)


def aref_prompts(box_text, pad_id: int, vocab: int):
    """``(ids (N, L), prompt lengths (N,))``: AREF's prefix ``[aref, expression...]`` padded,
    ready for :func:`decode_boxes`."""
    box_text = jnp.asarray(box_text, jnp.int32)
    n, length = box_text.shape
    ids = jnp.full((n, length), pad_id, jnp.int32).at[:, 0].set(vocab + AREF)
    ids = ids.at[:, 1:length - 4].set(box_text[:, :length - 5])
    return ids, 1 + jnp.minimum(_nonpad(box_text, pad_id), length - 5)


def decode_boxes(logits_fn: Callable, prompt, prompt_len, vocab: int, bins: int):
    """Greedy AREF: from each row's ``prompt`` (N, L) of ``prompt_len`` (N,) tokens, four steps
    of ``logits_fn(ids) -> (N, L, V')`` (causal: later positions are ignored), each the argmax
    among the coordinate tokens, written after the prompt. Returns (N, 4) normalised boxes
    (bin centres) in the order the tokens come: x0, y0, x1, y1."""
    ids, rows, off = jnp.asarray(prompt, jnp.int32), jnp.arange(prompt.shape[0]), \
        coord_offset(vocab)
    out = []
    for j in range(4):
        at = prompt_len + j
        logits = logits_fn(ids)[rows, at - 1]
        q = jnp.argmax(logits[:, off:off + bins], axis=-1).astype(jnp.int32)
        ids = ids.at[rows, at].set(off + q)
        out.append(q)
    return dequantise(jnp.stack(out, axis=1), bins)


def iou(a, b):
    """Intersection over union of [x0, y0, x1, y1] boxes (..., 4); a box with x1 < x0 (a
    decoded box can be one) has no area."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0) * jnp.maximum(x[..., 3] - x[..., 1], 0)
    lo, hi = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    return inter / jnp.maximum(area(a) + area(b) - inter, 1e-12)


def draw(rng, probs, valid, salt: int = 35):
    """Each example's task (N,) from ``probs`` (3,) and which of its boxes (N,), uniformly among
    its ``valid`` (N, K) ones; an example without a valid box captions. A pure function of
    ``rng``, drawn on the whole global batch (so the gradient cache and any mesh agree)."""
    k_task, k_box = jax.random.split(jax.random.fold_in(rng, salt))
    n = valid.shape[0]
    task = jax.random.choice(k_task, len(TASKS), (n,), p=jnp.asarray(probs, jnp.float32))
    task = jnp.where(valid.any(axis=1), task, CAP).astype(jnp.int32)
    g = jax.random.gumbel(k_box, valid.shape)
    return task, jnp.argmax(jnp.where(valid, g, -jnp.inf), axis=1)
