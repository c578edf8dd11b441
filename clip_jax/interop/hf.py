"""Hugging Face ``transformers.CLIPModel``, ``MetaClip2Model`` and ``SiglipModel`` directories:
export ours, import theirs.

A directory holds ``config.json`` (CLIPConfig, MetaClip2Config, SiglipConfig:
:mod:`clip_jax.interop.hf_siglip`, or Siglip2Config, SigLIP 2 NaFlex:
:mod:`clip_jax.interop.hf_siglip2`),
``model.safetensors`` (q/k/v split), ``preprocessor_config.json``, the HF tokenizer files when the
tokenizer can be expressed as one (:func:`clip_jax.data.tokenizer.write_hf_tokenizer`: CLIP BPE,
trained BPE, SigLIP's ``spiece.model``, SigLIP 2's ``tokenizer.json``; read back by
``read_hf_tokenizer``) and our tokenizer in ``tokenizer/``. CLIP's ``text_config.eos_token_id`` is
the end-of-text id: HF pools at its first position, as our ``argmax`` pooling does, except
that ``CLIPModel`` reads 2 as its legacy argmax of the ids. MetaCLIP 2 (``model_type
metaclip_2``: CLIP's architecture and weight names, XLM-V's multilingual vocabulary with ``<s>``
0, ``<pad>`` 1, ``</s>`` 2) always pools at the first ``eos_token_id``: our ``text.eot_id``.
Which format a model exports as follows from its architecture switches (:func:`keymap.family`);
a CLIP-family model whose end token is id 2 exports as MetaCLIP 2, the format that pools there.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import bundle, files, models
from clip_jax import params as params_lib
from clip_jax.config_schema import ANY_FLOAT, BOOL, COUNT, POSITIVE, Range, check_mapping
from clip_jax.data.tokenizer import load_tokenizer, read_hf_tokenizer, write_hf_tokenizer
from clip_jax.interop import hf_siglip, hf_siglip2, keymap
from clip_jax.interop.weights_io import read_state_dict, save_safetensors

HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = (bundle.WEIGHTS_FILE, "model.safetensors.index.json", "pytorch_model.bin")
# the CLIP-architecture model types: (architecture, text and vision sub-config model types)
CLIP_TYPES = {"clip": ("CLIPModel", "clip_text_model", "clip_vision_model"),
              "metaclip_2": ("MetaClip2Model", "metaclip_2_text_model",
                             "metaclip_2_vision_model")}


def is_hf_dir(path: Path) -> bool:
    d = bundle.read_config(path)
    return isinstance(d, dict) and (d.get("model_type") in (
        *CLIP_TYPES, hf_siglip.MODEL_TYPE, hf_siglip2.MODEL_TYPE) or (
        "text_config" in d and "vision_config" in d))


_HF_RANGES = {k: POSITIVE for k in (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "image_size", "patch_size", "num_channels", "projection_size",
    "num_patches")}
_HF_RANGES.update(layer_norm_eps=Range(float, 0, 1, lo_open=True, hi_open=True),
                  eos_token_id=COUNT, vision_use_head=BOOL)
_HF_TOP_RANGES = {"projection_dim": POSITIVE, "logit_scale_init_value": ANY_FLOAT,
                  "clip_jax_logit_bias": ANY_FLOAT}


def model_config_from_hf(hf: Mapping) -> models.ModelConfig:
    """ModelConfig from a ``CLIPConfig`` or ``SiglipConfig`` dict (by ``model_type``); the
    numeric keys' types and ranges are checked first (``_HF_RANGES``)."""
    check_mapping("config.json", hf, _HF_TOP_RANGES)
    for key in ("text_config", "vision_config"):
        if hf.get(key) is not None:
            check_mapping(f"config.json {key}", hf[key], _HF_RANGES)
    kind = hf.get("model_type", "clip")
    if kind == hf_siglip.MODEL_TYPE:
        return hf_siglip.model_config_from_hf(hf)
    if kind in CLIP_TYPES:
        return _clip_config_from_hf(hf, legacy_eos=kind == "clip")
    if kind == hf_siglip2.MODEL_TYPE:
        return hf_siglip2.model_config_from_hf(hf)
    raise ValueError(f"model_type={kind!r}: clip_jax reads 'clip' (CLIPModel), 'metaclip_2' "
                     f"(MetaClip2Model), 'siglip' (SiglipModel) and 'siglip2' (Siglip2Model, "
                     f"NaFlex)")


