"""Contrastive losses on (already L2-normalised) embeddings: pure math, no model, no mesh.

Four functions, one convention::

    clip_loss(img, txt, logit_scale, axis_name=None)                      # softmax, dense
    clip_loss_blockwise(img, txt, logit_scale, axis_name=None, block_size=None)
    siglip_loss(img, txt, logit_scale, logit_bias, axis_name=None)        # sigmoid, dense
    siglip_loss_blockwise(img, txt, logit_scale, logit_bias, axis_name=None, block_size=None)

Conventions
-----------
* ``image_features`` / ``text_features``: ``(n, d)``, L2-normalised by the caller, row ``i`` of
  one matches row ``i`` of the other. Computation is float32 (bf16 inputs are upcast).
* ``logit_scale`` is the **already exponentiated** temperature, a scalar multiplying the cosine
  similarities (CLIP initialises it at ``1/0.07``; the caller exponentiates its log-parameter and
  clamps it at 100). The loss never exponentiates nor clamps it. ``logit_bias`` (SigLIP) is the
  additive bias, used as is.
* Logits are ``logit_scale * img @ txt.T`` (+ ``logit_bias`` for SigLIP).
* ``clip_loss`` returns ``0.5 * (CE(image -> text) + CE(text -> image))``, each the mean over the
  ``N`` pairs of the global batch. ``siglip_loss`` returns
  ``-(1/N) * sum_ij log sigmoid(z_ij * logits_ij)`` with ``z = +1`` on the diagonal and ``-1``
  elsewhere (the SigLIP paper's normalisation: the sum over the ``N x N`` pairs divided by ``N``).

Distributed use (``axis_name``)
-------------------------------
``axis_name`` is ``None`` (the arguments are the whole batch) or a mesh axis name or tuple of
names, e.g. ``("data", "fsdp")``: the call is then inside ``jax.shard_map``, the features are
this device's shard of the global batch (shards ordered by the linear index over ``axis_name``,
the order of ``P(("data", "fsdp"))`` and ``all_gather``), and ``logit_scale`` / ``logit_bias``
are replicated (``P()``). Every device gets the *global* mean loss (invariant along
``axis_name``, so ``out_specs=P()`` is valid), and the gradients seen through ``shard_map``
(w.r.t. the global features, ``logit_scale``, ``logit_bias``) equal those of the single-device
loss on the whole global batch. Only rows are split: each device computes its local rows
against all ``N`` columns, in both directions for the softmax loss, and the local partial sums
are ``psum``-ed.

* Dense: ``all_gather`` the other devices' embeddings, build the ``n x N`` logits (twice for
  CLIP). Autodiff handles the communication: the transpose of ``all_gather`` is a
  ``psum_scatter`` that returns each device the gradient of its own rows from every device's
  logits, and the transpose of the implicit broadcast of the replicated scale is a ``psum``.
  Memory ``O(n * N)`` per device.
* Blockwise (Inf-CL / ring style): never materialises ``n x N``. The other devices' embeddings
  travel around a ``ppermute`` ring (``R - 1`` hops, one chunk of ``n`` rows held at a time);
  each held chunk is tiled into column blocks of ``block_size`` by ``lax.scan``, so the largest
  temporary is ``n x block_size``. The softmax loss keeps an online log-sum-exp per local row
  and, for the text -> image direction, a partial column log-sum-exp that travels with its text
  chunk and arrives home after the last hop -- so each logits block is computed once per pass.
  A ``jax.custom_vjp`` saves only the features and the row/column LSE (kept as max and log-sum
  apart, for float32 accuracy at large scales; ``O(n * d)`` in all) and its
  backward recomputes the blocks; the gradient of the travelling embeddings travels with them
  and arrives at its owner after ``R`` hops. Memory ``O(n * (d + block_size))`` per device.

Both ``check_vma=True`` (the default; the replicated scalars are explicitly ``pcast`` to varying
before entering the custom VJPs so that their local partial gradients are ``psum``-ed by the
transpose) and ``check_vma=False`` give the global gradients (tested).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | Sequence[str] | None

__all__ = ["clip_loss", "clip_loss_blockwise", "siglip_loss", "siglip_loss_blockwise"]


# ---------------------------------------------------------------------------------------------
# Helpers


def _axes(axis_name: AxisName) -> tuple[str, ...] | None:
    if axis_name is None:
        return None
    axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    return axes or None


def _ring(axes) -> tuple[int, jax.Array | int]:
    """(number of shards R, this shard's index in [0, R)) along the combined axes."""
    if axes is None:
        return 1, 0
    return lax.axis_size(axes), lax.axis_index(axes)


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def _to_varying(x, axes):
    """Mark ``x`` as varying along ``axes`` (a no-op on what already is, or outside shard_map).

    Its transpose is a psum, which is what turns local partial gradients of a replicated scalar
    into the global gradient.
    """
    if axes is None:
        return x
    missing = tuple(a for a in axes if a not in _varying_axes(x))
    return lax.pcast(x, missing, to="varying") if missing else x


def _f32(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mm(a, b, precision):
    """a @ b.T with float32 accumulation."""
    return jnp.einsum("nd,md->nm", a, b, precision=precision,
                      preferred_element_type=jnp.float32)


def _check_inputs(img, txt):
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"features must be two (n, d) arrays of the same shape, got "
                         f"{img.shape} and {txt.shape}")


def _block(n: int, block_size: int | None) -> int:
    b = n if not block_size else int(block_size)
    if b <= 0 or n % b:
        raise ValueError(f"block_size={block_size} must divide the local batch size {n}")
    return b


def _shift(tree, axes, size):
    """Send to the next shard of the ring: shard r receives from shard r - 1."""
    perm = [(r, (r + 1) % size) for r in range(size)]
    return lax.ppermute(tree, axes, perm)


# ---------------------------------------------------------------------------------------------
# Dense


def clip_loss(image_features, text_features, logit_scale, axis_name: AxisName = None, *,
              precision=None):
    """Symmetric softmax (InfoNCE) loss, the global mean; see the module docstring.

    Args:
      image_features, text_features: ``(n, d)`` L2-normalised (local shard if ``axis_name``).
      logit_scale: the exponentiated temperature (scalar), e.g. ``exp(log_scale)`` <= 100.
      axis_name: ``None`` or the mesh axis name(s) the batch is sharded over (in shard_map).
      precision: ``jax.lax.Precision`` of the similarity matmuls (backend default if None).
    """
    _check_inputs(image_features, text_features)
    axes = _axes(axis_name)
    img, txt, scale = _f32(image_features), _f32(text_features), _f32(logit_scale)
    n = img.shape[0]
    size, index = _ring(axes)
    if axes is None:
        img_all, txt_all = img, txt
    else:
        img_all = lax.all_gather(img, axes, tiled=True)
        txt_all = lax.all_gather(txt, axes, tiled=True)
    logits_i2t = scale * _mm(img, txt_all, precision)  # (n, N): local images vs all texts
    logits_t2i = scale * _mm(txt, img_all, precision)  # (n, N): local texts vs all images
    labels = index * n + jnp.arange(n)
    positive_i2t = jnp.take_along_axis(logits_i2t, labels[:, None], axis=1)[:, 0]
    positive_t2i = jnp.take_along_axis(logits_t2i, labels[:, None], axis=1)[:, 0]
    local = (jnp.sum(jax.nn.logsumexp(logits_i2t, axis=1) - positive_i2t)
             + jnp.sum(jax.nn.logsumexp(logits_t2i, axis=1) - positive_t2i))
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (2 * n * size)


def siglip_loss(image_features, text_features, logit_scale, logit_bias,
                axis_name: AxisName = None, *, precision=None):
    """Sigmoid (SigLIP) loss: ``-sum_ij log sigmoid(z_ij (s x_i.y_j + b)) / N``.

    Same arguments as :func:`clip_loss` plus ``logit_bias`` (scalar, used as is).
    """
    _check_inputs(image_features, text_features)
    axes = _axes(axis_name)
    img, txt = _f32(image_features), _f32(text_features)
    scale, bias = _f32(logit_scale), _f32(logit_bias)
    n = img.shape[0]
    size, index = _ring(axes)
    txt_all = txt if axes is None else lax.all_gather(txt, axes, tiled=True)
    logits = scale * _mm(img, txt_all, precision) + bias  # (n, N)
    rows = index * n + jnp.arange(n)
    z = jnp.where(rows[:, None] == jnp.arange(n * size)[None, :], 1.0, -1.0)
    local = jnp.sum(jax.nn.softplus(-z * logits))  # -log sigmoid(z * logits)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (n * size)


# ---------------------------------------------------------------------------------------------
# Blockwise softmax loss: (row LSE of local images vs all texts, column LSE of local texts vs
# all images) by a ring of text chunks, with a recomputing backward.


def _ring_scan(step, carry, send, axes, size):
    """Run ``step`` on each of the R chunks of the ring.

    ``carry = (local, travelling)``; ``step(local, travelling, t) -> (local, travelling)``
    processes the chunk now held (which came from shard ``index - t``). After each step the
    travelling state moves one hop, except that on the last step only the leaves selected by
    ``send`` (a pytree of bools shaped like ``travelling``) move -- R hops bring those home.
    """
    local, travel = carry
    if size > 1:
        def body(c, t):
            loc, trv = step(*c, t)
            return (loc, _shift(trv, axes, size)), None

        (local, travel), _ = lax.scan(body, (local, travel), jnp.arange(size - 1))
    local, travel = step(local, travel, size - 1)
    if size > 1:
        leaves, tree = jax.tree.flatten(travel)
        flags = jax.tree.leaves(send)
        moved = _shift([x for x, f in zip(leaves, flags) if f], axes, size)
        it = iter(moved)
        travel = jax.tree.unflatten(tree, [next(it) if f else x for x, f in zip(leaves, flags)])
    return local, travel


def _blocks(x, b):
    return x.reshape(x.shape[0] // b, b, *x.shape[1:])


def _online(m, acc, logits, axis):
    """Fold a tile into a running (max, sum of exp(. - max)) along ``axis``."""
    m_new = jnp.maximum(m, jnp.max(logits, axis=axis))
    expand = (lambda v: v[:, None]) if axis == 1 else (lambda v: v[None, :])
    acc = acc * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - expand(m_new)), axis=axis)
    return m_new, acc


