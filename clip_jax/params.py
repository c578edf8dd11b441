"""Parameter trees as flat ``/``-joined keys: flatten, stack/unstack scanned blocks, check, place.

Every format clip_jax reads or writes (bundles, open_clip and Hugging Face state dicts, orbax
checkpoints of another run) meets the model here:

* :func:`flatten_params` / :func:`unflatten_params`: ``{'visual/conv1/kernel': leaf, ...}``
  <-> nested dicts (boxed ``nn.Partitioned`` leaves are unboxed).
* :func:`unstack_layers` / :func:`stack_layers`: one stacked ``transformer/resblocks`` with a
  leading layer axis (``model.scan=True``) <-> ``transformer/resblocks_0..L-1``.
* :func:`check`: same keys, same shapes, float dtypes; errors name each key.
* :func:`pick_blocks`: a deeper (or shallower) source's transformer blocks chosen to fill the
  model's depth: weight inheritance (TinyCLIP), a student started from a subset of its teacher.
* :func:`adapt`: params of any block layout, checked and laid out like a target tree.
* :func:`place`: host arrays onto devices with the target tree's shardings.
* :func:`resample_vision`: another image or patch size: ``visual/positional_embedding``
  resampled (class token kept, grid bicubic with antialias as open_clip's ``resize_pos_embed``;
  without a class token bilinear as open_clip's big_vision loader and timm do for SigLIP) and
  ``visual/conv1/kernel`` resized by FlexiViT's pseudo-inverse rule. :func:`adapt` (and so
  :func:`place`, :func:`take`) applies it, with one logged line per resampled parameter.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_STACKED = re.compile(r"^(.*/transformer)/resblocks/(.+)$")
_PER_LAYER = re.compile(r"^(.*/transformer)/resblocks_(\d+)/(.+)$")
# the captioning decoder's scanned pairs: text_decoder/blocks/{resblocks,cross_attn}/...
_DEC_STACKED = re.compile(r"^(.*text_decoder)/blocks/(resblocks|cross_attn)/(.+)$")
_DEC_PER_LAYER = re.compile(r"^(.*text_decoder)/(resblocks|cross_attn)_(\d+)/(.+)$")
_log = logging.getLogger(__name__)


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
    """Scanned blocks (``transformer/resblocks/...`` with a leading layer axis; the decoder's
    ``text_decoder/blocks/{resblocks,cross_attn}/...``) to ``transformer/resblocks_N/...``
    (``text_decoder/resblocks_N/...``, ``text_decoder/cross_attn_N/...``); other keys
    unchanged. ShapeDtypeStructs are supported."""
    out = {}
    for key, x in flat.items():
        if m := _STACKED.match(key):
            name = lambda i, m=m: f"{m[1]}/resblocks_{i}/{m[2]}"
        elif m := _DEC_STACKED.match(key):
            name = lambda i, m=m: f"{m[1]}/{m[2]}_{i}/{m[3]}"
        else:
            out[key] = x
            continue
        for i in range(x.shape[0]):
            out[name(i)] = (jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                            if isinstance(x, jax.ShapeDtypeStruct) else x[i])
    return out


def stack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`unstack_layers`: ``resblocks_0..L-1`` stacked into ``resblocks``."""
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    out = {}
    for key, x in flat.items():
        if m := _PER_LAYER.match(key):
            groups.setdefault((f"{m[1]}/resblocks", m[3]), {})[int(m[2])] = x
        elif m := _DEC_PER_LAYER.match(key):
            groups.setdefault((f"{m[1]}/blocks/{m[2]}", m[4]), {})[int(m[3])] = x
        else:
            out[key] = x
    for (prefix, rest), layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{prefix}_N/{rest}: layers {sorted(layers)} are not "
                             f"0..{len(layers) - 1}")
        out[f"{prefix}/{rest}"] = stack([layers[i] for i in range(len(layers))])
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


def depths(flat: Mapping[str, Any]) -> dict[str, int]:
    """``{'visual/transformer': L, 'text/transformer': L}``: each tower's number of transformer
    blocks, from per-block keys or scanned ones (their leading axis)."""
    out: dict[str, int] = {}
    for key, x in flat.items():
        if m := _PER_LAYER.match(key):
            out[m[1]] = max(out.get(m[1], 0), int(m[2]) + 1)
        elif m := _STACKED.match(key):
            out[m[1]] = int(x.shape[0])
    return out


