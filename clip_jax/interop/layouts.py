"""The array layouts the key maps translate between, and the table every family's map is made of.

A :class:`Rule` ties one or more of our flat parameters to one or more of theirs with a pair of
functions (ours -> theirs, theirs -> ours) that only transpose, reshape, split and concatenate,
so every round trip is bit-exact. Layouts (ours -> torch): Dense kernel (in, out) -> Linear
weight (out, in); conv HWIO -> OIHW; ``attn/kernel_in`` (d, 3, heads, head_dim) ->
``in_proj_weight`` (3d, d) stacked q;k;v (HF: three (d, d) ``{q,k,v}_proj``); ``kernel_out``
(heads, head_dim, d) -> ``out_proj`` (d, d); LayerNorm ``scale`` -> ``weight``. The functions
work on NumPy arrays, JAX arrays and (under ``jax.eval_shape``) ShapeDtypeStructs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from clip_jax import params as params_lib

Arrays = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    fwd: Callable[[Arrays], Arrays]  # our arrays -> their arrays
    inv: Callable[[Arrays], Arrays]  # their arrays -> our arrays


def same():
    return (lambda xs: xs), (lambda ys: ys)


def transpose():  # Dense kernel (in, out) <-> torch Linear weight (out, in)
    return (lambda xs: (xs[0].T,)), (lambda ys: (ys[0].T,))


def conv():  # HWIO <-> OIHW
    return ((lambda xs: (xs[0].transpose(3, 2, 0, 1),)),
            (lambda ys: (ys[0].transpose(2, 3, 1, 0),)))


def reshape(ours: tuple[int, ...], theirs: tuple[int, ...]):  # e.g. () <-> (1,)
    return (lambda xs: (xs[0].reshape(theirs),)), (lambda ys: (ys[0].reshape(ours),))


def fused_in_w(heads: int):  # (d, 3, H, hd) <-> in_proj_weight (3d, d), rows q;k;v, head-major
    return ((lambda xs: (xs[0].reshape(xs[0].shape[0], -1).T,)),
            (lambda ys: (ys[0].T.reshape(ys[0].shape[1], 3, heads, -1),)))


def fused_in_b(heads: int):  # (3, H, hd) <-> (3d,)
    return (lambda xs: (xs[0].reshape(-1),)), (lambda ys: (ys[0].reshape(3, heads, -1),))


def out_w(heads: int):  # (H, hd, d) <-> out_proj.weight (d, d)
    return ((lambda xs: (xs[0].reshape(-1, xs[0].shape[-1]).T,)),
            (lambda ys: (ys[0].T.reshape(heads, -1, ys[0].shape[0]),)))


def split_in_w(heads: int):  # (d, 3, H, hd) <-> q_proj, k_proj, v_proj weights (d, d)
    return ((lambda xs: tuple(xs[0][:, s].reshape(xs[0].shape[0], -1).T for s in range(3))),
            (lambda ys: (params_lib.stack([y.T.reshape(y.shape[1], heads, -1) for y in ys],
                                          axis=1),)))


def split_in_b(heads: int):  # (3, H, hd) <-> three (d,)
    return ((lambda xs: tuple(xs[0][s].reshape(-1) for s in range(3))),
            (lambda ys: (params_lib.stack([y.reshape(heads, -1) for y in ys], axis=0),)))


def _concat(parts):
    """Concatenate along axis 0: NumPy for host arrays, ``jnp`` for JAX arrays and tracers."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return jnp.concatenate(parts)


def q_kv_fused_w(heads: int):
    """``kernel_q`` (d, H, hd) and ``kernel_kv`` (d, 2, H, hd) <-> one ``in_proj_weight``
    (3d, d), rows q;k;v (torch ``nn.MultiheadAttention``, HF SigLIP's MAP head)."""
    def fwd(xs):
        return (_concat([x.reshape(x.shape[0], -1).T for x in xs]),)

    def inv(ys):
        w = ys[0]
        d = w.shape[1]
        q = w[:d].T.reshape(d, heads, -1)
        kv = w[d:].T.reshape(d, 2, heads, -1)
        return q, kv
    return fwd, inv


def q_kv_fused_b(heads: int):  # (H, hd), (2, H, hd) <-> in_proj_bias (3d,)
    def fwd(xs):
        return (_concat([xs[0].reshape(-1), xs[1].reshape(-1)]),)

    def inv(ys):
        d = ys[0].shape[0] // 3
        return ys[0][:d].reshape(heads, -1), ys[0][d:].reshape(2, heads, -1)
    return fwd, inv


def q_kv_split_w(heads: int):  # kernel_q, kernel_kv <-> q.weight (d, d), kv.weight (2d, d) (timm)
    def fwd(xs):
        return tuple(x.reshape(x.shape[0], -1).T for x in xs)

    def inv(ys):
        d = ys[0].shape[1]
        return ys[0].T.reshape(d, heads, -1), ys[1].T.reshape(d, 2, heads, -1)
    return fwd, inv


def q_kv_split_b(heads: int):  # bias_q, bias_kv <-> q.bias (d,), kv.bias (2d,)
    def fwd(xs):
        return tuple(x.reshape(-1) for x in xs)

    def inv(ys):
        return ys[0].reshape(heads, -1), ys[1].reshape(2, heads, -1)
    return fwd, inv


class Table:
    """The rules of one family in one format, built line by line."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def add(self, ours: str | tuple[str, ...], theirs: str | tuple[str, ...], tf) -> None:
        def tup(x):
            return (x,) if isinstance(x, str) else tuple(x)
        self.rules.append(Rule(tup(ours), tup(theirs), *tf))

    def ln(self, ours: str, theirs: str) -> None:
        self.add(f"{ours}/scale", f"{theirs}.weight", same())
        self.add(f"{ours}/bias", f"{theirs}.bias", same())

    def dense(self, ours: str, theirs: str, bias: bool = True) -> None:
        self.add(f"{ours}/kernel", f"{theirs}.weight", transpose())
        if bias:
            self.add(f"{ours}/bias", f"{theirs}.bias", same())


def field(cfg, path: str):
    """``cfg.vision.pool`` for ``"vision.pool"``."""
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def mismatches(cfg, want: dict, name: str) -> list[str]:
    """``"model.text.pool='argmax' (NAME: 'last')"`` for each switch of ``want`` that ``cfg``
    sets otherwise."""
    return [f"model.{k}={field(cfg, k)!r} ({name}: {v!r})" for k, v in want.items()
            if field(cfg, k) != v]
