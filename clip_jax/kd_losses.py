"""Distillation losses on embeddings: pure math, no model, no mesh (the conventions of
:mod:`clip_jax.losses`: L2-normalised ``(n, d)`` features, exponentiated scales, an optional
``axis_name`` inside ``shard_map``, every device gets the *global* mean).

    kd_loss(img, txt, logit_scale, teachers, combine="probs", axis_name=None)
    kd_loss_blockwise(img, txt, logit_scale, teachers, combine="probs", axis_name=None,
                      block_size=None)
    feature_loss(img, txt, targets, axis_name=None)

``teachers`` is a sequence of ``(teacher_image, teacher_text, teacher_scale)``: each teacher's
features for the same rows (any width) and the scale of its logits (MobileCLIP uses 100). The
teacher's image -> text distribution of row ``i`` is ``softmax_j(s_T t_i . u_j)`` over the
*global* batch, its text -> image one ``softmax_i`` of the same logits; several teachers combine
by averaging those distributions (``combine="probs"``, MobileCLIP) or their logits
(``"logits"``). With ``P`` (rows) and ``Q`` (columns) the combined teacher distributions and
``l = s x_i . y_j`` the student's logits::

    kd = (1 / 2N) * sum_i CE(P_i, softmax_j l_ij) + sum_j CE(Q_j, softmax_i l_ij)
       = (1 / 2N) * [sum_i lse_j l_ij + sum_j lse_i l_ij - sum_ij (P_ij + Q_ij) l_ij]

(open_clip's ``--distill`` loss; both sum to one per row / column). The teacher gets no gradient
(its features are behind ``stop_gradient``). The blockwise form never builds ``n x N``: the
student's log-sum-exps come from :func:`clip_jax.losses` ring, the teacher's too, and the cross
term ``sum (P + Q) l`` is a second ring pass whose value and gradients (linear in each student
tower) are formed in the forward, behind a ``jax.custom_vjp``; memory ``O(n (d + block))``.

``feature_loss``: ``mean over rows and both towers of 1 - cos(student, target)`` averaged over
the targets (the caller projects the student's features to each teacher's width).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from clip_jax import losses as L

COMBINE = ("probs", "logits")

__all__ = ["COMBINE", "feature_loss", "kd_loss", "kd_loss_blockwise"]


def _prescaled(teachers, combine: str, axes):
    """Teachers as ``[(t_img, t_txt)]`` whose plain dot products are their logits (features
    times ``sqrt(scale)``); ``"logits"`` concatenates the K teachers into one whose logits are
    their mean. All float32, behind stop_gradient, varying along ``axes``."""
    if combine not in COMBINE:
        raise ValueError(f"combine={combine!r}: choose one of {COMBINE}")
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    k = len(teachers)
    out = []
    for ti, tt, ts in teachers:
        r = jnp.sqrt(L._f32(ts) / (k if combine == "logits" else 1))
        ti, tt = lax.stop_gradient(L._f32(ti) * r), lax.stop_gradient(L._f32(tt) * r)
        out.append((L._to_varying(ti, axes), L._to_varying(tt, axes)))
    if combine == "logits":
        out = [(jnp.concatenate([a for a, _ in out], 1), jnp.concatenate([b for _, b in out], 1))]
    return out


def _gather(x, axes):
    return x if axes is None else lax.all_gather(x, axes, tiled=True)


def kd_loss(image_features, text_features, logit_scale, teachers: Sequence, combine: str = "probs",
            axis_name=None, *, precision=None):
    """Dense KD loss (module docstring): ``n x N`` logits per direction and teacher."""
    L._check_inputs(image_features, text_features)
    axes = L._axes(axis_name)
    img, txt, scale = L._f32(image_features), L._f32(text_features), L._f32(logit_scale)
    n = img.shape[0]
    size, _ = L._ring(axes)
    targets = _prescaled(teachers, combine, axes)
    p_i2t = p_t2i = 0.0
    for ti, tt in targets:  # (n, N): local rows against all columns, both directions
        p_i2t = p_i2t + jax.nn.softmax(L._mm(ti, _gather(tt, axes), precision), axis=1)
        p_t2i = p_t2i + jax.nn.softmax(L._mm(tt, _gather(ti, axes), precision), axis=1)
    p_i2t, p_t2i = p_i2t / len(targets), p_t2i / len(targets)
    s_i2t = jax.nn.log_softmax(scale * L._mm(img, _gather(txt, axes), precision), axis=1)
    s_t2i = jax.nn.log_softmax(scale * L._mm(txt, _gather(img, axes), precision), axis=1)
    local = -jnp.sum(p_i2t * s_i2t) - jnp.sum(p_t2i * s_t2i)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (2 * n * size)


def _weights(img_side, txt_side, precision):
    """(n, b) combined teacher weights P + Q of one tile: ``img_side`` = [(t_img, row lse)],
    ``txt_side`` = [(t_txt block, column lse block)], one pair per teacher."""
    w = 0.0
    for (ti, lse_r), (tt, lse_c) in zip(img_side, txt_side):
        logits = L._mm(ti, tt, precision)
        w = w + jnp.exp(logits - lse_r[:, None]) + jnp.exp(logits - lse_c[None, :])
    return w / len(img_side)


def _cross_impl(img, txt, scale, teach, axes, b, precision):
    """Local partial ``sum_ij W_ij s x_i.y_j`` with its gradients w.r.t. img (local), txt
    (arrives home after the ring) and the scale."""
    size, _ = L._ring(axes)
    img_side = [(ti, lr) for ti, _, lr, _ in teach]

    def step(local, travel, t):
        txt_c, t_txt_c, lse_c, d_txt_c = travel

        def blk(c, inp):
            total, d_img, d_scale = c
            txt_b, t_txt_b, lse_b = inp
            w = _weights(img_side, list(zip(t_txt_b, lse_b)), precision)
            sims = L._mm(img, txt_b, precision)
            ws = jnp.sum(w * sims)
            d_img = d_img + scale * jnp.dot(w, txt_b, precision=precision)
            return (total + scale * ws, d_img, d_scale + ws), scale * jnp.dot(
                w.T, img, precision=precision)

        local, d_txt_blocks = lax.scan(blk, local, (
            L._blocks(txt_c, b), [L._blocks(x, b) for x in t_txt_c],
            [L._blocks(x, b) for x in lse_c]))
        return local, (txt_c, t_txt_c, lse_c, d_txt_c + d_txt_blocks.reshape(d_txt_c.shape))

    zero = L._to_varying(jnp.zeros((), img.dtype), axes)
    local0 = (zero, jnp.zeros_like(img), zero)
    travel0 = (txt, [tt for _, tt, _, _ in teach], [lc for _, _, _, lc in teach],
               jnp.zeros_like(txt))
    send = (False, [False] * len(teach), [False] * len(teach), True)
    (total, d_img, d_scale), travel = L._ring_scan(step, (local0, travel0), send, axes, size)
    return total, (d_img, travel[-1], d_scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _cross(img, txt, scale, teach, axes, b, precision):
    return _cross_impl(img, txt, scale, teach, axes, b, precision)[0]


def _cross_fwd(img, txt, scale, teach, axes, b, precision):
    total, grads = _cross_impl(img, txt, scale, teach, axes, b, precision)
    return total, (grads, teach)


def _cross_bwd(axes, b, precision, res, g):
    (d_img, d_txt, d_scale), teach = res
    return g * d_img, g * d_txt, g * d_scale, jax.tree.map(jnp.zeros_like, teach)


_cross.defvjp(_cross_fwd, _cross_bwd)


def kd_loss_blockwise(image_features, text_features, logit_scale, teachers: Sequence,
                      combine: str = "probs", axis_name=None, block_size: int | None = None, *,
                      precision=None):
    """Memory-efficient :func:`kd_loss` (same value and gradients); ``block_size`` as in
    :func:`clip_jax.losses.clip_loss_blockwise`."""
    L._check_inputs(image_features, text_features)
    axes = L._axes(axis_name)
    img, txt, scale = L._f32(image_features), L._f32(text_features), L._f32(logit_scale)
    n = img.shape[0]
    size, _ = L._ring(axes)
    b = L._block(n, block_size)
    scale = L._to_varying(scale, axes)
    one = L._to_varying(jnp.ones((), jnp.float32), axes)
    teach = []
    for ti, tt in _prescaled(teachers, combine, axes):
        lse_r, lse_c = L._clip_lse(ti, tt, one, axes, b, precision)
        teach.append((ti, tt, lax.stop_gradient(lse_r), lax.stop_gradient(lse_c)))
    lse_row, lse_col = L._clip_lse(img, txt, scale, axes, b, precision)
    local = jnp.sum(lse_row) + jnp.sum(lse_col) - _cross(img, txt, scale, teach, axes, b,
                                                         precision)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (2 * n * size)


def _cosine(a, b):
    a, b = L._f32(a), lax.stop_gradient(L._f32(b))
    na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, 1), 1e-24))
    nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, 1), 1e-24))
    return jnp.sum(a * b, 1) / (na * nb)


def feature_loss(image_features, text_features, targets: Sequence, axis_name=None):
    """``1 - cos`` between the student's (projected) features and each target's, the mean over
    the global rows, both towers and the targets. ``targets``: ``[(student_img, student_txt,
    teacher_img, teacher_txt)]`` when the student's features are projected per teacher, or
    ``[(teacher_img, teacher_txt)]`` to compare ``image_features`` / ``text_features`` as they
    are."""
    axes = L._axes(axis_name)
    n = image_features.shape[0]
    size, _ = L._ring(axes)
    local = 0.0
    for t in targets:
        si, st, ti, tt = (image_features, text_features, *t) if len(t) == 2 else t
        local = local + jnp.sum(1 - _cosine(si, ti)) + jnp.sum(1 - _cosine(st, tt))
    local = local / len(targets)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (2 * n * size)
