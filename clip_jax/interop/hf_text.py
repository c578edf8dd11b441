"""A transformers text-encoder directory as a model source holding the text tower's encoder.

``save_pretrained`` of ``XLMRobertaModel`` / ``RobertaModel`` / ``BertModel`` /
``T5EncoderModel`` / ``MT5EncoderModel`` (or of a checkpoint that holds one: a masked-LM head's
``roberta.`` / ``bert.`` prefix, a whole T5's ``encoder.`` and its shared embedding): its
``config.json`` (:func:`clip_jax.models.hf_text.from_hf_config`), weights and tokenizer files.
Its params are the ``text/transformer/`` subtree only (named by
:func:`clip_jax.interop.keymap_hf_text.encoder_rules`), so a run takes them with
``checkpoint.init_from=DIR`` and ``checkpoint.init_from_params='^text/transformer/'`` (the
projection starts fresh: LiT with a locked pretrained text tower adds
``optimizer.frozen=['^text/transformer/']``). The BERT pooler (``cls_pooler``'s dense layer) is
not read: a ``cls_pooler`` tower takes ``init_from_params='^text/transformer/(?!pooler/)'``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from clip_jax import bundle, models
from clip_jax import params as params_lib
from clip_jax.data.tokenizer import read_hf_tokenizer
from clip_jax.interop import keymap, keymap_hf_text
from clip_jax.interop.weights_io import read_state_dict
from clip_jax.models import hf_text

WEIGHTS = (bundle.WEIGHTS_FILE, "model.safetensors.index.json", "pytorch_model.bin")
PATTERN = "^text/transformer/"  # the params such a source holds


def is_hf_text_dir(path: Path) -> bool:
    d = bundle.read_config(path)
    return isinstance(d, dict) and d.get("model_type") in hf_text.MODEL_TYPES and not (
        "text_config" in d or "vision_config" in d)


def model_config(path: Path, context_length: int = 77) -> models.ModelConfig:
    """A model whose text tower is the directory's encoder (mean pooler, no projection,
    ``embed_dim`` its width); the image tower is the default, unused."""
    d = bundle.read_config(path)
    try:
        if d.get("model_type") in hf_text.BERT_TYPES:  # no more than the position table has
            bert = d["model_type"] == "bert"
            offset = 0 if bert else int(d.get("pad_token_id") or 0) + 1
            context_length = min(context_length,
                                 int(d.get("max_position_embeddings", 512)) - offset)
        text = hf_text.from_hf_config(d, context_length, proj="none", name=str(path))
        return models.ModelConfig(embed_dim=text.width, text=text)
    except ValueError as e:
        raise ValueError(f"{path / bundle.CONFIG_FILE}: {e}") from None


def _encoder_state_dict(sd: dict, cfg: models.ModelConfig, where: str) -> dict:
    """``sd`` with the encoder's keys unprefixed (``roberta.``, ``bert.``, T5's ``encoder.``
    and its ``shared`` embedding)."""
    if hf_text.t5(cfg.text):
        probe, prefixes = "block.0.layer.0.SelfAttention.q.weight", ("", "encoder.")
    else:
        probe = "embeddings.word_embeddings.weight"
        prefixes = ("", "roberta.", "bert.", "model.", "xlm_roberta.")
    pre = next((p for p in prefixes if p + probe in sd), None)
    if pre is None:
        raise ValueError(f"{where}: no {probe} (nor under {', '.join(prefixes[1:])}): not a "
                         f"{cfg.text.hf.model_type} encoder's weights")
    out = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    if hf_text.t5(cfg.text) and "embed_tokens.weight" not in out and "shared.weight" in sd:
        out["embed_tokens.weight"] = sd["shared.weight"]
    return out


def read_encoder(path: Path, cfg: models.ModelConfig, allow_damaged: bool = False) -> dict:
    """The flat ``text/transformer/...`` params (per-layer, ``cfg.param_dtype``) of the
    directory's weights."""
    weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path} has no weights ({', '.join(WEIGHTS)})")
    where = f"HF text encoder {weights}"
    sd = _encoder_state_dict(read_state_dict(weights), cfg, where)
    rules = keymap_hf_text.encoder_rules(cfg)
    need = {k for r in rules for k in r.theirs}
    missing = sorted(need - set(sd))
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    sd = {k: sd[k] for k in need}
    if not allow_damaged:
        keymap.check_values(sd, where)
    flat = {}
    for rule in rules:
        flat.update(zip(rule.ours, rule.inv(tuple(np.asarray(sd[k]) for k in rule.theirs)),
                        strict=True))
    want = params_lib.unstack_layers(params_lib.flatten_params(models.abstract_params(
        cfg.replace(scan=False))))
    want = {k: v for k, v in want.items() if k.startswith(PATTERN[1:])}
    return params_lib.check(flat, want, where, cast=True)


def import_hf_text(src: str | os.PathLike, scan: bool = False, allow_damaged: bool = False):
    """``(cfg, params (the text/transformer subtree), tokenizer or None, preprocess)``."""
    src = Path(src)
    cfg = model_config(src).replace(scan=scan)
    flat = read_encoder(src, cfg, allow_damaged)
    if scan:
        flat = params_lib.stack_layers(flat)
    tok, note = read_hf_tokenizer(src)  # mT5's vocabulary is smaller than its embedding
    if tok is not None and tok.vocab_size > cfg.text.vocab_size:
        tok, note = None, (f"tokenizer files in {src} not used: {tok.vocab_size} tokens, the "
                           f"model embeds {cfg.text.vocab_size}")
    if note:
        print(f"note: {note}", file=sys.stderr)
    return (cfg, params_lib.unflatten_params(flat), tok,
            bundle.default_preprocess(cfg.vision.image_size))