def read_hf_dir(path: Path, allow_damaged: bool = False):
    """``(cfg, flat params)`` of a Hugging Face CLIP or SigLIP directory."""
    hf = bundle.read_config(path)
    if not isinstance(hf, dict):
        raise ValueError(f"{path} has no readable {bundle.CONFIG_FILE}")
    try:
        cfg = model_config_from_hf(hf)
    except ValueError as e:
        raise ValueError(f"{path / bundle.CONFIG_FILE}: {e}") from None
    for name in HF_WEIGHTS:
        if (path / name).is_file():
            sd = read_state_dict(path / name)
            break
    else:
        raise FileNotFoundError(f"{path} has none of {', '.join(HF_WEIGHTS)}")
    params = keymap.from_external(sd, cfg.replace(scan=False), "hf", source=f"HF weights in {path}",
                                  allow_damaged=allow_damaged)
    return cfg, params_lib.flatten_params(params)


_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _clip_config_from_hf(hf: Mapping, legacy_eos: bool = True) -> models.ModelConfig:
    """ModelConfig from a ``CLIPConfig`` or ``MetaClip2Config`` dict (absent fields take
    transformers' defaults); ``legacy_eos``: ``CLIPModel``'s reading of ``eos_token_id`` 2 as
    the argmax of the ids (``MetaClip2Model`` pools at the first id 2)."""
    tc = {**_HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vc = {**_HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    for where, c in (("text_config", tc), ("vision_config", vc)):
        if c["hidden_act"] not in hf_siglip.ACTS:
            raise ValueError(f"{where}.hidden_act={c['hidden_act']!r}: clip_jax supports "
                             f"{', '.join(hf_siglip.ACTS)}")
    if tc["layer_norm_eps"] != vc["layer_norm_eps"]:
        raise ValueError(f"layer_norm_eps differs between towers ({tc['layer_norm_eps']} vs "
                         f"{vc['layer_norm_eps']}); clip_jax uses one")
    if vc["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels={vc['num_channels']}: must be 3")
    eos, vocab = tc["eos_token_id"], tc["vocab_size"]
    if not isinstance(eos, int) or not 0 <= eos < vocab:
        raise ValueError(f"text_config.eos_token_id={eos!r}: must be a token id in [0, {vocab})")
    # HF pools at the first eos token (CLIPModel's eos_token_id=2: its legacy argmax of the ids)
    argmax = eos == vocab - 1 or (legacy_eos and eos == 2)
    bias = hf.get("clip_jax_logit_bias")
    return models.ModelConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=models.VisionConfig(
            image_size=vc["image_size"], patch_size=vc["patch_size"], width=vc["hidden_size"],
            layers=vc["num_hidden_layers"], heads=vc["num_attention_heads"],
            mlp_dim=vc["intermediate_size"], act=hf_siglip.tower_act(vc, tc)),
        text=models.TextConfig(
            context_length=tc["max_position_embeddings"], vocab_size=vocab,
            width=tc["hidden_size"], layers=tc["num_hidden_layers"],
            heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"],
            eot_id=None if argmax else eos),
        act=hf_siglip.ACTS[tc["hidden_act"]], ln_eps=tc["layer_norm_eps"],
        init_logit_scale=hf.get("logit_scale_init_value", models.INIT_LOGIT_SCALE),
        init_logit_bias=None if bias is None else float(bias),
    )


def clip_model_type(cfg: models.ModelConfig, model_type: str | None = None) -> str:
    """The CLIP-architecture ``model_type`` a CLIP-family ``cfg`` exports as: ``model_type`` when
    given and able to hold it, else ``metaclip_2`` for an end token of id 2 (which ``CLIPModel``
    would read as its legacy argmax pooling), ``clip`` otherwise."""
    legacy = cfg.text.eot_id == 2
    if model_type is None:
        return "metaclip_2" if legacy else "clip"
    if model_type not in CLIP_TYPES:
        raise ValueError(f"model type {model_type!r}: must be one of {', '.join(CLIP_TYPES)}")
    if model_type == "clip" and legacy:
        raise ValueError("this model pools at token id 2, which transformers' CLIPModel reads "
                         "as its legacy argmax pooling: export it as metaclip_2")
    return model_type


def hf_config(cfg: models.ModelConfig, tokenizer=None, logit_bias: float | None = None,
              model_type: str | None = None) -> dict:
    """A ``CLIPConfig`` (or ``MetaClip2Config``: :func:`clip_model_type`) dict for a CLIP-family
    ``cfg`` (``logit_bias``: kept as ``clip_jax_logit_bias``), a ``SiglipConfig`` dict for a
    SigLIP-family one, a ``Siglip2Config`` for a NaFlex one."""
    if keymap.family(cfg) == "siglip":
        return hf_siglip.hf_config(cfg, tokenizer)
    if keymap.family(cfg) == "naflex":
        return hf_siglip2.hf_config(cfg, tokenizer)
    v, t = cfg.vision, cfg.text
    kind = clip_model_type(cfg, model_type)
    arch, text_type, vision_type = CLIP_TYPES[kind]
    eot = t.vocab_size - 1 if t.eot_id is None else t.eot_id  # None: eot is the largest id
    sot = tokenizer.sot_id if tokenizer is not None else t.vocab_size - 2
    pad = getattr(tokenizer, "pad_id", None)
    pad = 0 if pad is None else pad
    dtype = str(np.dtype(jnp.dtype(cfg.param_dtype)))
    vact, tact = hf_siglip.hf_acts(cfg)
    d = {
        "architectures": [arch],
        "model_type": kind,
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": float(cfg.init_logit_scale),  # the weights hold the value
        "initializer_factor": 1.0,
        "torch_dtype": dtype,
        "text_config": {
            "model_type": text_type, "vocab_size": t.vocab_size,
            "hidden_size": t.width, "intermediate_size": t.mlp_dim,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": tact,
            "layer_norm_eps": cfg.ln_eps, "projection_dim": cfg.embed_dim,
            "bos_token_id": sot, "eos_token_id": eot, "pad_token_id": pad,
        },
        "vision_config": {
            "model_type": vision_type, "hidden_size": v.width,
            "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads, "num_channels": 3, "image_size": v.image_size,
            "patch_size": v.patch_size, "hidden_act": vact, "layer_norm_eps": cfg.ln_eps,
            "projection_dim": cfg.embed_dim,
        },
    }
    if logit_bias is not None:
        d["clip_jax_logit_bias"] = float(logit_bias)
    return d


def _clip_preprocessor(s: int, pre: Mapping) -> dict:
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": s}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": s, "width": s}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre["mean"]),
            "image_std": list(pre["std"]), "do_convert_rgb": True}


