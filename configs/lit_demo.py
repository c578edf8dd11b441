"""LiT (locked-image tuning, Zhai et al. 2022) on the demo corpus: the image tower of a demo run,
frozen; a fresh text tower trained against it; zero-shot on the demo's held-out pairs.

    python -m clip_jax.train --config configs/demo.py --workdir workdirs/demo      # first
    python -m clip_jax.train --config configs/lit_demo.py --workdir workdirs/lit_demo \\
        [--config.checkpoint.init_from=ANY_MODEL_SOURCE]

``checkpoint.init_from`` is any model source of the demo's architecture (a workdir, a bundle);
``checkpoint.init_from_params`` takes only its ``visual/`` parameters, the rest (text tower,
logit scale) start fresh, and ``optimizer.frozen`` locks the image tower: no optimizer state, no
backward pass through it. Everything else (model, corpus, tokenizer fitted on the captions,
evaluations) is the demo's.
"""

import importlib.util
import os

_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")


def _demo_config():
    spec = importlib.util.spec_from_file_location("clip_jax_demo_config", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _demo_config()
    c.checkpoint.init_from = "workdirs/demo"
    c.checkpoint.init_from_params = "^visual/"
    c.optimizer.frozen = ("image",)
    c.total_steps = 400
    c.optimizer.warmup_steps = 50
    c.eval.every_steps = 200
    c.checkpoint.every_steps = 200
    return c
