"""A training loop of your own, built from clip_jax's parts (what ``clip_jax.train`` runs
inside, minus checkpoints, evaluation and logging):

* ``train.build(config)``: the mesh, the model, the optimizer and every sharding;
* ``train.init_state(setup)``: parameters and optimizer state, created sharded on the mesh;
* ``train.make_train_step(setup)``: the jitted step (forward, all-gathered contrastive loss,
  backward, AdamW update) that takes global batches;
* ``input_pipeline.make_data`` / ``to_global``: this process's rows, placed as a global batch.

    python examples/custom_loop.py --steps 30

Swap any part: your own data iterator (a dict of ``image`` NHWC and ``text`` token ids per
step), your own schedule for stopping, your own logging.
"""

from __future__ import annotations

import argparse

from clip_jax import config as config_lib
from clip_jax import input_pipeline, train


def run(steps: int = 30, batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train the tiny preset on synthetic pairs; returns the loss of every step."""
    config = config_lib.base_config()  # the tiny preset on synthetic data
    config.batch_size, config.total_steps, config.seed = batch_size, steps, seed
    config.optimizer.lr, config.optimizer.warmup_steps = lr, 2
    config.data.synthetic_classes = 64

    setup = train.build(config)  # every device this process sees, in one data-parallel mesh
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    data = input_pipeline.make_data(config, setup.model_cfg, setup.local_batch_size)
    losses = []
    for i in range(steps):
        batch = input_pipeline.to_global(setup.batch_sharding, next(data))
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if i % 10 == 0 or i == steps - 1:
            print(f"step {i + 1:4d}  loss {losses[-1]:.4f}  "
                  f"temperature {1 / float(metrics['logit_scale']):.4f}")
    return losses


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    run(args.steps, args.batch_size)
