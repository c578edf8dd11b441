"""clip_jax: contrastive language-image pretraining in JAX/Flax, from one CPU to TPU pods."""

__version__ = "0.1.0"


def load(path: str):
    """Load an exported bundle directory as a ready-to-use model (see clip_jax.export)."""
    from clip_jax.export import load_bundle

    return load_bundle(path)
