"""The Hugging Face text towers' names (:mod:`clip_jax.models.hf_text`): the ``text`` part of a
model's table, composed with the image family's by :mod:`clip_jax.interop.keymap`.

open_clip's ``HFTextEncoder`` (``CustomTextCLIP.text``) holds the HF encoder as
``text.transformer.*`` under transformers' own state-dict names, then ``text.proj.weight``
(linear) or ``text.proj.0.weight`` / ``text.proj.2.weight`` (mlp). :func:`encoder_rules` names
the encoder alone (a transformers ``XLMRobertaModel`` / ``T5EncoderModel`` ``state_dict``, no
prefix: what an HF encoder directory holds; :mod:`clip_jax.interop.hf_text` reads it).
transformers' CLIP classes have no such text tower.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import layouts as L
from clip_jax.models import hf_text

NAME = "hf_text"
OURS = "text/transformer"  # the encoder's subtree (init_from_params '^text/transformer/')
IGNORED = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})  # HF buffers


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    if fmt == "hf":
        return ["model.text.family='hf' (transformers' CLIPModel / SiglipModel have their own "
                "text towers)"]
    return []


def _bert(tb: L.Table, t: models.TextConfig, o: str, p: str) -> None:
    e = f"{p}embeddings"
    tb.add(f"{o}/token_embedding", f"{e}.word_embeddings.weight", L.same())
    tb.add(f"{o}/positional_embedding", f"{e}.position_embeddings.weight", L.same())
    tb.add(f"{o}/type_embedding", f"{e}.token_type_embeddings.weight", L.same())
    tb.ln(f"{o}/ln_embed", f"{e}.LayerNorm")
    for i in range(t.layers):
        ob, b = f"{o}/resblocks_{i}", f"{p}encoder.layer.{i}"
        att = f"{b}.attention.self"
        tb.add(f"{ob}/attn/kernel_in", tuple(f"{att}.{n}.weight" for n in ("query", "key",
                                                                           "value")),
               L.split_in_w(t.heads))
        tb.add(f"{ob}/attn/bias_in", tuple(f"{att}.{n}.bias" for n in ("query", "key", "value")),
               L.split_in_b(t.heads))
        tb.add(f"{ob}/attn/kernel_out", f"{b}.attention.output.dense.weight", L.out_w(t.heads))
        tb.add(f"{ob}/attn/bias_out", f"{b}.attention.output.dense.bias", L.same())
        tb.ln(f"{ob}/ln_1", f"{b}.attention.output.LayerNorm")
        tb.dense(f"{ob}/mlp/c_fc", f"{b}.intermediate.dense")
        tb.dense(f"{ob}/mlp/c_proj", f"{b}.output.dense")
        tb.ln(f"{ob}/ln_2", f"{b}.output.LayerNorm")
    if t.hf.pooler == "cls_pooler":
        tb.dense(f"{o}/pooler", f"{p}pooler.dense")


def _t5(tb: L.Table, t: models.TextConfig, o: str, p: str) -> None:
    tb.add(f"{o}/token_embedding", f"{p}embed_tokens.weight", L.same())
    tb.add(f"{o}/rel_bias", f"{p}block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           L.same())
    mlp = ("wi_0", "wi_1", "wo") if t.hf.gated else ("wi", "wo")
    for i in range(t.layers):
        ob, b = f"{o}/resblocks_{i}", f"{p}block.{i}.layer"
        tb.add(f"{ob}/ln_1/scale", f"{b}.0.layer_norm.weight", L.same())
        tb.add(f"{ob}/attn/kernel_in", tuple(f"{b}.0.SelfAttention.{n}.weight" for n in "qkv"),
               L.split_in_w(t.heads))
        tb.add(f"{ob}/attn/kernel_out", f"{b}.0.SelfAttention.o.weight", L.out_w(t.heads))
        tb.add(f"{ob}/ln_2/scale", f"{b}.1.layer_norm.weight", L.same())
        for n in mlp:
            tb.add(f"{ob}/mlp/{n}/kernel", f"{b}.1.DenseReluDense.{n}.weight", L.transpose())
    tb.add(f"{o}/ln_final/scale", f"{p}final_layer_norm.weight", L.same())


def encoder_rules(cfg: models.ModelConfig, prefix: str = "") -> list[L.Rule]:
    """The encoder's parameters under transformers' names, each prefixed by ``prefix``."""
    tb = L.Table()
    (_t5 if hf_text.t5(cfg.text) else _bert)(tb, cfg.text, OURS, prefix)
    return tb.rules


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    """The ``text`` subtree in open_clip's ``CustomTextCLIP`` (the image family's table holds
    the rest)."""
    tb = L.Table()
    tb.rules += encoder_rules(cfg, "text.transformer.")
    proj = cfg.text.hf.proj
    if proj == "linear":
        tb.add("text/proj/kernel", "text.proj.weight", L.transpose())
    elif proj == "mlp":
        tb.add("text/proj_fc1/kernel", "text.proj.0.weight", L.transpose())
        tb.add("text/proj_fc2/kernel", "text.proj.2.weight", L.transpose())
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:  # pragma: no cover (unsupported)
    raise ValueError("transformers' CLIP classes have no Hugging Face text tower")


def normalize(sd: dict) -> dict:
    """open_clip's state dict without the HF encoder's buffers."""
    return {k: v for k, v in sd.items()
            if not k.startswith("text.transformer.") or k[17:] not in IGNORED}
