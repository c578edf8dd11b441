"""The ViT image tower (open_clip's ``visual``; with the SigLIP switches big_vision's ``_ViT``)
and FLIP patch dropout.

``patch embedding [+ bias] -> [class token] + position embedding -> [patch dropout] ->
[ln_pre] -> blocks -> [attentional pooler] -> ln_post (every token) -> pool (tok | map | gap) ->
[proj]`` (the attentional pooler: open_clip CoCa's, ``vision.attn_pooler_queries``).

The ``vit`` family (:mod:`clip_jax.models.family`): its switches, FLOPs, layer ids, presets
(open_clip's ViT sizes, the SigLIP / SigLIP 2 ones) and open_clip JSON (its own ViT, timm's
SigLIP trunks) are here; the key maps are :mod:`clip_jax.interop.keymap_clip` (the CLIP-shaped
ViT) and :mod:`clip_jax.interop.keymap_siglip` (the SigLIP-shaped one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

import clip_jax.models.family as families
import clip_jax.models.openclip_config as oc
from clip_jax.layers import LayerNorm, PatchEmbed, Transformer, logical_init
from clip_jax.models.config import (
    ACTS,
    VISION_POOLS,
    ModelConfig,
    TextConfig,
    VisionConfig,
    _choice,
    _flag,
    _heads,
    _positive_int,
)
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


# --- the family: switches, FLOPs, layer ids, presets, open_clip JSON ------------------------


def check(v: VisionConfig) -> None:
    """The ViT's switches (also NaFlex's, which adds its own)."""
    if v.stages is not None:
        raise ValueError(f"model.vision.stages={v.stages!r}: only for "
                         "model.vision.family 'resnet' or 'convnext'")
    p = v.patch_dropout
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"model.vision.patch_dropout={p!r}: must be a number in [0, 1)")
    for name in ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim",
                 "attn_pooler_heads"):
        _positive_int(f"model.vision.{name}", getattr(v, name))
    q = v.attn_pooler_queries
    if isinstance(q, bool) or not isinstance(q, int) or q < 0 or q == 1:
        raise ValueError(f"model.vision.attn_pooler_queries={q!r}: must be 0 (none) or "
                         ">= 2 (one pooled, the rest the tokens)")
    if q and (v.family != "vit" or not v.class_token or not v.proj or v.pool == "map"):
        raise ValueError(f"model.vision.attn_pooler_queries={q!r}: open_clip's attentional "
                         "pooler needs family 'vit' with a class token, pool tok/gap and proj")
    for name in ("class_token", "ln_pre", "patch_bias", "proj"):
        _flag(f"model.vision.{name}", getattr(v, name))
    _choice("model.vision.pool", v.pool, VISION_POOLS)
    if v.act is not None:
        _choice("model.vision.act", v.act, ACTS)
    _heads("model.vision", v.width, v.heads)
    if v.pool == "tok" and not v.class_token:
        raise ValueError("model.vision.pool='tok' pools the class token: needs "
                         "model.vision.class_token=true (or pool 'map' / 'gap')")
    if v.patch_size > v.image_size:
        raise ValueError(f"model.vision.patch_size={v.patch_size}: larger than "
                         f"model.vision.image_size={v.image_size}")


def check_model(cfg: ModelConfig) -> None:
    """Switches across the model: no projection means embed_dim is the tower's width; the
    attentional pooler's heads divide embed_dim."""
    v = cfg.vision
    if not v.proj and cfg.embed_dim != v.width:
        raise ValueError(f"model.embed_dim={cfg.embed_dim}: must equal model.vision.width="
                         f"{v.width} when model.vision.proj=false")
    if v.attn_pooler_queries and cfg.embed_dim % v.attn_pooler_heads:
        raise ValueError(f"model.vision.attn_pooler_heads={v.attn_pooler_heads}: must divide "
                         f"model.embed_dim={cfg.embed_dim}")


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Per sample: the patch embedding, the blocks (``train``: on the patches dropout keeps;
    NaFlex counted at its position table's size) and the projection."""
    v = cfg.vision
    patches = (v.image_size // v.patch_size) ** 2
    tokens = (v.kept_patches() if train else patches) + 1
    block, redo = families.block_flops(tokens, v.width, v.mlp_dim, remat)
    forward = (2 * patches * (v.patch_size**2 * 3) * v.width + v.layers * block
               + 2 * v.width * cfg.embed_dim)
    return float(forward), float(v.layers * redo)


def layer_id(cfg: ModelConfig, path: str, shape: tuple):
    """Patch/position embeddings, class token and ln_pre 0; block i i + 1; ln_post L; the MAP
    head and projection L + 1 (timm's ViT grouping)."""
    return families.transformer_layer_id(
        path, shape, cfg.vision.layers, ("conv1", "class_embedding", "positional_embedding",
                                         "ln_pre"), ("ln_post",), ("proj", "map_head"))


def depth(cfg: ModelConfig) -> int:
    return cfg.vision.layers


def _preset(embed, img, patch, vw, vl, vh, vmlp, tw, tl, th, ctx=77, vocab=49408):
    return ModelConfig(embed_dim=embed, vision=VisionConfig(img, patch, vw, vl, vh, vmlp),
                       text=TextConfig(ctx, vocab, tw, tl, th, 4 * tw))


# SigLIP image trunks (timm's vit_{family}_patch{p}_siglip_{res}): width, depth, heads, mlp_dim.
SIGLIP_TRUNKS = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096),
                 "so400m": (1152, 27, 16, 4304), "giantopt": (1536, 40, 16, 6144)}