def block_indices(spec: str, have: int, need: int, what: str) -> list[int]:
    """The ``need`` source blocks (of ``have``) that ``spec`` names: ``even`` (evenly spaced, the
    first and the last kept) or a comma list such as ``0,3``; a bad spec is a ValueError."""
    if spec == "even":
        return [round(j * (have - 1) / max(need - 1, 1)) for j in range(need)]
    try:
        idx = [int(i) for i in spec.split(",")]
    except ValueError:
        raise ValueError(f"checkpoint.init_from_blocks={spec!r}: not 'even' or a comma list of "
                         "block numbers such as 0,3") from None
    if len(idx) != need or not all(0 <= i < have for i in idx):
        raise ValueError(f"checkpoint.init_from_blocks={spec!r}: {what} needs {need} block "
                         f"numbers in 0..{have - 1}")
    return idx


def pick_blocks(flat_src: Mapping[str, Any], want: Mapping[str, Any], spec: str,
                source: str) -> dict:
    """``flat_src`` (per-block keys) with each tower's transformer blocks renumbered to the
    depth of ``want`` (any layout): block ``j`` of the model is source block ``idx[j]``
    (:func:`block_indices`; TinyCLIP's manual weight inheritance). Towers of equal depth are
    kept; with ``spec`` "" another depth is a ValueError naming the option."""
    have, out = depths(flat_src), dict(flat_src)
    for tower, need in depths(want).items():
        n = have.get(tower, need)
        if n == need:
            continue
        if not spec:
            even = ",".join(map(str, block_indices("even", n, need, tower)))
            raise ValueError(f"{source} has {n} blocks in {tower}, the model {need} (to start "
                             "from some of them: checkpoint.init_from_blocks=even, or a list "
                             f"such as {even})")
        idx = block_indices(spec, n, need, f"{source}: {tower} ({n} blocks)")
        mine = {k: _PER_LAYER.match(k) for k in flat_src if k.startswith(f"{tower}/resblocks_")}
        for k in mine:
            del out[k]
        for k, m in mine.items():
            for j in (j for j, i in enumerate(idx) if i == int(m[2])):
                out[f"{tower}/resblocks_{j}/{m[3]}"] = flat_src[k]
    return out


def adapt(flat_src: Mapping[str, Any], abstract_flat: Mapping[str, Any], source: str,
          blocks: str = "") -> dict:
    """Source params (any block layout) checked against and laid out like ``abstract_flat``;
    another image or patch size is resampled (:func:`resample_vision`), another depth takes the
    source blocks ``blocks`` names (:func:`pick_blocks`)."""
    want = unstack_layers(abstract_flat)
    flat = pick_blocks(unstack_layers(flat_src), want, blocks, source)
    out = check(resample_vision(flat, want, source), want, source, cast=True)
    return stack_layers(out) if is_stacked(abstract_flat) else out


