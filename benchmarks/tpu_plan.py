"""The TPU step of a recipe under each rematerialisation policy, as the TPU compiler costs it.

    python benchmarks/tpu_plan.py --config configs/siglip_b16_80k.py:v5e-256 --topology v5e:2x2 \\
        --config.batch_size=1024 --config.mesh.data=1 --config.mesh.fsdp=4 [--remat auto]
    python benchmarks/tpu_plan.py --config configs/vit_b32_laion400m.py:v5e-256 \\
        --remat none,full --unrolled

For each policy (``--remat``: ``auto`` = every policy a compile-only plan can weigh, scanned
and unrolled for a scanned recipe, or a comma-separated list, ``name@unrolled`` for one) the
step is compiled for the topology (libtpu, no TPU needed: the ``tpu-aot`` extra) and one
markdown row printed: HBM per chip, whether it fits (90% of the
chip), XLA's FLOPs and bytes accessed per chip for the whole step (scanned stacks corrected by
:func:`clip_jax.plan.step_cost`), compute time (FLOPs at peak), memory time (bytes at HBM
bandwidth), the bound max(compute, memory) and samples/s per chip from it. ``--unrolled``
compiles every candidate with ``model.scan=False`` (the costs are then read from the one compile, no
extrapolation). These are the compiler's roofline, not measurements.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from clip_jax import plan
from clip_jax import topology as tpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A recipe (path[:platform]).", lock_config=True)
flags.DEFINE_string("topology", None, "TPU topology (default: the recipe's).")
flags.DEFINE_string("remat", "auto", "auto or a comma-separated list of remat policies, "
                    "each optionally @scan or @unrolled.")
flags.DEFINE_bool("unrolled", False, "Compile with model.scan=False.")
flags.DEFINE_string("image_dtype", "uint8", "dtype of the image batch fed to the step.")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    del argv
    jax.config.update("jax_platforms", "cpu")
    if not tpu.libtpu_available():
        print("libtpu is not installed (pip install 'clip_jax[tpu-aot]'): nothing to compile")
        return
    config = FLAGS.config
    if FLAGS.unrolled:
        config.model.scan = False
    topology = FLAGS.topology or tpu.recipe_topology(FLAGS["config"].config_filename)
    t0 = time.perf_counter()
    try:
        r = plan.remat_plan(config, topology, FLAGS.image_dtype, FLAGS.remat)
    except tpu.PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{FLAGS['config'].config_filename} on {topology}: global batch {r['global_batch']:,}, "
          f"mesh {r['mesh']}, {r['params']:,} params, dtype {r['dtype']}, "
          f"scan={r['scan']}, loss {r['loss']}; cost from {r.get('cost_method')}")
    print(plan.format_remat_table(r))
    print(f"chosen: model.remat={r['remat_choice']} model.scan={r['scan_choice']} "
          f"({time.perf_counter() - t0:.0f} s of compiles)")


if __name__ == "__main__":
    app.run(main)