def export_hf(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
              preprocess: Mapping | None = None, model_type: str | None = None) -> Path:
    """Write a ``CLIPModel`` (``MetaClip2Model``: ``model_type``, :func:`clip_model_type`),
    ``SiglipModel`` or ``Siglip2Model`` directory (by ``cfg``'s family); a model none can hold
    raises a ValueError naming why, before anything is written."""
    if cfg.decoder is not None:
        raise ValueError("this model has a captioning decoder (model.decoder), which no Hugging "
                         "Face CLIP / SigLIP model holds; export a bundle")
    fam = keymap.family(cfg)
    siglip = fam in ("siglip", "naflex")
    if model_type is not None and (siglip or fam != "clip"):
        raise ValueError(f"model type {model_type!r} applies to CLIP-architecture models; this "
                         f"one exports as its family's format ({fam})")
    if not siglip:
        clip_model_type(cfg, model_type)  # refused before anything is written
    params = jax.device_get(params)
    sd = keymap.to_external(params, cfg, "hf")
    flat = params_lib.flatten_params(params)
    bias = float(np.asarray(flat["logit_bias"])) if "logit_bias" in flat else None
    if siglip and bias is None:
        sd["logit_bias"] = np.zeros((1,), np.asarray(sd["logit_scale"]).dtype)  # same logits
    elif bias is not None and not siglip:
        warnings.warn("transformers' CLIPModel has no logit_bias: it is kept in config.json "
                      "(clip_jax_logit_bias) for re-import, and embeddings are unaffected",
                      stacklevel=2)
    config = hf_config(cfg, tokenizer, None if siglip else bias, model_type)
    out = Path(out_dir)
    files.make_dir(out)
    save_safetensors(sd, out / bundle.WEIGHTS_FILE, {"format": "pt"})
    files.write_json(out / bundle.CONFIG_FILE, config)
    pre = dict(preprocess or bundle.default_preprocess(cfg.vision.image_size))
    s = cfg.vision.image_size
    files.write_json(out / HF_PREPROCESSOR, hf_siglip2.preprocessor_config(cfg, pre)
                     if fam == "naflex" else hf_siglip.preprocessor_config(s, pre) if siglip
                     else _clip_preprocessor(s, pre))
    if tokenizer is not None:
        note = write_hf_tokenizer(out, tokenizer, cfg.text.context_length)
        if note:
            print(f"note: {note}", file=sys.stderr)
        tokenizer.save(out / bundle.TOKENIZER_SUBDIR)
    return out