def place(flat_src: Mapping[str, Any], abstract_tree, shardings=None, source: str = "params",
          blocks: str = ""):
    """Host params (any block layout) as device arrays laid out, typed and sharded like
    ``abstract_tree`` (boxed or not); ``shardings`` None puts them on the first local device."""
    abstract = nn.meta.unbox(abstract_tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    host = adapt(flat_src, {key_str(p): x for p, x in leaves}, source, blocks)
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


def take(target_tree, source_tree, pattern: str, source: str = "source", blocks: str = ""):
    """``target_tree`` (device arrays) with the parameters whose paths match ``pattern``
    (``re.search``, e.g. ``^visual/``) replaced by ``source_tree``'s (nested or flat, NumPy, any
    block layout), cast to the target's dtypes and placed with its shardings; the others are
    kept (LiT: a pretrained image tower beside a fresh text tower). A ValueError names a pattern
    that matches nothing, and each missing or mis-shaped key of the source; another image or
    patch size is resampled (:func:`resample_vision`), another depth as :func:`pick_blocks`."""
    rx = re.compile(pattern)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(target_tree))
    keys = [key_str(p) for p, _ in leaves]
    chosen = {k: x for k, (_, x) in zip(keys, leaves, strict=True) if rx.search(k)}
    if not chosen:
        raise ValueError(f"checkpoint.init_from_params={pattern!r} matches no parameter of the "
                         f"model; parameters look like {_fmt_keys(keys, 3)}")
    target = {k: x for k, (_, x) in zip(keys, leaves, strict=True)}
    src = pick_blocks(unstack_layers(flatten_params(source_tree)), target, blocks, source)
    src = resample_vision(src, target, source)
    if is_stacked(keys):
        src = stack_layers(src)
    host = check({k: src[k] for k in chosen if k in src}, chosen,
                 f"{source} (parameters matching {pattern!r})", cast=True)
    out = [x if k not in host else jax.make_array_from_callback(
        x.shape, x.sharding, lambda idx, h=host[k]: h[idx]) for k, (_, x) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------------
# Resolution and patch-size changes

POS_EMBED, PATCH_KERNEL, CLASS_EMBED = ("visual/positional_embedding", "visual/conv1/kernel",
                                        "visual/class_embedding")
ATTNPOOL_POS_EMBED = "visual/attnpool/positional_embedding"  # ((res / 32)^2 + 1, C)
METHODS = ("bilinear", "bicubic")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel (torch: a = -0.75 plain, -0.5 with antialias)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(n_in: int, n_out: int, method: str = "bicubic",
                  antialias: bool = True) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix of torch's 1-D ``F.interpolate(size=n_out,
    mode=method, align_corners=False, antialias=antialias)`` (applied separably per axis).

    With ``antialias`` (torch's ``_upsample_*_aa``, PIL's filters): Keys a=-0.5 / the triangle,
    stretched by the scale when downsampling, truncated at the edges and renormalised. Without:
    a=-0.75 cubic with clamped edge indices / linear with the source index clamped at 0.
    """
    if method not in METHODS:
        raise ValueError(f"resize method {method!r} is not one of {', '.join(METHODS)}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize {n_in} to {n_out} positions")
    scale = n_in / n_out
    mat = np.zeros((n_out, n_in))
    if antialias:
        support = (2.0 if method == "bicubic" else 1.0) * max(scale, 1.0)
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            x = (np.arange(lo, hi) - center + 0.5) * inv
            w = _cubic(x, -0.5) if method == "bicubic" else np.maximum(0.0, 1.0 - np.abs(x))
            mat[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
        return mat
    for i in range(n_out):
        src = scale * (i + 0.5) - 0.5
        if method == "bilinear":
            src = max(src, 0.0)
            i0 = int(src)
            lam = src - i0
            mat[i, i0] += 1.0 - lam
            mat[i, min(i0 + 1, n_in - 1)] += lam
        else:
            i0 = math.floor(src)
            t = src - i0
            for k, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
                mat[i, min(max(i0 + k, 0), n_in - 1)] += w
    return mat


def resize_grid(grid: np.ndarray, size: int, method: str = "bicubic",
                antialias: bool = True) -> np.ndarray:
    """``(h, w, ...)`` resized to ``(size, size, ...)`` as torch's ``F.interpolate`` (float64)."""
    rows = resize_matrix(grid.shape[0], size, method, antialias)
    cols = resize_matrix(grid.shape[1], size, method, antialias)
    return np.einsum("ai,bj,ij...->ab...", rows, cols, np.asarray(grid, np.float64))


def grid_side(n: int, what: str) -> int:
    """The side of a square grid of ``n`` positions; a ValueError names ``what`` otherwise."""
    side = math.isqrt(n)
    if n < 1 or side * side != n:
        raise ValueError(f"{what} has {n} grid positions, not a square grid")
    return side


def resample_pos_embed(pos: np.ndarray, size: int, class_token: bool) -> np.ndarray:
    """``(n(+1), D)`` position embeddings for a ``size`` x ``size`` grid. With a class token as
    open_clip's ``resize_pos_embed`` (token 0 kept, grid bicubic with antialias); without one as
    open_clip's big_vision loader / timm's ``resample_abs_pos_embed`` for SigLIP (bilinear)."""
    pos = np.asarray(pos)
    prefix, body = (pos[:1], pos[1:]) if class_token else (pos[:0], pos)
    side = grid_side(len(body), POS_EMBED)
    method, antialias = ("bicubic", True) if class_token else ("bilinear", False)
    grid = resize_grid(body.reshape(side, side, -1), size, method, antialias)
    return np.concatenate([prefix, grid.reshape(size * size, -1).astype(pos.dtype)])


