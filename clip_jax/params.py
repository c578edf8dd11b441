"""Parameter trees as flat ``/``-joined keys: flatten, stack/unstack scanned blocks, check, place.

Every format clip_jax reads or writes (bundles, open_clip and Hugging Face state dicts, orbax
checkpoints of another run) meets the model here:

* :func:`flatten_params` / :func:`unflatten_params`: ``{'visual/conv1/kernel': leaf, ...}``
  <-> nested dicts (boxed ``nn.Partitioned`` leaves are unboxed).
* :func:`unstack_layers` / :func:`stack_layers`: one stacked ``transformer/resblocks`` with a
  leading layer axis (``model.scan=True``) <-> ``transformer/resblocks_0..L-1``.
* :func:`check`: same keys, same shapes, float dtypes; errors name each key.
* :func:`adapt`: params of any block layout, checked and laid out like a target tree.
* :func:`place`: host arrays onto devices with the target tree's shardings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_STACKED = re.compile(r"^(.*/transformer)/resblocks/(.+)$")
_PER_LAYER = re.compile(r"^(.*/transformer)/resblocks_(\d+)/(.+)$")


def key_str(path) -> str:
    """A ``jax.tree_util`` key path as ``a/b/c``."""
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        else:
            parts.append(str(p))
    return "/".join(parts)


def flatten_params(tree) -> dict[str, Any]:
    """``{'visual/conv1/kernel': leaf, ...}`` from a (possibly boxed) nested or flat tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))
    return {key_str(p): x for p, x in leaves}


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _is_abstract(x) -> bool:
    return not isinstance(x, np.ndarray | np.generic)


def stack(xs: Sequence[Any], axis: int = 0):
    """``np.stack`` for host arrays, ``jnp.stack`` for traced ones, shapes for ShapeDtypeStructs."""
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in xs):
        s = list(xs[0].shape)
        s.insert(axis, len(xs))
        return jax.ShapeDtypeStruct(tuple(s), xs[0].dtype)
    if any(_is_abstract(x) for x in xs):
        return jnp.stack(xs, axis=axis)
    return np.stack(xs, axis=axis)


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned blocks (``transformer/resblocks/...`` with a leading layer axis) to
    ``transformer/resblocks_N/...``; other keys unchanged. ShapeDtypeStructs are supported."""
    out = {}
    for key, x in flat.items():
        m = _STACKED.match(key)
        if not m:
            out[key] = x
            continue
        for i in range(x.shape[0]):
            out[f"{m[1]}/resblocks_{i}/{m[2]}"] = (
                jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                if isinstance(x, jax.ShapeDtypeStruct) else x[i])
    return out


def stack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`unstack_layers`: ``resblocks_0..L-1`` stacked into ``resblocks``."""
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    out = {}
    for key, x in flat.items():
        m = _PER_LAYER.match(key)
        if m:
            groups.setdefault((m[1], m[3]), {})[int(m[2])] = x
        else:
            out[key] = x
    for (prefix, rest), layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{prefix}/resblocks_N/{rest}: layers {sorted(layers)} are not "
                             f"0..{len(layers) - 1}")
        out[f"{prefix}/resblocks/{rest}"] = stack([layers[i] for i in range(len(layers))])
    return out


def is_stacked(flat: Iterable[str]) -> bool:
    return any(_STACKED.match(k) for k in flat)


def _fmt_keys(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check(got: Mapping[str, Any], want: Mapping[str, Any], source: str, *, cast: bool) -> dict:
    """Same key set, same shapes, float dtypes; with ``cast``, arrays cast to ``want``'s dtypes.

    A ValueError names ``source``, the missing and unexpected keys, and each mismatched shape.
    """
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_fmt_keys(unexpected)}")
        raise ValueError(f"{source} does not match the model config: " + "; ".join(parts))
    bad = []
    for key, w in want.items():
        x = got[key]
        if tuple(x.shape) != tuple(w.shape):
            bad.append(f"{key} has shape {tuple(x.shape)}, expected {tuple(w.shape)}")
        elif not jnp.issubdtype(x.dtype, jnp.floating):
            bad.append(f"{key} has dtype {x.dtype}, expected a floating point dtype")
    if bad:
        raise ValueError(f"{source}: {len(bad)} parameters do not fit the model config: "
                         + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if not cast:
        return dict(got)
    return {k: (np.asarray(got[k]).astype(w.dtype, copy=False)) for k, w in want.items()}


def adapt(flat_src: Mapping[str, Any], abstract_flat: Mapping[str, Any], source: str) -> dict:
    """Source params (any block layout) checked against and laid out like ``abstract_flat``."""
    out = check(unstack_layers(flat_src), unstack_layers(abstract_flat), source, cast=True)
    return stack_layers(out) if is_stacked(abstract_flat) else out


def place(flat_src: Mapping[str, Any], abstract_tree, shardings=None, source: str = "params"):
    """Host params (any block layout) as device arrays laid out, typed and sharded like
    ``abstract_tree`` (boxed or not); ``shardings`` None puts them on the first local device."""
    abstract = nn.meta.unbox(abstract_tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    host = adapt(flat_src, {key_str(p): x for p, x in leaves}, source)
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        sh_leaves = [one] * len(leaves)
    else:
        sh_leaves = treedef.flatten_up_to(nn.meta.unbox(shardings))
    arrays = []
    for (p, x), s in zip(leaves, sh_leaves, strict=True):
        h = host[key_str(p)]
        arrays.append(jax.make_array_from_callback(x.shape, s, lambda idx, h=h: h[idx]))
    return jax.tree_util.tree_unflatten(treedef, arrays)


def take(target_tree, source_tree, pattern: str, source: str = "source"):
    """``target_tree`` (device arrays) with the parameters whose paths match ``pattern``
    (``re.search``, e.g. ``^visual/``) replaced by ``source_tree``'s (nested or flat, NumPy, any
    block layout), cast to the target's dtypes and placed with its shardings; the others are
    kept (LiT: a pretrained image tower beside a fresh text tower). A ValueError names a pattern
    that matches nothing, and each missing or mis-shaped key of the source."""
    rx = re.compile(pattern)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(target_tree))
    keys = [key_str(p) for p, _ in leaves]
    chosen = {k: x for k, (_, x) in zip(keys, leaves, strict=True) if rx.search(k)}
    if not chosen:
        raise ValueError(f"checkpoint.init_from_params={pattern!r} matches no parameter of the "
                         f"model; parameters look like {_fmt_keys(keys, 3)}")
    src = unstack_layers(flatten_params(source_tree))
    if is_stacked(keys):
        src = stack_layers(src)
    host = check({k: src[k] for k in chosen if k in src}, chosen,
                 f"{source} (parameters matching {pattern!r})", cast=True)
    out = [x if k not in host else jax.make_array_from_callback(
        x.shape, x.sharding, lambda idx, h=host[k]: h[idx]) for k, (_, x) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)
