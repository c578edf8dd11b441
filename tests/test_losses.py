"""Losses: value and gradients against a float64 NumPy reference on the global batch.

Every configuration runs the loss inside ``jax.shard_map`` on the first k of 8 simulated CPU
devices (k = 1, 2, 4, 8; also no shard_map at all) and differentiates w.r.t. the *global*
features, the scale and the bias, which must equal the single-device loss on the global batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from clip_jax import losses

N, D = 32, 16
SCALES = (10.0, 100.0)
BIAS = -5.0
RTOL = 1e-5


# ---------------------------------------------------------------------------------------------
# float64 NumPy references with analytic gradients


def _lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def ref_clip(x, y, s):
    """(loss, d/dx, d/dy, d/ds) of 0.5 * (CE rows + CE cols) of s * x @ y.T."""
    n = x.shape[0]
    sims = x @ y.T
    logits = s * sims
    loss = 0.5 * (np.mean(_lse(logits, 1) - np.diag(logits))
                  + np.mean(_lse(logits, 0) - np.diag(logits)))
    p_row = np.exp(logits - _lse(logits, 1)[:, None])
    p_col = np.exp(logits - _lse(logits, 0)[None, :])
    d_logits = (p_row + p_col - 2 * np.eye(n)) / (2 * n)
    return loss, s * d_logits @ y, s * d_logits.T @ x, np.sum(d_logits * sims)


def ref_siglip(x, y, s, b):
    """(loss, d/dx, d/dy, d/ds, d/db) of -sum log sigmoid(z * (s x.y + b)) / n."""
    n = x.shape[0]
    sims = x @ y.T
    logits = s * sims + b
    z = 2 * np.eye(n) - 1
    loss = np.sum(np.logaddexp(0.0, -z * logits)) / n
    d_logits = -z / (1 + np.exp(z * logits)) / n  # d softplus(-z l)/dl = -z sigmoid(-z l)
    return (loss, s * d_logits @ y, s * d_logits.T @ x, np.sum(d_logits * sims),
            np.sum(d_logits))


def _features(seed, n=N, d=D):
    """Matched pairs (text = noisy image) so the diagonal matters, L2-normalised, float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x + 0.8 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def _close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    atol = RTOL * max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


# ---------------------------------------------------------------------------------------------
# Configurations: (number of devices, mesh shape, mesh axis names, loss axis_name[, check_vma])

MESHES = {
    "none": (1, None, None, None),  # no shard_map at all
    "k1": (1, (1,), ("data",), "data"),
    "k2": (2, (2,), ("data",), "data"),
    "k4": (4, (2, 2), ("data", "fsdp"), ("data", "fsdp")),
    "k8": (8, (2, 4), ("data", "fsdp"), ("data", "fsdp")),
    # the training mesh: batch over (data, fsdp), replicated over tensor
    "k8_tensor": (8, (2, 2, 2), ("data", "fsdp", "tensor"), ("data", "fsdp")),
    "k8_no_vma": (8, (8,), ("data",), "data", False),
    "k4_ring": (4, (4,), ("fsdp",), "fsdp"),
}
LOSSES = {
    ("clip", "dense"): losses.clip_loss,
    ("clip", "blockwise"): losses.clip_loss_blockwise,
    ("siglip", "dense"): losses.siglip_loss,
    ("siglip", "blockwise"): losses.siglip_loss_blockwise,
}


def _mesh(k, shape, names):
    if len(jax.devices()) < k:
        pytest.skip(f"needs {k} devices, have {len(jax.devices())}")
    devices = np.asarray(jax.devices()[:k]).reshape(shape)
    return jax.sharding.Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


