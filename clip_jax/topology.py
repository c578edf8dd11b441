"""TPU topologies a plan compiles for, with no TPU attached: the chips' public figures,
``CHIP:AxB[xC]`` names, the compile-only devices libtpu gives for them, and the topology each
recipe names for its platform (``TOPOLOGY`` in the config file)."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import inspect
import os
import re

from jax.experimental import mesh_utils, topologies

from clip_jax import sharding


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


def tpu_attached() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _quiet_libtpu() -> None:
    """On a host without TPU chips, libtpu's initialisation complains (on stderr, several
    lines) that it cannot find ``TPU_ACCELERATOR_TYPE`` / ``TPU_WORKER_HOSTNAMES``; they only
    describe attached chips, which a compile-only topology does not use, so give it harmless
    single-host values. On a TPU VM (chips attached) nothing is touched."""
    if tpu_attached():
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


def ordered(devices, config) -> list:
    """Devices in the order ``mesh_utils`` gives for the config's mesh on this topology (axes
    laid along the physical torus), so that ``train.build`` reshapes them into a sensible mesh."""
    shape = sharding.mesh_shape(config.mesh, len(devices))
    try:
        return list(mesh_utils.create_device_mesh(shape, devices).flat)
    except (ValueError, NotImplementedError, AssertionError):
        return list(devices)


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
