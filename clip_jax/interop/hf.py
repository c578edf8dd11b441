"""Hugging Face ``transformers.CLIPModel`` directories: export ours, import theirs.

A directory holds ``config.json`` (CLIPConfig), ``model.safetensors`` (q/k/v split),
``preprocessor_config.json``, the HF tokenizer files when the tokenizer can be expressed as one
(CLIP BPE: ``vocab.json`` + ``merges.txt``; trained BPE: ``tokenizer.json``) and our tokenizer in
``tokenizer/``. ``text_config.eos_token_id`` is the end-of-text id, so HF pools at the first end
token, which is where our ``argmax(ids)`` pools (eot is the largest id).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import bundle, files, models
from clip_jax import params as params_lib
from clip_jax.data import tokenizer as tok_lib
from clip_jax.data.tokenizer import HF_EOT, HF_SOT, load_tokenizer
from clip_jax.interop import keymap
from clip_jax.interop.weights_io import read_state_dict, save_safetensors

HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = (bundle.WEIGHTS_FILE, "model.safetensors.index.json", "pytorch_model.bin")


def is_hf_dir(path: Path) -> bool:
    d = bundle.read_config(path)
    return isinstance(d, dict) and (d.get("model_type") == "clip" or (
        "text_config" in d and "vision_config" in d))


def read_hf_dir(path: Path):
    """``(cfg, flat params, state dict source name)`` of a Hugging Face CLIP directory."""
    hf = bundle.read_config(path)
    if not isinstance(hf, dict):
        raise ValueError(f"{path} has no readable {bundle.CONFIG_FILE}")
    cfg = model_config_from_hf(hf)
    for name in HF_WEIGHTS:
        if (path / name).is_file():
            sd = read_state_dict(path / name)
            break
    else:
        raise FileNotFoundError(f"{path} has none of {', '.join(HF_WEIGHTS)}")
    params = keymap.from_external(sd, cfg.replace(scan=False), "hf", source=f"HF weights in {path}")
    return cfg, params_lib.flatten_params(params)


_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


def model_config_from_hf(hf: Mapping) -> models.ModelConfig:
    """ModelConfig from a ``CLIPConfig`` dict (absent fields take transformers' defaults)."""
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"model_type={hf.get('model_type')!r}: only CLIP ('clip') is supported")
    tc = {**_HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vc = {**_HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    if tc["hidden_act"] != vc["hidden_act"] or tc["hidden_act"] not in ("gelu", "quick_gelu"):
        raise ValueError(f"hidden_act text={tc['hidden_act']!r} vision={vc['hidden_act']!r}: "
                         f"clip_jax supports one activation, 'gelu' or 'quick_gelu'")
    if tc["layer_norm_eps"] != vc["layer_norm_eps"]:
        raise ValueError(f"layer_norm_eps differs between towers ({tc['layer_norm_eps']} vs "
                         f"{vc['layer_norm_eps']}); clip_jax uses one")
    if vc["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels={vc['num_channels']}: must be 3")
    eos, vocab = tc["eos_token_id"], tc["vocab_size"]
    if eos not in (2, vocab - 1):
        raise ValueError(f"text_config.eos_token_id={eos}: HF pools at the first eos token and "
                         f"clip_jax at argmax(ids), which agree only when eos is the largest id "
                         f"({vocab - 1}) (or eos_token_id=2, HF's legacy argmax)")
    bias = hf.get("clip_jax_logit_bias")
    return models.ModelConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=models.VisionConfig(
            image_size=vc["image_size"], patch_size=vc["patch_size"], width=vc["hidden_size"],
            layers=vc["num_hidden_layers"], heads=vc["num_attention_heads"],
            mlp_dim=vc["intermediate_size"]),
        text=models.TextConfig(
            context_length=tc["max_position_embeddings"], vocab_size=vocab,
            width=tc["hidden_size"], layers=tc["num_hidden_layers"],
            heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"]),
        act=tc["hidden_act"], ln_eps=tc["layer_norm_eps"],
        init_logit_scale=hf.get("logit_scale_init_value", models.INIT_LOGIT_SCALE),
        init_logit_bias=None if bias is None else float(bias),
    )


def hf_config(cfg: models.ModelConfig, tokenizer=None, logit_bias: float | None = None) -> dict:
    """A ``CLIPConfig`` dict for ``cfg`` (``logit_bias``: kept as ``clip_jax_logit_bias``)."""
    v, t = cfg.vision, cfg.text
    eot = t.vocab_size - 1  # the contract: eot is the largest id
    sot = tokenizer.sot_id if tokenizer is not None else t.vocab_size - 2
    dtype = str(np.dtype(jnp.dtype(cfg.param_dtype)))
    d = {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": float(cfg.init_logit_scale),  # the weights hold the value
        "initializer_factor": 1.0,
        "torch_dtype": dtype,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size,
            "hidden_size": t.width, "intermediate_size": t.mlp_dim,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": cfg.act,
            "layer_norm_eps": cfg.ln_eps, "projection_dim": cfg.embed_dim,
            "bos_token_id": sot, "eos_token_id": eot, "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.width,
            "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads, "num_channels": 3, "image_size": v.image_size,
            "patch_size": v.patch_size, "hidden_act": cfg.act, "layer_norm_eps": cfg.ln_eps,
            "projection_dim": cfg.embed_dim,
        },
    }
    if logit_bias is not None:
        d["clip_jax_logit_bias"] = float(logit_bias)
    return d


def _write_hf_tokenizer(out: Path, tokenizer, context_length: int) -> bool:
    """HF tokenizer files for ``tokenizer`` (True if written)."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "clip_bpe":
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        files.write_json(out / "vocab.json", tokenizer.encoder)
        (out / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        files.write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
            "do_lower_case": True, "errors": "replace", **specials})
        files.write_json(out / "special_tokens_map.json", specials)
        return True
    if kind == "hf":
        tokenizer.backend.save(str(out / "tokenizer.json"))
        specials = {"bos_token": HF_SOT, "eos_token": HF_EOT, "pad_token": HF_EOT}
        files.write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
            **specials})
        files.write_json(out / "special_tokens_map.json", specials)
        return True
    return False


def export_hf(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
              preprocess: Mapping | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = jax.device_get(params)
    flat = params_lib.flatten_params(params)
    bias = float(np.asarray(flat["logit_bias"])) if "logit_bias" in flat else None
    if bias is not None:
        warnings.warn("transformers' CLIPModel has no logit_bias: it is kept in config.json "
                      "(clip_jax_logit_bias) for re-import, and embeddings are unaffected",
                      stacklevel=2)
    sd = keymap.to_external(params, cfg, "hf")
    save_safetensors(sd, out / bundle.WEIGHTS_FILE, {"format": "pt"})
    files.write_json(out / bundle.CONFIG_FILE, hf_config(cfg, tokenizer, bias))
    pre = dict(preprocess or bundle.default_preprocess(cfg.vision.image_size))
    s = cfg.vision.image_size
    files.write_json(out / HF_PREPROCESSOR, {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": s}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": s, "width": s}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(pre["mean"]), "image_std": list(pre["std"]),
        "do_convert_rgb": True})
    if tokenizer is not None:
        _write_hf_tokenizer(out, tokenizer, cfg.text.context_length)
        tokenizer.save(out / bundle.TOKENIZER_SUBDIR)
    return out


def _tokenizer_from_hf_files(path: Path, vocab_size: int):
    """Our tokenizer from HF tokenizer files (CLIP vocab.json+merges.txt, or a tokenizer.json
    with start/end tokens at the two largest ids); None if not possible."""
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [ln for ln in lines[1:] if ln.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            gz = Path(tmp) / tok_lib.CLIP_VOCAB_FILE
            gz.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
            try:
                tok = tok_lib.ClipBPETokenizer(gz)
            except (ValueError, AssertionError):
                return None
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            if vocab != tok.encoder or tok.vocab_size != vocab_size:
                return None
            return tok
    if (path / "tokenizer.json").is_file():
        try:
            tok = tok_lib.HFTokenizer.from_file(path / "tokenizer.json")
        except ValueError:
            return None
        return tok if tok.vocab_size == vocab_size else None
    return None


def import_hf(src: str | os.PathLike, scan: bool = False):
    """``(cfg, params, tokenizer or None, preprocess)`` from a Hugging Face CLIP directory."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a Hugging Face CLIP model "
                                f"directory with {bundle.CONFIG_FILE} and {bundle.WEIGHTS_FILE})")
    cfg, flat = read_hf_dir(src)
    cfg = cfg.replace(scan=scan)
    flat = params_lib.adapt(flat, params_lib.flatten_params(models.abstract_params(cfg)),
                            f"HF CLIP directory {src}")
    pre = bundle.default_preprocess(cfg.vision.image_size)
    try:
        pc = json.loads((src / HF_PREPROCESSOR).read_text())
        pre["mean"], pre["std"] = list(pc["image_mean"]), list(pc["image_std"])
    except (OSError, ValueError, KeyError):
        pass
    tdir = bundle.tokenizer_dir(src)  # our own (tokenizer/); HF's files have no 'kind'
    if tdir is not None:
        tok = load_tokenizer(str(tdir))
    else:
        tok = _tokenizer_from_hf_files(src, cfg.text.vocab_size)
    return cfg, params_lib.unflatten_params(flat), tok, pre


def load_params(path: str | os.PathLike, abstract_tree, shardings=None):
    """An HF CLIP directory's params laid out, typed and sharded like ``abstract_tree``."""
    _, flat = read_hf_dir(Path(path))
    return params_lib.place(flat, abstract_tree, shardings, f"HF CLIP directory {path}")