@functools.cache
def _value_and_grad(mesh_key, kind, impl, block_size):
    """jit(value_and_grad) of the global-batch loss, w.r.t. all its array arguments."""
    k, shape, names, axis_name, *check_vma = MESHES[mesh_key]
    fn = LOSSES[kind, impl]
    kw = {"axis_name": axis_name}
    if impl == "blockwise":
        kw["block_size"] = block_size
    nargs = 3 if kind == "clip" else 4
    body = lambda *args: fn(*args, **kw)
    if shape is not None:
        batch = P(axis_name)
        body = jax.shard_map(body, mesh=_mesh(k, shape, names),
                             in_specs=(batch, batch) + (P(),) * (nargs - 2), out_specs=P(),
                             check_vma=check_vma[0] if check_vma else True)
    return jax.jit(jax.value_and_grad(body, argnums=tuple(range(nargs))))


CASES = [(m, kind, impl) for m in ("none", "k1", "k2", "k4", "k8", "k8_tensor", "k8_no_vma")
         for kind, impl in LOSSES]


@pytest.mark.parametrize("mesh_key,kind,impl", CASES, ids=["-".join(c) for c in CASES])
def test_matches_reference(mesh_key, kind, impl):
    k = MESHES[mesh_key][0]
    n_local = N // k
    # blockwise: several column tiles per ring chunk (the default, one tile, is tested below)
    fn = _value_and_grad(mesh_key, kind, impl, n_local // 2)
    x, y = _features(seed=k)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    for s in SCALES:
        if kind == "clip":
            value, grads = fn(x32, y32, jnp.float32(s))
            want = ref_clip(x, y, s)
            names = ("loss", "d_image", "d_text", "d_scale")
        else:
            value, grads = fn(x32, y32, jnp.float32(s), jnp.float32(BIAS))
            want = ref_siglip(x, y, s, BIAS)
            names = ("loss", "d_image", "d_text", "d_scale", "d_bias")
        for got, ref, name in zip((value, *grads), want, names, strict=True):
            _close(got, ref, f"{name} (scale={s}, {mesh_key}, {kind}, {impl})")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_blockwise_default_block_size(kind):
    """block_size=None (one tile per ring chunk) on a 4-device single-axis ring."""
    fn = _value_and_grad("k4_ring", kind, "blockwise", None)
    x, y = _features(seed=7)
    args = [jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.float32(30.0)]
    if kind == "clip":
        want = ref_clip(x, y, 30.0)
    else:
        args.append(jnp.float32(-2.0))
        want = ref_siglip(x, y, 30.0, -2.0)
    value, grads = fn(*args)
    for got, ref in zip((value, *grads), want, strict=True):
        _close(got, ref, kind)


def test_dense_and_blockwise_agree_bf16_inputs():
    """bf16 features are upcast: both implementations see the same float32 numbers."""
    x, y = _features(seed=3)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    dense = losses.clip_loss(xb, yb, 20.0)
    block = losses.clip_loss_blockwise(xb, yb, 20.0, block_size=8)
    assert dense.dtype == jnp.float32
    want = ref_clip(np.asarray(xb, np.float64), np.asarray(yb, np.float64), 20.0)[0]
    _close(dense, want, "dense")
    _close(block, want, "blockwise")


def test_invalid_block_size():
    x, y = _features(seed=0)
    with pytest.raises(ValueError, match="block_size"):
        losses.clip_loss_blockwise(x, y, 10.0, block_size=5)
    with pytest.raises(ValueError, match="shape"):
        losses.siglip_loss(x, y[:4], 10.0, 0.0)


def test_blockwise_never_builds_the_logits_matrix():
    """The compiled loss+grad's temporaries are O(n * block), not O(n * N)."""
    n, d, block = 1024, 32, 64
    x, y = _features(seed=1, n=n, d=d)
    args = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.float32(10.0))

    def temp_bytes(fn):
        grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        stats = grad.lower(*args).compile().memory_analysis()
        if stats is None:
            pytest.skip("no memory analysis on this backend")
        return stats.temp_size_in_bytes

    logits_bytes = n * n * 4
    dense = temp_bytes(losses.clip_loss)
    block = temp_bytes(functools.partial(losses.clip_loss_blockwise, block_size=block))
    assert dense >= logits_bytes
    assert block < logits_bytes / 4, (block, dense)
