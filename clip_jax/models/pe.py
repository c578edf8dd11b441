"""Meta's Perception Encoder image tower (``PE-Core-*``) as open_clip builds it through timm
(``timm_model_name: vit_pe_core_*``, ``timm_pool: map``, ``timm_proj: null``): timm's ``Eva``
with 2D rotary position embeddings on top of the absolute ones.

``patch embedding (no bias) -> [class token] + position embedding -> ln_pre (timm's
norm_pre) -> blocks (pre-LN, 2D RoPE on the patch tokens' queries and keys, GELU MLP) ->
ln_post (timm's norm, every token) -> MAP pool (timm's AttentionPoolLatent: attn_pooler_heads
heads, MLP 4 x width) -> head (Linear width -> embed_dim, with bias)``.

RoPE as timm's ``RotaryEmbeddingCat`` (``in_pixels=False``, ``grid_indexing='xy'``, interleaved
pairs, temperature 10000): each head's dimension is split in four quarters of
``head_dim / 4`` frequencies ``10000 ** (-i / (head_dim / 4))``, the x (column) position on the
first half's pairs, the y (row) position on the second's; positions are the patch grid's
indices plus an offset of 1 with a class token (0 without, as PE-Core-bigG), the class token is
not rotated. At another grid (``any_size``: self-distillation's views) the positions are
rescaled to the model's own grid (``image_size / patch_size``, timm's ``ref_feat_shape``), as
timm does, and the absolute table is resized bilinearly (as the ViT's). Parameters::

    visual/{conv1, class_embedding, positional_embedding, ln_pre, transformer, ln_post,
            map_head, head/{kernel, bias}}

with the ViT's block names (``transformer/resblocks[_i]/{ln_1, attn/{kernel_in, bias_in,
kernel_out, bias_out}, ln_2, mlp/{c_fc, c_proj}}``) and MAP head
(:class:`~clip_jax.models.heads.MAPHead`). The text tower is open_clip's own transformer (the
``transformer`` text family). The ``pe`` family (:mod:`clip_jax.models.family`): switches,
FLOPs, layer ids, presets (open_clip's ``PE-Core-*.json``) and open_clip JSON are here; the
key maps :mod:`clip_jax.interop.keymap_pe`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import clip_jax.models.family as families
import clip_jax.models.openclip_config as oc
import clip_jax.models.vit as vit
from clip_jax import remat as remat_lib
from clip_jax.layers import MLP, Attention, LayerNorm, PatchEmbed, logical_init
from clip_jax.models.config import ModelConfig, TextConfig, VisionConfig
from clip_jax.models.heads import MAPHead

ROPE_TEMPERATURE = 10000.0


def rope_table(grid: tuple[int, int], head_dim: int, ref: tuple[int, int],
               offset: float) -> np.ndarray:
    """timm's ``RotaryEmbeddingCat.get_embed`` for PE: (H * W, 2 * head_dim) float32, sin then
    cos, rows row-major over the (H, W) patch grid. Positions ``(index + offset) / size *
    ref_size`` per axis (float32, in timm's order of operations), x on the first ``head_dim /
    2`` channels, y on the rest, each frequency on a pair of adjacent channels."""
    nb = head_dim // 4
    f32 = np.float32
    bands = f32(1.0) / np.power(f32(ROPE_TEMPERATURE), np.arange(nb, dtype=f32) / f32(nb))
    (h, w), (rh, rw) = grid, ref
    tx = (np.arange(w, dtype=f32) + f32(offset)) / f32(w) * f32(rw)
    ty = (np.arange(h, dtype=f32) + f32(offset)) / f32(h) * f32(rh)
    gx, gy = np.meshgrid(tx, ty, indexing="xy")  # (H, W) each
    pos = np.stack([gx, gy], -1)[..., None] * bands  # (H, W, 2, nb)
    sin = np.repeat(np.sin(pos).reshape(h * w, 2 * nb), 2, axis=-1)
    cos = np.repeat(np.cos(pos).reshape(h * w, 2 * nb), 2, axis=-1)
    return np.concatenate([sin, cos], -1).astype(f32)


def apply_rope(x, table, prefix: int):
    """Rotate the tokens after the ``prefix`` ones of x (B, H, T, head_dim) by ``table``
    (T - prefix, 2 * head_dim): ``x cos + rot(x) sin`` with ``rot`` taking each pair (a, b) to
    (-b, a) (timm's ``apply_rot_embed``), in float32, returned in x's dtype."""
    sin, cos = jnp.split(jnp.asarray(table), 2, axis=-1)
    xp = x[:, :, prefix:].astype(jnp.float32)
    rot = jnp.stack([-xp[..., 1::2], xp[..., ::2]], -1).reshape(xp.shape)
    y = (xp * cos + rot * sin).astype(x.dtype)
    return jnp.concatenate([x[:, :, :prefix], y], axis=2) if prefix else y


class RopeBlock(nn.Module):
    """timm's ``EvaBlock`` as PE has it: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``."""

    heads: int
    mlp_dim: int
    layers: int
    prefix: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rope):
        d = x.shape[-1]
        proj_std = d**-0.5 * (2 * self.layers) ** -0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        y = LayerNorm(self.ln_eps, name="ln_1", **kw)(x)
        rotate = functools.partial(apply_rope, table=rope, prefix=self.prefix)
        x = x + Attention(self.heads, proj_std, implementation=self.attention, name="attn",
                          **kw)(y, rope=rotate)
        y = LayerNorm(self.ln_eps, name="ln_2", **kw)(x)
        return x + MLP(self.mlp_dim, self.act, proj_std, name="mlp", **kw)(y), None


class RopeTransformer(nn.Module):
    """The block stack (``resblocks_{i}``, or scanned ``resblocks``), remat as the ViT's."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, rope):
        c, v = self.cfg, self.cfg.vision
        block = remat_lib.remat(RopeBlock, c.remat, c.scan)
        kw = dict(heads=v.heads, mlp_dim=v.mlp_dim, layers=v.layers, prefix=int(v.class_token),
                  act=v.act or c.act, ln_eps=c.ln_eps, attention=c.attention,
                  dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        if c.scan:
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=nn.broadcast, length=v.layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            return stack(name="resblocks", **kw)(x, rope)[0]
        for i in range(v.layers):
            x, _ = block(name=f"resblocks_{i}", **kw)(x, rope)
        return x


class PerceptionEncoder(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False, tokens: bool = False,
                 any_size: bool = False, patch_mask=None, mask_token=None):
        """images: (B, H, W, 3) float, normalised (PE: mean = std = 0.5). Returns (B,
        embed_dim), unnormalised; ``tokens``, ``any_size``, ``patch_mask``: as the ViT's
        (:class:`~clip_jax.models.vit.VisionTransformer`)."""
        c, v = self.cfg, self.cfg.vision
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        if images.shape[1:3] != (v.image_size, v.image_size) and not any_size:
            raise ValueError(f"images of size {images.shape[1:3]} given to a PE tower built for "
                             f"{v.image_size}x{v.image_size}")
        scale = v.width**-0.5
        x = PatchEmbed(v.patch_size, v.width, dtype, pdtype, name="conv1")(images)
        b, grid = x.shape[0], v.image_size // v.patch_size
        shape = (images.shape[1] // v.patch_size, images.shape[2] // v.patch_size)
        if patch_mask is not None:
            x = jnp.where(patch_mask[..., None], mask_token.astype(dtype), x)
        prefix = int(v.class_token)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(scale), (None, "embed")),
                         (grid * grid + prefix, v.width), pdtype)
        if shape != (grid, grid):
            pos = vit.resize_positions(pos, prefix, grid, shape)
        if v.class_token:
            cls = self.param("class_embedding",
                             logical_init(nn.initializers.normal(scale), ("embed",)),
                             (v.width,), pdtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, v.width)), x], 1)
        x = LayerNorm(c.ln_eps, name="ln_pre", **kw)(x + pos.astype(dtype))
        rope = rope_table(shape, v.width // v.heads, (grid, grid), float(prefix))
        x = RopeTransformer(c, name="transformer")(x, rope)
        seq = LayerNorm(c.ln_eps, name="ln_post", **kw)(x)
        x = MAPHead(v.attn_pooler_heads, 4 * v.width, v.act or c.act, c.ln_eps, c.attention,
                    name="map_head", **kw)(seq)
        x = nn.Dense(c.embed_dim, name="head", **kw,
                     kernel_init=logical_init(nn.initializers.normal(scale), ("embed", "proj")),
                     bias_init=logical_init(nn.initializers.zeros, ("proj",)))(x)
        return (x, seq) if tokens else x


# --- the family: switches, FLOPs, layer ids, presets, open_clip JSON --------------------------

# What every PE-Core tower has (timm's vit_pe_core_*: norm_pre, patch embedding without bias,
# MAP pooling, a head; no patch dropout or CoCa pooler here).
FIXED = {"ln_pre": True, "patch_bias": False, "pool": "map", "proj": True,
         "attn_pooler_queries": 0, "patch_dropout": 0.0}


def check(v: VisionConfig) -> None:
    vit.check(v)
    for key, want in FIXED.items():
        if getattr(v, key) != want:
            raise ValueError(f"model.vision.{key}={getattr(v, key)!r}: the Perception Encoder "
                             f"(family 'pe') has {key}={want!r}")
    if (v.width // v.heads) % 4:
        raise ValueError(f"model.vision.heads={v.heads}: the head width {v.width // v.heads} "
                         "must be a multiple of 4 for the 2D RoPE (family 'pe')")
    if v.width % v.attn_pooler_heads:
        raise ValueError(f"model.vision.attn_pooler_heads={v.attn_pooler_heads}: must divide "
                         f"model.vision.width={v.width} (the MAP pool's heads, family 'pe')")


def check_model(cfg: ModelConfig) -> None:
    if cfg.qk_norm or cfg.ls_init_value is not None:
        raise ValueError("model.qk_norm / ls_init_value: the Perception Encoder (family 'pe') "
                         "has neither")


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Per sample: the patch embedding, the blocks, the MAP pool (its probe's q, the k|v of
    every token, attention, output projection and MLP) and the head."""
    v, d = cfg.vision, cfg.vision.width
    patches = (v.image_size // v.patch_size) ** 2
    tokens = patches + int(v.class_token)
    block, redo = families.block_flops(tokens, d, v.mlp_dim, remat)
    pool = 2 * d * d + 4 * tokens * d * d + 4 * tokens * d + 2 * d * d + 16 * d * d
    forward = (2 * patches * (v.patch_size**2 * 3) * d + v.layers * block + pool
               + 2 * d * cfg.embed_dim)
    return float(forward), float(v.layers * redo)


def depth(cfg: ModelConfig) -> int:
    return cfg.vision.layers


def layer_id(cfg: ModelConfig, path: str, shape: tuple):
    """timm's Eva grouping: the embeddings and norm_pre 0, block i i + 1, the final norm L,
    the MAP pool and head L + 1."""
    return families.transformer_layer_id(
        path, shape, cfg.vision.layers, ("conv1", "class_embedding", "positional_embedding",
                                         "ln_pre"), ("ln_post",), ("map_head", "head"))


# timm's PE-Core trunks (timm 1.0 models/eva.py vit_pe_core_*): patch, width, depth, heads,
# mlp_dim (int(width * mlp_ratio)), resolution, class token (its RoPE grid offset 1, else 0).
PE_TRUNKS = {
    "vit_pe_core_tiny_patch16_384": (16, 192, 12, 3, 768, 384, True),
    "vit_pe_core_small_patch16_384": (16, 384, 12, 6, 1536, 384, True),
    "vit_pe_core_base_patch16_224": (16, 768, 12, 12, 3072, 224, True),
    "vit_pe_core_large_patch14_336": (14, 1024, 24, 16, 4096, 336, True),
    "vit_pe_core_gigantic_patch14_448": (14, 1536, 50, 16, 8960, 448, False),
}


def pe_config(trunk: str, embed: int, ctx: int, tw: int, th: int, tl: int = 24,
              vocab: int = 49408) -> ModelConfig:
    """open_clip's PE-Core CLIP: timm trunk ``trunk`` (a key of :data:`PE_TRUNKS`), open_clip's
    causal text transformer (argmax pooling, no projection bias), LayerNorm eps 1e-5."""
    p, w, layers, heads, mlp, size, cls = PE_TRUNKS[trunk]
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(size, p, w, layers, heads, mlp, class_token=cls, pool="map",
                            family="pe"),
        text=TextConfig(ctx, vocab, tw, tl, th, 4 * tw))


_OC_KEYS = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
            "output_tokens"}


