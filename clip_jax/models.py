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
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # a float adds a learned logit_bias (sigmoid loss)
    dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    scan: bool = False  # nn.scan over blocks: compile time independent of depth
    attention: str = "auto"  # "auto" | "xla" | "cudnn": see :func:`attention`

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


_OPEN_CLIP_VISION_OK = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
_OPEN_CLIP_TEXT_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
# Keys whose default value we support; any other value is a different architecture.
_OPEN_CLIP_DEFAULTS = {
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False,
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
        init_logit_scale=cfg.get("init_logit_scale", math.log(1 / 0.07)),
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
    if cfg.act == "quick_gelu":
        out["quick_gelu"] = True
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


# ---------------------------------------------------------------------------------------------
# Layers


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@jax.custom_jvp
def gelu(x):
    """Exact (erf) GELU, ``x * Phi(x)``, as ``torch.nn.GELU()``.

    ``jax.nn.gelu(approximate=False)`` goes through ``erfc``, which XLA lowers to an exp plus a
    piecewise polynomial; ``erf`` is one rational polynomial, and the derivative
    ``Phi(x) + x * phi(x)`` written out lets XLA fuse value and derivative in one pass over the
    MLP activations: 1.8x faster forward + backward on CPU (docs/benchmarks.md), same values to
    1e-6.
    """
    return 0.5 * x * (1 + jax.lax.erf(x * _SQRT_HALF))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * _SQRT_HALF))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return x * cdf, t * (cdf + x * pdf)


_ACTS = {"gelu": gelu, "quick_gelu": quick_gelu}


def _param(init, names):
    return nn.with_logical_partitioning(init, names)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps: float = 1e-5):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, in float32.

    Both moments come from one pass over ``x`` (var = E[x^2] - E[x]^2, as flax's LayerNorm does
    by default), and the backward is written out (two row means and one elementwise pass,
    from the saved normalised input) instead of autodiff's chain of broadcasts: the layer norms
    took ~20% of a small model's step on CPU before.
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum(jnp.square(x).mean(-1, keepdims=True) - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + eps)
    xhat = (x - mean) * inv
    return xhat * scale + bias, (xhat, inv, scale)


