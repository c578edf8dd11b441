"""open_clip's model-config JSON (``model_configs/*.json``, ``open_clip_config.json``) to and from
:class:`~clip_jax.models.config.ModelConfig`.

Three image towers are understood: open_clip's ``ModifiedResNet`` (``layers`` a list of four
block counts, heads ``width * 32 // head_width``), its own ``VisionTransformer`` (class token; the
switches ``no_ln_pre``, ``pool_type`` tok/avg, ``ls_init_value``, ``qk_norm``, ``act_kwargs``,
``norm_kwargs``) and the timm SigLIP trunks (``timm_model_name: vit_*_patch*_siglip_*`` with
``timm_pool: map``), which are this package's SigLIP image tower. Text: open_clip's
``TextTransformer`` (``no_causal_mask``, ``pool_type`` argmax/eos/last/first, ``proj_bias``...).
Anything else raises a ValueError naming the key, so a checkpoint is never silently loaded into
a different network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from clip_jax.config_schema import ANY_FLOAT, BOOL, COUNT, POS_FLOAT, POSITIVE, Range, check_mapping
from clip_jax.models.config import INIT_LOGIT_SCALE, ModelConfig, TextConfig, VisionConfig
from clip_jax.models.presets import CONVNEXT_TRUNKS, SIGLIP_TRUNKS

_VISION_OK = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
              "patch_dropout", "no_ln_pre", "pool_type", "ls_init_value", "qk_norm",
              "act_kwargs", "norm_kwargs", "output_tokens", "final_ln_after_pool",
              "attentional_pool", "attn_pooler_queries", "attn_pooler_heads"}
_TEXT_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
            "no_causal_mask", "pool_type", "eos_id", "proj_bias", "ls_init_value", "qk_norm",
            "act_kwargs", "norm_kwargs", "output_tokens", "final_ln_after_pool",
            "embed_cls", "pad_id",
            # the tokenizer's settings, not the network's
            "hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode"}
_TIMM_OK = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
            "patch_dropout", "output_tokens"}
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
_TIMM_SIGLIP = re.compile(r"^vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(\d+)$")
# timm's SigLIP trunks (timm 1.0, models/vision_transformer.py): (family, patch, resolution) ->
# GELU ("gelu_tanh" where timm builds them with act_layer='gelu_tanh', else the erf "gelu").
# The resolution is the trunk's: open_clip's TimmModel does not pass image_size to timm.
_TIMM_TRUNKS = {
    ("base", 32, 256): "gelu_tanh",
    **{("base", 16, r): "gelu" for r in (224, 256, 384, 512)},
    ("large", 16, 256): "gelu", ("large", 16, 384): "gelu", ("large", 16, 512): "gelu_tanh",
    **{("so400m", 14, r): "gelu" for r in (224, 378, 384)},
    **{("so400m", 16, r): "gelu_tanh" for r in (256, 384, 512)},
    ("giantopt", 16, 256): "gelu_tanh", ("giantopt", 16, 384): "gelu_tanh",
}


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


def _check_keys(where: str, sub: Mapping, ok) -> None:
    for key, value in sub.items():
        if key in ok or (key in _DEFAULTS and value == _DEFAULTS[key]):
            continue
        raise ValueError(f"open_clip {where}.{key}={value!r} is not supported by clip_jax")


def _act(where: str, sub: Mapping, quick_gelu: bool) -> str:
    kw = dict(sub.get("act_kwargs") or {})
    approx = kw.pop("approximate", "none")
    if kw or approx not in ("none", "tanh") or (quick_gelu and approx != "none"):
        raise ValueError(f"open_clip {where}.act_kwargs={sub.get('act_kwargs')!r} is not "
                         "supported by clip_jax (only GELU's approximate='tanh')")
    return "quick_gelu" if quick_gelu else ("gelu_tanh" if approx == "tanh" else "gelu")


def _eps(where: str, sub: Mapping, default: float) -> float:
    kw = dict(sub.get("norm_kwargs") or {})
    eps = kw.pop("eps", default)
    if kw:
        raise ValueError(f"open_clip {where}.norm_kwargs={sub.get('norm_kwargs')!r} is not "
                         "supported by clip_jax (only eps)")
    return float(eps)


def _square(size) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"open_clip vision_cfg.image_size={size}: must be square")
    return size[0]


def _timm_vision(vc: Mapping) -> tuple[VisionConfig, str, float]:
    _check_keys("vision_cfg", vc, _TIMM_OK)
    name = vc["timm_model_name"]
    m = _TIMM_SIGLIP.match(name)
    trunk = (m[1], int(m[2]), int(m[3])) if m else None
    if trunk not in _TIMM_TRUNKS:
        raise ValueError(f"open_clip vision_cfg.timm_model_name={name!r} is not supported by "
                         "clip_jax (only timm's SigLIP MAP trunks vit_*_patch*_siglip_<res>)")
    size = _square(vc.get("image_size", trunk[2]))
    if size != trunk[2]:
        raise ValueError(f"open_clip vision_cfg.image_size={size} differs from the {trunk[2]}px "
                         f"of timm's {name} (which open_clip builds at {trunk[2]}px)")
    for key, want in (("timm_pool", "map"), ("timm_proj", "none")):
        if vc.get(key) != want:
            raise ValueError(f"open_clip vision_cfg.{key}={vc.get(key)!r} is not supported by "
                             f"clip_jax with a timm SigLIP trunk (only {want!r})")
    width, layers, heads, mlp = SIGLIP_TRUNKS[m[1]]
    vision = VisionConfig(size, trunk[1], width, layers, heads, mlp,
                          float(vc.get("patch_dropout", 0.0)), class_token=False, ln_pre=False,
                          patch_bias=True, pool="map", proj=False)
    return vision, _TIMM_TRUNKS[trunk], 1e-6


_CONVNEXT_OK = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_pool",
                "timm_proj", "timm_drop_path", "output_tokens"}


def _convnext_vision(vc: Mapping) -> VisionConfig:
    """open_clip's TimmModel around timm's ConvNeXt (``timm_pool`` '' or 'avg': timm's head
    averages and normalises; ``timm_proj`` linear | mlp)."""
    _check_keys("vision_cfg", vc, _CONVNEXT_OK)
    name = vc["timm_model_name"]
    if name not in CONVNEXT_TRUNKS:
        raise ValueError(f"open_clip vision_cfg.timm_model_name={name!r}: clip_jax knows the "
                         f"ConvNeXt trunks {', '.join(CONVNEXT_TRUNKS)}")
    if vc.get("timm_pool", "avg") not in ("", "avg"):
        raise ValueError(f"open_clip vision_cfg.timm_pool={vc['timm_pool']!r} is not supported "
                         "by clip_jax with a ConvNeXt trunk ('' or 'avg')")
    proj = vc.get("timm_proj", "linear")
    if proj not in ("linear", "mlp"):
        raise ValueError(f"open_clip vision_cfg.timm_proj={proj!r} is not supported by clip_jax "
                         "with a ConvNeXt trunk (linear, mlp)")
    stages, width, eps = CONVNEXT_TRUNKS[name]
    return VisionConfig(_square(vc.get("image_size", 224)), width=width, family="convnext",
                        stages=stages, norm_eps=eps, proj_type=proj,
                        drop_path=float(vc.get("timm_drop_path") or 0.0))


_RESNET_OK = {"image_size", "layers", "width", "head_width", "patch_size", "output_tokens"}


def _resnet_vision(vc: Mapping, quick_gelu: bool) -> tuple[VisionConfig, str, float]:
    """open_clip's ModifiedResNet (``layers`` a list): heads = width * 32 // head_width."""
    _check_keys("vision_cfg", vc, _RESNET_OK)
    if vc.get("patch_size") is not None:
        raise ValueError(f"open_clip vision_cfg.patch_size={vc['patch_size']!r} with a layers "
                         "list: a ResNet has no patches (null)")
    width, head_width = vc.get("width", 64), vc.get("head_width", 64)
    vision = VisionConfig(image_size=_square(vc.get("image_size", 224)), width=width,
                          heads=width * 32 // head_width, family="resnet",
                          stages=tuple(vc["layers"]))
    return vision, "quick_gelu" if quick_gelu else "gelu", 1e-5


