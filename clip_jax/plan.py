"""Plan a run with the TPU compiler itself: compile the real train step for a TPU topology on a
CPU host (no TPU needed) and read the per-chip memory and cost XLA reports.

    python -m clip_jax.plan --config configs/vit_b16_laion400m.py:v5e-256 [--topology v5e:16x16] \\
        [--config.key=value ...] [--remat auto | --remat none@unrolled,minimal,full] [--json]

The step compiled is the training one (``train.build`` + ``train.make_train_step``: the same
shardings, loss, gradient cache, remat, scan and dtypes), lowered on abstract arrays for the
compile-only devices of ``jax.experimental.topologies`` (libtpu: ``pip install
clip_jax[tpu-aot]``). Without libtpu, it says so in one line and runs :func:`abstract_plan`
(``jax.eval_shape`` arithmetic: parameters + optimizer state only).

Figures, per chip: HBM = arguments + outputs + temporaries + code - aliased (the donated
state) against the chip's HBM; the whole step's FLOPs and bytes accessed as XLA counts them
(:func:`clip_jax.compiled.step_cost`: XLA counts a scanned body once, so a scanned model is
costed from unrolled compiles at depth 1 and 2, extrapolated in depth), beside the analytic
FLOPs of :mod:`clip_jax.flops`; compute time (FLOPs at the chip's peak) and memory time (bytes
at its HBM bandwidth), the bound max(compute, memory) and which one bounds the step; from it
samples/s per chip and an MFU upper bound. libtpu's own ``optimal_seconds`` is reported only
when positive. These are compiler estimates, not measurements. ``--remat`` (or
``model.remat=auto``) compiles the step under several rematerialisation policies and keeps the
fastest that fits (:func:`remat_plan`); ``--terms`` each objective term's share of HBM and
FLOPs (:mod:`clip_jax.plan_terms`). NaFlex (``data.naflex``): one program per bucket, each
(images, patches) shape compiled by :func:`bucket_plan`, which reports each one's HBM.

Exit status: 0 fits (HBM <= 90% of the chip), 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from clip_jax import compiled, distill, models, plan_terms, sharding, train
from clip_jax import config as config_lib
from clip_jax import flops as flops_lib
from clip_jax import remat as remat_lib
from clip_jax import topology as tpu
from clip_jax.data import naflex

GIB = 2.0**30
FIT_FRACTION = 0.9  # of the chip's HBM: above it, a recipe is reported as not fitting


def compiled_plan(config, topology: str, image_dtype: str = "float32",
                  with_cost: bool = True) -> dict:
    """Compile ``config``'s train step for ``topology`` and return the figures (see module doc);
    ``with_cost=False``: memory only (no extra compiles for scanned models).
    Raises :class:`tpu.PlanError` on bad input."""
    chip_name, _ = tpu.parse_topology(topology)
    chip = tpu.CHIPS[chip_name]
    devices = tpu.topology_devices(topology)
    try:
        setup = train.build(config, devices=tpu.ordered(devices, config))
        train.check_batch(config, setup.mesh, max(1, len(devices) // tpu.CHIPS_PER_HOST))
    except ValueError as e:
        raise tpu.PlanError(str(e)) from e
    chips = len(devices)
    m, c = setup.model_cfg, config
    head = {"method": "compiled", "topology": topology, "device_kind": devices[0].device_kind,
            "chips": chips, "mesh": dict(setup.mesh.shape), "global_batch": c.batch_size,
            "per_chip_batch": c.batch_size / chips, "accum_steps": c.accum_steps,
            "loss": f"{c.loss}/{c.loss_impl}", "remat": m.remat, "scan": bool(m.scan),
            "dtype": m.dtype, "params": models.count_params(setup.abstract_state.params),
            "state_gib_per_chip": sharding.bytes_per_device(
                setup.abstract_state, compiled.specs_of(setup.state_shardings), setup.mesh) / GIB,
            "chip_hbm_gib": chip.hbm_gib}
    t0 = time.perf_counter()
    try:
        program, compile_s = compiled.compile_step(setup, image_dtype)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # the TPU compiler refuses a program that cannot fit; its message names the bytes
        message = str(e).strip().splitlines()[0]
        need = compiled.OOM_BYTES.search(message)
        need_gib = compiled.parse_bytes(need.group(1)) / GIB if need else float("nan")
        return {**head, "fits": False, "compile_seconds": time.perf_counter() - t0,
                "compiler_error": message, "hbm_gib_per_chip": need_gib,
                "hbm_fraction": need_gib / chip.hbm_gib}
    mem = compiled.memory_of(program)
    cost = compiled.step_cost(config, devices, image_dtype, program) if with_cost else None
    analytic = flops_lib.train_step_flops(m, c.batch_size, m.remat, c.accum_steps, c.loss,
                                          c.loss_impl)
    teacher_flops = distill.forward_flops(setup.teachers, c.batch_size)  # in the step too
    hw_chip = (analytic.hardware + teacher_flops) / chips
    model_chip = (analytic.model + teacher_flops) / chips
    teacher_bytes = sum(sharding.bytes_per_device(a, t.specs, setup.mesh) for a, t in zip(
        distill.abstract(setup.teachers, setup.mesh, c.distill.dtype), setup.teachers))
    peak, per_chip_batch = chip.peak_tflops * 1e12, c.batch_size / chips
    out = {
        **head,
        "memory_bytes": mem,
        "hbm_gib_per_chip": mem["total"] / GIB,
        "hbm_fraction": mem["total"] / (chip.hbm_gib * GIB),
        "fits": mem["total"] <= FIT_FRACTION * chip.hbm_gib * GIB,
        "compile_seconds": compile_s,
        "analytic_tflops_per_chip": hw_chip / 1e12,
        "model_tflops_per_chip": model_chip / 1e12,
        "peak_tflops": chip.peak_tflops,
        "hbm_gbps": chip.hbm_gbps,
        **plan_terms.teacher_figures(setup, teacher_bytes, mem["total"],
                                     teacher_flops / chips / hw_chip),
    }
    if cost is None:
        return out
    # the roofline of the whole step: compute time (XLA's FLOPs at the chip's peak; the analytic
    # count where it is larger: XLA's misses loops it cannot see through) against memory time
    # (XLA's bytes accessed at its HBM bandwidth); the larger bounds the step
    flops_chip = max(cost["flops"], hw_chip, 1.0)
    compute_s = flops_chip / peak
    memory_s = cost["bytes accessed"] / (chip.hbm_gbps * 1e9)
    step_s = max(compute_s, memory_s)
    out.update({
        "cost_method": cost["cost_method"],
        "cost_compile_seconds": cost["cost_compile_s"],
        "xla_tflops_per_chip": cost["flops"] / 1e12,
        "xla_over_analytic": cost["flops"] / hw_chip if hw_chip else float("nan"),
        "bytes_accessed_gib": cost["bytes accessed"] / GIB,
        "compute_seconds": compute_s,
        "memory_seconds": memory_s,
        "bound_by": "memory" if memory_s >= compute_s else "compute",
        "step_seconds_bound": step_s,
        "samples_per_sec_per_chip": per_chip_batch / step_s,
        "mfu_bound": model_chip / step_s / peak,
    })
    if cost["optimal_seconds"] > 0:  # libtpu's own estimate, only where it gave one
        out["compiler_optimal_seconds"] = cost["optimal_seconds"]
    return out


def naflex_buckets(config, chips: int) -> list[tuple[int, int]]:
    """(images, patches per image) of each bucket of ``data.naflex`` on ``chips`` devices, as
    the pipeline batches them (:func:`clip_jax.data.naflex.bucket_plan`)."""
    n, m = config.data.naflex, config_lib.resolve_model_config(config.model)
    b = naflex.bucket_plan(tuple(n.buckets), n.tokens, m.vision.patch_size, config.seed,
                           n.batch_multiple or chips)
    return list(zip(b.batch_sizes, b.buckets, strict=True))


def bucket_plan(config, topology: str, image_dtype: str = "uint8") -> dict:
    """Compile a NaFlex recipe's train step for ``topology`` once per bucket (its own (images,
    patches) shape, as training compiles it) and return each bucket's HBM per chip
    (``buckets``), the worst (``worst_bucket``, whose HBM is ``hbm_gib_per_chip``) and
    whether every bucket fits. Memory only: no cost compiles."""
    chip = tpu.CHIPS[tpu.parse_topology(topology)[0]]
    devices = tpu.topology_devices(topology)
    try:
        setup = train.build(config, devices=tpu.ordered(devices, config))
        shapes = naflex_buckets(config, len(devices))
    except ValueError as e:
        raise tpu.PlanError(str(e)) from e
    m, chips, rows = setup.model_cfg, len(devices), []
    for images, length in shapes:
        row = {"patches": length, "images": images, "per_chip_images": images / chips}
        try:
            program, row["compile_seconds"] = compiled.compile_step(setup, image_dtype,
                                                                    (images, length))
            row["memory_bytes"] = compiled.memory_of(program)
            total = row["memory_bytes"]["total"]
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            row["compiler_error"] = str(e).strip().splitlines()[0]
            need = compiled.OOM_BYTES.search(row["compiler_error"])
            total = compiled.parse_bytes(need.group(1)) if need else float("nan")
        row.update(hbm_gib_per_chip=total / GIB, hbm_fraction=total / (chip.hbm_gib * GIB),
                   fits=("compiler_error" not in row
                         and total <= FIT_FRACTION * chip.hbm_gib * GIB))
        rows.append(row)
    worst = max(rows, key=lambda r: r["hbm_gib_per_chip"])
    return {"method": "compiled", "topology": topology, "device_kind": devices[0].device_kind,
            "chips": chips, "mesh": dict(setup.mesh.shape), "global_batch": config.batch_size,
            "tokens_per_step": config.data.naflex.tokens, "programs": len(rows),
            "remat": m.remat, "scan": bool(m.scan), "dtype": m.dtype,
            "params": models.count_params(setup.abstract_state.params),
            "state_gib_per_chip": sharding.bytes_per_device(
                setup.abstract_state, compiled.specs_of(setup.state_shardings), setup.mesh) / GIB,
            "chip_hbm_gib": chip.hbm_gib, "buckets": rows, "worst_bucket": worst["patches"],
            "hbm_gib_per_chip": worst["hbm_gib_per_chip"],
            "hbm_fraction": worst["hbm_fraction"], "fits": all(r["fits"] for r in rows)}


def format_buckets(r: dict) -> str:
    """:func:`bucket_plan`'s figures as a few lines and a markdown table."""
    lines = [f"NaFlex bucket plan, compiled for TPU (XLA): {r['topology']} ({r['chips']} chips, "
             f"{r['device_kind']}), mesh {' x '.join(f'{k}={v}' for k, v in r['mesh'].items())}",
             f"model {r['params']:,} params, {r['dtype']}, remat={r['remat']}, scan={r['scan']}"
             f"; params + opt state {r['state_gib_per_chip']:.3f} GiB per chip",
             f"{r['tokens_per_step']:,} patches per step; {r['programs']} programs (one per "
             f"bucket); worst bucket {r['worst_bucket']}: {r['hbm_gib_per_chip']:.2f} / "
             f"{r['chip_hbm_gib']:g} GiB per chip ({r['hbm_fraction']:.0%})", "",
             "| bucket (patches) | images/step | per chip | HBM GiB/chip | fits | compile s |",
             "|---|---|---|---|---|---|"]
    for b in r["buckets"]:
        mark = " (worst)" if b["patches"] == r["worst_bucket"] else ""
        lines.append(f"| {b['patches']}{mark} | {b['images']:,} | {b['per_chip_images']:g} | "
                     f"{b['hbm_gib_per_chip']:.2f} | {'yes' if b['fits'] else 'NO'} | "
                     + (f"{b['compile_seconds']:.1f} |" if "compile_seconds" in b
                        else f"{b['compiler_error']} |"))
    lines.append(f"fits: {'yes' if r['fits'] else f'NO (a bucket over {FIT_FRACTION:.0%} of HBM)'}")
    return "\n".join(lines)


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
    chip_name, dims = tpu.parse_topology(topology)
    chip = tpu.CHIPS[chip_name]
    chips = int(np.prod(dims))
    try:
        p = abstract_plan(config, chips, max(1, chips // tpu.CHIPS_PER_HOST))
    except ValueError as e:
        raise tpu.PlanError(str(e)) from e
    state_gib = p["param_gib_per_device"] + p["opt_gib_per_device"]
    return {"method": "eval_shape", "topology": topology, "chips": chips, **p,
            "state_gib_per_chip": state_gib, "chip_hbm_gib": chip.hbm_gib,
            "fits": state_gib <= FIT_FRACTION * chip.hbm_gib}


def remat_candidates(spec: str, scan: bool = False) -> list[tuple[str, bool]]:
    """(policy, scan) pairs to compile. ``auto``: every policy of :data:`remat_lib.POLICIES` but
    the host-offloading ones (a compile-only plan cannot weigh their PCIe time), scanned and
    unrolled for a scanned config (unrolled blocks keep no stacked residuals; slower compile).
    Otherwise a comma-separated list of policies, each optionally ``@scan`` or ``@unrolled``
    (default: the config's ``model.scan``)."""
    if spec == "auto":
        names = [n for n in remat_lib.POLICIES if "offload" not in n]
        return [(n, s) for s in ((True, False) if scan else (False,)) for n in names]
    out, bad = [], []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, at, how = item.partition("@")
        if name not in remat_lib.POLICIES or how not in (("scan", "unrolled") if at else ("",)):
            bad.append(item)
        out.append((name, scan if not how else how == "scan"))
    if bad or not out:
        raise tpu.PlanError(f"remat candidates {spec!r}: use auto or names from "
                            f"{', '.join(remat_lib.POLICIES)}, each optionally @scan or "
                            f"@unrolled")
    return out


def remat_plan(config, topology: str, image_dtype: str = "float32",
               candidates: str = "auto") -> dict:
    """Compile the step for each (remat policy, scan) candidate of ``candidates`` and choose
    the one with the highest samples/s bound among those that fit the HBM budget (ties: the
    smaller HBM). Returns the chosen candidate's plan with ``remat_table`` (every candidate's
    row), ``remat_choice`` (the policy) and ``scan_choice``."""
    rows, results = [], {}
    for name, scan in remat_candidates(candidates, bool(config.model.scan)):
        label = f"{name}@{'scan' if scan else 'unrolled'}"
        t0 = time.perf_counter()
        r = compiled_plan(compiled.with_overrides(config, model__remat=name, model__scan=scan),
                          topology, image_dtype)
        results[label] = r
        rows.append({"remat": label, "policy": name, "scan": scan, "fits": r["fits"],
                     "hbm_gib_per_chip": r["hbm_gib_per_chip"],
                     "compile_seconds_total": time.perf_counter() - t0,
                     **{k: r.get(k) for k in ("xla_tflops_per_chip", "bytes_accessed_gib",
                                              "compute_seconds", "memory_seconds", "bound_by",
                                              "step_seconds_bound", "samples_per_sec_per_chip",
                                              "compiler_error")}})
    fitting = [r for r in rows if r["fits"] and r.get("samples_per_sec_per_chip")]
    if fitting:
        best = max(fitting, key=lambda r: (r["samples_per_sec_per_chip"], -r["hbm_gib_per_chip"]))
    else:  # nothing fits: report the leanest, which does not fit either
        best = min(rows, key=lambda r: r["hbm_gib_per_chip"])
    return {**results[best["remat"]], "remat_table": rows, "remat_choice": best["policy"],
            "scan_choice": best["scan"]}


def plan(config, topology: str, image_dtype: str = "float32", remat: str = "",
         terms: bool = False) -> dict:
    """``compiled_plan`` where libtpu is installed, else ``shape_plan`` (with ``note``).
    ``remat`` (or ``model.remat: auto`` in the config): ``auto`` or a comma-separated list of
    policies to compile and choose from (:func:`remat_plan`). ``terms``: each objective term's
    share too (:mod:`clip_jax.plan_terms`)."""
    remat = remat or ("auto" if config.model.remat == "auto" else "")
    if remat and not tpu.libtpu_available():
        raise tpu.PlanError("choosing a remat policy compiles the step for the TPU: it needs "
                        "libtpu (pip install 'clip_jax[tpu-aot]')")
    if remat and config.data.naflex.buckets:
        raise tpu.PlanError("choosing a remat policy over a NaFlex recipe's buckets is not "
                            "built: plan it with model.remat set (one policy)")
    if terms:
        plan_terms.check(config, remat, tpu.libtpu_available(), tpu.PlanError)
    if remat:
        return remat_plan(config, topology, image_dtype, remat)
    if tpu.libtpu_available():
        if config.data.naflex.buckets:
            return bucket_plan(config, topology, image_dtype)
        out = compiled_plan(config, topology, image_dtype)
        return plan_terms.with_shares(out, config, lambda c: compiled_plan(
            c, topology, image_dtype)) if terms else out
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
        ]
        if "step_seconds_bound" in r:
            rows += [
                ("cost counted from", f"{r['cost_method']}"
                 + (f" ({r['cost_compile_seconds']:.0f} s)" if r["cost_compile_seconds"] else "")),
                ("TFLOPs per chip per step", f"{r['xla_tflops_per_chip']:.4g} XLA "
                                             f"(analytic {r['analytic_tflops_per_chip']:.4g}, "
                                             f"XLA/analytic x{r['xla_over_analytic']:.2f})"),
                ("bytes accessed per chip", f"{r['bytes_accessed_gib']:,.1f} GiB"),
                ("compute time", f"{r['compute_seconds']:.4g} s (at {r['peak_tflops']:g} "
                                 f"TFLOP/s)"),
                ("memory time", f"{r['memory_seconds']:.4g} s (at {r['hbm_gbps']:g} GB/s)"),
                ("step time bound", f"{r['step_seconds_bound']:.4g} s = max(compute, memory): "
                                    f"{r['bound_by']}-bound"),
                ("predicted samples/s per chip", f"{r['samples_per_sec_per_chip']:,.0f} (bound)"),
                ("MFU bound", f"{r['mfu_bound']:.1%} of {r['peak_tflops']:g} TFLOP/s"),
            ]
            if r.get("compiler_optimal_seconds"):
                rows.append(("compiler optimal_seconds", f"{r['compiler_optimal_seconds']:.4g}"))
        rows += plan_terms.teacher_rows(r)
    else:
        rows += [("params + opt state per chip",
                  f"{r['state_gib_per_chip']:.3f} / {r['chip_hbm_gib']:g} GiB")]
    rows.append(("fits", "yes" if r["fits"] else
                 f"NO (over {FIT_FRACTION:.0%} of the chip's HBM)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r.get("note"):
        lines.insert(0, f"note: {r['note']}")
    if r.get("term_shares"):
        lines.append(plan_terms.format_shares(r))
    if r.get("remat_table"):
        lines += ["", f"remat policies compiled (chosen: model.remat={r['remat_choice']} "
                      f"model.scan={r['scan_choice']}, the fastest bound that fits "
                      f"{FIT_FRACTION:.0%} of HBM):", format_remat_table(r)]
    return "\n".join(lines)


def format_remat_table(r: dict) -> str:
    """The candidates of :func:`remat_plan` as a markdown table."""
    head = ("| remat | HBM GiB/chip | fits | XLA TFLOP/chip | bytes GiB/chip | compute s | "
            "memory s | bound s | samples/s/chip |")
    lines = [head, "|" + "---|" * 9]
    for row in r["remat_table"]:
        if row.get("compiler_error") or row.get("step_seconds_bound") is None:
            lines.append(f"| {row['remat']} | {row['hbm_gib_per_chip']:.2f} | no | - | - | - | - "
                         f"| - | - |")
            continue
        chosen = (row["policy"], row["scan"]) == (r["remat_choice"], r["scan_choice"])
        mark = " (chosen)" if chosen else ""
        lines.append(
            f"| {row['remat']}{mark} | {row['hbm_gib_per_chip']:.2f} | "
            f"{'yes' if row['fits'] else 'no'} | {row['xla_tflops_per_chip']:.2f} | "
            f"{row['bytes_accessed_gib']:.1f} | {row['compute_seconds']:.3f} | "
            f"{row['memory_seconds']:.3f} | {row['step_seconds_bound']:.3f} "
            f"({row['bound_by']}) | {row['samples_per_sec_per_chip']:,.0f} |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if not tpu.tpu_attached() and jax.config.jax_platforms is None:
        # a CPU host: the compile-only TPU devices need no TPU backend; do not try to start one
        jax.config.update("jax_platforms", "cpu")
    FLAGS = flags.FLAGS
    topology = FLAGS.topology or tpu.recipe_topology(FLAGS["config"].config_filename)
    try:
        if not topology:
            raise tpu.PlanError("no --topology given and the config names none for its "
                                "platform (TOPOLOGY in the config file)")
        image_dtype = FLAGS.image_dtype
        if image_dtype == "auto":  # what the run's data source feeds the step
            image_dtype = "uint8" if FLAGS.config.data.source == "webdataset" else "float32"
        result = plan(FLAGS.config, topology, image_dtype, FLAGS.remat, FLAGS.terms)
    except tpu.PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, sort_keys=True) if FLAGS.json else
          format_buckets(result) if "buckets" in result else format_table(result))
    sys.exit(0 if result["fits"] else 1)


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16 (default: the "
                                          "recipe's TOPOLOGY for its platform).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_bool("terms", False, "Also each term's share of HBM and FLOPs (plan_terms.py).")
    flags.DEFINE_string("image_dtype", "auto",
                        "dtype of the image batch fed to the step; auto: uint8 for webdataset "
                        "(the pipeline sends raw pixels), float32 for synthetic data.")
    flags.DEFINE_string("remat", "",
                        "auto: compile the step with every remat policy (scanned and unrolled "
                        "for a scanned config) and choose the fastest that fits (as "
                        "model.remat=auto does); or a comma-separated list of policies to "
                        "choose from, each optionally @scan or @unrolled.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
