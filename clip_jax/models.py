"""CLIP towers in Flax Linen: a ViT image encoder and a causal Transformer text encoder.

The parameter tree mirrors open_clip's module names so that export/import is a renaming plus
layout changes, never guesswork::

    visual/{conv1, class_embedding, positional_embedding, ln_pre, transformer, ln_post, proj}
    text/{token_embedding, positional_embedding, transformer, ln_final, text_projection}
    logit_scale [, logit_bias]

``transformer`` holds ``resblocks`` (one stacked block with a leading ``layers`` axis when
``scan=True``) or ``resblocks_0 .. resblocks_{L-1}`` (``scan=False``); each block has
``ln_1, attn/{kernel_in, bias_in, kernel_out, bias_out}, ln_2, mlp/{c_fc, c_proj}``
(``kernel_in`` is open_clip's fused ``in_proj_weight`` as (embed, q|k|v, heads, head_dim)).
Those blocks are in :mod:`clip_jax.layers`; this module holds the configuration (presets,
open_clip model configs), the two towers and :class:`CLIP`.

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``,
``proj``, ``layers``...); :mod:`clip_jax.sharding` maps them to mesh axes.  Models know nothing
of data, meshes or checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.layers import LayerNorm, PatchEmbed, Transformer, logical_init

# CLIP's initial temperature is 1/0.07, its log (2.6592) the initial logit_scale parameter.
INIT_LOGIT_SCALE = math.log(1 / 0.07)

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training (CLS kept)

    def __post_init__(self):
        p = self.patch_dropout
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise ValueError(f"model.vision.patch_dropout={p!r}: must be a number in [0, 1)")

    def kept_patches(self) -> int:
        """Patch tokens kept per image in training: ``round((1 - p) * n)``, at least one."""
        n = (self.image_size // self.patch_size) ** 2
        return n if not self.patch_dropout else max(1, round((1 - self.patch_dropout) * n))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    act: str = "gelu"  # "gelu" (exact erf, as torch.nn.GELU) or "quick_gelu" (OpenAI weights)
    ln_eps: float = 1e-5
    init_logit_scale: float = INIT_LOGIT_SCALE
    init_logit_bias: float | None = None  # a float adds a learned logit_bias (sigmoid loss)
    dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    scan: bool = False  # nn.scan over blocks: compile time independent of depth
    attention: str = "auto"  # "auto" | "xla" | "cudnn": see clip_jax.layers.attention

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown model config keys {sorted(bad)}; known: {sorted(known)}")
        vision = _sub_from_dict(VisionConfig, d.pop("vision", {}) or {}, "vision")
        text = _sub_from_dict(TextConfig, d.pop("text", {}) or {}, "text")
        return cls(vision=vision, text=text, **d)

    def replace(self, **overrides) -> ModelConfig:
        """Override fields; ``vision``/``text`` take dicts of their own fields."""
        overrides = dict(overrides)
        for name, sub in (("vision", self.vision), ("text", self.text)):
            if isinstance(overrides.get(name), Mapping):
                overrides[name] = _sub_from_dict(type(sub), overrides[name], name, base=sub)
        return dataclasses.replace(self, **overrides)


def _sub_from_dict(cls, d: Mapping[str, Any], where: str, base=None):
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown model.{where} keys {sorted(bad)}; known: {sorted(known)}")
    return dataclasses.replace(base, **d) if base is not None else cls(**d)


def _preset(embed, img, patch, vw, vl, vh, vmlp, tw, tl, th, ctx=77, vocab=49408):
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(img, patch, vw, vl, vh, vmlp),
        text=TextConfig(ctx, vocab, tw, tl, th, 4 * tw),
    )


# open_clip sizes (model_configs/*.json). mlp_dim = int(width * mlp_ratio).
PRESETS: dict[str, ModelConfig] = {
    "ViT-B-32": _preset(512, 224, 32, 768, 12, 12, 3072, 512, 12, 8),
    "ViT-B-16": _preset(512, 224, 16, 768, 12, 12, 3072, 512, 12, 8),
    "ViT-L-14": _preset(768, 224, 14, 1024, 24, 16, 4096, 768, 12, 12),
    "ViT-L-14-336": _preset(768, 336, 14, 1024, 24, 16, 4096, 768, 12, 12),
    "ViT-H-14": _preset(1024, 224, 14, 1280, 32, 16, 5120, 1024, 24, 16),
    "ViT-g-14": _preset(1024, 224, 14, 1408, 40, 16, 6144, 1024, 24, 16),
    "ViT-bigG-14": _preset(1280, 224, 14, 1664, 48, 16, 8192, 1280, 32, 20),
    # Small presets for tests, CPU demos and debugging.
    "tiny": _preset(32, 32, 8, 32, 2, 2, 64, 32, 2, 2, ctx=16, vocab=512),
    "small-demo": _preset(128, 64, 16, 192, 4, 3, 768, 128, 4, 2, ctx=32, vocab=4096),
}


def get_model_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


_OPEN_CLIP_VISION_OK = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
                        "patch_dropout"}
_OPEN_CLIP_TEXT_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
# Keys whose default value we support; any other value is a different architecture.
_OPEN_CLIP_DEFAULTS = {
    "ls_init_value": None, "attentional_pool": False,
    "no_ln_pre": False, "pool_type": None, "final_ln_after_pool": False, "output_tokens": False,
    "proj_bias": False, "embed_cls": False, "pad_id": 0, "no_causal_mask": False,
    "hf_model_name": None, "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None,
    "proj_type": "linear", "global_average_pool": False, "input_patchnorm": False,
}
_OPEN_CLIP_POOL = {"vision_cfg": ("tok",), "text_cfg": ("argmax",)}


def from_open_clip_config(cfg: Mapping[str, Any] | str) -> ModelConfig:
    """Build a ModelConfig from an open_clip model-config JSON (dict, JSON text or path).

    Accepts ``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?}`` or the
    ``open_clip_config.json`` wrapper ``{"model_cfg": {...}}``. Architectures we do not
    implement (layer scale, attentional pooling, timm/HF towers...) raise a ValueError naming
    the key, so a checkpoint is never silently loaded into a different network.
    """
    if isinstance(cfg, str):
        text = cfg if cfg.lstrip().startswith("{") else open(cfg).read()
        cfg = json.loads(text)
    cfg = dict(cfg.get("model_cfg", cfg))
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError(f"open_clip model config lacks {key!r}")
    vc, tc = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    for where, sub, ok in (("vision_cfg", vc, _OPEN_CLIP_VISION_OK),
                           ("text_cfg", tc, _OPEN_CLIP_TEXT_OK)):
        for key, value in sub.items():
            if key in ok:
                continue
            if key == "pool_type" and value in _OPEN_CLIP_POOL[where]:
                continue
            if key in _OPEN_CLIP_DEFAULTS and value == _OPEN_CLIP_DEFAULTS[key]:
                continue
            raise ValueError(f"open_clip {where}.{key}={value!r} is not supported by clip_jax")
    for key in cfg:
        if key not in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype",
                       "custom_text", "init_logit_scale", "init_logit_bias"):
            raise ValueError(f"open_clip model config key {key!r} is not supported by clip_jax")
    image_size = vc.get("image_size", 224)
    if not isinstance(image_size, int):
        if len(set(image_size)) != 1:
            raise ValueError(f"open_clip vision_cfg.image_size={image_size}: must be square")
        image_size = image_size[0]
    vwidth = vc.get("width", 768)
    head_width = vc.get("head_width", 64)
    if vwidth % head_width:
        raise ValueError(f"vision width {vwidth} is not a multiple of head_width {head_width}")
    twidth = tc.get("width", 512)
    init_bias = cfg.get("init_logit_bias")
    return ModelConfig(
        embed_dim=cfg["embed_dim"],
        vision=VisionConfig(
            image_size=image_size,
            patch_size=vc.get("patch_size", 16),
            width=vwidth,
            layers=vc.get("layers", 12),
            heads=vwidth // head_width,
            mlp_dim=int(vwidth * vc.get("mlp_ratio", 4.0)),
            patch_dropout=float(vc.get("patch_dropout", 0.0)),
        ),
        text=TextConfig(
            context_length=tc.get("context_length", 77),
            vocab_size=tc.get("vocab_size", 49408),
            width=twidth,
            layers=tc.get("layers", 12),
            heads=tc.get("heads", 8),
            mlp_dim=int(twidth * tc.get("mlp_ratio", 4.0)),
        ),
        act="quick_gelu" if cfg.get("quick_gelu", False) else "gelu",
        init_logit_scale=cfg.get("init_logit_scale", INIT_LOGIT_SCALE),
        init_logit_bias=None if init_bias is None else float(init_bias),
    )


def to_open_clip_config(cfg: ModelConfig) -> dict:
    """The open_clip model-config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
    v, t = cfg.vision, cfg.text
    out = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size, "layers": v.layers, "width": v.width,
            "patch_size": v.patch_size, "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp_dim / v.width,
        },
        "text_cfg": {
            "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
            "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_dim / t.width,
        },
    }
    if v.patch_dropout:
        out["vision_cfg"]["patch_dropout"] = v.patch_dropout
    if cfg.act == "quick_gelu":
        out["quick_gelu"] = True
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


