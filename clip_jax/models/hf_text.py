"""Hugging Face text towers: BERT, RoBERTa, XLM-RoBERTa and the T5 / mT5 encoder as clip_jax
text towers, with open_clip ``HFTextEncoder``'s poolers and projections.

    text/transformer/...   the HF encoder (:mod:`clip_jax.models.hf_encoders`)
    text/proj, proj_fc1, proj_fc2   open_clip's projection: none | linear (``proj``) | mlp
                           (``proj_fc1``, exact GELU, ``proj_fc2``; hidden (width + embed_dim)
                           // 2; no biases)

The padding mask is open_clip's: keys whose id is ``model.text.pad_id`` are masked, and the
poolers read it: ``mean_pooler`` (masked mean), ``max_pooler`` (max over the unmasked tokens:
what open_clip 3.3.0's ``MaxPooler`` means; its ``masked_fill`` with a 0/1 integer mask raises),
``cls_pooler`` (a BERT-family encoder's ``pooler``: tanh(dense(token 0)); T5 has none: token 0),
``cls_last_hidden_state_pooler`` (token 0). Dropout is not applied (HF trains with 0.1).

``model.text.family='hf'``; ``model.text.hf`` (:class:`HFText`) holds what the HF config says
beyond the shared switches (``width`` = hidden_size / d_model, ``layers``, ``heads``,
``mlp_dim`` = intermediate_size / d_ff, ``vocab_size``, ``pad_id`` = pad_token_id, ``act`` =
hidden_act); :func:`from_hf_config` reads a transformers ``config.json``. The key maps are
:mod:`clip_jax.interop.keymap_hf_text` (open_clip's ``text.transformer.*`` = the HF state dict).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

import clip_jax.models.family as families
from clip_jax.layers import ACTIVATIONS, logical_init
from clip_jax.models.config import ModelConfig, TextConfig, _choice, _flag, _heads, _positive_int
from clip_jax.models.hf_encoders import BertEncoder, T5Encoder

BERT_TYPES = ("bert", "roberta", "xlm-roberta")  # roberta-likes: positions from pad_id + 1
T5_TYPES = ("t5", "mt5")
MODEL_TYPES = BERT_TYPES + T5_TYPES
POOLERS = ("mean_pooler", "cls_pooler", "max_pooler", "cls_last_hidden_state_pooler")
PROJS = ("none", "linear", "mlp")
HF_ACTS = ("gelu", "gelu_tanh", "relu")
# transformers' hidden_act / dense_act_fn names -> ours
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_fast": "gelu_tanh", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class HFText:
    """A Hugging Face encoder's switches beyond :class:`TextConfig`'s shared ones."""

    model_type: str = "xlm-roberta"  # transformers' model_type: MODEL_TYPES
    pooler: str = "mean_pooler"  # open_clip's hf_pooler_type: POOLERS
    proj: str = "mlp"  # open_clip's hf_proj_type: none (width == embed_dim) | linear | mlp
    positions: int = 514  # BERT family: max_position_embeddings (rows of the position table)
    type_vocab: int = 1  # BERT family: type_vocab_size (token type 0 is added)
    ln_eps: float = 1e-5  # layer_norm_eps (T5: layer_norm_epsilon, an RMS norm)
    head_dim: int = 0  # T5: d_kv (0: width // heads)
    buckets: int = 32  # T5: relative_attention_num_buckets
    max_distance: int = 128  # T5: relative_attention_max_distance
    gated: bool = False  # T5: feed_forward_proj gated-* (mT5, T5 v1.1)
    # open_clip's hf_model_name: the hub name or a directory with the HF config.json (written
    # into open_clip's JSON on export, since open_clip rebuilds the tower from it)
    name: str = ""


def hf(t: TextConfig) -> HFText:
    return t.hf


def t5(t: TextConfig) -> bool:
    return t.hf.model_type in T5_TYPES


def head_dim(t: TextConfig) -> int:
    return t.hf.head_dim or t.width // t.heads


class HFTextTower(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, text, tokens: bool = False):
        """text: (B, L) ids, ``pad_id`` where padded. Returns the projected pooled features
        (and with ``tokens`` the encoder's last hidden states (B, L, width))."""
        c, t = self.cfg, self.cfg.text
        h = t.hf
        if text.shape[1] > t.context_length:
            raise ValueError(f"text of length {text.shape[1]} exceeds the model's context "
                             f"length {t.context_length}")
        mask = text != t.pad_id
        enc = T5Encoder if t5(t) else BertEncoder
        x, pooled = enc(c, name="transformer")(text, mask)
        m = mask[..., None].astype(x.dtype)
        if h.pooler == "mean_pooler":
            x_pool = (x * m).sum(1) / m.sum(1)
        elif h.pooler == "max_pooler":
            x_pool = jnp.where(mask[..., None], x, -jnp.inf).max(1)
        elif h.pooler == "cls_pooler" and pooled is not None:
            x_pool = pooled
        else:  # cls_last_hidden_state_pooler, T5's cls_pooler
            x_pool = x[:, 0]
        out = projection(c, x_pool)
        return (out, x) if tokens else out


def projection(c: ModelConfig, x):
    """open_clip's ``proj`` on the pooled features."""
    t, dtype, pdtype = c.text, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(use_bias=False, dtype=dtype, param_dtype=pdtype)
    if t.hf.proj == "none":
        return x
    if t.hf.proj == "linear":
        return nn.Dense(c.embed_dim, name="proj", kernel_init=logical_init(
            nn.initializers.lecun_normal(), ("embed", "proj")), **kw)(x)
    hidden = (t.width + c.embed_dim) // 2
    x = nn.Dense(hidden, name="proj_fc1", kernel_init=logical_init(
        nn.initializers.lecun_normal(), ("embed", "mlp")), **kw)(x)
    x = ACTIVATIONS["gelu"](x)  # torch nn.GELU(): exact
    return nn.Dense(c.embed_dim, name="proj_fc2", kernel_init=logical_init(
        nn.initializers.lecun_normal(), ("mlp", "proj")), **kw)(x)


def _as_hf(t: TextConfig) -> None:
    """``model.text.hf`` given as a dict (JSON, the command line) becomes :class:`HFText`."""
    h = t.hf
    if h is None:
        raise ValueError("model.text.family='hf' needs model.text.hf (its model_type, pooler, "
                         "proj...; clip_jax.models.hf_text.from_hf_config reads a config.json)")
    if isinstance(h, Mapping):
        known = {f.name for f in dataclasses.fields(HFText)}
        bad = sorted(set(h) - known)
        if bad:
            raise ValueError(f"unknown model.text.hf keys {bad}; known: {sorted(known)}")
        object.__setattr__(t, "hf", HFText(**h))
    elif not isinstance(h, HFText):
        raise ValueError(f"model.text.hf={h!r}: must be a mapping of {HFText.__name__}'s fields")


def check(t: TextConfig) -> None:
    _as_hf(t)
    h = t.hf
    _choice("model.text.hf.model_type", h.model_type, MODEL_TYPES)
    _choice("model.text.hf.pooler", h.pooler, POOLERS)
    _choice("model.text.hf.proj", h.proj, PROJS)
    for name in ("context_length", "vocab_size", "width", "layers", "heads", "mlp_dim"):
        _positive_int(f"model.text.{name}", getattr(t, name))
    for name in ("positions", "type_vocab", "buckets", "max_distance"):
        _positive_int(f"model.text.hf.{name}", getattr(h, name))
    _flag("model.text.hf.gated", h.gated)
    if not isinstance(h.name, str):
        raise ValueError(f"model.text.hf.name={h.name!r}: must be a string")
    hd = h.head_dim
    if isinstance(hd, bool) or not isinstance(hd, int) or hd < 0:
        raise ValueError(f"model.text.hf.head_dim={hd!r}: must be an integer >= 0")
    if not hd:
        _heads("model.text", t.width, t.heads)
    eps = h.ln_eps
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise ValueError(f"model.text.hf.ln_eps={eps!r}: must be a number in (0, 1)")
    _choice("model.text.act", t.act, HF_ACTS if h.model_type in T5_TYPES else HF_ACTS[:2])
    if t.embed_cls:
        raise ValueError("model.text.embed_cls: an HF text tower has no appended class token")
    if isinstance(t.pad_id, bool) or not isinstance(t.pad_id, int) \
            or not 0 <= t.pad_id < t.vocab_size:
        raise ValueError(f"model.text.pad_id={t.pad_id!r}: must be a token id in "
                         f"[0, {t.vocab_size})")
    if h.model_type in BERT_TYPES:
        offset = t.pad_id + 1 if h.model_type != "bert" else 0
        if t.context_length + offset > h.positions:
            raise ValueError(f"model.text.context_length={t.context_length}: a "
                             f"{h.model_type} tower has {h.positions} positions"
                             f"{f' from {offset}' if offset else ''}")


def check_model(cfg: ModelConfig) -> None:
    t = cfg.text
    if t.hf.proj == "none" and t.width != cfg.embed_dim:
        raise ValueError(f"model.text.hf.proj='none': the text width {t.width} must equal "
                         f"model.embed_dim={cfg.embed_dim} (open_clip's Identity)")


def from_hf_config(d: Mapping[str, Any], context_length: int = 77, pooler: str = "mean_pooler",
                   proj: str = "mlp", name: str = "") -> TextConfig:
    """The :class:`TextConfig` of a transformers ``config.json`` (BERT, RoBERTa, XLM-R, T5,
    mT5); anything else is a one-line ValueError naming what."""
    mt = d.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"Hugging Face model_type={mt!r} is not a text tower clip_jax builds "
                         f"(supported: {', '.join(MODEL_TYPES)})")
    try:
        if mt in T5_TYPES:
            ffp = str(d.get("feed_forward_proj", "relu"))
            gated = ffp.startswith("gated-")
            act = _HF_ACT.get(d.get("dense_act_fn") or ffp.split("-")[-1])
            if act is None or ffp.split("-")[-1] not in ("relu", "gelu"):
                raise ValueError(f"Hugging Face {mt} feed_forward_proj={ffp!r} is not supported")
            h = HFText(mt, pooler, proj, head_dim=int(d.get("d_kv", 64)),
                       ln_eps=float(d.get("layer_norm_epsilon", 1e-6)),
                       buckets=int(d.get("relative_attention_num_buckets", 32)),
                       max_distance=int(d.get("relative_attention_max_distance", 128)),
                       gated=gated, name=name)
            return TextConfig(
                context_length=context_length, vocab_size=int(d["vocab_size"]),
                width=int(d["d_model"]), layers=int(d["num_layers"]),
                heads=int(d["num_heads"]), mlp_dim=int(d["d_ff"]), causal=False,
                pad_id=int(d.get("pad_token_id", 0)), act=act, family="hf", hf=h)
        pe = d.get("position_embedding_type", "absolute")
        if pe not in (None, "absolute"):
            raise ValueError(f"Hugging Face {mt} position_embedding_type={pe!r} is not "
                             "supported (absolute only)")
        act = _HF_ACT.get(d.get("hidden_act", "gelu"))
        if act is None:
            raise ValueError(f"Hugging Face {mt} hidden_act={d.get('hidden_act')!r} is not "
                             f"supported ({', '.join(_HF_ACT)})")
        h = HFText(mt, pooler, proj, positions=int(d["max_position_embeddings"]),
                   type_vocab=int(d.get("type_vocab_size", 2)),
                   ln_eps=float(d.get("layer_norm_eps", 1e-12)), name=name)
        return TextConfig(
            context_length=context_length, vocab_size=int(d["vocab_size"]),
            width=int(d["hidden_size"]), layers=int(d["num_hidden_layers"]),
            heads=int(d["num_attention_heads"]), mlp_dim=int(d["intermediate_size"]),
            causal=False, pad_id=int(d.get("pad_token_id", 0) or 0), act=act, family="hf", hf=h)
    except KeyError as e:
        raise ValueError(f"Hugging Face {mt} config lacks {e}") from None