def from_open_clip(vc: Mapping, quick_gelu: bool) -> tuple[VisionConfig, str, float] | None:
    """open_clip's TimmModel around timm's ``vit_pe_core_*`` (``timm_pool: map``, no
    ``timm_proj``: timm's own head projects to embed_dim); open_clip builds the trunk at its
    own resolution, so ``image_size`` must be it. The trunk's GELU is its own (quick_gelu
    reaches only the text tower)."""
    name = vc.get("timm_model_name")
    if not name or not str(name).startswith("vit_pe_"):
        return None
    oc.check_keys("vision_cfg", vc, _OC_KEYS)
    if name not in PE_TRUNKS:
        raise ValueError(f"open_clip vision_cfg.timm_model_name={name!r}: clip_jax knows the "
                         f"PE-Core trunks {', '.join(PE_TRUNKS)}")
    p, w, layers, heads, mlp, size, cls = PE_TRUNKS[name]
    if oc.square(vc.get("image_size", size)) != size:
        raise ValueError(f"open_clip vision_cfg.image_size={vc['image_size']} differs from the "
                         f"{size}px of timm's {name} (which open_clip builds at {size}px)")
    for key, want in (("timm_pool", "map"), ("timm_proj", None)):
        if vc.get(key) != want:
            raise ValueError(f"open_clip vision_cfg.{key}={vc.get(key)!r} is not supported by "
                             f"clip_jax with a PE-Core trunk (only {want!r})")
    vision = VisionConfig(size, p, w, layers, heads, mlp, class_token=cls, pool="map",
                          family="pe")
    return vision, "gelu", 1e-5