# Text towers: width, depth, heads, mlp_dim.
_SIGLIP_TEXT = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096),
                "so400m": (1152, 27, 16, 4304)}


def siglip_config(trunk: str, patch: int, image_size: int, text: str | None = None,
                  ctx: int = 64, vocab: int = 32000, family: str = "vit") -> ModelConfig:
    """A SigLIP ModelConfig: image trunk ``trunk`` (a key of :data:`SIGLIP_TRUNKS`), text tower
    ``text`` (default: the trunk's size); ``family="naflex"``: SigLIP 2 NaFlex, whose position
    table is (image_size / patch)^2."""
    vw, vl, vh, vm = SIGLIP_TRUNKS[trunk]
    tw, tl, th, tm = _SIGLIP_TEXT[text or trunk]
    return ModelConfig(
        embed_dim=vw,
        vision=VisionConfig(image_size, patch, vw, vl, vh, vm, class_token=False, ln_pre=False,
                            patch_bias=True, pool="map", proj=False, family=family),
        text=TextConfig(ctx, vocab, tw, tl, th, tm, causal=False, pool="last", proj_bias=True),
        act="gelu_tanh", ln_eps=1e-6, init_logit_scale=math.log(10.0), init_logit_bias=-10.0,
    )


def _presets() -> dict[str, ModelConfig]:
    """open_clip's sizes (model_configs/*.json; mlp_dim = int(width * mlp_ratio)), small ones
    for tests and demos, and the SigLIP presets (presets.py's docstring)."""
    out = {
        "ViT-B-32": _preset(512, 224, 32, 768, 12, 12, 3072, 512, 12, 8),
        "ViT-B-16": _preset(512, 224, 16, 768, 12, 12, 3072, 512, 12, 8),
        "ViT-L-14": _preset(768, 224, 14, 1024, 24, 16, 4096, 768, 12, 12),
        "ViT-L-14-336": _preset(768, 336, 14, 1024, 24, 16, 4096, 768, 12, 12),
        "ViT-H-14": _preset(1024, 224, 14, 1280, 32, 16, 5120, 1024, 24, 16),
        "ViT-g-14": _preset(1024, 224, 14, 1408, 40, 16, 6144, 1024, 24, 16),
        "ViT-bigG-14": _preset(1280, 224, 14, 1664, 48, 16, 8192, 1280, 32, 20),
        "tiny": _preset(32, 32, 8, 32, 2, 2, 64, 32, 2, 2, ctx=16, vocab=512),
        "small-demo": _preset(128, 64, 16, 192, 4, 3, 768, 128, 4, 2, ctx=32, vocab=4096),
    }
    v1, v2 = 32000, 256000  # SigLIP's SentencePiece vocabulary, SigLIP 2's Gemma vocabulary
    for name, (trunk, patch, size, kw) in {
            "ViT-B-16-SigLIP": ("base", 16, 224, {}),
            "ViT-B-16-SigLIP-256": ("base", 16, 256, {}),
            "ViT-B-16-SigLIP-384": ("base", 16, 384, {}),
            "ViT-B-16-SigLIP-512": ("base", 16, 512, {}),
            "ViT-B-16-SigLIP-i18n-256": ("base", 16, 256, {"vocab": 250000}),
            "ViT-L-16-SigLIP-256": ("large", 16, 256, {}),
            "ViT-L-16-SigLIP-384": ("large", 16, 384, {}),
            "ViT-SO400M-14-SigLIP": ("so400m", 14, 224, {"ctx": 16}),
            "ViT-SO400M-14-SigLIP-378": ("so400m", 14, 378, {}),
            "ViT-SO400M-14-SigLIP-384": ("so400m", 14, 384, {}),
            "ViT-B-16-SigLIP2": ("base", 16, 224, {"vocab": v2}),
            "ViT-B-16-SigLIP2-256": ("base", 16, 256, {"vocab": v2}),
            "ViT-B-16-SigLIP2-384": ("base", 16, 384, {"vocab": v2}),
            "ViT-B-16-SigLIP2-512": ("base", 16, 512, {"vocab": v2}),
            "ViT-B-32-SigLIP2-256": ("base", 32, 256, {"vocab": v2}),
            "ViT-L-16-SigLIP2-256": ("large", 16, 256, {"vocab": v2}),
            "ViT-L-16-SigLIP2-384": ("large", 16, 384, {"vocab": v2}),
            "ViT-L-16-SigLIP2-512": ("large", 16, 512, {"vocab": v2}),
            "ViT-SO400M-14-SigLIP2": ("so400m", 14, 224, {"vocab": v2}),
            "ViT-SO400M-14-SigLIP2-378": ("so400m", 14, 378, {"vocab": v2}),
            "ViT-SO400M-16-SigLIP2-256": ("so400m", 16, 256, {"vocab": v2}),
            "ViT-SO400M-16-SigLIP2-384": ("so400m", 16, 384, {"vocab": v2}),
            "ViT-SO400M-16-SigLIP2-512": ("so400m", 16, 512, {"vocab": v2}),
            "ViT-gopt-16-SigLIP2-256": ("giantopt", 16, 256, {"text": "so400m", "vocab": v2}),
            "ViT-gopt-16-SigLIP2-384": ("giantopt", 16, 384, {"text": "so400m", "vocab": v2}),
    }.items():
        out[name] = siglip_config(trunk, patch, size, **{"vocab": v1, **kw})
    out["tiny-siglip"] = out["tiny"].replace(  # a SigLIP the size of "tiny", for tests
        embed_dim=32, vision=dict(class_token=False, ln_pre=False, patch_bias=True, pool="map",
                                  proj=False),
        text=dict(causal=False, pool="last", proj_bias=True), act="gelu_tanh", ln_eps=1e-6,
        init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    return out


# --- open_clip's JSON: its own ViT (class token) and timm's SigLIP trunks --------------------

_VISION_OK = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
              "patch_dropout", "no_ln_pre", "pool_type", "ls_init_value", "qk_norm",
              "act_kwargs", "norm_kwargs", "output_tokens", "final_ln_after_pool",
              "attentional_pool", "attn_pooler_queries", "attn_pooler_heads"}