def resize_patch_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """``(p, p, C, D)`` patch kernel for ``size`` x ``size`` patches by FlexiViT's rule
    (big_vision ``resample_patchemb``): ``pinv(B.T) @ k`` with ``B`` the bilinear (antialiased)
    resize of a patch, so that ``<new kernel, B x> = <kernel, x>`` for every patch ``x`` when
    the patch grows."""
    kernel = np.asarray(kernel)
    p = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != p:
        raise ValueError(f"{PATCH_KERNEL} has shape {kernel.shape}, expected (p, p, C, D)")
    b = np.kron(resize_matrix(p, size, "bilinear"), resize_matrix(p, size, "bilinear"))
    new = np.linalg.pinv(b.T) @ kernel.reshape(p * p, -1).astype(np.float64)
    return new.reshape(size, size, *kernel.shape[2:]).astype(kernel.dtype)


def resample_vision(flat: Mapping[str, Any], want: Mapping[str, Any],
                    source: str = "params") -> dict[str, Any]:
    """``flat`` with ``visual/positional_embedding`` (a ResNet's
    ``visual/attnpool/positional_embedding``) and ``visual/conv1/kernel`` resampled to
    ``want``'s shapes where those differ (another image or patch size): see
    :func:`resample_pos_embed` (class token iff ``want`` has ``visual/class_embedding``) and
    :func:`resize_patch_kernel`. Logs one line naming what changed; other keys untouched."""
    out, done = dict(flat), []

    def differs(key: str, kept: int) -> bool:  # the grid differs, the trailing `kept` axes not
        if key not in flat or key not in want or isinstance(flat[key], jax.ShapeDtypeStruct):
            return False
        a, b = tuple(flat[key].shape), tuple(want[key].shape)
        return a != b and len(a) == len(b) and a[len(a) - kept:] == b[len(b) - kept:]

    if differs(PATCH_KERNEL, 2):
        old, new = flat[PATCH_KERNEL].shape[0], want[PATCH_KERNEL].shape[0]
        out[PATCH_KERNEL] = resize_patch_kernel(np.asarray(flat[PATCH_KERNEL]), new)
        done.append(f"{PATCH_KERNEL} {old}x{old} -> {new}x{new} (FlexiViT pseudo-inverse)")
    # a ResNet's attention pool: its mean token is kept as a class token is
    for key, cls in ((POS_EMBED, CLASS_EMBED in want), (ATTNPOOL_POS_EMBED, True)):
        if not differs(key, 1):
            continue
        old = grid_side(flat[key].shape[0] - cls, f"{source}: {key}")
        new = grid_side(want[key].shape[0] - cls, f"the model's {key}")
        out[key] = resample_pos_embed(np.asarray(flat[key]), new, cls)
        how = "bicubic, antialias, class token kept" if cls else "bilinear, no class token"
        done.append(f"{key} {old}x{old} -> {new}x{new} ({how})")
    if done:
        _log.warning("%s: resampled %s", source, "; ".join(done))
    return out


def vision_grid(image_size, patch_size) -> int:
    """Patches per side for square ``image_size`` images cut into ``patch_size`` patches; a
    one-line ValueError for a non-square size, a non-positive one or one the patch does not
    divide."""
    for name, v in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"model.vision.{name}={v!r}: must be a positive int (square "
                             f"images and patches only)")
    if image_size % patch_size:
        raise ValueError(f"model.vision.image_size={image_size} is not a multiple of "
                         f"model.vision.patch_size={patch_size}")
    return image_size // patch_size


def _shapes(tree) -> dict[str, tuple]:
    """``{"a/b/c": shape}`` of a pytree's leaves (dicts, dataclasses and orbax's metadata)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in path)
        out[name] = tuple(getattr(leaf, "shape", np.shape(leaf)))
    return out


def structure_diff(saved, target) -> list[str]:
    """How the ``params`` and ``batch_stats`` of a saved state differ from ``target``'s:
    missing and unexpected leaves, other shapes (empty when they agree)."""
    def part(tree, key):
        sub = tree.get(key) if isinstance(tree, dict) else getattr(tree, key, None)
        return {f"{key}/{k}": v for k, v in _shapes(sub).items()} if sub is not None else {}

    have = {**part(saved, "params"), **part(saved, "batch_stats")}
    want = {**part(target, "params"), **part(target, "batch_stats")}
    out = [f"missing {k}" for k in sorted(set(want) - set(have))]
    out += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    out += [f"{k} has shape {have[k]}, expected {want[k]}" for k in sorted(set(have) & set(want))
            if have[k] != want[k]]
    return out
