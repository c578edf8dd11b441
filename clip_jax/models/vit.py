"""The ViT image tower (open_clip's ``visual``; with the SigLIP switches big_vision's ``_ViT``)
and FLIP patch dropout.

``patch embedding [+ bias] -> [class token] + position embedding -> [patch dropout] ->
[ln_pre] -> blocks -> [attentional pooler] -> ln_post (every token) -> pool (tok | map | gap) ->
[proj]`` (the attentional pooler: open_clip CoCa's, ``vision.attn_pooler_queries``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.layers import LayerNorm, PatchEmbed, Transformer, logical_init
from clip_jax.models.config import ModelConfig
from clip_jax.models.heads import AttentionalPooler, MAPHead, pool_tokens


def drop_patches(x, keep: int, rng, prefix: int = 1):
    """FLIP patch dropout: of x (B, prefix + n, D) keep the ``prefix`` leading tokens (the class
    token, or none) and ``keep`` of the n patch tokens of each image, chosen by a random
    permutation per image (one key per image, split from ``rng``; with
    ``jax_threefry_partitionable`` the draw does not depend on how the batch is sharded).
    Static shapes: (B, prefix + keep, D)."""
    b, n = x.shape[0], x.shape[1] - prefix
    idx = jax.vmap(lambda k: jax.random.permutation(k, n)[:keep])(jax.random.split(rng, b))
    patches = jnp.take_along_axis(x[:, prefix:], idx[:, :, None], axis=1)
    return jnp.concatenate([x[:, :prefix], patches], axis=1) if prefix else patches


def resize_positions(pos, prefix: int, grid: int, to: tuple[int, int]):
    """(prefix + grid * grid, D) position table -> (prefix + to[0] * to[1], D): the grid part
    resized bilinearly (antialiased when it shrinks), the prefix (class token) kept."""
    d = pos.shape[-1]
    table = pos[prefix:].reshape(grid, grid, d).astype(jnp.float32)
    table = jax.image.resize(table, (*to, d), "bilinear").astype(pos.dtype)
    return jnp.concatenate([pos[:prefix], table.reshape(-1, d)], axis=0)


class VisionTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False, tokens: bool = False,
                 any_size: bool = False, patch_mask=None, mask_token=None):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised.
        ``train`` with ``vision.patch_dropout`` > 0 drops patch tokens after the positional
        embedding (the ``patch_dropout`` rng collection); evaluation sees every patch.
        ``tokens``: returns ``(pooled, tokens)``, ``tokens`` (B, T, width) the un-pooled
        sequence the pool reads (``ln_post`` of every token, the class token included): what a
        captioning decoder cross-attends to. The pooled output is the same either way.
        ``any_size``: images of any size multiple of the patch (self-distillation's views), the
        position grid resized bilinearly (DINO's interpolation); ``patch_mask`` (B, patches)
        bool: those patch embeddings replaced by ``mask_token`` (width,) before the position
        embedding (iBOT / TIPS)."""
        c, v = self.cfg, self.cfg.vision
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        if images.shape[1:3] != (v.image_size, v.image_size) and not any_size:
            raise ValueError(f"images of size {images.shape[1:3]} given to a ViT built for "
                             f"{v.image_size}x{v.image_size}")
        scale = v.width**-0.5
        x = PatchEmbed(v.patch_size, v.width, dtype, pdtype, bias=v.patch_bias,
                       name="conv1")(images)
        b, grid = x.shape[0], v.image_size // v.patch_size
        if patch_mask is not None:
            x = jnp.where(patch_mask[..., None], mask_token.astype(dtype), x)
        prefix = int(v.class_token)
        if v.class_token:
            cls = self.param("class_embedding",
                             logical_init(nn.initializers.normal(scale), ("embed",)),
                             (v.width,), pdtype)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(scale), (None, "embed")),
                         (grid * grid + prefix, v.width), pdtype)
        if x.shape[1] != grid * grid:
            pos = resize_positions(pos, prefix, grid, (images.shape[1] // v.patch_size,
                                                       images.shape[2] // v.patch_size))
        if v.class_token:
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, v.width)), x], 1)
        x = x + pos.astype(dtype)
        if train and v.patch_dropout:
            x = drop_patches(x, v.kept_patches(), self.make_rng("patch_dropout"), prefix)
        if v.ln_pre:
            x = LayerNorm(c.ln_eps, name="ln_pre", **kw)(x)
        act = v.act or c.act
        x = Transformer(v.layers, v.heads, v.mlp_dim, act, False, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, qk_norm=c.qk_norm,
                        ls_init_value=c.ls_init_value, name="transformer")(x)
        ln_post = LayerNorm(c.ln_eps, name="ln_post", **kw)
        width = v.width
        if v.attn_pooler_queries:  # open_clip CoCa: ln_post and pool on the pooler's outputs
            width = c.embed_dim
            x = AttentionalPooler(width, v.attn_pooler_queries, v.attn_pooler_heads, c.ln_eps,
                                  name="attn_pool", **kw)(x)
        seq = ln_post(x) if tokens or v.pool != "tok" else None
        if v.pool == "tok":  # the LN of token 0 alone: the same as LN of every token, then pool
            x = ln_post(x[:, 0])
        elif v.pool == "map":
            x = MAPHead(v.heads, v.mlp_dim, act, c.ln_eps, c.attention, name="map_head",
                        **kw)(seq)
        else:
            x = pool_tokens(seq, v.pool, prefix)
        if v.proj:
            proj = self.param("proj", logical_init(nn.initializers.normal(scale),
                                                   ("embed", "proj")),
                              (width, c.embed_dim), pdtype)
            x = jnp.dot(x, proj.astype(dtype))
        return (x, seq) if tokens else x
