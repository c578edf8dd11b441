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
Those blocks are in :mod:`clip_jax.layers`. This package holds, one file per concern, the
configuration (:mod:`.config`), the tower families' registry (:mod:`.family`), the presets
(:mod:`.presets`), open_clip's model-config JSON (:mod:`.openclip_config`), one file per tower
family (:mod:`.vit`, :mod:`.naflex`, OpenAI's ModifiedResNet in :mod:`.resnet`, timm's ConvNeXt
in :mod:`.convnext`, the text tower :mod:`.text`), each registering itself, and :class:`CLIP`
(:mod:`.clip`); every public name is re-exported here.

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``,
``proj``, ``layers``...); :mod:`clip_jax.sharding` maps them to mesh axes.  Models know nothing
of data, meshes or checkpoints.
"""

# isort: off
# The tower families, each registering itself (models/family.py): the text tower first (every
# preset has one), then the image towers in the order model.vision.family lists them.
from clip_jax.models import text, hf_text, vit, resnet, convnext, naflex, pe  # noqa: F401
# isort: on
from clip_jax.models.clip import (
    CLIP,
    STATS,
    abstract_params,
    count_params,
    init_inputs,
    l2_normalize,
    merge_variables,
    variables,
)
from clip_jax.models.config import INIT_LOGIT_SCALE, ModelConfig, TextConfig, VisionConfig
from clip_jax.models.openclip_config import from_open_clip_config, to_open_clip_config
from clip_jax.models.presets import PRESETS, get_model_config
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.models.text import TextTransformer
from clip_jax.models.vit import VisionTransformer, drop_patches

__all__ = [
    "CLIP", "INIT_LOGIT_SCALE", "PRESETS", "STATS", "ModelConfig", "ModifiedResNet",
    "TextConfig", "TextTransformer", "VisionConfig", "VisionTransformer", "abstract_params",
    "count_params", "drop_patches", "from_open_clip_config", "get_model_config", "init_inputs",
    "l2_normalize", "merge_variables", "to_open_clip_config", "variables",
]