_TIMM_OK = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
            "patch_dropout", "output_tokens"}
_TIMM_NAME = re.compile(r"^vit_.*_siglip")
_TIMM_SIGLIP = re.compile(r"^vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(\d+)$")
# timm's SigLIP trunks (timm 1.0, models/vision_transformer.py): (family, patch, resolution) ->
# GELU ("gelu_tanh" where timm builds them with act_layer='gelu_tanh', else the erf "gelu").
# The resolution is the trunk's: open_clip's TimmModel does not pass image_size to timm.
_TIMM_TRUNKS = {
    ("base", 32, 256): "gelu_tanh",
    **{("base", 16, r): "gelu" for r in (224, 256, 384, 512)},
    ("large", 16, 256): "gelu", ("large", 16, 384): "gelu", ("large", 16, 512): "gelu_tanh",
    **{("so400m", 14, r): "gelu" for r in (224, 378, 384)},
    **{("so400m", 16, r): "gelu_tanh" for r in (256, 384, 512)},
    ("giantopt", 16, 256): "gelu_tanh", ("giantopt", 16, 384): "gelu_tanh",
}


def _timm_vision(vc: Mapping) -> tuple[VisionConfig, str, float]:
    oc.check_keys("vision_cfg", vc, _TIMM_OK)
    name = vc["timm_model_name"]
    m = _TIMM_SIGLIP.match(name)
    trunk = (m[1], int(m[2]), int(m[3])) if m else None
    if trunk not in _TIMM_TRUNKS:
        raise ValueError(f"open_clip vision_cfg.timm_model_name={name!r} is not supported by "
                         "clip_jax (only timm's SigLIP MAP trunks vit_*_patch*_siglip_<res>)")
    size = oc.square(vc.get("image_size", trunk[2]))
    if size != trunk[2]:
        raise ValueError(f"open_clip vision_cfg.image_size={size} differs from the {trunk[2]}px "
                         f"of timm's {name} (which open_clip builds at {trunk[2]}px)")
    for key, want in (("timm_pool", "map"), ("timm_proj", "none")):
        if vc.get(key) != want:
            raise ValueError(f"open_clip vision_cfg.{key}={vc.get(key)!r} is not supported by "
                             f"clip_jax with a timm SigLIP trunk (only {want!r})")
    width, layers, heads, mlp = SIGLIP_TRUNKS[m[1]]
    vision = VisionConfig(size, trunk[1], width, layers, heads, mlp,
                          float(vc.get("patch_dropout", 0.0)), class_token=False, ln_pre=False,
                          patch_bias=True, pool="map", proj=False)
    return vision, _TIMM_TRUNKS[trunk], 1e-6


