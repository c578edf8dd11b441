"""The large-batch recipes of ``configs/``: the platforms they are written for and the shared
shape of a LAION-400M-style run (each recipe file names its model, batch, shards and tokenizer)."""

from __future__ import annotations

from clip_jax.config import base_config

PLATFORMS = {
    # name: (devices, hosts, GiB of accelerator memory per device)
    "v4-64": (32, 8, 32),  # 32 TPU v4 chips (64 TensorCores, one JAX device per chip)
    "v5e-256": (256, 64, 16),  # 256 TPU v5e chips
    "gpu-8x8": (64, 8, 80),  # 8 nodes x 8 H100-80GB
}


LAION400M_SAMPLES = 400_000_000  # samples per epoch of LAION-400M


def laion_recipe(model: str, batch_size: int, platform: str, mesh: tuple[int, int, int],
                 accum_steps: int, *, train: str, tokenizer: str, epochs: int = 32,
                 samples_per_epoch: int = LAION400M_SAMPLES):
    """The shared shape of the LAION-400M-style recipes in ``configs/``; each recipe names its
    shards (``train``, a shard spec) and its ``tokenizer`` (a ``data.tokenizer`` spec)."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; choose one of {sorted(PLATFORMS)}")
    c = base_config()
    c.model.name = model
    c.model.dtype = "bfloat16"
    c.model.remat = "full"  # fits every recipe; python -m clip_jax.plan --remat auto may beat it
    c.model.scan = True
    c.batch_size = batch_size
    c.accum_steps = accum_steps
    c.total_steps = epochs * samples_per_epoch // batch_size
    c.log_every_steps = 100
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 2000
    c.optimizer.weight_decay = 0.2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.data.source = "webdataset"
    c.data.train = train
    c.data.tokenizer = tokenizer
    c.data.resampled = True
    c.data.workers = 16
    c.data.shuffle_buffer = 5000
    c.checkpoint.every_steps = 2000
    c.checkpoint.keep = 3
    c.checkpoint.keep_period = 50_000
    c.eval.every_steps = 5000
    return c
