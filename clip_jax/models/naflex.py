"""The NaFlex image tower: SigLIP 2's ViT that sees each image at its own aspect ratio and
resolution (transformers' ``Siglip2VisionModel``, big_vision's NaFlex ViT).

Input: a dict of ``patches`` (B, N, p*p*3) (each patch's pixels in (row, column, channel)
order, patches row-major over the image's grid: :func:`patchify`), ``mask`` (B, N) (True for
the image's patches, False for the padding after them) and ``shapes`` (B, 2), each image's
patch grid (rows, cols) with rows * cols <= N. Square (or any) NHWC images (B, H, W, 3) run too,
patchified here with every patch valid, so a NaFlex model can be evaluated at a fixed
resolution.

``linear patch embedding + bias -> + position table resized to (rows, cols) -> [ln_pre] ->
blocks (padded keys masked) -> ln_post -> MAP head (padded keys masked) | masked mean ->
[proj]``. The parameters are those of the SigLIP :class:`~clip_jax.models.vit.VisionTransformer`
(``conv1/kernel`` (p, p, 3, D) is the linear embedding's matrix viewed as a convolution kernel,
``positional_embedding`` (G*G, D) a G x G grid, G = image_size / patch_size), so a SigLIP
checkpoint initialises a NaFlex tower as it is.

The ``naflex`` family (:mod:`clip_jax.models.family`): the ViT's switches, FLOPs (at the
position table's size), layer ids and open_clip JSON (the timm SigLIP trunk) with its own
checks; presets ``*-SigLIP2-NaFlex``; key maps :mod:`clip_jax.interop.keymap_siglip2`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import clip_jax.models.family as families
import clip_jax.models.vit as vit
from clip_jax.layers import LayerNorm, Transformer, logical_init
from clip_jax.models.config import ModelConfig, VisionConfig
from clip_jax.models.heads import MAPHead


def patchify(images, patch: int):
    """(B, H, W, C) -> (B, (H/p)*(W/p), p*p*C): patches row-major over the grid, each patch's
    pixels in (row, column, channel) order (transformers' ``convert_image_to_patches``)."""
    b, h, w, c = images.shape
    gh, gw = h // patch, w // patch
    x = images[:, :gh * patch, :gw * patch].reshape(b, gh, patch, gw, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, patch * patch * c)


def resize_weights(grid: int, shapes, length: int):
    """The (B, length, grid) row and column weights that resize a ``grid`` x ``grid`` table to
    each image's (rows, cols) = ``shapes`` (B, 2) and lay it out row-major over ``length``
    positions (padding positions take position (0, 0)): ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=True)``'s triangle filter, widened by the scale when
    shrinking, each output's weights normalised to sum 1 (transformers'
    ``Siglip2VisionEmbeddings.resize_positional_embeddings``). Static shapes, any ``shapes``."""
    sizes = shapes.astype(jnp.float32)[:, None, :]  # (B, 1, 2)
    pos = jnp.arange(length, dtype=jnp.int32)[None, :]
    cols = jnp.maximum(shapes[:, 1:2].astype(jnp.int32), 1)
    rows = pos // cols
    index = jnp.stack([rows, pos - rows * cols], -1).astype(jnp.float32)  # (B, L, 2)
    index = index * (pos < shapes[:, :1] * cols)[..., None]
    scale = grid / jnp.maximum(sizes, 1.0)
    support = jnp.maximum(scale, 1.0)
    center = (index + 0.5) * scale - 0.5
    src = jnp.arange(grid, dtype=jnp.float32)
    w = jnp.maximum(1 - jnp.abs(src - center[..., None]) / support[..., None], 0.0)
    w = w / w.sum(-1, keepdims=True)
    return w[..., 0, :], w[..., 1, :]


def resize_positions(table, shapes, length: int):
    """A (G*G, D) position table resized to each image's grid: (B, length, D), float32."""
    grid = round(table.shape[0] ** 0.5)
    wr, wc = resize_weights(grid, shapes, length)
    w = (wr[..., :, None] * wc[..., None, :]).reshape(*wr.shape[:2], grid * grid)
    return jnp.dot(w, table.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


def naflex_inputs(images, patch: int):
    """``(patches, mask, shapes)`` of a NaFlex dict, or of NHWC images (all patches valid)."""
    if isinstance(images, dict):
        missing = {"patches", "mask", "shapes"} - set(images)
        if missing:
            raise ValueError(f"a NaFlex input needs patches, mask and shapes; missing "
                             f"{sorted(missing)}")
        return images["patches"], images["mask"].astype(bool), images["shapes"]
    b, h, w, _ = images.shape
    if h < patch or w < patch:
        raise ValueError(f"images of size {h}x{w} are smaller than one {patch}x{patch} patch")
    x = patchify(images, patch)
    shapes = jnp.broadcast_to(jnp.asarray([h // patch, w // patch], jnp.int32), (b, 2))
    return x, jnp.ones(x.shape[:2], bool), shapes


class NaFlexVisionTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        """``images``: a NaFlex dict or NHWC pixels (module docstring). Returns (B, embed_dim),
        unnormalised. ``train`` changes nothing (NaFlex has no patch dropout)."""
        del train
        c, v = self.cfg, self.cfg.vision
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        p = v.patch_size
        patches, mask, shapes = naflex_inputs(images, p)
        if patches.shape[-1] != p * p * 3:
            raise ValueError(f"patches of {patches.shape[-1]} values given to a NaFlex tower of "
                             f"{p}x{p} patches (needs {p * p * 3})")
        scale = v.width**-0.5
        x = PatchLinear(p, v.width, v.patch_bias, name="conv1", **kw)(patches)
        grid = v.image_size // p
        table = self.param("positional_embedding",
                           logical_init(nn.initializers.normal(scale), (None, "embed")),
                           (grid * grid, v.width), pdtype)
        x = x + resize_positions(table, shapes, x.shape[1]).astype(dtype)
        if v.ln_pre:
            x = LayerNorm(c.ln_eps, name="ln_pre", **kw)(x)
        act = v.act or c.act
        x = Transformer(v.layers, v.heads, v.mlp_dim, act, False, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, qk_norm=c.qk_norm,
                        ls_init_value=c.ls_init_value, name="transformer")(x, mask)
        x = LayerNorm(c.ln_eps, name="ln_post", **kw)(x)
        if v.pool == "map":
            x = MAPHead(v.heads, v.mlp_dim, act, c.ln_eps, c.attention, name="map_head",
                        **kw)(x, mask)
        else:  # gap over the image's own patches
            m = mask[..., None].astype(jnp.float32)
            x = ((x.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1)).astype(dtype)
        if not v.proj:
            return x
        proj = self.param("proj", logical_init(nn.initializers.normal(scale), ("embed", "proj")),
                          (v.width, c.embed_dim), pdtype)
        return jnp.dot(x, proj.astype(dtype))


class PatchLinear(nn.Module):
    """The patch embedding of flattened patches: ``patches @ kernel + bias`` with ``kernel``
    stored as the (p, p, 3, width) convolution kernel of :class:`clip_jax.layers.PatchEmbed`
    (same parameter, same result on the same pixels)."""

    patch: int
    width: int
    bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, patches):
        p = self.patch
        kernel = self.param("kernel", logical_init(nn.initializers.lecun_normal(),
                                                   (None, None, None, "embed")),
                            (p, p, 3, self.width), self.param_dtype)
        x = jnp.dot(patches.astype(self.dtype),
                    kernel.astype(self.dtype).reshape(p * p * 3, self.width))
        if self.bias:
            b = self.param("bias", logical_init(nn.initializers.zeros, ("embed",)),
                           (self.width,), self.param_dtype)
            x = x + b.astype(self.dtype)
        return x


def check(v: VisionConfig) -> None:
    vit.check(v)
    if v.class_token or v.patch_dropout or v.image_size % v.patch_size:
        raise ValueError("model.vision.family='naflex' needs class_token=false, "
                         "patch_dropout=0 and an image_size (the position grid) that is a "
                         "multiple of patch_size")


FAMILY = families.register(families.Family(
    "naflex", NaFlexVisionTransformer, check, check_model=vit.check_model, flops=vit.flops,
    depth=vit.depth, layer_id=vit.layer_id, scanned=True,
    keymap="clip_jax.interop.keymap_siglip2", to_open_clip=vit.to_open_clip))
families.add_presets("naflex", {  # SigLIP 2 NaFlex (HF google/siglip2-*-patch16-naflex: 16x16)
    "ViT-B-16-SigLIP2-NaFlex": vit.siglip_config("base", 16, 256, vocab=256000,
                                                 family="naflex"),
    "ViT-SO400M-16-SigLIP2-NaFlex": vit.siglip_config("so400m", 16, 256, vocab=256000,
                                                      family="naflex"),
    "tiny-naflex": families.PRESETS["tiny-siglip"].replace(vision=dict(family="naflex")),
})
