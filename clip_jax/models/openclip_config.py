"""open_clip's model-config JSON (``model_configs/*.json``, ``open_clip_config.json``) to and from
:class:`~clip_jax.models.config.ModelConfig`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from clip_jax.models.config import INIT_LOGIT_SCALE, ModelConfig, TextConfig, VisionConfig

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