def to_hf_config(t: TextConfig) -> dict:
    """A transformers ``config.json`` dict of the encoder (what :func:`from_hf_config` reads)."""
    h = t.hf
    inv = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
    if h.model_type in T5_TYPES:
        ffp = f"gated-{inv[t.act].split('_')[0]}" if h.gated else inv[t.act]
        return {"model_type": h.model_type, "vocab_size": t.vocab_size, "d_model": t.width,
                "d_kv": head_dim(t), "d_ff": t.mlp_dim, "num_layers": t.layers,
                "num_heads": t.heads, "relative_attention_num_buckets": h.buckets,
                "relative_attention_max_distance": h.max_distance,
                "layer_norm_epsilon": h.ln_eps, "feed_forward_proj": ffp,
                "pad_token_id": t.pad_id, "is_encoder_decoder": True}
    return {"model_type": h.model_type, "vocab_size": t.vocab_size, "hidden_size": t.width,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "intermediate_size": t.mlp_dim, "hidden_act": inv[t.act],
            "max_position_embeddings": h.positions, "type_vocab_size": h.type_vocab,
            "layer_norm_eps": h.ln_eps, "pad_token_id": t.pad_id,
            "position_embedding_type": "absolute"}


# The hub models open_clip's JSONs name (their config.json, the keys read here), so that their
# open_clip checkpoints import without the hub; any other hf_model_name is a local directory.
_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
         "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
         "layer_norm_eps": 1e-5, "pad_token_id": 1, "hidden_act": "gelu"}
