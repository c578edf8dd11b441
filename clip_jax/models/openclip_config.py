"""open_clip's model-config JSON (``model_configs/*.json``, ``open_clip_config.json``) to and from
:class:`~clip_jax.models.config.ModelConfig`.

The ``vision_cfg`` is each image-tower family's to read and write (``Family.from_open_clip`` /
``to_open_clip`` in its module: open_clip's ViT and timm's SigLIP trunks in
:mod:`~clip_jax.models.vit`, ``ModifiedResNet`` in :mod:`~clip_jax.models.resnet`, timm's
ConvNeXt in :mod:`~clip_jax.models.convnext`); the rest is here: open_clip's
``TextTransformer`` (``no_causal_mask``, ``pool_type`` argmax/eos/last/first, ``proj_bias``...),
the logit parameters and CoCa's ``multimodal_cfg``, and the helpers the families share.
Anything else raises a ValueError naming the key, so a checkpoint is never silently loaded into
a different network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import clip_jax.models.family as families
from clip_jax.config_schema import ANY_FLOAT, BOOL, COUNT, POS_FLOAT, POSITIVE, Range, check_mapping
from clip_jax.models.config import INIT_LOGIT_SCALE, ModelConfig, TextConfig

_TEXT_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
            "no_causal_mask", "pool_type", "eos_id", "proj_bias", "ls_init_value", "qk_norm",
            "act_kwargs", "norm_kwargs", "output_tokens", "final_ln_after_pool",
            "embed_cls", "pad_id",
            # the tokenizer's settings, not the network's
            "hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode"}
# Keys whose default value we support; any other value is a different architecture.
_DEFAULTS = {
    "attentional_pool": False, "embed_cls": False, "pad_id": 0, "use_pad_mask": False,
    "hf_model_name": None, "timm_model_name": None, "proj_type": "linear",
    "global_average_pool": False, "input_patchnorm": False, "pos_embed_type": "learnable",
    "block_type": None, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_drop": 0.0,
    "timm_drop_path": None, "timm_proj_bias": False, "attn_pooler_queries": 256,
    "attn_pooler_heads": 8, "correct_cls_mask": False,
}
_TOP_OK = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "custom_text",
           "init_logit_scale", "init_logit_bias", "multimodal_cfg", "pad_id")
# open_clip CoCa's multimodal_cfg (MultimodalCfg): what its MultimodalTransformer reads (its
# vocabulary is text_cfg's, its MLP ratio always 4), and the keys it ignores
_MULTIMODAL_OK = {"context_length", "width", "heads", "layers", "ls_init_value", "vocab_size",
                  "mlp_ratio", "dim_head", "n_queries", "attn_pooler_heads", "output_tokens"}
_COCA_ONLY = ("vision_cfg.attentional_pool", "text_cfg.embed_cls", "pad_id")


# The numeric keys' types and ranges (a list, such as a ResNet's layers: each element).
_TOP_RANGES = {"embed_dim": POSITIVE, "init_logit_scale": ANY_FLOAT, "init_logit_bias": ANY_FLOAT,
               "quick_gelu": BOOL, "pad_id": COUNT}
_TOWER_RANGES = {k: POSITIVE for k in ("image_size", "layers", "width", "patch_size",
                                       "head_width", "heads", "context_length", "vocab_size",
                                       "attn_pooler_queries", "attn_pooler_heads")}
_TOWER_RANGES.update(mlp_ratio=POS_FLOAT, patch_dropout=Range(float, 0, 1, hi_open=True),
                     ls_init_value=ANY_FLOAT, eos_id=COUNT, pad_id=COUNT,
                     **{k: BOOL for k in ("no_ln_pre", "qk_norm", "no_causal_mask", "proj_bias",
                                          "output_tokens", "final_ln_after_pool", "embed_cls",
                                          "attentional_pool")})


def _read(cfg) -> dict:
    """The JSON object (text or a file's), its shape and its numbers checked."""
    if isinstance(cfg, str):
        if cfg.lstrip().startswith(("{", "[")):
            text = cfg
        else:
            try:
                with open(cfg, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"open_clip model config {cfg}: cannot be read: {e}") from None
        try:
            cfg = json.loads(text)
        except ValueError as e:
            raise ValueError(f"open_clip model config is not JSON: {e}") from None
    if isinstance(cfg, Mapping):
        cfg = dict(cfg)
    cfg = check_mapping("open_clip model config", cfg, {})
    if "model_cfg" in cfg:
        cfg = check_mapping("open_clip model config model_cfg", cfg["model_cfg"], {})
    cfg = check_mapping("open_clip model config", dict(cfg), _TOP_RANGES)
    for key in ("vision_cfg", "text_cfg", "multimodal_cfg"):
        if key in cfg:
            check_mapping(f"open_clip {key}", cfg[key], _TOWER_RANGES)
    return cfg


def check_keys(where: str, sub: Mapping, ok) -> None:
    for key, value in sub.items():
        if key in ok or (key in _DEFAULTS and value == _DEFAULTS[key]):
            continue
        raise ValueError(f"open_clip {where}.{key}={value!r} is not supported by clip_jax")


def act(where: str, sub: Mapping, quick_gelu: bool) -> str:
    kw = dict(sub.get("act_kwargs") or {})
    approx = kw.pop("approximate", "none")
    if kw or approx not in ("none", "tanh") or (quick_gelu and approx != "none"):
        raise ValueError(f"open_clip {where}.act_kwargs={sub.get('act_kwargs')!r} is not "
                         "supported by clip_jax (only GELU's approximate='tanh')")
    return "quick_gelu" if quick_gelu else ("gelu_tanh" if approx == "tanh" else "gelu")


def eps(where: str, sub: Mapping, default: float) -> float:
    kw = dict(sub.get("norm_kwargs") or {})
    eps = kw.pop("eps", default)
    if kw:
        raise ValueError(f"open_clip {where}.norm_kwargs={sub.get('norm_kwargs')!r} is not "
                         "supported by clip_jax (only eps)")
    return float(eps)


def plain_text_tower(cfg: ModelConfig) -> None:
    """open_clip's ResNet and ConvNeXt CLIPs build their text tower without qk-norm and layer
    scale, LayerNorm eps 1e-5."""
    if cfg.qk_norm or cfg.ls_init_value is not None or cfg.ln_eps != 1e-5:
        raise ValueError("model.qk_norm / ls_init_value / ln_eps: open_clip's ResNet and "
                         "ConvNeXt CLIPs build their text tower without qk_norm and layer "
                         "scale, eps 1e-5")


def square(size) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"open_clip vision_cfg.image_size={size}: must be square")
    return size[0]


