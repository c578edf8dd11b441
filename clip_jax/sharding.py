"""Meshes and shardings: the only module that knows the mesh axes.

The mesh has three axes, MaxText style:

* ``data``   pure data parallelism (replicated params, sharded batch),
* ``fsdp``   batch sharded too, and parameters/optimizer state sharded (ZeRO-3 / FSDP),
* ``tensor`` Megatron-style tensor parallelism of attention heads and MLP hidden units.

Models declare *logical* axis names on every parameter and on key activations; ``RULES`` maps
them to mesh axes. A mesh axis that does not divide a dimension is dropped for that dimension
(the parameter is replicated along it) rather than failing deep inside XLA.

Axes are ``AxisType.Auto`` on purpose: the model is written with logical sharding annotations
and GSPMD propagates the rest; the loss is an explicit ``shard_map`` whose communication is
visible in :mod:`clip_jax.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
_AUTO_AXES = (AxisType.Auto,) * len(MESH_AXES)  # GSPMD propagates; see the module docstring
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; losses all-gather over them

# Logical axis -> mesh axis (or None = replicated).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("proj", None),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
)


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolve ``{data, fsdp, tensor}`` sizes, one of which may be -1 (= fill)."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices: "
                f"{num_devices} is not a multiple of {known}")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are present; set one axis to -1 to fill")
    return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=_AUTO_AXES)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=_AUTO_AXES)


def abstract_mesh(mesh_cfg: Mapping[str, int], num_devices: int) -> jax.sharding.AbstractMesh:
    """A mesh of the given size without devices: plan a pod's shardings from a laptop."""
    shape = mesh_shape(mesh_cfg, num_devices)
    return jax.sharding.AbstractMesh(shape, MESH_AXES, axis_types=_AUTO_AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules=RULES) -> P:
    """Map logical names to a PartitionSpec; drop mesh axes that don't divide the dim."""
    table = dict(rules)
    out, used = [], set()
    for i, name in enumerate(names):
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                if shape[i] % math.prod(mesh.shape[a] for a in axes):
                    axes = ()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def _is_boxed(x) -> bool:
    return isinstance(x, nn.Partitioned)


FSDP_MIN_SIZE = 1 << 14  # smaller parameters stay replicated: their gathers cost more than
# the memory they would save


def _fsdp_fallback(spec: P, shape: Sequence[int], mesh) -> P:
    """If the rules left an array of ``FSDP_MIN_SIZE`` or more elements unsharded over
    ``fsdp`` (no ``embed`` axis, or ``embed`` not divisible by the fsdp size, e.g. bigG's 1664
    over 256 devices), shard its largest free dimension that ``fsdp`` divides."""
    n = mesh.shape["fsdp"]
    entries = list(spec) + [None] * (len(shape) - len(spec))
    used = {a for e in entries if e is not None for a in ((e,) if isinstance(e, str) else e)}
    if n == 1 or "fsdp" in used or math.prod(shape) < FSDP_MIN_SIZE:
        return spec
    free = [i for i, e in enumerate(entries) if e is None and shape[i] % n == 0]
    if not free:
        return spec
    entries[max(free, key=lambda i: shape[i])] = "fsdp"
    return P(*entries)


def param_specs(boxed_tree, mesh: Mesh | None = None, rules=RULES):
    """PartitionSpecs for a tree whose leaves may be ``nn.Partitioned`` (from ``eval_shape``):
    the logical rules, then (given a mesh) the FSDP fallback of :func:`_fsdp_fallback`."""

    def spec(x):
        if not _is_boxed(x):
            return P()
        s = logical_to_spec(x.names, x.value.shape, mesh, rules)
        return s if mesh is None else _fsdp_fallback(s, x.value.shape, mesh)

    return jax.tree.map(spec, boxed_tree, is_leaf=_is_boxed)


def _is_spec_leaf(x) -> bool:
    return isinstance(x, P | optax.MaskedNode)


def opt_state_specs(tx: optax.GradientTransformation, opt_state, param_spec_tree):
    """Specs for the optax state of ``tx``: every param-shaped tree in it (Adam's mu/nu...)
    gets the params' specs (``optax.tree_utils.tree_map_params``, which finds them by
    re-running ``tx.init``), everything else (counts, scalars) is replicated. Parameters
    masked out of a ``optax.masked`` state stay ``MaskedNode`` (no array, no spec): so do
    frozen parameters (``optimizer.frozen``: ``optax.multi_transform``, whose labels function
    sends ``tx.init``'s placeholder to the trainable branch)."""
    return optax.tree_utils.tree_map_params(
        tx, lambda x, spec: x if isinstance(x, optax.MaskedNode) else spec,
        opt_state, param_spec_tree, transform_non_params=lambda _: P(), is_leaf=_is_spec_leaf)


def to_shardings(spec_tree, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree,
                        is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def bytes_per_device(abstract_tree, spec_tree, mesh) -> int:
    """Bytes a tree occupies on one device when sharded by ``spec_tree`` over ``mesh``
    (a Mesh or AbstractMesh)."""
    total = 0
    specs = jax.tree.leaves(spec_tree, is_leaf=lambda s: isinstance(s, P))
    for x, spec in zip(jax.tree.leaves(abstract_tree), specs):
        shard = list(x.shape)
        for i, axes in enumerate(spec):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else axes
            shard[i] = -(-shard[i] // math.prod(mesh.shape[a] for a in axes))
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