def from_open_clip(vc: Mapping, quick_gelu: bool) -> tuple[VisionConfig, str, float] | None:
    """open_clip's own ViT (no timm trunk, ``layers`` a number) or a timm ``vit_*`` trunk."""
    timm = vc.get("timm_model_name")
    if timm:
        # timm's SigLIP ViTs (other families read other timm trunks: PE's vit_pe_*)
        return _timm_vision(vc) if _TIMM_NAME.match(str(timm)) else None
    if isinstance(vc.get("layers"), list | tuple):
        return None
    oc.check_keys("vision_cfg", vc, _VISION_OK)
    pool = {"tok": "tok", "avg": "gap"}.get(vc.get("pool_type", "tok"))
    if pool is None:
        raise ValueError(f"open_clip vision_cfg.pool_type={vc['pool_type']!r} is not supported "
                         "by clip_jax (tok, avg)")
    if vc.get("final_ln_after_pool") and pool != "tok":  # for tok the same function
        raise ValueError("open_clip vision_cfg.final_ln_after_pool=True with pool_type 'avg' "
                         "is not supported by clip_jax")
    width, head_width = vc.get("width", 768), vc.get("head_width", 64)
    if width % head_width:
        raise ValueError(f"vision width {width} is not a multiple of head_width {head_width}")
    vision = VisionConfig(
        image_size=oc.square(vc.get("image_size", 224)), patch_size=vc.get("patch_size", 16),
        width=width, layers=vc.get("layers", 12), heads=width // head_width,
        mlp_dim=int(width * vc.get("mlp_ratio", 4.0)),
        patch_dropout=float(vc.get("patch_dropout", 0.0)),
        ln_pre=not vc.get("no_ln_pre", False), pool=pool,
        attn_pooler_queries=vc.get("attn_pooler_queries", 256) if vc.get("attentional_pool")
        else 0, attn_pooler_heads=vc.get("attn_pooler_heads", 8))
    return vision, oc.act("vision_cfg", vc, quick_gelu), oc.eps("vision_cfg", vc, 1e-5)


