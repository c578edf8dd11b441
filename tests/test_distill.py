"""Distillation: the KD loss against a float64 NumPy reference on the global batch (1 and 8
devices, dense and blockwise, one and two teachers, both ways of combining them), and the
feature loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from clip_jax import kd_losses

N, D = 32, 16
RTOL = 1e-5


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_kd(x, y, s, teachers, combine):
    """(loss, d/dx, d/dy, d/ds) of the KD loss, float64, analytic gradients."""
    n = x.shape[0]
    t_logits = [ts * ti @ tt.T for ti, tt, ts in teachers]
    if combine == "logits":
        m = sum(t_logits) / len(t_logits)
        p, q = _softmax(m, 1), _softmax(m, 0)
    else:
        p = sum(_softmax(t, 1) for t in t_logits) / len(t_logits)
        q = sum(_softmax(t, 0) for t in t_logits) / len(t_logits)
    sims = x @ y.T
    logits = s * sims
    log_row = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
        1, keepdims=True)) - logits.max(1, keepdims=True)
    log_col = logits - np.log(np.exp(logits - logits.max(0, keepdims=True)).sum(
        0, keepdims=True)) - logits.max(0, keepdims=True)
    loss = -(np.sum(p * log_row) + np.sum(q * log_col)) / (2 * n)
    d_logits = (_softmax(logits, 1) + _softmax(logits, 0) - p - q) / (2 * n)
    return loss, s * d_logits @ y, s * d_logits.T @ x, np.sum(d_logits * sims)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _case(seed, n_teachers, d_teacher=(24, 8)):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N, D))
    x, y = _unit(base), _unit(base + 0.8 * rng.normal(size=(N, D)))
    teachers = []
    for k in range(n_teachers):
        dt = d_teacher[k]
        proj = rng.normal(size=(D, dt))
        ti = _unit(base @ proj + 0.3 * rng.normal(size=(N, dt)))
        tt = _unit(base @ proj + 0.5 * rng.normal(size=(N, dt)))
        teachers.append((ti, tt, (100.0, 30.0)[k]))
    return x, y, teachers


MESHES = {"none": (1, None), "k1": (1, ("data",)), "k8": (8, ("data", "fsdp"))}


@functools.cache
def _fn(mesh_key, impl, combine, n_teachers, block):
    k, names = MESHES[mesh_key]
    if impl == "dense":
        loss = functools.partial(kd_losses.kd_loss, combine=combine)
    else:
        loss = functools.partial(kd_losses.kd_loss_blockwise, combine=combine, block_size=block)

    def body(x, y, s, teach):
        return loss(x, y, s, [(ti, tt, ts) for ti, tt, ts in teach],
                    axis_name=None if names is None else names)

    if names is not None:
        if len(jax.devices()) < k:
            pytest.skip(f"needs {k} devices")
        shape = (1,) if k == 1 else (2, 4)
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:k]).reshape(shape), names,
                                 axis_types=(AxisType.Auto,) * len(names))
        b = P(names)
        body = jax.shard_map(body, mesh=mesh, in_specs=(b, b, P(), [(b, b, P())] * n_teachers),
                             out_specs=P())
    return jax.jit(jax.value_and_grad(body, argnums=(0, 1, 2)))


def _close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    atol = RTOL * max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


CASES = [(m, impl, combine, nt) for m in MESHES for impl in ("dense", "blockwise")
         for combine, nt in (("probs", 1), ("probs", 2), ("logits", 2))]


@pytest.mark.parametrize("mesh_key,impl,combine,n_teachers", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_kd_matches_reference(mesh_key, impl, combine, n_teachers):
    k = MESHES[mesh_key][0]
    x, y, teachers = _case(k + n_teachers, n_teachers)
    fn = _fn(mesh_key, impl, combine, n_teachers, (N // k) // 2)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    teach = [(f32(ti), f32(tt), jnp.float32(ts)) for ti, tt, ts in teachers]
    for s in (10.0, 50.0):
        value, grads = fn(f32(x), f32(y), jnp.float32(s), teach)
        want = ref_kd(x, y, s, teachers, combine)
        for got, ref, name in zip((value, *grads), want, ("loss", "d_img", "d_txt", "d_scale"),
                                  strict=True):
            _close(got, ref, f"{name} s={s} {mesh_key} {impl} {combine} x{n_teachers}")


def test_kd_is_zero_gradient_for_the_teacher_and_minimal_at_the_teacher():
    """The teacher gets no gradient; a student equal to its teacher has d loss / d x = 0."""
    x, y, teachers = _case(0, 1, (D,))
    ti, tt, _ = teachers[0]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    g = jax.grad(lambda a, b, t: kd_losses.kd_loss(a, b, 20.0, [(t, f32(tt), 20.0)]),
                 argnums=(0, 1, 2))(f32(ti), f32(tt), f32(ti))
    np.testing.assert_allclose(np.asarray(g[0]), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g[2]), 0.0, atol=0.0)


def test_feature_loss():
    x, y, teachers = _case(1, 1, (D,))
    ti, tt, _ = teachers[0]
    want = (np.mean(1 - np.sum(x * ti, 1)) + np.mean(1 - np.sum(y * tt, 1))) / 2
    got = kd_losses.feature_loss(jnp.asarray(x * 3), jnp.asarray(y), [(ti, tt)])
    _close(got, want, "feature loss")
    with pytest.raises(ValueError, match="combine"):
        kd_losses.kd_loss(x, y, 1.0, [(ti, tt, 1.0)], combine="mean")