def _layer_norm_bwd(eps, res, g):
    del eps
    xhat, inv, scale = res
    gs = g * scale
    dx = inv * (gs - gs.mean(-1, keepdims=True) - xhat * (gs * xhat).mean(-1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    return dx, (g * xhat).sum(rows), g.sum(rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (stable under bf16), params named scale/bias."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", _param(nn.initializers.ones, ("norm",)), (d,),
                           self.param_dtype)
        bias = self.param("bias", _param(nn.initializers.zeros, ("norm",)), (d,),
                          self.param_dtype)
        y = layer_norm(x.astype(jnp.float32), scale.astype(jnp.float32),
                       bias.astype(jnp.float32), self.eps)
        return y.astype(self.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (open_clip's in_proj)."""

    heads: int
    out_init_std: float
    causal: bool = False
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        hd = d // self.heads
        # Explicit params (not DenseGeneral, whose flattened init breaks logical constraints).
        w_in = self.param("kernel_in", _param(nn.initializers.normal(d**-0.5),
                                              ("embed", None, "heads", "kv")),
                          (d, 3, self.heads, hd), self.param_dtype)
        b_in = self.param("bias_in", _param(nn.initializers.zeros, (None, "heads", "kv")),
                          (3, self.heads, hd), self.param_dtype)
        # One (d, 3d) matmul (the 4-D kernel viewed as a matrix: a free reshape), then heads
        # moved before time once, so both attention matmuls and their gradients are plain
        # batched GEMMs with no layout copies in between.
        qkv = jnp.einsum("btd,dshk->sbhtk", x, w_in.astype(self.dtype)) + b_in.astype(
            self.dtype)[:, None, :, None]
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, hd)
        q = nn.with_logical_constraint(q, ("batch", "act_heads", "length", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "act_heads", "length", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "act_heads", "length", "kv"))
        out = attention(q, k, v, self.causal, self.implementation)
        out = nn.with_logical_constraint(out, ("batch", "act_heads", "length", "kv"))
        w_out = self.param("kernel_out", _param(nn.initializers.normal(self.out_init_std),
                                                ("heads", "kv", "embed")),
                           (self.heads, hd, d), self.param_dtype)
        b_out = self.param("bias_out", _param(nn.initializers.zeros, ("embed",)), (d,),
                           self.param_dtype)
        return jnp.einsum("bhtk,hkd->btd", out, w_out.astype(self.dtype)) + b_out.astype(
            self.dtype)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def attention(q, k, v, causal: bool, implementation: str = "auto"):
    """Softmax attention on (B, H, T, head_dim) q, k, v; returns (B, H, T, head_dim).

    ``xla``: two batched matmuls around a float32 softmax (with the causal mask as a constant
    select); on CPU this is 1.4x faster forward + backward than ``jax.nn.dot_product_attention``,
    whose (B, T, H, D) layout costs transposes around every matmul. ``cudnn``: the fused flash
    kernel of ``jax.nn.dot_product_attention`` (GPU, float16/bfloat16 only). ``auto``: cuDNN on
    a GPU with half-precision inputs, else ``xla``.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: use one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    if implementation == "cudnn" or (implementation == "auto" and half
                                     and jax.default_backend() == "gpu"):
        swap = lambda a: a.swapaxes(1, 2)  # cuDNN wants (B, T, H, D)
        out = jax.nn.dot_product_attention(swap(q), swap(k), swap(v), is_causal=causal,
                                           implementation="cudnn")
        return swap(out)
    scale = q.shape[-1] ** -0.5
    s = jnp.einsum("bhtk,bhsk->bhts", q * jnp.asarray(scale, q.dtype), k,
                   preferred_element_type=jnp.float32)
    if causal:
        t = s.shape[-1]
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", p, v)


class PatchEmbed(nn.Module):
    """open_clip's ``conv1`` (a stride-``patch`` convolution, no bias) as reshape + one matmul:
    (B, H, W, 3) -> (B, patches, width), row-major over the patch grid. Same parameter
    (``kernel``, (p, p, 3, width), as ``nn.Conv`` stores it) and same result as the
    convolution; a convolution whose stride equals its window is a matmul over patches, which
    XLA's CPU backend runs 3x faster than its convolution (ViT-B-32 shapes)."""

    patch: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        p = self.patch
        b, h, w, c = images.shape
        kernel = self.param("kernel", _param(nn.initializers.lecun_normal(),
                                             (None, None, None, "embed")),
                            (p, p, c, self.width), self.param_dtype)
        gh, gw = h // p, w // p  # like a VALID convolution, a remainder is ignored
        x = images[:, :gh * p, :gw * p].astype(self.dtype).reshape(b, gh, p, gw, p, c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
        return jnp.dot(x, kernel.astype(self.dtype).reshape(p * p * c, self.width))


class MLP(nn.Module):
    mlp_dim: int
    act: str
    proj_init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim, name="c_fc", dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=_param(nn.initializers.normal((2 * d) ** -0.5), ("embed", "mlp")),
            bias_init=_param(nn.initializers.zeros, ("mlp",)),
        )(x)
        h = nn.with_logical_constraint(_ACTS[self.act](h), ("batch", "length", "act_mlp"))
        return nn.Dense(
            d, name="c_proj", dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=_param(nn.initializers.normal(self.proj_init_std), ("mlp", "embed")),
            bias_init=_param(nn.initializers.zeros, ("embed",)),
        )(h)


class ResidualAttentionBlock(nn.Module):
    heads: int
    mlp_dim: int
    layers: int  # depth of the tower, for the init scale of residual projections
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-5
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, _=None):
        d = x.shape[-1]
        proj_std = d**-0.5 * (2 * self.layers) ** -0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        y = LayerNorm(self.ln_eps, name="ln_1", **kw)(x)
        x = x + Attention(self.heads, proj_std, self.causal, self.attention, name="attn",
                          **kw)(y)
        y = LayerNorm(self.ln_eps, name="ln_2", **kw)(x)
        x = x + MLP(self.mlp_dim, self.act, proj_std, name="mlp", **kw)(y)
        return x, None


class Transformer(nn.Module):
    layers: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-5
    remat: bool = False
    scan: bool = False
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        block = ResidualAttentionBlock
        if self.remat:
            block = nn.remat(block, prevent_cse=not self.scan,
                             policy=jax.checkpoint_policies.nothing_saveable)
        kw = dict(heads=self.heads, mlp_dim=self.mlp_dim, layers=self.layers, act=self.act,
                  causal=self.causal, ln_eps=self.ln_eps, attention=self.attention,
                  dtype=self.dtype, param_dtype=self.param_dtype)
        if self.scan:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                length=self.layers, metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(name="resblocks", **kw)(x, None)
        else:
            for i in range(self.layers):
                x, _ = block(name=f"resblocks_{i}", **kw)(x)
        return x


class VisionTransformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised."""
        c, v = self.cfg, self.cfg.vision
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if images.shape[1:3] != (v.image_size, v.image_size):
            raise ValueError(f"images of size {images.shape[1:3]} given to a ViT built for "
                             f"{v.image_size}x{v.image_size}")
        scale = v.width**-0.5
        x = PatchEmbed(v.patch_size, v.width, dtype, pdtype, name="conv1")(images)
        b = x.shape[0]
        cls = self.param("class_embedding", _param(nn.initializers.normal(scale), ("embed",)),
                         (v.width,), pdtype)
        n = x.shape[1] + 1
        pos = self.param("positional_embedding",
                         _param(nn.initializers.normal(scale), (None, "embed")),
                         (n, v.width), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, v.width)), x], axis=1)
        x = x + pos.astype(dtype)
        x = LayerNorm(c.ln_eps, name="ln_pre", dtype=dtype, param_dtype=pdtype)(x)
        x = Transformer(v.layers, v.heads, v.mlp_dim, c.act, False, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, name="transformer")(x)
        x = LayerNorm(c.ln_eps, name="ln_post", dtype=dtype, param_dtype=pdtype)(x[:, 0])
        proj = self.param("proj", _param(nn.initializers.normal(scale), ("embed", "proj")),
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
                         _param(nn.initializers.normal(0.02), ("vocab", "embed")),
                         (t.vocab_size, t.width), pdtype)
        pos = self.param("positional_embedding",
                         _param(nn.initializers.normal(0.01), (None, "embed")),
                         (t.context_length, t.width), pdtype)
        x = jnp.take(tok, text, axis=0).astype(dtype) + pos[: text.shape[1]].astype(dtype)
        x = Transformer(t.layers, t.heads, t.mlp_dim, c.act, True, c.ln_eps, c.remat, c.scan,
                        c.attention, dtype, pdtype, name="transformer")(x)
        x = LayerNorm(c.ln_eps, name="ln_final", dtype=dtype, param_dtype=pdtype)(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(text, axis=-1)]
        proj = self.param("text_projection",
                          _param(nn.initializers.normal(t.width**-0.5), ("embed", "proj")),
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
            "logit_scale", _param(nn.initializers.constant(self.cfg.init_logit_scale), ()),
            (), jnp.float32)
        if self.cfg.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", _param(nn.initializers.constant(self.cfg.init_logit_bias), ()),
                (), jnp.float32)

    def encode_image(self, images, normalize: bool = True):
        x = self.visual(images)
        return l2_normalize(x) if normalize else x

    def encode_text(self, text, normalize: bool = True):
        x = self.text(text)
        return l2_normalize(x) if normalize else x

    def __call__(self, images, text):
        """Returns (image_features, text_features, logit_scale_param, logit_bias or None).

        Features are L2-normalised float32; ``logit_scale_param`` is the log-temperature
        parameter (exponentiate, clamped at ln 100 by the optimiser step, for the loss).
        """
        bias = self.logit_bias if self.cfg.init_logit_bias is not None else None
        return self.encode_image(images), self.encode_text(text), self.logit_scale, bias


def init_inputs(cfg: ModelConfig, batch: int = 1):
    """Dummy inputs of the right shapes, for init and eval_shape."""
    v, t = cfg.vision, cfg.text
    return (jnp.zeros((batch, v.image_size, v.image_size, 3), jnp.float32),
            jnp.zeros((batch, t.context_length), jnp.int32))


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
