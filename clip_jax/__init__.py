"""clip_jax: contrastive language-image pretraining in JAX/Flax, from one CPU to TPU pods.

::

    import clip_jax
    clip_jax.list_models()
    model, params, preprocess, tokenizer = clip_jax.create_model("ViT-B-32")  # or a path
    loss = clip_jax.losses.clip_loss(img, txt, scale, axis_name=None)
    clip_jax.load(path).zero_shot(images, ["cat", "dog"])
    clip_jax.train.train(config, workdir)

Attributes resolve on first use (PEP 562), so ``import clip_jax.data.pipeline`` in a data worker
does not import JAX and Flax.
"""

import importlib

__version__ = "0.1.0"

_API = {"load": "inference", "create_model": "inference", "list_models": "inference",
        "InferenceModel": "inference"}
_SUBMODULES = ("bundle", "checkpoint", "config", "evaluate", "export", "inference", "losses",
               "models", "params", "sharding", "sources", "train")

__all__ = ["__version__", *_API, *_SUBMODULES]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"clip_jax.{_API[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"clip_jax.{name}")
    raise AttributeError(f"module 'clip_jax' has no attribute {name!r}")
