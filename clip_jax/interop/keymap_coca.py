"""open_clip CoCa's names (``coca_model.CoCa``): open_clip's ViT with its attentional pooler,
its text tower with the appended class token, and the captioning decoder.

    visual.{conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.i,
            attn_pool.{query, ln_q, ln_k, attn.{in_proj_weight | q/k/v_proj_weight,
                       in_proj_bias, out_proj}}, ln_post, proj}
    text.{token_embedding, positional_embedding, cls_emb, transformer.resblocks.i, ln_final,
          text_projection}
    text_decoder.{resblocks.i, cross_attn.i (ln_1_kv; attn.in_proj_weight fused q|k|v),
                  ln_final, text_projection (width, vocab)}
    logit_scale [, logit_bias]

The pooler is a torch ``nn.MultiheadAttention(embed_dim, heads, kdim=vdim=vision width)``: one
fused ``in_proj_weight`` when the tower is as wide as ``embed_dim``, else separate
``q_proj_weight`` (E, E), ``k_proj_weight`` / ``v_proj_weight`` (E, width); its bias is fused
either way. Our parameters: :mod:`clip_jax.models.heads` (``AttentionalPooler``),
:mod:`clip_jax.models.text` (``cls_emb``), :mod:`clip_jax.models.decoder`. Hugging Face has no
CoCa.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax import params as params_lib
from clip_jax.interop import keymap_clip
from clip_jax.interop import layouts as L

NAME = "coca"  # keymap.family's name for this table
IGNORED = {"open_clip": keymap_clip.IGNORED["open_clip"], "hf": frozenset()}
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}
_VIT = {"vision.family": "vit", "vision.class_token": True, "vision.patch_bias": False,
        "vision.proj": True}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    """Why ``fmt`` cannot hold this model with a decoder (empty if it can)."""
    if fmt != "open_clip":
        return ["a captioning decoder (model.decoder): Hugging Face's CLIPModel has none "
                "(export it with 'open_clip' as CoCa, or as a bundle)"]
    v, d = cfg.vision, cfg.decoder
    if d.input != "text":
        return ["its captioning decoder has embeddings of its own (model.decoder.input='embed', "
                "CapPa's); open_clip CoCa's decoder reads the text tower's tokens "
                "(model.decoder.input='text')"]
    why = L.mismatches(cfg, _VIT, "open_clip CoCa")
    if v.pool not in ("tok", "gap"):
        why.append(f"model.vision.pool={v.pool!r} (open_clip CoCa: 'tok' or 'gap')")
    if cfg.qk_norm:
        why.append("model.qk_norm=True (open_clip CoCa's decoder has no qk-norm)")
    kv = cfg.embed_dim if v.attn_pooler_queries else v.width
    if kv != d.width:
        why.append(f"the image tokens are {kv} wide and model.decoder.width={d.width} (open_clip "
                   "CoCa's cross-attention takes tokens as wide as the decoder)")
    return why


def _q_k_v_w(heads: int):
    """``kernel_q`` (E, H, hd), ``kernel_kv`` (W, 2, H, hd) <-> ``q_proj_weight`` (E, E),
    ``k_proj_weight``, ``v_proj_weight`` (E, W) (torch MHA with kdim = vdim = W != E)."""
    def fwd(xs):
        q, kv = xs
        w = kv.shape[0]
        return q.reshape(q.shape[0], -1).T, kv[:, 0].reshape(w, -1).T, kv[:, 1].reshape(w, -1).T

    def inv(ys):
        q, k, v = ys
        kv = [y.T.reshape(y.shape[1], heads, -1) for y in (k, v)]
        return q.T.reshape(q.shape[1], heads, -1), params_lib.stack(kv, axis=1)
    return fwd, inv


def _attention(tb: L.Table, ours: str, theirs: str, heads: int, fused: bool) -> None:
    """A torch ``nn.MultiheadAttention`` as our q / kv attention (decoder.CrossAttention)."""
    w = (f"{theirs}.in_proj_weight",) if fused else tuple(
        f"{theirs}.{n}_proj_weight" for n in "qkv")
    tb.add((f"{ours}/kernel_q", f"{ours}/kernel_kv"), w,
           L.q_kv_fused_w(heads) if fused else _q_k_v_w(heads))
    tb.add((f"{ours}/bias_q", f"{ours}/bias_kv"), f"{theirs}.in_proj_bias",
           L.q_kv_fused_b(heads))
    tb.add(f"{ours}/kernel_out", f"{theirs}.out_proj.weight", L.out_w(heads))
    tb.add(f"{ours}/bias_out", f"{theirs}.out_proj.bias", L.same())


def _decoder(tb: L.Table, cfg: models.ModelConfig) -> None:
    d = cfg.decoder
    keymap_clip.open_clip_blocks(tb, cfg, "text_decoder", "text_decoder.resblocks", d.layers,
                                 d.heads)
    for i in range(d.layers):
        o, t = f"text_decoder/cross_attn_{i}", f"text_decoder.cross_attn.{i}"
        tb.ln(f"{o}/ln_1", f"{t}.ln_1")
        tb.ln(f"{o}/ln_1_kv", f"{t}.ln_1_kv")
        _attention(tb, f"{o}/attn", f"{t}.attn", d.heads, fused=True)
        keymap_clip.open_clip_block_tail(tb, cfg, o, t)
    tb.ln("text_decoder/ln_final", "text_decoder.ln_final")
    tb.add("text_decoder/text_projection", "text_decoder.text_projection", L.same())


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v, t = cfg.vision, cfg.text
    tb = L.Table()
    keymap_clip.open_clip_visual_trunk(tb, cfg)
    if v.attn_pooler_queries:
        tb.add("visual/attn_pool/query", "visual.attn_pool.query", L.same())
        tb.ln("visual/attn_pool/ln_q", "visual.attn_pool.ln_q")
        tb.ln("visual/attn_pool/ln_k", "visual.attn_pool.ln_k")
        _attention(tb, "visual/attn_pool/attn", "visual.attn_pool.attn", v.attn_pooler_heads,
                   fused=cfg.embed_dim == v.width)
    tb.ln("visual/ln_post", "visual.ln_post")
    tb.add("visual/proj", "visual.proj", L.same())
    tb.add("text/token_embedding", "text.token_embedding.weight", L.same())
    tb.add("text/positional_embedding", "text.positional_embedding", L.same())
    if t.embed_cls:
        tb.add("text/cls_emb", "text.cls_emb", L.same())
    keymap_clip.open_clip_blocks(tb, cfg, "text/transformer", "text.transformer.resblocks",
                                 t.layers, t.heads)
    tb.ln("text/ln_final", "text.ln_final")
    if t.proj_bias:  # an nn.Linear
        tb.add("text/text_projection", "text.text_projection.weight", L.transpose())
        tb.add("text/text_projection_bias", "text.text_projection.bias", L.same())
    else:
        tb.add("text/text_projection", "text.text_projection", L.same())
    _decoder(tb, cfg)
    tb.add("logit_scale", "logit_scale", L.same())
    if cfg.init_logit_bias is not None:
        tb.add("logit_bias", "logit_bias", L.same())
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    raise ValueError("; ".join(unsupported(cfg, "hf")))


def normalize(sd: dict, fmt: str) -> dict:
    return sd
