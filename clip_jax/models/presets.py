"""Named model sizes: :data:`PRESETS` (open_clip's names and sizes) and :func:`get_model_config`.

SigLIP presets (``ViT-*-SigLIP*``) take their sizes from open_clip's ``model_configs/*.json``
(the timm trunk named there for the image tower) and the architecture of big_vision / Hugging
Face ``SiglipModel``: no class token, no pre-LN, patch bias, MAP head, no image projection
(``embed_dim`` = image width), bidirectional text pooled at the last position with a biased
projection, tanh GELU, LayerNorm eps 1e-6, logit scale ln 10 and bias -10. (open_clip's own
re-implementation uses the erf GELU in some towers; :func:`from_open_clip_config` of those
JSONs reproduces that per tower.)"""

from __future__ import annotations

import math

from clip_jax.models.config import ModelConfig, TextConfig, VisionConfig


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


def resnet_config(embed, img, stages, width, tw, th, quick_gelu: bool = False, ctx=77,
                  vocab=49408) -> ModelConfig:
    """OpenAI's ModifiedResNet image tower (attention-pool heads = 32 * width / 64, as open_clip
    builds it) with CLIP's text tower; ``quick_gelu`` for OpenAI's weights."""
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(img, width=width, heads=width * 32 // 64, family="resnet",
                            stages=tuple(stages)),
        text=TextConfig(ctx, vocab, tw, 12, th, 4 * tw),
        act="quick_gelu" if quick_gelu else "gelu")


# open_clip's model_configs/RN*.json (embed, image size, stages, width, text width and heads)
_RESNETS = {"RN50": (1024, 224, (3, 4, 6, 3), 64, 512, 8),
            "RN101": (512, 224, (3, 4, 23, 3), 64, 512, 8),
            "RN50x4": (640, 288, (4, 6, 10, 6), 80, 640, 10),
            "RN50x16": (768, 384, (6, 8, 18, 8), 96, 768, 12),
            "RN50x64": (1024, 448, (3, 15, 36, 10), 128, 1024, 16)}
for _name, _args in _RESNETS.items():
    PRESETS[_name] = resnet_config(*_args)
    PRESETS[f"{_name}-quickgelu"] = resnet_config(*_args, quick_gelu=True)
# A ResNet the size of "tiny", for tests (stem width 8: 256 channels into the attention pool).
PRESETS["tiny-rn"] = resnet_config(32, 64, (1, 1, 1, 1), 8, 32, 2, ctx=16, vocab=512).replace(
    text=dict(layers=2))


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


# open_clip's model_configs/convnext_*.json
PRESETS.update({
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


_V1, _V2 = 32000, 256000  # SigLIP's SentencePiece vocabulary, SigLIP 2's Gemma vocabulary
PRESETS.update({
    "ViT-B-16-SigLIP": siglip_config("base", 16, 224),
    "ViT-B-16-SigLIP-256": siglip_config("base", 16, 256),
    "ViT-B-16-SigLIP-384": siglip_config("base", 16, 384),
    "ViT-B-16-SigLIP-512": siglip_config("base", 16, 512),
    "ViT-B-16-SigLIP-i18n-256": siglip_config("base", 16, 256, vocab=250000),
    "ViT-L-16-SigLIP-256": siglip_config("large", 16, 256),
    "ViT-L-16-SigLIP-384": siglip_config("large", 16, 384),
    "ViT-SO400M-14-SigLIP": siglip_config("so400m", 14, 224, ctx=16),
    "ViT-SO400M-14-SigLIP-378": siglip_config("so400m", 14, 378),
    "ViT-SO400M-14-SigLIP-384": siglip_config("so400m", 14, 384),
    "ViT-B-16-SigLIP2": siglip_config("base", 16, 224, vocab=_V2),
    "ViT-B-16-SigLIP2-256": siglip_config("base", 16, 256, vocab=_V2),
    "ViT-B-16-SigLIP2-384": siglip_config("base", 16, 384, vocab=_V2),
    "ViT-B-16-SigLIP2-512": siglip_config("base", 16, 512, vocab=_V2),
    "ViT-B-32-SigLIP2-256": siglip_config("base", 32, 256, vocab=_V2),
    "ViT-L-16-SigLIP2-256": siglip_config("large", 16, 256, vocab=_V2),
    "ViT-L-16-SigLIP2-384": siglip_config("large", 16, 384, vocab=_V2),
    "ViT-L-16-SigLIP2-512": siglip_config("large", 16, 512, vocab=_V2),
    "ViT-SO400M-14-SigLIP2": siglip_config("so400m", 14, 224, vocab=_V2),
    "ViT-SO400M-14-SigLIP2-378": siglip_config("so400m", 14, 378, vocab=_V2),
    "ViT-SO400M-16-SigLIP2-256": siglip_config("so400m", 16, 256, vocab=_V2),
    "ViT-SO400M-16-SigLIP2-384": siglip_config("so400m", 16, 384, vocab=_V2),
    "ViT-SO400M-16-SigLIP2-512": siglip_config("so400m", 16, 512, vocab=_V2),
    "ViT-gopt-16-SigLIP2-256": siglip_config("giantopt", 16, 256, "so400m", vocab=_V2),
    "ViT-gopt-16-SigLIP2-384": siglip_config("giantopt", 16, 384, "so400m", vocab=_V2),
    # SigLIP 2 NaFlex (HF google/siglip2-*-patch16-naflex: a 16x16 position grid)
    "ViT-B-16-SigLIP2-NaFlex": siglip_config("base", 16, 256, vocab=_V2, family="naflex"),
    "ViT-SO400M-16-SigLIP2-NaFlex": siglip_config("so400m", 16, 256, vocab=_V2, family="naflex"),
    # A SigLIP the size of "tiny", for tests.
    "tiny-siglip": PRESETS["tiny"].replace(
        embed_dim=32, vision=dict(class_token=False, ln_pre=False, patch_bias=True, pool="map",
                                  proj=False),
        text=dict(causal=False, pool="last", proj_bias=True), act="gelu_tanh", ln_eps=1e-6,
        init_logit_scale=math.log(10.0), init_logit_bias=-10.0),
})
PRESETS["tiny-naflex"] = PRESETS["tiny-siglip"].replace(vision=dict(family="naflex"))


def get_model_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
