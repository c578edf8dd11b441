"""The ViT image tower (open_clip's ``visual``) and FLIP patch dropout."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.layers import LayerNorm, PatchEmbed, Transformer, logical_init
from clip_jax.models.config import ModelConfig


def drop_patches(x, keep: int, rng):
    """FLIP patch dropout: of x (B, 1 + n, D) keep the CLS token and ``keep`` of the n patch
    tokens of each image, chosen by a random permutation per image (one key per image, split
    from ``rng``; with ``jax_threefry_partitionable`` the draw does not depend on how the batch
    is sharded). Static shapes: (B, 1 + keep, D)."""
    b, n = x.shape[0], x.shape[1] - 1
    idx = jax.vmap(lambda k: jax.random.permutation(k, n)[:keep])(jax.random.split(rng, b))
    patches = jnp.take_along_axis(x[:, 1:], idx[:, :, None], axis=1)
    return jnp.concatenate([x[:, :1], patches], axis=1)


class VisionTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised.
        ``train`` with ``vision.patch_dropout`` > 0 drops patch tokens after the positional
        embedding (the ``patch_dropout`` rng collection); evaluation sees every patch."""
        c, v = self.cfg, self.cfg.vision
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if images.shape[1:3] != (v.image_size, v.image_size):
            raise ValueError(f"images of size {images.shape[1:3]} given to a ViT built for "
                             f"{v.image_size}x{v.image_size}")
        scale = v.width**-0.5
        x = PatchEmbed(v.patch_size, v.width, dtype, pdtype, name="conv1")(images)
        b = x.shape[0]
        cls = self.param("class_embedding", logical_init(nn.initializers.normal(scale), ("embed",)),
                         (v.width,), pdtype)
        n = x.shape[1] + 1
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(scale), (None, "embed")),
                         (n, v.width), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, v.width)), x], axis=1)
        x = x + pos.astype(dtype)
        if train and v.patch_dropout:
            x = drop_patches(x, v.kept_patches(), self.make_rng("patch_dropout"))
        x = LayerNorm(c.ln_eps, name="ln_pre", dtype=dtype, param_dtype=pdtype)(x)
        x = Transformer(v.layers, v.heads, v.mlp_dim, c.act, False, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, name="transformer")(x)
        x = LayerNorm(c.ln_eps, name="ln_post", dtype=dtype, param_dtype=pdtype)(x[:, 0])
        proj = self.param("proj", logical_init(nn.initializers.normal(scale), ("embed", "proj")),
                          (v.width, c.embed_dim), pdtype)
        return jnp.dot(x, proj.astype(dtype))
