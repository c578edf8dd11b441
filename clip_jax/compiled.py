"""The train step compiled for a set of devices (real or libtpu's compile-only TPU devices), and
what XLA says of it: memory per device, and the FLOPs and bytes accessed of the WHOLE step
(:func:`step_cost`: XLA counts a loop's body once, so scanned block stacks are costed from
shallow unrolled compiles)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import time

import jax
import numpy as np

from clip_jax import config as config_lib
from clip_jax import distill, models, train
from clip_jax.topology import ordered


def abstract_inputs(setup: train.Setup, image_dtype: str = "float32",
                    bucket: tuple[int, int] | None = None):
    """(state, batch) as ``ShapeDtypeStruct`` with their shardings: what the step is lowered on.
    ``bucket``: (images, patches per image) of a NaFlex step (``data.naflex``): the image is
    the pipeline's dict of patches, mask and grid shapes (:mod:`clip_jax.data.naflex`)."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         setup.abstract_state, setup.state_shardings)
    m, n = setup.model_cfg, setup.config.batch_size
    if bucket is None:
        image = jax.ShapeDtypeStruct((n, m.vision.image_size, m.vision.image_size, 3),
                                     np.dtype(image_dtype), sharding=setup.batch_sharding)
    else:
        (n, length), d = bucket, m.vision.patch_size ** 2 * 3
        image = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=setup.batch_sharding)
                 for k, shape, dtype in (("patches", (n, length, d), np.dtype(image_dtype)),
                                         ("mask", (n, length), np.dtype(bool)),
                                         ("shapes", (n, 2), np.dtype(np.int32)))}
    batch = {
        "image": image,
        "text": jax.ShapeDtypeStruct((n, m.text.context_length), np.int32,
                                     sharding=setup.batch_sharding),
    }
    for key, f in setup.objective.batch_fields(n).items():  # stored rows, teachers' own ids
        batch[key] = jax.ShapeDtypeStruct(f.shape, f.dtype, sharding=setup.batch_sharding)
    return state, batch


def specs_of(shardings):
    """The PartitionSpecs of a tree of NamedShardings."""
    return jax.tree.map(lambda s: s.spec, shardings,
                        is_leaf=lambda s: isinstance(s, jax.sharding.NamedSharding))


