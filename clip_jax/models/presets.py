"""Named model sizes: :data:`PRESETS` (open_clip's names and sizes) and :func:`get_model_config`.

Each tower family registers its own presets from its module (:mod:`clip_jax.models.family`):
open_clip's ViTs, the small test/demo models and the SigLIP / SigLIP 2 ones in
:mod:`~clip_jax.models.vit`, ``RN*`` in :mod:`~clip_jax.models.resnet`, ``convnext_*`` in
:mod:`~clip_jax.models.convnext`, ``*-NaFlex`` in :mod:`~clip_jax.models.naflex`.

SigLIP presets (``ViT-*-SigLIP*``) take their sizes from open_clip's ``model_configs/*.json``
(the timm trunk named there for the image tower) and the architecture of big_vision / Hugging
Face ``SiglipModel``: no class token, no pre-LN, patch bias, MAP head, no image projection
(``embed_dim`` = image width), bidirectional text pooled at the last position with a biased
projection, tanh GELU, LayerNorm eps 1e-6, logit scale ln 10 and bias -10. (open_clip's own
re-implementation uses the erf GELU in some towers; :func:`from_open_clip_config` of those
JSONs reproduces that per tower.)"""

from __future__ import annotations

from clip_jax.models.config import ModelConfig
from clip_jax.models.convnext import CONVNEXT_TRUNKS, convnext_config  # noqa: F401 (its names)
from clip_jax.models.family import PRESETS
from clip_jax.models.resnet import resnet_config  # noqa: F401 (its old names)
from clip_jax.models.vit import SIGLIP_TRUNKS, siglip_config  # noqa: F401 (its old names)


def get_model_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