def _timm_name(cfg: ModelConfig) -> str:
    v = cfg.vision
    sizes = (v.width, v.layers, v.heads, v.mlp_dim)
    family = next((f for f, s in SIGLIP_TRUNKS.items() if s == sizes), None)
    trunk = (family, v.patch_size, v.image_size)
    if trunk not in _TIMM_TRUNKS:
        raise ValueError(f"model.vision (width, layers, heads, mlp_dim {sizes}, patch "
                         f"{v.patch_size}, {v.image_size}px) is no timm SigLIP trunk: open_clip "
                         "cannot build this image tower")
    if (v.act or cfg.act) != _TIMM_TRUNKS[trunk]:
        raise ValueError(f"model.vision.act={v.act or cfg.act!r}: timm's SigLIP trunk "
                         f"vit_{family}_patch{v.patch_size}_siglip_{v.image_size} uses "
                         f"{_TIMM_TRUNKS[trunk]!r} (set model.vision.act to export to open_clip)")
    return f"vit_{family}_patch{v.patch_size}_siglip_{v.image_size}"


def to_open_clip(cfg: ModelConfig) -> tuple[dict, str | None]:
    """open_clip's ViT, or (every SigLIP switch set) the timm SigLIP trunk, whose activation
    is its own (None: quick_gelu does not reach it)."""
    v = cfg.vision
    siglip = (not v.class_token, not v.ln_pre, v.patch_bias, v.pool == "map", not v.proj)
    if any(siglip) and not all(siglip):
        raise ValueError("model.vision: open_clip builds a class-token ViT without patch bias "
                         "(pool tok/gap, with proj) or the timm SigLIP trunk (no class token, "
                         "no ln_pre, patch bias, pool map, no proj), nothing in between")
    if all(siglip):
        if cfg.qk_norm or cfg.ls_init_value is not None or cfg.ln_eps != 1e-6:
            raise ValueError("model.qk_norm / ls_init_value / ln_eps: open_clip's timm SigLIP "
                             "trunk has no qk_norm, no layer scale and eps 1e-6")
        return {"image_size": v.image_size, "timm_model_name": _timm_name(cfg),
                "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}, None
    vc = {"image_size": v.image_size, "layers": v.layers, "width": v.width,
          "patch_size": v.patch_size, "head_width": v.width // v.heads,
          "mlp_ratio": v.mlp_dim / v.width}
    if not v.ln_pre:
        vc["no_ln_pre"] = True
    if v.pool == "gap":
        vc["pool_type"] = "avg"
    if v.attn_pooler_queries:
        vc.update(attentional_pool=True, attn_pooler_queries=v.attn_pooler_queries,
                  attn_pooler_heads=v.attn_pooler_heads)
    oc.tower_extras(vc, cfg, v.act or cfg.act)
    return vc, v.act or cfg.act


FAMILY = families.register(families.Family(
    "vit", VisionTransformer, check, check_model=check_model, flops=flops, depth=depth,
    layer_id=layer_id, scanned=True, tokens=True,
    keymap=("clip_jax.interop.keymap_clip", "clip_jax.interop.keymap_siglip"),
    from_open_clip=from_open_clip, to_open_clip=to_open_clip))
families.add_presets("vit", _presets())
