"""Model configuration: :class:`ModelConfig` with its vision and text sub-configs, the named
validation of the architecture switches. Presets are in :mod:`clip_jax.models.presets`, open_clip's
model-config JSON in :mod:`clip_jax.models.openclip_config`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

# CLIP's initial temperature is 1/0.07, its log (2.6592) the initial logit_scale parameter.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


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
