"""Multi-host initialisation driven by the environment.

* ``CLIP_JAX_COORDINATOR`` (host:port), ``CLIP_JAX_NUM_PROCESSES``, ``CLIP_JAX_PROCESS_ID``:
  explicit (what ``launch/local_multiprocess.sh`` sets; also works on any cluster).
* SLURM (``SLURM_JOB_ID`` with more than one task) and TPU pods: JAX's own auto-detection.
* Otherwise: a single process, nothing to do.
"""

from __future__ import annotations

import os

import jax


def initialize() -> None:
    env = os.environ
    if "CLIP_JAX_COORDINATOR" in env:
        missing = [k for k in ("CLIP_JAX_NUM_PROCESSES", "CLIP_JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"CLIP_JAX_COORDINATOR is set but {missing} are not")
        # CPU hosts need a collectives backend; harmless for GPU/TPU. Touch no backend
        # before initialize(): that would freeze a single-process view of the devices.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=env["CLIP_JAX_COORDINATOR"],
            num_processes=int(env["CLIP_JAX_NUM_PROCESSES"]),
            process_id=int(env["CLIP_JAX_PROCESS_ID"]),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES", "").count(","):
        jax.distributed.initialize()
