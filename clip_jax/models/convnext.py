"""The ConvNeXt image tower as open_clip builds it through timm (``timm_model_name:
convnext_*``, ``timm_pool: ""``, ``timm_proj: linear | mlp``), NHWC.

``stem (4x4/4 conv + bias, LayerNorm) -> 4 stages (stage > 0 starts with LayerNorm + 2x2/2 conv;
blocks: 7x7 depthwise conv -> LayerNorm -> Linear 4C, GELU, Linear C -> layer scale gamma ->
[drop path] + shortcut) -> global average pool -> LayerNorm (timm's head.norm) -> projection
(open_clip's head: Linear without bias, or Mlp C -> 2E (bias), GELU, 2E -> E (no bias))``.
Channels ``width * (1, 2, 4, 8)``, blocks per stage ``vision.stages``, LayerNorm eps
``vision.norm_eps`` (timm: 1e-6, convnext_xxlarge 1e-5). Parameters (timm's names with
``.`` -> ``_``; ``interop/keymap_convnext.py`` maps them)::

    visual/{stem_0 (conv), stem_1 (LN)}
    visual/stages_{i}_downsample_{0 (LN), 1 (conv)}   (i > 0)
    visual/stages_{i}_blocks_{j}/{conv_dw, norm, mlp/{fc1, fc2}, gamma}
    visual/head_norm, visual/{head_proj | head_mlp/{fc1, fc2}}

The ``convnext`` family (:mod:`clip_jax.models.family`): switches, FLOPs, presets (open_clip's
convnext_*), layer ids (timm's), open_clip JSON here; key maps
:mod:`clip_jax.interop.keymap_convnext`.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import clip_jax.models.family as families
import clip_jax.models.openclip_config as oc
from clip_jax.layers import Conv, LayerNorm, gelu, logical_init
from clip_jax.models.config import ModelConfig, TextConfig, VisionConfig, _choice, check_stages

LS_INIT = 1e-6  # timm's ConvNeXt ls_init_value


def _conv(features: int, k: int, name: str, groups: int = 1, **kw):
    return Conv(features, k, 1 if k == 7 else k, 3 if k == 7 else 0, groups, True, name=name,
                kernel_init=logical_init(nn.initializers.truncated_normal(0.02),
                                         (None, None, None, None)),
                bias_init=logical_init(nn.initializers.zeros, (None,)), **kw)


def _dense(features: int, name: str, bias: bool = True, **kw):
    return nn.Dense(features, use_bias=bias, name=name,
                    kernel_init=logical_init(nn.initializers.truncated_normal(0.02),
                                             (None, None)),
                    bias_init=logical_init(nn.initializers.zeros, (None,)), **kw)


class ConvNeXtBlock(nn.Module):
    eps: float
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        y = _conv(c, 7, "conv_dw", groups=c, **kw)(x)
        y = LayerNorm(self.eps, name="norm", **kw)(y)
        y = Mlp(c, name="mlp", **kw)(y)
        gamma = self.param("gamma", logical_init(nn.initializers.constant(LS_INIT), ("norm",)),
                           (c,), self.param_dtype)
        y = y * gamma.astype(self.dtype)
        if train and self.drop_path:
            keep = 1.0 - self.drop_path
            mask = jax.random.bernoulli(self.make_rng("patch_dropout"), keep,
                                        (x.shape[0], 1, 1, 1))
            y = y * mask.astype(y.dtype) / keep
        return x + y


class Mlp(nn.Module):
    out: int
    hidden: int | None = None  # default 4 * out
    out_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = gelu(_dense(self.hidden or 4 * self.out, "fc1", **kw)(x))
        return _dense(self.out, "fc2", self.out_bias, **kw)(h)


class ConvNeXt(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised.
        ``train`` with ``vision.drop_path`` > 0: stochastic depth (the ``patch_dropout`` rng,
        one draw per image and block)."""
        c, v = self.cfg, self.cfg.vision
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        eps = v.norm_eps if v.norm_eps is not None else c.ln_eps
        x = _conv(v.width, 4, "stem_0", **kw)(images.astype(kw["dtype"]))
        x = LayerNorm(eps, name="stem_1", **kw)(x)
        total, done = sum(v.stages), 0
        for i, blocks in enumerate(v.stages):
            width = v.width * 2**i
            if i:
                x = LayerNorm(eps, name=f"stages_{i}_downsample_0", **kw)(x)
                x = _conv(width, 2, f"stages_{i}_downsample_1", **kw)(x)
            for j in range(blocks):
                rate = v.drop_path * (done / max(total - 1, 1))  # timm: linear in depth
                x = ConvNeXtBlock(eps, rate, name=f"stages_{i}_blocks_{j}", **kw)(x, train)
                done += 1
        x = x.astype(jnp.float32).mean((1, 2)).astype(kw["dtype"])
        x = LayerNorm(eps, name="head_norm", **kw)(x)
        if v.proj_type == "mlp":
            return Mlp(c.embed_dim, 2 * c.embed_dim, False, name="head_mlp", **kw)(x)
        return _dense(c.embed_dim, "head_proj", False, **kw)(x)