def tiled_bytes_per_device(abstract_tree, spec_tree, mesh, formats) -> int:
    """:func:`clip_jax.sharding.bytes_per_device` with each shard padded to the tiles of the
    compiled layout (``compiled.input_formats``): TPU stores arrays in (8, 128)-style tiles, so
    a (3, 2, 64) float32 shard occupies more than 3 x 2 x 64 x 4 bytes, and a scalar 512."""
    leaves = jax.tree.leaves(abstract_tree)
    specs = jax.tree.leaves(spec_tree, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    fmts = jax.tree.leaves(formats, is_leaf=lambda f: hasattr(f, "layout"))
    if not len(leaves) == len(specs) == len(fmts):
        raise ValueError(f"{len(leaves)} arrays, {len(specs)} specs, {len(fmts)} layouts")
    total = 0
    for x, spec, fmt in zip(leaves, specs, fmts):
        shard = list(x.shape)
        for i, axes in enumerate(spec):
            if axes is not None:
                axes = (axes,) if isinstance(axes, str) else axes
                shard[i] = -(-shard[i] // int(np.prod([mesh.shape[a] for a in axes])))
        layout = fmt.layout
        dims = [shard[d] for d in layout.major_to_minor] if layout.major_to_minor else []
        tiling = layout.tiling[0] if layout.tiling else ()
        dims = [1] * max(0, len(tiling) - len(dims)) + dims
        for k, t in enumerate(tiling):
            i = len(dims) - len(tiling) + k
            dims[i] = -(-dims[i] // t) * t
        total += int(np.prod(dims)) * np.dtype(x.dtype).itemsize
    return total


def compile_step(setup: train.Setup, image_dtype: str = "float32",
                 bucket: tuple[int, int] | None = None):
    """Lower and compile the train step for ``setup``'s devices (a NaFlex ``bucket``: see
    :func:`abstract_inputs`); returns (compiled, seconds)."""
    state, batch = abstract_inputs(setup, image_dtype, bucket)
    teachers = distill.abstract(setup.teachers, setup.mesh, setup.config.distill.dtype)
    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh), _persistent_cache_for(setup.mesh.devices.flat[0]):
        compiled = train.make_train_step(setup).jitted.lower(
            state, batch, *((teachers,) if teachers else ())).compile()
    return compiled, time.perf_counter() - t0


@contextlib.contextmanager
def _persistent_cache_for(device):
    """XLA's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``) off while compiling for
    devices this process cannot run on (libtpu's compile-only TPU devices): it cannot load those
    executables back, so jax would store every plan compile and warn at every later read."""
    if _runs_here(device):
        yield
        return
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def _runs_here(device) -> bool:
    try:
        return device in jax.devices(device.platform)
    except RuntimeError:  # no backend of that platform in this process
        return False


def cost_of(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(cost or {})


COST_KEYS = ("flops", "bytes accessed", "transcendentals")


def with_overrides(config, **overrides):
    """A copy of ``config`` with dotted keys set (``model.vision.layers=1``)."""
    c = copy.deepcopy(config)
    for key, value in overrides.items():
        *path, last = key.split("__")
        node = c
        for k in path:
            node = node[k]
        node[last] = value
    return c


def scanned_stacks(model_cfg) -> dict[str, int]:
    """The block stacks ``model.scan`` turns into loops, with their depths (config key: layers):
    XLA's ``cost_analysis`` counts a loop's body once, whatever its trip count."""
    if not model_cfg.scan:
        return {}
    stacks = {}
    if models.family.text(model_cfg).scanned:
        stacks["model__text__layers"] = model_cfg.text.layers
    if models.family.vision(model_cfg).scanned:
        stacks["model__vision__layers"] = model_cfg.vision.layers
    if model_cfg.decoder is not None:  # the decoder's layers scan with model.scan too
        stacks["model__decoder__layers"] = model_cfg.decoder.layers
    return stacks


def step_cost(config, devices, image_dtype: str = "float32", compiled=None) -> dict:
    """FLOPs, bytes accessed and transcendentals per chip of the WHOLE train step, as XLA counts
    an unrolled (``model.scan=False``) compile of it, every loop's trips counted.

    XLA counts a loop's body once. Two kinds of loop are corrected, each by linearity:
    - scanned block stacks: the step is compiled unrolled at depth 1 and at depth 2 of each
      stack, everything else the same; every block is the same program, so the whole step's
      count is ``c(1, 1) + sum_s (L_s - 1) (c(2 in s) - c(1, 1))``;
    - the gradient cache's two micro-batch loops (``accum_steps`` = k > 1): each of those
      compiles is made again with the loops' scans unrolled u times (u the smallest divisor of
      k above 1: u - 1 more micro-batches in the count, of cost ``G`` each), and the step's is
      ``c + (k - 1) G``, the per-block part of ``G`` scaled with the depth like the rest.
    A few shallow compiles instead of one unrolled compile of every block and micro-batch.
    Returns the counts and ``cost_method``."""
    model_cfg = config_lib.resolve_model_config(config.model)
    stacks, k = scanned_stacks(model_cfg), config.accum_steps
    if not stacks and k <= 1:
        cost = cost_of(compiled if compiled is not None else compile_step(
            train.build(config, devices=ordered(devices, config)), image_dtype)[0])
        return {**{key: float(cost.get(key, 0.0) or 0.0) for key in COST_KEYS},
                "optimal_seconds": float(cost.get("optimal_seconds", 0.0) or 0.0),
                "cost_method": "the compiled step (no loop over blocks or micro-batches)",
                "cost_compile_s": 0.0}
    t0 = time.perf_counter()

    def at(depths, unroll=1):
        c = with_overrides(config, model__scan=False, **depths)
        setup = dataclasses.replace(train.build(c, devices=ordered(devices, c)),
                                    accum_unroll=unroll)
        cost = cost_of(compile_step(setup, image_dtype)[0])
        return {key: float(cost.get(key, 0.0) or 0.0) for key in COST_KEYS}

    # the loops unrolled u times, u the smallest divisor of k above 1 (no remainder trips)
    u = next((d for d in range(2, k + 1) if k % d == 0), 1)

    def loop_body(depths, once):
        """``G``: one micro-batch's cost in the loops, from ``u`` of them against one."""
        if k <= 1:
            return dict.fromkeys(COST_KEYS, 0.0)
        more = at(depths, u)
        return {key: (more[key] - once[key]) / (u - 1) for key in COST_KEYS}

    ones = dict.fromkeys(stacks, 1)
    base = at(ones)
    body = loop_body(ones, base)
    total = {key: base[key] + (k - 1) * body[key] for key in COST_KEYS}
    for key, depth in stacks.items():
        if depth > 1:
            two = at({**ones, key: 2})
            body2 = loop_body({**ones, key: 2}, two)
            for c in COST_KEYS:
                total[c] += (depth - 1) * (two[c] - base[c] + (k - 1) * (body2[c] - body[c]))
    how = []
    if stacks:
        names = ", ".join(f"{s.split('__')[1]} {d}" for s, d in stacks.items())
        how.append(f"unrolled compiles at depth 1 and 2 of each scanned stack ({names} "
                   f"blocks), extrapolated linearly in depth")
    if k > 1:
        how.append(f"the gradient cache's micro-batch loops compiled at 1 and {u} trips "
                   f"per loop body, extrapolated to {k}")
    return {**total, "optimal_seconds": 0.0, "cost_compile_s": time.perf_counter() - t0,
            "cost_method": "; ".join(how)}


def memory_of(compiled) -> dict:
    mem = compiled.memory_analysis()
    out = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = (out["argument"] + out["output"] + out["temp"] + out["generated_code"]
                    - out["alias"])
    return out


OOM_BYTES = re.compile(r"required for [^(]*\(([\d.]+[KMGTP]?)\)")


def parse_bytes(text: str) -> float:
    """``"23.28T"`` -> bytes (XLA's binary units)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