def import_hf(src: str | os.PathLike, scan: bool = False, allow_damaged: bool = False):
    """``(cfg, params, tokenizer or None, preprocess)`` from a Hugging Face CLIP or SigLIP
    directory."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a Hugging Face CLIP or "
                                f"SigLIP model directory with {bundle.CONFIG_FILE} and "
                                f"{bundle.WEIGHTS_FILE})")
    cfg, flat = read_hf_dir(src, allow_damaged)
    cfg = cfg.replace(scan=scan)
    flat = params_lib.adapt(flat, params_lib.flatten_params(models.abstract_params(cfg)),
                            f"HF directory {src}")
    pre = bundle.default_preprocess(cfg.vision.image_size)
    try:
        pc = json.loads((src / HF_PREPROCESSOR).read_text())
    except (OSError, ValueError):
        pc = None
    if cfg.vision.family == "naflex":
        pre = hf_siglip2.preprocess_from_hf(pc if isinstance(pc, dict) else {}, pre)
    else:
        try:
            pre["mean"], pre["std"] = list(pc["image_mean"]), list(pc["image_std"])
            pre["resize"] = {2: "bilinear", 3: "bicubic"}.get(pc.get("resample", 3), "bicubic")
        except (KeyError, TypeError, AttributeError):
            pass
    tdir = bundle.tokenizer_dir(src)  # our own (tokenizer/); HF's files have no 'kind'
    if tdir is not None:
        tok = load_tokenizer(str(tdir))
    else:
        tok, note = read_hf_tokenizer(src, cfg.text.vocab_size)
        if note:
            print(f"note: {note}", file=sys.stderr)
    return cfg, params_lib.unflatten_params(flat), tok, pre


def load_params(path: str | os.PathLike, abstract_tree, shardings=None):
    """An HF directory's params laid out, typed and sharded like ``abstract_tree``."""
    _, flat = read_hf_dir(Path(path))
    return params_lib.place(flat, abstract_tree, shardings, f"HF directory {path}")