def _clip_lse_fwd_impl(img, txt, scale, axes, b, precision):
    """Row / column (max, log sum exp(. - max)) pairs; the LSE is their sum.

    Keeping the max apart lets the backward form exp(logits - max - log_sum) without the
    rounding of a float32 LSE near ``scale`` (ulp(100) ~ 8e-6), which would otherwise swamp the
    small gradients of a well-separated batch.
    """
    n, _ = img.shape
    size, _ = _ring(axes)
    neg_inf = _to_varying(jnp.full((n,), -jnp.inf, img.dtype), axes)
    zero = _to_varying(jnp.zeros((n,), img.dtype), axes)

    def step(row, travel, t):
        txt_c, m_col_c, s_col_c = travel

        def blk(row, inp):
            txt_b, m_col_b, s_col_b = inp
            logits = scale * _mm(img, txt_b, precision)  # (n, b)
            return _online(*row, logits, axis=1), _online(m_col_b, s_col_b, logits, axis=0)

        row, (m_col, s_col) = lax.scan(
            blk, row, (_blocks(txt_c, b), _blocks(m_col_c, b), _blocks(s_col_c, b)))
        return row, (txt_c, m_col.reshape(n), s_col.reshape(n))

    (m_row, s_row), (_, m_col, s_col) = _ring_scan(
        step, ((neg_inf, zero), (txt, neg_inf, zero)), (False, True, True), axes, size)
    return m_row, jnp.log(s_row), m_col, jnp.log(s_col)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _clip_lse(img, txt, scale, axes, b, precision):
    """(lse over all texts of each local image's logits, lse over all images of each local text's
    logits), both ``(n,)``."""
    m_row, log_s_row, m_col, log_s_col = _clip_lse_fwd_impl(img, txt, scale, axes, b, precision)
    return m_row + log_s_row, m_col + log_s_col


