"""Hugging Face ``Siglip2Model`` configs (``model_type: siglip2``, SigLIP 2 NaFlex) read into and
written from our ``ModelConfig`` with ``vision.family="naflex"``.

A ``Siglip2Config`` is a ``SiglipConfig`` (:mod:`clip_jax.interop.hf_siglip` reads and writes the
shared fields, the text tower's included) whose vision config has ``num_patches``, the position
table's size (a G x G grid), instead of ``image_size``; ours keeps the grid as ``image_size =
G * patch_size``. The image processor (``Siglip2ImageProcessor``) resizes each image to at most
``max_num_patches`` patches at its own aspect ratio: :mod:`clip_jax.data.naflex`, whose budget a
bundle keeps as ``preprocess.max_num_patches`` (default: the table's G * G).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from clip_jax import models
from clip_jax.interop import hf_siglip

MODEL_TYPE = "siglip2"
# transformers' Siglip2VisionConfig defaults that differ from SiglipVisionConfig's
_VISION_DEFAULTS = dict(patch_size=16, num_patches=256)


def grid(num_patches) -> int:
    """G of a ``num_patches`` = G * G position table; a ValueError unless it is a square."""
    g = math.isqrt(num_patches) if isinstance(num_patches, int) and num_patches > 0 else 0
    if g * g != num_patches or g < 1:
        raise ValueError(f"vision_config.num_patches={num_patches!r}: must be a square number "
                         "(the position table is a square grid)")
    return g


def model_config_from_hf(hf: Mapping) -> models.ModelConfig:
    """ModelConfig from a ``Siglip2Config`` dict (absent fields take transformers' defaults)."""
    vc = {**_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    patch = hf_siglip._square(vc["patch_size"], "patch_size")
    vc["image_size"] = grid(vc["num_patches"]) * patch
    cfg = hf_siglip.model_config_from_hf({**hf, "vision_config": vc})
    return cfg.replace(vision={"family": "naflex"})


def hf_config(cfg: models.ModelConfig, tokenizer=None) -> dict:
    """A ``Siglip2Config`` dict for a NaFlex ``cfg``."""
    d = hf_siglip.hf_config(cfg, tokenizer)
    v = d["vision_config"]
    v["num_patches"] = (v.pop("image_size") // cfg.vision.patch_size) ** 2
    v["model_type"] = "siglip2_vision_model"
    d["text_config"]["model_type"] = "siglip2_text_model"
    return {**d, "architectures": ["Siglip2Model"], "model_type": MODEL_TYPE}


def max_num_patches(cfg: models.ModelConfig, pre: Mapping | None) -> int:
    """The preprocessing budget: ``pre["max_num_patches"]``, else the position table's size."""
    n = (pre or {}).get("max_num_patches")
    return int(n) if n is not None else cfg.vision.patches()


def preprocessor_config(cfg: models.ModelConfig, pre: Mapping) -> dict:
    """``Siglip2ImageProcessor``: resize to the budget at the image's aspect ratio (bilinear),
    rescale, normalise, patchify, pad."""
    return {"image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
            "do_resize": True, "resample": 3 if pre.get("resize") == "bicubic" else 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(pre["mean"]), "image_std": list(pre["std"]),
            "patch_size": cfg.vision.patch_size, "max_num_patches": max_num_patches(cfg, pre)}


def preprocess_from_hf(pc: Mapping, pre: dict) -> dict:
    """Our preprocess dict from a ``Siglip2ImageProcessor`` config (absent: its defaults)."""
    pre = dict(pre, mean=list(pc.get("image_mean", [0.5] * 3)),
               std=list(pc.get("image_std", [0.5] * 3)),
               resize="bicubic" if pc.get("resample", 2) == 3 else "bilinear")
    if pc.get("max_num_patches") is not None:
        pre["max_num_patches"] = int(pc["max_num_patches"])
    return pre
