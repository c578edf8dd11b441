"""Hugging Face ``SiglipModel`` configs (``model_type: siglip``): SigLIP, and SigLIP 2 at a fixed
resolution (the same model with Gemma's 256k vocabulary), read into and written from our
``ModelConfig`` with the SigLIP switches (:data:`clip_jax.interop.keymap.SHAPES` for the image
tower, ``keymap_siglip.HF_SWITCHES`` for the text tower).

HF's text ``head`` maps the text width to ``projection_size`` and the image embedding is the MAP
head's output (vision width), so ``projection_size`` (default: the text width) must equal the
vision width; towers of different widths are expressed through it. The weights hold the logit
scale and bias; the config's ``init_logit_*`` are SigLIP's training init (ln 10, -10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from clip_jax import models
from clip_jax.interop import keymap, keymap_siglip

MODEL_TYPE = "siglip"
# transformers' SiglipTextConfig / SiglipVisionConfig defaults (absent fields take them)
_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072,
                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64,
                      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=1,
                      bos_token_id=49406, eos_token_id=49407, projection_size=None)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True)
# transformers' activation names <-> ours (gelu_new is the same tanh formula); each tower has
# its own ``hidden_act``, ours the model's ``act`` (the text tower's) and ``vision.act`` where the
# image tower's differs
ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
         "quick_gelu": "quick_gelu"}
HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0


def switches() -> tuple[dict, dict]:
    """The SigLIP family's vision and text switches, as VisionConfig / TextConfig kwargs."""
    shape = {**keymap.SHAPES["siglip"], **keymap_siglip.HF_SWITCHES}
    v = {k.split(".", 1)[1]: x for k, x in shape.items() if k.startswith("vision.")}
    t = {k.split(".", 1)[1]: x for k, x in shape.items() if k.startswith("text.")}
    return v, t


def tower_act(vc: Mapping, tc: Mapping) -> str | None:
    """``vision.act``: None where the image tower's activation is the text tower's."""
    v, t = ACTS[vc["hidden_act"]], ACTS[tc["hidden_act"]]
    return None if v == t else v


def hf_acts(cfg: models.ModelConfig) -> tuple[str, str]:
    """transformers' ``hidden_act`` of the (vision, text) towers."""
    return HF_ACT[cfg.vision.act or cfg.act], HF_ACT[cfg.text.act or cfg.act]


def _square(value, what: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"vision_config.{what}={value}: must be square")
        value = value[0]
    return int(value)


def model_config_from_hf(hf: Mapping) -> models.ModelConfig:
    """ModelConfig from a ``SiglipConfig`` dict (absent fields take transformers' defaults)."""
    tc = {**_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vc = {**_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    for where, c in (("text_config", tc), ("vision_config", vc)):
        if c["hidden_act"] not in ACTS:
            raise ValueError(f"{where}.hidden_act={c['hidden_act']!r}: clip_jax supports "
                             f"{', '.join(ACTS)}")
    if tc["layer_norm_eps"] != vc["layer_norm_eps"]:
        raise ValueError(f"layer_norm_eps differs between towers ({tc['layer_norm_eps']} vs "
                         f"{vc['layer_norm_eps']}); clip_jax uses one")
    if vc["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels={vc['num_channels']}: must be 3")
    if not vc["vision_use_head"]:
        raise ValueError("vision_config.vision_use_head=false: a SiglipModel without the MAP "
                         "head has no image embedding")
    proj = tc["projection_size"] or tc["hidden_size"]
    if proj != vc["hidden_size"]:
        raise ValueError(f"text_config.projection_size={proj} differs from vision_config."
                         f"hidden_size={vc['hidden_size']}: the text and image embeddings must "
                         f"have one width")
    vs, ts = switches()
    return models.ModelConfig(
        embed_dim=vc["hidden_size"],
        vision=models.VisionConfig(
            image_size=_square(vc["image_size"], "image_size"),
            patch_size=_square(vc["patch_size"], "patch_size"), width=vc["hidden_size"],
            layers=vc["num_hidden_layers"], heads=vc["num_attention_heads"],
            mlp_dim=vc["intermediate_size"], act=tower_act(vc, tc), **vs),
        text=models.TextConfig(
            context_length=tc["max_position_embeddings"], vocab_size=tc["vocab_size"],
            width=tc["hidden_size"], layers=tc["num_hidden_layers"],
            heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"], **ts),
        act=ACTS[tc["hidden_act"]], ln_eps=tc["layer_norm_eps"],
        init_logit_scale=INIT_LOGIT_SCALE, init_logit_bias=INIT_LOGIT_BIAS,
    )


def _special_ids(tokenizer, vocab_size: int) -> dict:
    """pad/bos/eos ids for text_config: the tokenizer's where it says, else HF's defaults."""
    out = {"pad_token_id": 1, "bos_token_id": None, "eos_token_id": 1}
    for ours, theirs in (("pad_id", "pad_token_id"), ("sot_id", "bos_token_id"),
                         ("eot_id", "eos_token_id")):
        value = getattr(tokenizer, ours, None)
        if isinstance(value, int | np.integer) and 0 <= value < vocab_size:
            out[theirs] = int(value)
    return out


def hf_config(cfg: models.ModelConfig, tokenizer=None) -> dict:
    """A ``SiglipConfig`` dict for a SigLIP-family ``cfg``."""
    keymap.family(cfg)  # ValueError unless SigLIP-shaped
    v, t = cfg.vision, cfg.text
    dtype = str(np.dtype(jnp.dtype(cfg.param_dtype)))
    vact, tact = hf_acts(cfg)
    return {
        "architectures": ["SiglipModel"],
        "model_type": MODEL_TYPE,
        "initializer_factor": 1.0,
        "torch_dtype": dtype,
        "text_config": {
            "model_type": "siglip_text_model", "vocab_size": t.vocab_size,
            "hidden_size": t.width, "intermediate_size": t.mlp_dim,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": tact,
            "layer_norm_eps": cfg.ln_eps, "projection_size": cfg.embed_dim,
            **_special_ids(tokenizer, t.vocab_size),
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": v.width,
            "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads, "num_channels": 3, "image_size": v.image_size,
            "patch_size": v.patch_size, "hidden_act": vact, "layer_norm_eps": cfg.ln_eps,
            "vision_use_head": True,
        },
    }


def preprocessor_config(image_size: int, pre: Mapping) -> dict:
    """``SiglipImageProcessor``: resize to a square (no crop), rescale, normalise."""
    return {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
            "do_resize": True, "size": {"height": image_size, "width": image_size},
            "resample": 3 if pre.get("resize", "bicubic") == "bicubic" else 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(pre["mean"]), "image_std": list(pre["std"])}