# --- the family: switches, FLOPs, presets, open_clip JSON ---------------------------------------

PROJ = ("linear", "mlp")


def check(v: VisionConfig) -> None:
    check_stages(v)
    _choice("model.vision.proj_type", v.proj_type, PROJ)
    d, e = v.drop_path, v.norm_eps
    if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
        raise ValueError(f"model.vision.drop_path={d!r}: must be a number in [0, 1)")
    if e is not None and (isinstance(e, bool) or not isinstance(e, int | float)
                          or not 0 < e < 1):
        raise ValueError(f"model.vision.norm_eps={e!r}: must be null or in (0, 1)")


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Forward per sample: the 4x4 stem, per block the depthwise 7x7 and the 4x MLP, the 2x2
    downsamples, the head projection; nothing recomputed by a remat policy of its own."""
    conv = families.conv_flops
    v = cfg.vision
    h, f = v.image_size // 4, conv(v.image_size // 4, 4, 3, v.width)
    for i, blocks in enumerate(v.stages):
        c = v.width * 2**i
        if i:
            h //= 2
            f += conv(h, 2, c // 2, c)
        f += blocks * (conv(h, 7, c, c, groups=c) + 2 * (2 * h * h * c * 4 * c))
    c, e = v.width * 2 ** (len(v.stages) - 1), cfg.embed_dim
    head = 2 * c * 2 * e + 2 * 2 * e * e if v.proj_type == "mlp" else 2 * c * e
    return float(f + head), 0.0


_STAGE = re.compile(r"^stages_(\d+)_(?:blocks_(\d+)|downsample_\d+)(/|$)")


def depth(cfg: ModelConfig) -> int:
    return sum(cfg.vision.stages)


def layer_id(cfg: ModelConfig, path: str, shape: tuple):
    """timm's ConvNeXt grouping (``group_matcher``): the stem 0, every block its own layer in
    order (1 .. L, L = all blocks), a stage's downsample with its first block, the head (its
    LayerNorm and projection) L + 1."""
    if path.startswith("stem_"):
        return 0
    if path.startswith(("head_norm", "head_proj", "head_mlp")):
        return depth(cfg) + 1
    m = _STAGE.match(path)
    if m is None:
        return None
    i = int(m[1])
    return 1 + sum(cfg.vision.stages[:i]) + (int(m[2]) if m[2] is not None else 0)


# timm's ConvNeXt trunks (timm 1.0 models/convnext.py): blocks per stage, first-stage channels
# (then x2 per stage), LayerNorm eps.
CONVNEXT_TRUNKS = {"convnext_tiny": ((3, 3, 9, 3), 96, 1e-6),
                   "convnext_small": ((3, 3, 27, 3), 96, 1e-6),
                   "convnext_base": ((3, 3, 27, 3), 128, 1e-6),
                   "convnext_large": ((3, 3, 27, 3), 192, 1e-6),
                   "convnext_xlarge": ((3, 3, 27, 3), 256, 1e-6),
                   "convnext_xxlarge": ((3, 4, 30, 3), 384, 1e-5)}


def convnext_config(trunk: str, embed: int, img: int, tw: int, th: int, tl: int = 12,
                    proj: str = "linear", drop_path: float = 0.1, ctx=77,
                    vocab=49408) -> ModelConfig:
    """open_clip's ConvNeXt CLIP (timm trunk ``trunk``, a key of :data:`CONVNEXT_TRUNKS`,
    pooled by timm's head: average + LayerNorm; then open_clip's linear or MLP projection)."""
    stages, width, eps = CONVNEXT_TRUNKS[trunk]
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(img, width=width, family="convnext", stages=stages, norm_eps=eps,
                            proj_type=proj, drop_path=drop_path),
        text=TextConfig(ctx, vocab, tw, tl, th, 4 * tw))


_OC_KEYS = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
            "timm_drop_path", "output_tokens"}


def from_open_clip(vc, quick_gelu: bool) -> tuple[VisionConfig, str, None] | None:
    """open_clip's TimmModel around timm's ConvNeXt (``timm_pool`` '' or 'avg': timm's head
    averages and normalises; ``timm_proj`` linear | mlp); LayerNorm eps: the text tower's."""
    name = vc.get("timm_model_name")
    if not name or not str(name).startswith("convnext"):
        return None
    oc.check_keys("vision_cfg", vc, _OC_KEYS)
    if name not in CONVNEXT_TRUNKS:
        raise ValueError(f"open_clip vision_cfg.timm_model_name={name!r}: clip_jax knows the "
                         f"ConvNeXt trunks {', '.join(CONVNEXT_TRUNKS)}")
    if vc.get("timm_pool", "avg") not in ("", "avg"):
        raise ValueError(f"open_clip vision_cfg.timm_pool={vc['timm_pool']!r} is not supported "
                         "by clip_jax with a ConvNeXt trunk ('' or 'avg')")
    proj = vc.get("timm_proj", "linear")
    if proj not in PROJ:
        raise ValueError(f"open_clip vision_cfg.timm_proj={proj!r} is not supported by clip_jax "
                         "with a ConvNeXt trunk (linear, mlp)")
    stages, width, eps = CONVNEXT_TRUNKS[name]
    vision = VisionConfig(oc.square(vc.get("image_size", 224)), width=width, family="convnext",
                          stages=stages, norm_eps=eps, proj_type=proj,
                          drop_path=float(vc.get("timm_drop_path") or 0.0))
    return vision, "quick_gelu" if quick_gelu else "gelu", None