# ---------------------------------------------------------------------------------------------
# Towers


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


class TextTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, text):
        """text: (B, L) int token ids; features are taken at argmax(ids) (the end token)."""
        c, t = self.cfg, self.cfg.text
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if text.shape[1] > t.context_length:
            raise ValueError(f"text of length {text.shape[1]} exceeds the model's context "
                             f"length {t.context_length}")
        tok = self.param("token_embedding",
                         logical_init(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (t.vocab_size, t.width), pdtype)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(0.01), (None, "embed")),
                         (t.context_length, t.width), pdtype)
        x = jnp.take(tok, text, axis=0).astype(dtype) + pos[: text.shape[1]].astype(dtype)
        x = Transformer(t.layers, t.heads, t.mlp_dim, c.act, True, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, name="transformer")(x)
        x = LayerNorm(c.ln_eps, name="ln_final", dtype=dtype, param_dtype=pdtype)(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(text, axis=-1)]
        proj = self.param("text_projection",
                          logical_init(nn.initializers.normal(t.width**-0.5), ("embed", "proj")),
                          (t.width, c.embed_dim), pdtype)
        return jnp.dot(x, proj.astype(dtype))


def l2_normalize(x, eps: float = 1e-12):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class CLIP(nn.Module):
    """Two towers + learned temperature (and optional bias for the sigmoid loss)."""

    cfg: ModelConfig

    def setup(self):
        self.visual = VisionTransformer(self.cfg)
        self.text = TextTransformer(self.cfg)
        self.logit_scale = self.param(
            "logit_scale", logical_init(nn.initializers.constant(self.cfg.init_logit_scale), ()),
            (), jnp.float32)
        if self.cfg.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", logical_init(nn.initializers.constant(self.cfg.init_logit_bias), ()),
                (), jnp.float32)

    def encode_image(self, images, normalize: bool = True, train: bool = False):
        x = self.visual(images, train)
        return l2_normalize(x) if normalize else x

    def encode_text(self, text, normalize: bool = True):
        x = self.text(text)
        return l2_normalize(x) if normalize else x

    def __call__(self, images, text, train: bool = False):
        """Returns (image_features, text_features, logit_scale_param, logit_bias or None).
        ``train``: patch dropout on (needs the ``patch_dropout`` rng when it is configured).

        Features are L2-normalised float32; ``logit_scale_param`` is the log-temperature
        parameter (exponentiate, clamped at ln 100 by the optimiser step, for the loss).
        """
        bias = self.logit_bias if self.cfg.init_logit_bias is not None else None
        return (self.encode_image(images, train=train), self.encode_text(text),
                self.logit_scale, bias)


def init_inputs(cfg: ModelConfig, batch: int = 1):
    """Dummy inputs of the right shapes, for init and eval_shape."""
    v, t = cfg.vision, cfg.text
    return (jnp.zeros((batch, v.image_size, v.image_size, 3), jnp.float32),
            jnp.zeros((batch, t.context_length), jnp.int32))


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


@functools.lru_cache(maxsize=16)
def abstract_params(cfg: ModelConfig):
    """The unboxed parameter tree of ``cfg`` as ShapeDtypeStructs (nothing is allocated)."""
    model = CLIP(cfg)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(cfg))["params"])
    return nn.meta.unbox(boxed)