def _open_clip_vision(vc: Mapping, quick_gelu: bool) -> tuple[VisionConfig, str, float]:
    _check_keys("vision_cfg", vc, _VISION_OK)
    pool = {"tok": "tok", "avg": "gap"}.get(vc.get("pool_type", "tok"))
    if pool is None:
        raise ValueError(f"open_clip vision_cfg.pool_type={vc['pool_type']!r} is not supported "
                         "by clip_jax (tok, avg)")
    if vc.get("final_ln_after_pool") and pool != "tok":  # for tok the same function
        raise ValueError("open_clip vision_cfg.final_ln_after_pool=True with pool_type 'avg' "
                         "is not supported by clip_jax")
    width, head_width = vc.get("width", 768), vc.get("head_width", 64)
    if width % head_width:
        raise ValueError(f"vision width {width} is not a multiple of head_width {head_width}")
    vision = VisionConfig(
        image_size=_square(vc.get("image_size", 224)), patch_size=vc.get("patch_size", 16),
        width=width, layers=vc.get("layers", 12), heads=width // head_width,
        mlp_dim=int(width * vc.get("mlp_ratio", 4.0)),
        patch_dropout=float(vc.get("patch_dropout", 0.0)),
        ln_pre=not vc.get("no_ln_pre", False), pool=pool,
        attn_pooler_queries=vc.get("attn_pooler_queries", 256) if vc.get("attentional_pool")
        else 0, attn_pooler_heads=vc.get("attn_pooler_heads", 8))
    return vision, _act("vision_cfg", vc, quick_gelu), _eps("vision_cfg", vc, 1e-5)


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
    if timm and str(vc["timm_model_name"]).startswith("convnext"):
        vision = _convnext_vision(vc)
        vact, veps = ("quick_gelu" if quick else "gelu"), _eps("text_cfg", tc, 1e-5)
    elif timm:
        vision, vact, veps = _timm_vision(vc)
    elif isinstance(vc.get("layers"), list | tuple):
        vision, vact, veps = _resnet_vision(vc, quick)
    else:
        vision, vact, veps = _open_clip_vision(vc, quick)
    _check_keys("text_cfg", tc, _TEXT_OK)
    tact, teps = _act("text_cfg", tc, quick), _eps("text_cfg", tc, 1e-5)
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
    _check_keys("multimodal_cfg", mm, _MULTIMODAL_OK)
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


