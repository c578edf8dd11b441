"""The smallest real config: a tiny CLIP on synthetic data, a few steps in seconds on CPU.

    python -m clip_jax.train --config configs/tiny.py --workdir /tmp/tiny
"""

from clip_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "tiny"
    c.batch_size = 32
    c.total_steps = 20
    c.log_every_steps = 5
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 2
    c.data.source = "synthetic"
    c.data.synthetic_classes = 64
    c.checkpoint.every_steps = 10
    return c
