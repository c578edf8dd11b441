"""open_clip checkpoints: export ours, import theirs.

Export writes ``open_clip_model.safetensors`` with open_clip's exact ``state_dict`` keys and
torch layouts, ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``, as open_clip's hub
format) and our tokenizer in ``tokenizer/``. Import reads a weights file (``.safetensors``, or a
``.pt/.bin`` state dict through ``torch.load(weights_only=True)``) or such a directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from clip_jax import bundle, files, models
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.interop import keymap
from clip_jax.interop.weights_io import read_state_dict, save_safetensors

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def _open_clip_preprocess(pre: Mapping) -> dict:
    return {"size": pre["image_size"], "mode": "RGB", "mean": list(pre["mean"]),
            "std": list(pre["std"]), "interpolation": "bicubic", "resize_mode": "shortest"}


def export_open_clip(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
                     preprocess: Mapping | None = None) -> Path:
    """Write open_clip's hub layout; a model open_clip cannot build raises a ValueError naming
    why, before anything is written."""
    sd = keymap.to_external(jax.device_get(params), cfg, "open_clip")
    pre = dict(preprocess or bundle.default_preprocess(cfg.vision.image_size))
    config = {"model_cfg": models.to_open_clip_config(cfg),
              "preprocess_cfg": _open_clip_preprocess(pre)}
    out = Path(out_dir)
    files.make_dir(out)
    save_safetensors(sd, out / OPEN_CLIP_WEIGHTS, {"format": "pt"})
    files.write_json(out / OPEN_CLIP_CONFIG, config)
    if tokenizer is not None:
        tokenizer.save(out / bundle.TOKENIZER_SUBDIR)
    return out


def _resolve_model_config_arg(spec: str) -> models.ModelConfig:
    spec = spec.strip()
    if spec in models.PRESETS:
        return models.get_model_config(spec)
    return models.from_open_clip_config(spec)


def import_open_clip(src: str | os.PathLike, model_config: str | None = None, scan: bool = False,
                     allow_damaged: bool = False):
    """``(cfg, params, tokenizer or None, preprocess)`` from open_clip weights: a weights file
    or a directory holding ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``)
    and ``open_clip_config.json``. ``model_config``: JSON path/text or preset name."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    if src.is_dir():
        for name in (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.bin", "model.safetensors"):
            if (src / name).is_file():
                weights = src / name
                break
        else:
            raise FileNotFoundError(f"{src} has no {OPEN_CLIP_WEIGHTS} or "
                                    f"open_clip_pytorch_model.bin")
    else:
        weights = src
    oc_cfg = None
    if (folder / OPEN_CLIP_CONFIG).is_file():
        try:
            oc_cfg = json.loads((folder / OPEN_CLIP_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder / OPEN_CLIP_CONFIG}: not a readable JSON file: {e}"
                             ) from None
    if model_config:
        cfg = _resolve_model_config_arg(model_config)
    elif oc_cfg is not None:
        try:
            cfg = models.from_open_clip_config(oc_cfg)
        except ValueError as e:
            raise ValueError(f"{folder / OPEN_CLIP_CONFIG}: {e}") from None
    else:
        raise ValueError(f"no {OPEN_CLIP_CONFIG} next to {weights}: pass --model-config (an "
                         f"open_clip model-config JSON with embed_dim, vision_cfg, text_cfg)")
    sd = read_state_dict(weights)
    if "logit_bias" in sd and cfg.init_logit_bias is None:
        cfg = cfg.replace(init_logit_bias=float(np.asarray(sd["logit_bias"])))
    cfg = cfg.replace(scan=scan)
    params = keymap.from_external(sd, cfg, "open_clip", source=f"open_clip weights {weights}",
                                  allow_damaged=allow_damaged)
    pre = bundle.default_preprocess(cfg.vision.image_size)
    pc = oc_cfg.get("preprocess_cfg") if isinstance(oc_cfg, dict) else None
    pc = pc if isinstance(pc, dict) else {}
    for key in ("mean", "std"):
        if key in pc:
            pre[key] = list(pc[key])
    tdir = bundle.tokenizer_dir(folder)
    tok = load_tokenizer(str(tdir)) if tdir else None
    return cfg, params, tok, pre