def _clip_lse_fwd(img, txt, scale, axes, b, precision):
    m_row, log_s_row, m_col, log_s_col = _clip_lse_fwd_impl(img, txt, scale, axes, b, precision)
    res = (img, txt, scale, m_row, log_s_row, m_col, log_s_col)
    return (m_row + log_s_row, m_col + log_s_col), res


def _clip_lse_bwd(axes, b, precision, res, cts):
    img, txt, scale, m_row, log_s_row, m_col, log_s_col = res
    g_row, g_col = cts
    size, _ = _ring(axes)

    def step(local, travel, t):
        txt_c, m_col_c, log_s_col_c, g_col_c, d_txt_c = travel

        def blk(c, inp):
            d_img, d_scale = c
            txt_b, m_col_b, log_s_col_b, g_col_b = inp
            sims = _mm(img, txt_b, precision)  # (n, b)
            logits = scale * sims
            # d(sum_i g_i lse_row_i + sum_j g_j lse_col_j) / d logits = g_row P_row + g_col P_col
            p_row = jnp.exp(logits - m_row[:, None] - log_s_row[:, None])
            p_col = jnp.exp(logits - m_col_b[None, :] - log_s_col_b[None, :])
            d_logits = g_row[:, None] * p_row + g_col_b[None, :] * p_col
            d_img = d_img + scale * jnp.dot(d_logits, txt_b, precision=precision)
            d_txt_b = scale * jnp.dot(d_logits.T, img, precision=precision)
            d_scale = d_scale + jnp.sum(d_logits * sims)
            return (d_img, d_scale), d_txt_b

        local, d_txt_blocks = lax.scan(blk, local, tuple(
            _blocks(v, b) for v in (txt_c, m_col_c, log_s_col_c, g_col_c)))
        d_txt_c = d_txt_c + d_txt_blocks.reshape(d_txt_c.shape)
        return local, (txt_c, m_col_c, log_s_col_c, g_col_c, d_txt_c)

    local0 = (jnp.zeros_like(img), jnp.zeros_like(scale))
    travel0 = (txt, m_col, log_s_col, g_col, jnp.zeros_like(txt))
    (d_img, d_scale), travel = _ring_scan(
        step, (local0, travel0), (False,) * 4 + (True,), axes, size)
    return d_img, travel[-1], d_scale


