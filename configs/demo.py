"""The embedded default: a small CLIP trained on the offline demo corpus on a CPU.

    python -m clip_jax.train --config configs/demo.py --workdir workdirs/demo

Generates the demo corpus (``clip_jax.data.demo``: coloured, patterned shapes with varied
captions; 12 colour x shape pairs never seen in training) into ``data/demo`` if it is not there,
fits a byte-level BPE tokenizer on its captions, trains, then evaluates zero-shot
classification of the 12 held-out pairs (chance 1/12, 0.5 for a model that knows only colour or
only shape), retrieval and k-shot probes on them (logged as ``eval/zeroshot/acc1``,
``eval/retrieval/...``, ``eval/fewshot/...``). Point ``--config.data.train`` at any other
shards (and ``--config.eval.*`` at your eval sets) to train on your own corpus; more eval sets,
each at its own cadence, are named entries of ``c.evals`` (README "Evaluation"), e.g.
``c.evals.cifar10 = dict(kind="zeroshot", dataset="tfds:cifar10", data_dir=D, every_steps=200)``.
"""

from clip_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "small-demo"  # 64px images in 16px patches, width 192/128, 4 layers each
    c.batch_size = 128
    c.total_steps = 800
    c.log_every_steps = 50
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.1
    c.data.source = "webdataset"
    c.data.demo = "data/demo"
    c.data.demo_train_samples = 30000
    c.data.tokenizer = "train"
    c.data.workers = 1
    c.data.shuffle_buffer = 2000
    c.checkpoint.every_steps = 200
    c.eval.every_steps = 400
    c.eval.batch_size = 240
    return c