HUB = {
    "xlm-roberta-base": {**_BASE, "model_type": "xlm-roberta", "vocab_size": 250002},
    "xlm-roberta-large": {**_BASE, "model_type": "xlm-roberta", "vocab_size": 250002,
                          "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "intermediate_size": 4096},
    "roberta-base": {**_BASE, "model_type": "roberta", "vocab_size": 50265},
    "bert-base-uncased": {**_BASE, "model_type": "bert", "vocab_size": 30522,
                          "max_position_embeddings": 512, "type_vocab_size": 2,
                          "layer_norm_eps": 1e-12, "pad_token_id": 0},
    "google/mt5-base": {"model_type": "mt5", "vocab_size": 250112, "d_model": 768, "d_kv": 64,
                        "d_ff": 2048, "num_layers": 12, "num_heads": 12,
                        "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
                        "pad_token_id": 0},
}
_OPEN_CLIP_KEYS = {"hf_model_name", "hf_tokenizer_name", "hf_pooler_type", "hf_proj_type",
                   "hf_model_pretrained", "context_length", "output_tokens", "tokenizer_kwargs"}


def hf_config(name: str) -> dict:
    """The transformers config of open_clip's ``hf_model_name``: a directory holding its
    ``config.json``, or one of :data:`HUB`."""
    path = Path(name) / "config.json"
    if path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable JSON file: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: not a JSON object")
        return d
    if name in HUB:
        return HUB[name]
    raise ValueError(f"open_clip text_cfg.hf_model_name={name!r}: neither a directory with a "
                     f"config.json nor one of {', '.join(HUB)} (clip_jax does not download)")


def from_open_clip(tc: Mapping, quick_gelu: bool) -> TextConfig | None:
    """open_clip's ``text_cfg`` of an ``HFTextEncoder`` (``hf_model_name``), else None."""
    name = tc.get("hf_model_name")
    if not name:
        return None
    bad = sorted(set(tc) - _OPEN_CLIP_KEYS)
    if bad:
        raise ValueError(f"open_clip text_cfg keys {bad} are not supported by clip_jax with "
                         "hf_model_name")
    proj = tc.get("hf_proj_type", "mlp")
    return from_hf_config(hf_config(name), int(tc.get("context_length", 77)),
                          tc.get("hf_pooler_type", "mean_pooler"),
                          "none" if proj is None else proj, name)


def to_open_clip(cfg: ModelConfig) -> tuple[dict, None]:
    t = cfg.text
    if not t.hf.name:
        raise ValueError("model.text.hf.name is empty: open_clip rebuilds an HF text tower "
                         "from its hub name or a directory with its config.json; set it")
    return {"hf_model_name": t.hf.name, "hf_tokenizer_name": t.hf.name,
            "hf_pooler_type": t.hf.pooler,
            "hf_proj_type": None if t.hf.proj == "none" else t.hf.proj,
            "context_length": t.context_length}, None


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Per sample: the blocks over the whole context and the projection (the gated T5 MLP's
    extra input matmul counted; T5's attention width is heads * head_dim)."""
    t = cfg.text
    inner = t.heads * head_dim(t)
    block, redo = families.block_flops(t.context_length, t.width, t.mlp_dim, remat)
    if inner != t.width:  # qkv, scores, values and out scale with the attention width
        block += 2 * t.context_length * (4 * t.width + 2 * t.context_length) * (inner - t.width)
    if t.hf.gated:
        block += 2 * t.context_length * t.width * t.mlp_dim
    d, e = t.width, cfg.embed_dim
    proj = {"none": 0, "linear": 2 * d * e, "mlp": 2 * (d + e) * ((d + e) // 2)}[t.hf.proj]
    return float(t.layers * block + proj), float(t.layers * redo)


def layer_id(cfg: ModelConfig, path: str, shape: tuple):
    """The encoder's embeddings (and T5's relative position table) 0, block i i + 1, T5's
    final norm L, the BERT pooler and the projection L + 1."""
    layers = cfg.text.layers
    if path.startswith("transformer/"):
        rest = path[len("transformer/"):]
        if rest.startswith("resblocks"):
            return families.transformer_layer_id(path, shape, layers, (), (), ())
        if rest.startswith("ln_final"):
            return layers
        if rest.startswith("pooler"):
            return layers + 1
        return 0
    if path.startswith("proj"):
        return layers + 1
    return None


FAMILY = families.register(families.Family(
    "hf", HFTextTower, check, tower="text", check_model=check_model, flops=flops,
    depth=lambda cfg: cfg.text.layers, layer_id=layer_id, scanned=True,
    from_open_clip=from_open_clip, to_open_clip=to_open_clip,
    keymap="clip_jax.interop.keymap_hf_text"))
