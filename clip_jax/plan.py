"""Plan a run with the TPU compiler itself: compile the real train step for a TPU topology on a
CPU host (no TPU needed) and read the per-chip memory and cost XLA reports.

    python -m clip_jax.plan --config configs/vit_b16_laion400m.py:v5e-256 [--topology v5e:16x16] \\
        [--config.key=value ...] [--json]

The step compiled is the training one (``train.build`` + ``train.make_train_step``: the same
shardings, loss, gradient cache, remat, scan and dtypes), lowered on abstract arrays for the
compile-only devices of ``jax.experimental.topologies`` (libtpu: ``pip install
clip_jax[tpu-aot]``). Without libtpu, it says so in one line and runs :func:`abstract_plan`
(``jax.eval_shape`` arithmetic: parameters + optimizer state only).

Figures, per chip: HBM = arguments + outputs + temporaries + code - aliased (the donated
state) against the chip's HBM; TFLOPs of the step, XLA's and analytic (:mod:`clip_jax.flops`:
XLA counts a scanned body once, so with ``model.scan`` its count is low); a step-time bound:
the compiler's roofline ``optimal_seconds`` where it is credible (positive and not faster than
the analytic FLOPs at peak), else analytic FLOPs / peak vs bytes / HBM bandwidth; and from it
samples/s per chip and an MFU upper bound. These are compiler estimates, not measurements.

Exit status: 0 fits (HBM <= 90% of the chip), 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import inspect
import json
import os
import re
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import mesh_utils, topologies
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from clip_jax import config as config_lib
from clip_jax import distill, models, sharding, train
from clip_jax import flops as flops_lib

GIB = 2.0**30
FIT_FRACTION = 0.9  # of the chip's HBM: above it, a recipe is reported as not fitting


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_tflops: float  # bf16 dense
    hbm_gbps: float  # HBM bandwidth, GB/s
    chip_config: str = "default"  # libtpu chip config: "megacore" = one device per chip


# Public per-chip figures (cloud.google.com/tpu/docs/system-architecture-tpu-vm). Extend here.
CHIPS = {
    "v4": Chip(32, 275, 1228, "megacore"),
    "v5e": Chip(16, 197, 819),
    "v5p": Chip(95, 459, 2765, "megacore"),
    "v6e": Chip(32, 918, 1640),
}
CHIPS_PER_HOST = 4

_TOPOLOGY = re.compile(r"^(?P<chip>[a-z0-9]+):(?P<dims>\d+(x\d+){1,2})$")


class PlanError(ValueError):
    """Bad input: an unknown topology, a config that cannot run on it."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """``"v5e:16x16"`` -> ``("v5e", (16, 16))``; raises :class:`PlanError` on anything else."""
    m = _TOPOLOGY.match(name or "")
    if not m or m["chip"] not in CHIPS:
        raise PlanError(f"unknown topology {name!r}: expected CHIP:AxB or CHIP:AxBxC with CHIP "
                        f"one of {', '.join(CHIPS)} (e.g. v5e:16x16, v4:4x4x2)")
    return m["chip"], tuple(int(d) for d in m["dims"].split("x"))


def libtpu_available() -> bool:
    path = os.environ.get("TPU_LIBRARY_PATH")
    return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def _tpu_attached() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _quiet_libtpu() -> None:
    """On a host without TPU chips, libtpu's initialisation complains (on stderr, several
    lines) that it cannot find ``TPU_ACCELERATOR_TYPE`` / ``TPU_WORKER_HOSTNAMES``; they only
    describe attached chips, which a compile-only topology does not use, so give it harmless
    single-host values. On a TPU VM (chips attached) nothing is touched."""
    if _tpu_attached():
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # libtpu takes a host-wide lock (/tmp/libtpu_lockfile) for attached chips; with none, a
    # second process (a test's CLI subprocess, two plans at once) may load it as well
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(name: str) -> list:
    """The compile-only TPU devices of a topology (needs libtpu, not a TPU)."""
    chip, dims = parse_topology(name)
    _quiet_libtpu()
    canonical = f"{chip}:{'x'.join(map(str, dims))}"
    try:
        desc = topologies.get_topology_desc(topology_name=canonical, platform="tpu",
                                            chip_config_name=CHIPS[chip].chip_config)
    except Exception as e:  # libtpu says what is wrong on its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlanError(f"topology {name!r}: {first}") from e
    return list(desc.devices)


def _ordered(devices, config) -> list:
    """Devices in the order ``mesh_utils`` gives for the config's mesh on this topology (axes
    laid along the physical torus), so that ``train.build`` reshapes them into a sensible mesh."""
    shape = sharding.mesh_shape(config.mesh, len(devices))
    try:
        return list(mesh_utils.create_device_mesh(shape, devices).flat)
    except (ValueError, NotImplementedError, AssertionError):
        return list(devices)


def abstract_inputs(setup: train.Setup, image_dtype: str = "float32"):
    """(state, batch) as ``ShapeDtypeStruct`` with their shardings: what the step is lowered on."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         setup.abstract_state, setup.state_shardings)
    m, n = setup.model_cfg, setup.config.batch_size
    batch = {
        "image": jax.ShapeDtypeStruct((n, m.vision.image_size, m.vision.image_size, 3),
                                      np.dtype(image_dtype), sharding=setup.batch_sharding),
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


def compile_step(setup: train.Setup, image_dtype: str = "float32"):
    """Lower and compile the train step for ``setup``'s devices; returns (compiled, seconds)."""
    state, batch = abstract_inputs(setup, image_dtype)
    teachers = distill.abstract(setup.teachers, setup.mesh, setup.config.distill.dtype)
    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        compiled = train.make_train_step(setup).jitted.lower(
            state, batch, *((teachers,) if teachers else ())).compile()
    return compiled, time.perf_counter() - t0


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(cost or {})


def _memory(compiled) -> dict:
    mem = compiled.memory_analysis()
    out = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = (out["argument"] + out["output"] + out["temp"] + out["generated_code"]
                    - out["alias"])
    return out


_OOM_BYTES = re.compile(r"required for [^(]*\(([\d.]+[KMGTP]?)\)")


def _bytes(text: str) -> float:
    """``"23.28T"`` -> bytes (XLA's binary units)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def compiled_plan(config, topology: str, image_dtype: str = "float32") -> dict:
    """Compile ``config``'s train step for ``topology`` and return the figures (see module doc).
    Raises :class:`PlanError` on bad input."""
    chip_name, _ = parse_topology(topology)
    chip = CHIPS[chip_name]
    devices = topology_devices(topology)
    try:
        setup = train.build(config, devices=_ordered(devices, config))
        train.check_batch(config, setup.mesh, max(1, len(devices) // CHIPS_PER_HOST))
    except ValueError as e:
        raise PlanError(str(e)) from e
    chips = len(devices)
    m, c = setup.model_cfg, config
    head = {"method": "compiled", "topology": topology, "device_kind": devices[0].device_kind,
            "chips": chips, "mesh": dict(setup.mesh.shape), "global_batch": c.batch_size,
            "per_chip_batch": c.batch_size / chips, "accum_steps": c.accum_steps,
            "loss": f"{c.loss}/{c.loss_impl}", "remat": bool(m.remat), "scan": bool(m.scan),
            "dtype": m.dtype, "params": models.count_params(setup.abstract_state.params),
            "state_gib_per_chip": sharding.bytes_per_device(
                setup.abstract_state, specs_of(setup.state_shardings), setup.mesh) / GIB,
            "chip_hbm_gib": chip.hbm_gib}
    t0 = time.perf_counter()
    try:
        compiled, compile_s = compile_step(setup, image_dtype)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # the TPU compiler refuses a program that cannot fit; its message names the bytes
        message = str(e).strip().splitlines()[0]
        need = _OOM_BYTES.search(message)
        need_gib = _bytes(need.group(1)) / GIB if need else float("nan")
        return {**head, "fits": False, "compile_seconds": time.perf_counter() - t0,
                "compiler_error": message, "hbm_gib_per_chip": need_gib,
                "hbm_fraction": need_gib / chip.hbm_gib}
    mem, cost = _memory(compiled), _cost(compiled)
    analytic = flops_lib.train_step_flops(m, c.batch_size, m.remat, c.accum_steps, c.loss,
                                          c.loss_impl)
    teacher_flops = distill.forward_flops(setup.teachers, c.batch_size)  # in the step too
    hw_chip = (analytic.hardware + teacher_flops) / chips
    model_chip = (analytic.model + teacher_flops) / chips
    teacher_bytes = sum(sharding.bytes_per_device(a, t.specs, setup.mesh) for a, t in zip(
        distill.abstract(setup.teachers, setup.mesh, c.distill.dtype), setup.teachers))
    xla_flops = float(cost.get("flops", 0.0))
    peak = chip.peak_tflops * 1e12
    compute_s = hw_chip / peak
    optimal = float(cost.get("optimal_seconds", 0.0) or 0.0)
    bytes_accessed = float(cost.get("bytes accessed", 0.0) or 0.0)
    if optimal > 0 and optimal >= 0.95 * compute_s:
        step_s, source = optimal, "compiler optimal_seconds"
    else:
        memory_s = bytes_accessed / (chip.hbm_gbps * 1e9)
        step_s = max(compute_s, memory_s)
        why = "not positive" if optimal <= 0 else "faster than the analytic FLOPs at peak"
        source = (f"analytic roofline (compiler optimal_seconds {optimal:.3g} {why}): "
                  f"max(analytic FLOPs / peak, XLA bytes / HBM bandwidth)")
    per_chip_batch = c.batch_size / chips
    return {
        **head,
        "memory_bytes": mem,
        "hbm_gib_per_chip": mem["total"] / GIB,
        "hbm_fraction": mem["total"] / (chip.hbm_gib * GIB),
        "fits": mem["total"] <= FIT_FRACTION * chip.hbm_gib * GIB,
        "compile_seconds": compile_s,
        "xla_tflops_per_chip": xla_flops / 1e12,
        "analytic_tflops_per_chip": hw_chip / 1e12,
        "model_tflops_per_chip": model_chip / 1e12,
        "xla_over_analytic": xla_flops / hw_chip if hw_chip else float("nan"),
        "optimal_seconds": optimal,
        "bytes_accessed_gib": bytes_accessed / GIB,
        "step_seconds_bound": step_s,
        "step_seconds_source": source,
        "samples_per_sec_per_chip": per_chip_batch / step_s,
        "mfu_bound": model_chip / step_s / peak,
        "peak_tflops": chip.peak_tflops,
        **({"teachers": len(setup.teachers), "teacher_gib_per_chip": teacher_bytes / GIB,
            "teacher_hbm_share": teacher_bytes / max(mem["total"], 1),
            "teacher_flops_share": teacher_flops / chips / hw_chip} if setup.teachers else {}),
        **({"stored_teachers": len(setup.stored)} if setup.stored else {}),
    }


def abstract_plan(config, num_devices: int, num_processes: int = 1) -> dict:
    """The memory/batch arithmetic of a run on ``num_devices`` devices, computed abstractly
    (``jax.eval_shape`` on an AbstractMesh: no device, no allocation). Raises on a config
    that cannot run there (mesh, batch divisibility)."""
    config_lib.validate(config)
    model_cfg = config_lib.resolve_model_config(config.model)
    mesh = sharding.abstract_mesh(config.mesh, num_devices)
    shards = train.check_batch(config, mesh, num_processes)
    _, _, _, abstract, specs = train.plan_state(config, model_cfg, mesh)
    replicated = jax.tree.map(lambda _: P(), abstract.params)
    return {
        "mesh": dict(mesh.shape),
        "params": models.count_params(abstract.params),
        "global_batch": config.batch_size,
        "per_process_batch": config.batch_size // num_processes,
        "batch_per_data_shard": config.batch_size // shards,
        "micro_batch_per_data_shard": config.batch_size // shards // config.accum_steps,
        "param_gib_per_device": sharding.bytes_per_device(
            abstract.params, specs.params, mesh) / GIB,
        "opt_gib_per_device": sharding.bytes_per_device(
            abstract.opt_state, specs.opt_state, mesh) / GIB,
        "param_gib_replicated": sharding.bytes_per_device(
            abstract.params, replicated, mesh) / GIB,
    }



def shape_plan(config, topology: str) -> dict:
    """The fallback without libtpu: :func:`abstract_plan` for the topology's chip count."""
    chip_name, dims = parse_topology(topology)
    chip = CHIPS[chip_name]
    chips = int(np.prod(dims))
    try:
        p = abstract_plan(config, chips, max(1, chips // CHIPS_PER_HOST))
    except ValueError as e:
        raise PlanError(str(e)) from e
    state_gib = p["param_gib_per_device"] + p["opt_gib_per_device"]
    return {"method": "eval_shape", "topology": topology, "chips": chips, **p,
            "state_gib_per_chip": state_gib, "chip_hbm_gib": chip.hbm_gib,
            "fits": state_gib <= FIT_FRACTION * chip.hbm_gib}


def plan(config, topology: str, image_dtype: str = "float32") -> dict:
    """``compiled_plan`` where libtpu is installed, else ``shape_plan`` (with ``note``)."""
    if libtpu_available():
        return compiled_plan(config, topology, image_dtype)
    out = shape_plan(config, topology)
    out["note"] = ("libtpu is not installed (pip install 'clip_jax[tpu-aot]'): ran the "
                   "eval_shape plan, which counts parameters + optimizer state only")
    return out


def format_table(r: dict) -> str:
    rows = [("method", "compiled for TPU (XLA)" if r["method"] == "compiled"
             else "eval_shape arithmetic (params + optimizer only)"),
            ("topology", f"{r['topology']} ({r['chips']} chips"
             + (f", {r['device_kind']})" if "device_kind" in r else ")")),
            ("mesh", " x ".join(f"{k}={v}" for k, v in r["mesh"].items())),
            ("global batch", f"{r['global_batch']:,}")]
    if r.get("compiler_error"):
        rows += [("per-chip batch", f"{r['per_chip_batch']:g} (accum_steps {r['accum_steps']})"),
                 ("HBM per chip", f"{r['hbm_gib_per_chip']:,.2f} / {r['chip_hbm_gib']:g} GiB "
                                  f"of temporaries alone"),
                 ("compiler", r["compiler_error"])]
    elif r["method"] == "compiled":
        mem = r["memory_bytes"]
        rows += [
            ("per-chip batch", f"{r['per_chip_batch']:g} (accum_steps {r['accum_steps']})"),
            ("model", f"{r['params']:,} params, {r['dtype']}, remat={r['remat']}, "
                      f"scan={r['scan']}, loss {r['loss']}"),
            ("params + opt state per chip", f"{r['state_gib_per_chip']:.3f} GiB"),
            ("HBM per chip", f"{r['hbm_gib_per_chip']:.2f} / {r['chip_hbm_gib']:g} GiB "
                             f"({r['hbm_fraction']:.0%}): arguments {mem['argument'] / GIB:.2f} "
                             f"+ temp {mem['temp'] / GIB:.2f} + output {mem['output'] / GIB:.2f}"
                             f" - aliased {mem['alias'] / GIB:.2f}"),
            ("compile", f"{r['compile_seconds']:.1f} s"),
            ("TFLOPs per chip per step", f"{r['analytic_tflops_per_chip']:.4g} analytic "
                                         f"(XLA: {r['xla_tflops_per_chip']:.4g}, "
                                         f"x{r['xla_over_analytic']:.2f})"),
            ("compiler optimal_seconds", f"{r['optimal_seconds']:.4g}"),
            ("step time bound", f"{r['step_seconds_bound']:.4g} s from "
                                f"{r['step_seconds_source']}"),
            ("predicted samples/s per chip", f"{r['samples_per_sec_per_chip']:,.0f} (bound)"),
            ("MFU bound", f"{r['mfu_bound']:.1%} of {r['peak_tflops']:g} TFLOP/s"),
        ]
        if r.get("teachers"):
            rows.append(("distillation teachers", f"{r['teachers']}: "
                         f"{r['teacher_gib_per_chip']:.3f} GiB per chip "
                         f"({r['teacher_hbm_share']:.0%} of HBM used), "
                         f"{r['teacher_flops_share']:.0%} of the step's FLOPs"))
        if r.get("stored_teachers"):
            rows.append(("stored teachers", f"{r['stored_teachers']} (none runs in the step)"))
    else:
        rows += [("params + opt state per chip",
                  f"{r['state_gib_per_chip']:.3f} / {r['chip_hbm_gib']:g} GiB")]
    rows.append(("fits", "yes" if r["fits"] else
                 f"NO (over {FIT_FRACTION:.0%} of the chip's HBM)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r.get("note"):
        lines.insert(0, f"note: {r['note']}")
    return "\n".join(lines)


def recipe_topology(config_arg: str) -> str | None:
    """The topology a recipe names for the platform after the colon (``TOPOLOGY`` in the
    config module), e.g. ``configs/vit_b16_laion400m.py:v5e-256`` -> ``v5e:16x16``."""
    path, _, arg = (config_arg or "").partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_clip_jax_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = getattr(mod, "TOPOLOGY", None)
    if not table:
        return None
    if not arg:
        default = inspect.signature(mod.get_config).parameters
        arg = next((p.default for p in default.values()
                    if p.default is not inspect.Parameter.empty), "")
    return table.get(arg)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if not _tpu_attached() and jax.config.jax_platforms is None:
        # a CPU host: the compile-only TPU devices need no TPU backend; do not try to start one
        jax.config.update("jax_platforms", "cpu")
    FLAGS = flags.FLAGS
    topology = FLAGS.topology or recipe_topology(FLAGS["config"].config_filename)
    try:
        if not topology:
            raise PlanError("no --topology given and the config names none for its platform "
                            "(TOPOLOGY in the config file)")
        image_dtype = FLAGS.image_dtype
        if image_dtype == "auto":  # what the run's data source feeds the step
            image_dtype = "uint8" if FLAGS.config.data.source == "webdataset" else "float32"
        result = plan(FLAGS.config, topology, image_dtype)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, sort_keys=True) if FLAGS.json else format_table(result))
    sys.exit(0 if result["fits"] else 1)


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16 (default: the "
                                          "recipe's TOPOLOGY for its platform).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_string("image_dtype", "auto",
                        "dtype of the image batch fed to the step; auto: uint8 for webdataset "
                        "(the pipeline sends raw pixels), float32 for synthetic data.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