def to_open_clip(cfg: ModelConfig) -> tuple[dict, None]:
    v = cfg.vision
    oc.plain_text_tower(cfg)
    name = next((n for n, t in CONVNEXT_TRUNKS.items()
                 if t == (v.stages, v.width, v.norm_eps)), None)
    if name is None:
        raise ValueError(f"model.vision (stages {v.stages}, width {v.width}, norm_eps "
                         f"{v.norm_eps}) is no timm ConvNeXt trunk: open_clip cannot build "
                         "this image tower")
    return {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "",
            "timm_proj": v.proj_type, "timm_drop": 0.0, "timm_drop_path": v.drop_path,
            "image_size": v.image_size}, None


FAMILY = families.register(families.Family(
    "convnext", ConvNeXt, check, flops=flops, depth=depth, layer_id=layer_id,
    keymap="clip_jax.interop.keymap_convnext",
    from_open_clip=from_open_clip, to_open_clip=to_open_clip))
families.add_presets("convnext", {  # open_clip's model_configs/convnext_*.json
    "convnext_tiny": convnext_config("convnext_tiny", 1024, 224, 512, 8),
    "convnext_small": convnext_config("convnext_small", 512, 224, 512, 8),
    "convnext_base": convnext_config("convnext_base", 512, 224, 512, 8),
    "convnext_base_w": convnext_config("convnext_base", 640, 256, 640, 10),
    "convnext_base_w_320": convnext_config("convnext_base", 640, 320, 640, 10),
    "convnext_large": convnext_config("convnext_large", 768, 224, 768, 12),
    "convnext_large_d": convnext_config("convnext_large", 768, 256, 768, 12, 16, "mlp"),
    "convnext_large_d_320": convnext_config("convnext_large", 768, 320, 768, 12, 16, "mlp"),
    "convnext_xlarge": convnext_config("convnext_xlarge", 1024, 256, 1024, 16, 20),
    "convnext_xxlarge": convnext_config("convnext_xxlarge", 1024, 256, 1024, 16, 24),
    "convnext_xxlarge_320": convnext_config("convnext_xxlarge", 1024, 320, 1024, 16, 24),
})