_clip_lse.defvjp(_clip_lse_fwd, _clip_lse_bwd)


def clip_loss_blockwise(image_features, text_features, logit_scale, axis_name: AxisName = None,
                        block_size: int | None = None, *, precision=None):
    """Memory-efficient :func:`clip_loss`: same value and gradients, never builds ``n x N``.

    ``block_size`` (columns per tile, must divide the local batch ``n``; ``None``/0 = ``n``) sets
    the largest temporary, ``n x block_size`` floats; memory is ``O(n * (d + block_size))``.
    """
    _check_inputs(image_features, text_features)
    axes = _axes(axis_name)
    img, txt, scale = _f32(image_features), _f32(text_features), _f32(logit_scale)
    n = img.shape[0]
    size, _ = _ring(axes)
    b = _block(n, block_size)
    scale = _to_varying(scale, axes)
    lse_row, lse_col = _clip_lse(img, txt, scale, axes, b, precision)
    positives = scale * jnp.sum(img * txt, axis=1)
    local = jnp.sum(lse_row) + jnp.sum(lse_col) - 2 * jnp.sum(positives)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (2 * n * size)


# ---------------------------------------------------------------------------------------------
# Blockwise sigmoid loss: local images against a ring of text chunks.


def _siglip_block(img, txt_b, scale, bias, row0, col0, precision):
    """(similarities, logits, labels z) of one ``(n, b)`` tile whose first global row / column
    are ``row0`` / ``col0``."""
    n, b = img.shape[0], txt_b.shape[0]
    sims = _mm(img, txt_b, precision)
    logits = scale * sims + bias
    z = jnp.where((row0 + jnp.arange(n))[:, None] == (col0 + jnp.arange(b))[None, :], 1.0, -1.0)
    return sims, logits, z