def _same(key: str, vc: Mapping, tc: Mapping, vdefault, timm: bool):
    """A switch clip_jax has once for both towers (open_clip: per tower)."""
    v = vdefault if timm else vc.get(key, vdefault)
    t = tc.get(key, vdefault)
    if v != t:
        raise ValueError(f"open_clip vision_cfg.{key}={v!r} and text_cfg.{key}={t!r} differ: "
                         "clip_jax has one value for both towers")
    return v


def from_open_clip_config(cfg: Mapping[str, Any] | str) -> ModelConfig:
    """Build a ModelConfig from an open_clip model-config JSON (dict, JSON text or path).

    Accepts ``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?}`` or the
    ``open_clip_config.json`` wrapper ``{"model_cfg": {...}}``. Architectures we do not
    implement (attentional pooling, HF towers, other timm trunks...) raise a ValueError naming
    the key, so a checkpoint is never silently loaded into a different network.
    """
    path = cfg if isinstance(cfg, str) and not cfg.lstrip().startswith(("{", "[")) else None
    try:
        return _from_open_clip_config(_read(cfg))
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path and path not in str(e) else str(e)) from None


def _from_open_clip_config(cfg: dict) -> ModelConfig:
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError(f"open_clip model config lacks {key!r}")
    for key in cfg:
        if key not in _TOP_OK:
            raise ValueError(f"open_clip model config key {key!r} is not supported by clip_jax")
    vc, tc = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    quick = bool(cfg.get("quick_gelu", False))
    timm = bool(vc.get("timm_model_name"))
    read = (f.from_open_clip(vc, quick) for f in families.VISION.values() if f.from_open_clip)
    vision, vact, veps = next((r for r in read if r is not None), (None, None, None))
    if vision is None:
        key = "timm_model_name" if timm else "layers"
        raise ValueError(f"open_clip vision_cfg.{key}={vc.get(key)!r} is not supported by "
                         "clip_jax (no image tower family reads it)")
    text = next((r for r in (f.from_open_clip(tc, quick) for f in families.TEXT.values()
                             if f.from_open_clip) if r is not None), None)
    if text is not None:  # a text family's own text_cfg (Hugging Face towers: hf_model_name)
        init_bias = cfg.get("init_logit_bias")
        return ModelConfig(
            embed_dim=cfg["embed_dim"], vision=vision, text=text, act=vact,
            ln_eps=1e-5 if veps is None else veps,
            init_logit_scale=cfg.get("init_logit_scale", INIT_LOGIT_SCALE),
            init_logit_bias=None if init_bias is None else float(init_bias),
            qk_norm=bool(vc.get("qk_norm", False)), ls_init_value=vc.get("ls_init_value"))
    veps = eps("text_cfg", tc, 1e-5) if veps is None else veps  # a conv tower: the text's
    check_keys("text_cfg", tc, _TEXT_OK)
    tact, teps = act("text_cfg", tc, quick), eps("text_cfg", tc, 1e-5)
    if veps != teps:
        raise ValueError(f"open_clip LayerNorm eps {veps} (vision_cfg) and {teps} (text_cfg) "
                         "differ: clip_jax has one model.ln_eps")
    ls = _same("ls_init_value", vc, tc, None, timm)
    qk = bool(_same("qk_norm", vc, tc, False, timm))
    pool, eot = tc.get("pool_type", "argmax"), None
    if pool == "eos":
        pool, eot = "argmax", tc.get("eos_id", 2)
    if pool not in ("argmax", "last", "first"):
        raise ValueError(f"open_clip text_cfg.pool_type={pool!r} is not supported by clip_jax")
    twidth = tc.get("width", 512)
    text = TextConfig(
        context_length=tc.get("context_length", 77), vocab_size=tc.get("vocab_size", 49408),
        width=twidth, layers=tc.get("layers", 12), heads=tc.get("heads", 8),
        mlp_dim=int(twidth * tc.get("mlp_ratio", 4.0)),
        causal=not tc.get("no_causal_mask", False), pool=pool, eot_id=eot,
        proj_bias=bool(tc.get("proj_bias", False)), act=None if tact == vact else tact,
        embed_cls=bool(tc.get("embed_cls", False)), pad_id=tc.get("pad_id", 0))
    init_bias = cfg.get("init_logit_bias")
    out = ModelConfig(
        embed_dim=cfg["embed_dim"], vision=vision, text=text, act=vact, ln_eps=veps,
        init_logit_scale=cfg.get("init_logit_scale", INIT_LOGIT_SCALE),
        init_logit_bias=None if init_bias is None else float(init_bias),
        qk_norm=qk, ls_init_value=None if ls is None else float(ls))
    decoder = _coca_decoder(cfg, tc, ls, (tact, veps))
    return out if decoder is None else out.replace(decoder=decoder)


