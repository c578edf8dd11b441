"""Evaluation: model-agnostic metrics (``metrics``), class names / prompt templates
(``templates``) and plots (``plots``). Submodules are imported explicitly, e.g.
``from clip_jax.evaluate.metrics import zeroshot_metrics``, so importing the package stays
cheap (no JAX / matplotlib import)."""