def _timm_name(cfg: ModelConfig) -> str:
    v = cfg.vision
    sizes = (v.width, v.layers, v.heads, v.mlp_dim)
    family = next((f for f, s in SIGLIP_TRUNKS.items() if s == sizes), None)
    trunk = (family, v.patch_size, v.image_size)
    if trunk not in _TIMM_TRUNKS:
        raise ValueError(f"model.vision (width, layers, heads, mlp_dim {sizes}, patch "
                         f"{v.patch_size}, {v.image_size}px) is no timm SigLIP trunk: open_clip "
                         "cannot build this image tower")
    if (v.act or cfg.act) != _TIMM_TRUNKS[trunk]:
        raise ValueError(f"model.vision.act={v.act or cfg.act!r}: timm's SigLIP trunk "
                         f"vit_{family}_patch{v.patch_size}_siglip_{v.image_size} uses "
                         f"{_TIMM_TRUNKS[trunk]!r} (set model.vision.act to export to open_clip)")
    return f"vit_{family}_patch{v.patch_size}_siglip_{v.image_size}"


def to_open_clip_config(cfg: ModelConfig) -> dict:
    """The open_clip model-config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); a model
    open_clip cannot build raises a ValueError naming the field."""
    v, t = cfg.vision, cfg.text
    siglip = (not v.class_token, not v.ln_pre, v.patch_bias, v.pool == "map", not v.proj)
    resnet = v.family in ("resnet", "convnext")  # a conv tower beside open_clip's text tower
    if resnet and (cfg.qk_norm or cfg.ls_init_value is not None or cfg.ln_eps != 1e-5):
        raise ValueError("model.qk_norm / ls_init_value / ln_eps: open_clip's ResNet and "
                         "ConvNeXt CLIPs build their text tower without qk_norm and layer "
                         "scale, eps 1e-5")
    if v.family == "convnext":
        name = next((n for n, t in CONVNEXT_TRUNKS.items()
                     if t == (v.stages, v.width, v.norm_eps)), None)
        if name is None:
            raise ValueError(f"model.vision (stages {v.stages}, width {v.width}, norm_eps "
                             f"{v.norm_eps}) is no timm ConvNeXt trunk: open_clip cannot build "
                             "this image tower")
        vc: dict[str, Any] = {"timm_model_name": name, "timm_model_pretrained": False,
                              "timm_pool": "", "timm_proj": v.proj_type, "timm_drop": 0.0,
                              "timm_drop_path": v.drop_path, "image_size": v.image_size}
        siglip = (False,)
    elif resnet:
        vc = {"image_size": v.image_size, "layers": list(v.stages), "width": v.width,
              "head_width": v.width * 32 // v.heads, "patch_size": None}
        siglip = (False,)
    elif any(siglip) and not all(siglip):
        raise ValueError("model.vision: open_clip builds a class-token ViT without patch bias "
                         "(pool tok/gap, with proj) or the timm SigLIP trunk (no class token, "
                         "no ln_pre, patch bias, pool map, no proj), nothing in between")
    if resnet:
        pass
    elif all(siglip):
        if cfg.qk_norm or cfg.ls_init_value is not None or cfg.ln_eps != 1e-6:
            raise ValueError("model.qk_norm / ls_init_value / ln_eps: open_clip's timm SigLIP "
                             "trunk has no qk_norm, no layer scale and eps 1e-6")
        vc = {"image_size": v.image_size, "timm_model_name": _timm_name(cfg),
              "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
    else:
        vc = {"image_size": v.image_size, "layers": v.layers, "width": v.width,
              "patch_size": v.patch_size, "head_width": v.width // v.heads,
              "mlp_ratio": v.mlp_dim / v.width}
        if not v.ln_pre:
            vc["no_ln_pre"] = True
        if v.pool == "gap":
            vc["pool_type"] = "avg"
        if v.attn_pooler_queries:
            vc.update(attentional_pool=True, attn_pooler_queries=v.attn_pooler_queries,
                      attn_pooler_heads=v.attn_pooler_heads)
        _tower_extras(vc, cfg, v.act or cfg.act)
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
    _tower_extras(tc, cfg, t.act or cfg.act)
    out = {"embed_dim": cfg.embed_dim, "vision_cfg": vc, "text_cfg": tc}
    acts = {t.act or cfg.act} | (set() if all(siglip) or resnet else {v.act or cfg.act})
    if "quick_gelu" in acts:
        if acts != {"quick_gelu"}:
            raise ValueError("model.act: open_clip's quick_gelu applies to both towers")
        out["quick_gelu"] = True
    if cfg.init_logit_scale != INIT_LOGIT_SCALE:
        out["init_logit_scale"] = cfg.init_logit_scale
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    if t.embed_cls or t.pad_id or v.attn_pooler_queries or cfg.decoder:
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


def _tower_extras(sub: dict, cfg: ModelConfig, act: str) -> None:
    if act == "gelu_tanh":
        sub["act_kwargs"] = {"approximate": "tanh"}
    if cfg.ln_eps != 1e-5:
        sub["norm_kwargs"] = {"eps": cfg.ln_eps}
    if cfg.qk_norm:
        sub["qk_norm"] = True
    if cfg.ls_init_value is not None:
        sub["ls_init_value"] = cfg.ls_init_value