def to_open_clip(cfg: ModelConfig) -> tuple[dict, None]:
    v = cfg.vision
    shape = (v.patch_size, v.width, v.layers, v.heads, v.mlp_dim, v.image_size, v.class_token)
    name = next((n for n, t in PE_TRUNKS.items() if t == shape), None)
    if name is None:
        raise ValueError(f"model.vision (patch, width, layers, heads, mlp_dim, image_size, "
                         f"class_token {shape}) is no timm PE-Core trunk: open_clip cannot "
                         "build this image tower")
    if (v.act or cfg.act) != "gelu" or cfg.ln_eps != 1e-5 or v.attn_pooler_heads != 8:
        raise ValueError("model.act / ln_eps / vision.attn_pooler_heads: timm's PE-Core trunks "
                         "have GELU, LayerNorm eps 1e-5 and an 8-head MAP pool")
    return {"image_size": v.image_size, "timm_model_name": name, "timm_model_pretrained": False,
            "timm_pool": "map", "timm_proj": None}, None


FAMILY = families.register(families.Family(
    "pe", PerceptionEncoder, check, check_model=check_model, flops=flops, depth=depth,
    layer_id=layer_id, scanned=True, tokens=True, keymap="clip_jax.interop.keymap_pe",
    from_open_clip=from_open_clip, to_open_clip=to_open_clip))
families.add_presets("pe", {  # open_clip's model_configs/PE-Core-*.json
    "PE-Core-T-16-384": pe_config("vit_pe_core_tiny_patch16_384", 512, 32, 512, 8, 12),
    "PE-Core-S-16-384": pe_config("vit_pe_core_small_patch16_384", 512, 32, 512, 8, 12),
    "PE-Core-B-16": pe_config("vit_pe_core_base_patch16_224", 1024, 32, 1024, 16),
    "PE-Core-L-14-336": pe_config("vit_pe_core_large_patch14_336", 1024, 32, 1024, 16),
    "PE-Core-bigG-14-448": pe_config("vit_pe_core_gigantic_patch14_448", 1280, 72, 1280, 20),
})