def _coca_decoder(cfg: Mapping, tc: Mapping, ls, act_eps) -> dict | None:
    """open_clip CoCa's text decoder (``multimodal_cfg``: a ``MultimodalTransformer`` fed by
    the text tower's tokens, GELU or QuickGELU, LayerNorm eps 1e-5, MLP ratio 4), or None."""
    mm = cfg.get("multimodal_cfg")
    if mm is None:
        for key in _COCA_ONLY:
            sub, _, name = key.rpartition(".")
            if (cfg.get(sub, {}) if sub else cfg).get(name):
                raise ValueError(f"open_clip {key} is supported by clip_jax only in a CoCa model "
                                 "(with multimodal_cfg)")
        return None
    check_keys("multimodal_cfg", mm, _MULTIMODAL_OK)
    if act_eps[0] == "gelu_tanh" or act_eps[1] != 1e-5 or cfg.get("cast_dtype"):
        raise ValueError("open_clip CoCa with act_kwargs, norm_kwargs or cast_dtype is not "
                         "supported by clip_jax (its decoder is built without them)")
    if mm.get("ls_init_value") != ls:
        raise ValueError(f"open_clip multimodal_cfg.ls_init_value={mm.get('ls_init_value')!r} "
                         f"differs from the towers' {ls!r}: clip_jax has one value")
    width = mm.get("width", 512)
    if width != tc.get("width", 512):
        raise ValueError(f"open_clip multimodal_cfg.width={width} differs from text_cfg.width="
                         f"{tc.get('width', 512)}: CoCa's decoder reads the text tower's tokens")
    return dict(layers=mm.get("layers", 12), width=width, heads=mm.get("heads", 8),
                mlp_dim=4 * width, pad_id=cfg.get("pad_id", 0), input="text")


