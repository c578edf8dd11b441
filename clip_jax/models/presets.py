"""Named model sizes: :data:`PRESETS` (open_clip's names and sizes) and :func:`get_model_config`."""

from __future__ import annotations

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


def get_model_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