def _siglip_fwd_impl(img, txt, scale, bias, axes, b, precision):
    n, _ = img.shape
    size, index = _ring(axes)
    offsets = jnp.arange(n // b) * b

    def step(total, travel, t):
        (txt_c,) = travel
        src = (index - t) % size  # the shard this chunk came from

        def blk(total, inp):
            txt_b, off = inp
            _, logits, z = _siglip_block(img, txt_b, scale, bias, index * n, src * n + off,
                                         precision)
            return total + jnp.sum(jax.nn.softplus(-z * logits)), None

        total, _ = lax.scan(blk, total, (_blocks(txt_c, b), offsets))
        return total, (txt_c,)

    total0 = _to_varying(jnp.zeros((), img.dtype), axes)
    total, _ = _ring_scan(step, (total0, (txt,)), (False,), axes, size)
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _siglip_sum(img, txt, scale, bias, axes, b, precision):
    """sum over local images x all texts of -log sigmoid(z * logits) (a local partial sum)."""
    return _siglip_fwd_impl(img, txt, scale, bias, axes, b, precision)


def _siglip_sum_fwd(img, txt, scale, bias, axes, b, precision):
    total = _siglip_fwd_impl(img, txt, scale, bias, axes, b, precision)
    return total, (img, txt, scale, bias)


def _siglip_sum_bwd(axes, b, precision, res, g):
    img, txt, scale, bias = res
    n, _ = img.shape
    size, index = _ring(axes)
    offsets = jnp.arange(n // b) * b

    def step(local, travel, t):
        txt_c, d_txt_c = travel
        src = (index - t) % size

        def blk(c, inp):
            d_img, d_scale, d_bias = c
            txt_b, off = inp
            sims, logits, z = _siglip_block(img, txt_b, scale, bias, index * n, src * n + off,
                                            precision)
            d_logits = -g * z * jax.nn.sigmoid(-z * logits)  # d softplus(-z l) / dl
            d_img = d_img + scale * jnp.dot(d_logits, txt_b, precision=precision)
            d_txt_b = scale * jnp.dot(d_logits.T, img, precision=precision)
            return (d_img, d_scale + jnp.sum(d_logits * sims), d_bias + jnp.sum(d_logits)), d_txt_b

        local, d_txt_blocks = lax.scan(blk, local, (_blocks(txt_c, b), offsets))
        return local, (txt_c, d_txt_c + d_txt_blocks.reshape(d_txt_c.shape))

    local0 = (jnp.zeros_like(img), jnp.zeros_like(scale), jnp.zeros_like(bias))
    (d_img, d_scale, d_bias), (_, d_txt) = _ring_scan(
        step, (local0, (txt, jnp.zeros_like(txt))), (False, True), axes, size)
    return d_img, d_txt, d_scale, d_bias


_siglip_sum.defvjp(_siglip_sum_fwd, _siglip_sum_bwd)


def siglip_loss_blockwise(image_features, text_features, logit_scale, logit_bias,
                          axis_name: AxisName = None, block_size: int | None = None, *,
                          precision=None):
    """Memory-efficient :func:`siglip_loss` (same value and gradients), see
    :func:`clip_loss_blockwise` for ``block_size``."""
    _check_inputs(image_features, text_features)
    axes = _axes(axis_name)
    img, txt = _f32(image_features), _f32(text_features)
    scale, bias = _f32(logit_scale), _f32(logit_bias)
    n = img.shape[0]
    size, _ = _ring(axes)
    b = _block(n, block_size)
    scale, bias = _to_varying(scale, axes), _to_varying(bias, axes)
    local = _siglip_sum(img, txt, scale, bias, axes, b, precision)
    if axes is not None:
        local = lax.psum(local, axes)
    return local / (n * size)