def to_open_clip_config(cfg: ModelConfig) -> dict:
    """The open_clip model-config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); a model
    open_clip cannot build raises a ValueError naming the field."""
    v, t = cfg.vision, cfg.text
    fam = families.vision(cfg)
    if fam.to_open_clip is None:
        raise ValueError(f"model.vision.family={v.family!r}: open_clip cannot build this "
                         "image tower")
    tfam = families.text(cfg)
    if t.family != "transformer" and tfam.to_open_clip is None:
        raise ValueError(f"model.text.family={t.family!r}: open_clip cannot build this "
                         "text tower")
    vc, vact = fam.to_open_clip(cfg)
    if v.patch_dropout:
        vc["patch_dropout"] = v.patch_dropout
    tc: dict[str, Any] = {"context_length": t.context_length, "vocab_size": t.vocab_size,
                          "width": t.width, "heads": t.heads, "layers": t.layers,
                          "mlp_ratio": t.mlp_dim / t.width}
    if not t.causal:
        tc["no_causal_mask"] = True
    if t.proj_bias:
        tc["proj_bias"] = True
    if t.pool != "argmax" or t.eot_id is not None:
        tc["pool_type"] = t.pool if t.eot_id is None or t.pool != "argmax" else "eos"
        if tc["pool_type"] == "eos":
            tc["eos_id"] = t.eot_id
    tower_extras(tc, cfg, t.act or cfg.act)
    own = tfam.to_open_clip is not None  # a text family's own text_cfg (HF towers)
    if own:
        tc = tfam.to_open_clip(cfg)[0]
    out = {"embed_dim": cfg.embed_dim, "vision_cfg": vc, "text_cfg": tc}
    acts = (set() if own else {t.act or cfg.act}) | ({vact} if vact else set())
    if "quick_gelu" in acts:
        if acts != {"quick_gelu"}:
            raise ValueError("model.act: open_clip's quick_gelu applies to both towers")
        out["quick_gelu"] = True
    if cfg.init_logit_scale != INIT_LOGIT_SCALE:
        out["init_logit_scale"] = cfg.init_logit_scale
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    if t.embed_cls or (t.pad_id and not own) or v.attn_pooler_queries or cfg.decoder:
        _coca_extras(out, cfg)
    return out


def _coca_extras(out: dict, cfg: ModelConfig) -> None:
    """open_clip CoCa's keys: ``multimodal_cfg`` and the towers' token outputs."""
    d, t = cfg.decoder, cfg.text
    if d is None or d.input != "text":
        raise ValueError("model.vision.attn_pooler_queries / model.text.embed_cls, pad_id: "
                         "open_clip builds them only in CoCa, whose decoder reads the text "
                         "tower's tokens (model.decoder.input='text')")
    if d.mlp_dim != 4 * d.width or cfg.ln_eps != 1e-5 or (t.act or cfg.act) == "gelu_tanh":
        raise ValueError("model.decoder: open_clip CoCa's decoder has mlp_dim 4 * width, "
                         "LayerNorm eps 1e-5 and GELU or QuickGELU")
    tc = out["text_cfg"]
    tc.update(embed_cls=t.embed_cls, output_tokens=True)
    if t.pad_id:
        tc["pad_id"] = t.pad_id
    out["vision_cfg"]["output_tokens"] = True
    mm = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": d.width,
          "heads": d.heads, "layers": d.layers, "ls_init_value": cfg.ls_init_value}
    out.update(multimodal_cfg=mm, custom_text=True)
    if d.pad_id:
        out["pad_id"] = d.pad_id


def tower_extras(sub: dict, cfg: ModelConfig, act: str) -> None:
    if act == "gelu_tanh":
        sub["act_kwargs"] = {"approximate": "tanh"}
    if cfg.ln_eps != 1e-5:
        sub["norm_kwargs"] = {"eps": cfg.ln_eps}
    if cfg.qk_norm:
        sub["qk_norm"] = True
    if cfg.ls_init_value is not None:
        sub["ls_init_value"] = cfg.ls_init_value
