"""The CLIP family's names (OpenAI's ViT: class token, patch embedding without bias, image
projection) in open_clip's ``CLIP`` state dict and in Hugging Face's ``CLIPModel``; and open_clip's
own text tower (``TextTransformer``), which both families use in open_clip.

open_clip's blocks may carry layer scale (``ls_1.gamma``, ``ls_2.gamma``) and qk-norm
(``attn.ln_q``, ``attn.ln_k``: open_clip's ``CustomResidualAttentionBlock``, whose other names
are those of the default block); its ViT may lack ``ln_pre`` (``no_ln_pre``) and average the
tokens (``pool_type: avg``), its text tower be bidirectional, pool anywhere and have a biased
projection (then an ``nn.Linear``). transformers' CLIP has none of these.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import layouts as L

# Non-parameter entries that some state dicts carry (buffers, OpenAI's metadata); skipped.
NAME = "clip"  # keymap.family's name for this table
# The image-tower switches that make this table's ViT (the ViT family's other one is SigLIP's).
SHAPE = {"vision.class_token": True, "vision.patch_bias": False, "vision.proj": True}
IGNORED = {
    "open_clip": frozenset({"attn_mask", "input_resolution", "context_length", "vocab_size"}),
    "hf": frozenset({"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}),
}
# Our parameters that a format keeps outside its state dict (CLIPModel has no logit_bias: it
# travels in config.json as "clip_jax_logit_bias").
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset({"logit_bias"})}
_HF = "transformers' CLIPModel"
HF_SWITCHES = {"vision.ln_pre": True, "vision.pool": "tok", "text.causal": True,
               "text.pool": "argmax", "text.proj_bias": False}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    """Why ``fmt`` cannot hold this CLIP-family model (empty if it can)."""
    if fmt == "open_clip":
        if cfg.vision.pool not in ("tok", "gap"):
            return [f"model.vision.pool={cfg.vision.pool!r} (open_clip's ViT pools 'tok' or "
                    f"'avg' = our 'gap')"]
        return []
    why = L.mismatches(cfg, HF_SWITCHES, _HF)
    if cfg.qk_norm:
        why.append(f"model.qk_norm=True ({_HF} has no qk-norm)")
    if cfg.ls_init_value is not None:
        why.append(f"model.ls_init_value={cfg.ls_init_value} ({_HF} has no layer scale)")
    return why


def open_clip_blocks(tb: L.Table, cfg: models.ModelConfig, ours: str, theirs: str, layers: int,
                     heads: int) -> None:
    for i in range(layers):
        o, t = f"{ours}/resblocks_{i}", f"{theirs}.{i}"
        tb.ln(f"{o}/ln_1", f"{t}.ln_1")
        tb.add(f"{o}/attn/kernel_in", f"{t}.attn.in_proj_weight", L.fused_in_w(heads))
        tb.add(f"{o}/attn/bias_in", f"{t}.attn.in_proj_bias", L.fused_in_b(heads))
        if cfg.qk_norm:
            tb.ln(f"{o}/attn/q_norm", f"{t}.attn.ln_q")
            tb.ln(f"{o}/attn/k_norm", f"{t}.attn.ln_k")
        tb.add(f"{o}/attn/kernel_out", f"{t}.attn.out_proj.weight", L.out_w(heads))
        tb.add(f"{o}/attn/bias_out", f"{t}.attn.out_proj.bias", L.same())
        open_clip_block_tail(tb, cfg, o, t)


def open_clip_block_tail(tb: L.Table, cfg: models.ModelConfig, o: str, t: str) -> None:
    """A block's ``ln_2``, MLP and layer scales (open_clip's names; CoCa's cross blocks too)."""
    tb.ln(f"{o}/ln_2", f"{t}.ln_2")
    tb.dense(f"{o}/mlp/c_fc", f"{t}.mlp.c_fc")
    tb.dense(f"{o}/mlp/c_proj", f"{t}.mlp.c_proj")
    if cfg.ls_init_value is not None:
        tb.add(f"{o}/ls_1/gamma", f"{t}.ls_1.gamma", L.same())
        tb.add(f"{o}/ls_2/gamma", f"{t}.ls_2.gamma", L.same())


def hf_blocks(tb: L.Table, ours: str, theirs: str, layers: int, heads: int) -> None:
    """transformers' encoder layers (CLIP's and SigLIP's are named alike)."""
    for i in range(layers):
        o, t = f"{ours}/resblocks_{i}", f"{theirs}.{i}"
        att = f"{t}.self_attn"
        tb.ln(f"{o}/ln_1", f"{t}.layer_norm1")
        tb.add(f"{o}/attn/kernel_in", tuple(f"{att}.{n}_proj.weight" for n in "qkv"),
               L.split_in_w(heads))
        tb.add(f"{o}/attn/bias_in", tuple(f"{att}.{n}_proj.bias" for n in "qkv"),
               L.split_in_b(heads))
        tb.add(f"{o}/attn/kernel_out", f"{att}.out_proj.weight", L.out_w(heads))
        tb.add(f"{o}/attn/bias_out", f"{att}.out_proj.bias", L.same())
        tb.ln(f"{o}/ln_2", f"{t}.layer_norm2")
        tb.dense(f"{o}/mlp/c_fc", f"{t}.mlp.fc1")
        tb.dense(f"{o}/mlp/c_proj", f"{t}.mlp.fc2")


def open_clip_text(tb: L.Table, cfg: models.ModelConfig) -> None:
    """open_clip's ``TextTransformer`` as its ``CLIP`` holds it (no ``text.`` prefix), and the
    logit parameters."""
    t = cfg.text
    tb.add("text/token_embedding", "token_embedding.weight", L.same())
    tb.add("text/positional_embedding", "positional_embedding", L.same())
    open_clip_blocks(tb, cfg, "text/transformer", "transformer.resblocks", t.layers, t.heads)
    tb.ln("text/ln_final", "ln_final")
    if t.proj_bias:  # an nn.Linear
        tb.add("text/text_projection", "text_projection.weight", L.transpose())
        tb.add("text/text_projection_bias", "text_projection.bias", L.same())
    else:  # a Parameter (width, embed_dim)
        tb.add("text/text_projection", "text_projection", L.same())
    tb.add("logit_scale", "logit_scale", L.same())
    if cfg.init_logit_bias is not None:
        tb.add("logit_bias", "logit_bias", L.same())


def open_clip_visual_trunk(tb: L.Table, cfg: models.ModelConfig) -> None:
    """The ViT's patch and position embeddings, ``ln_pre`` and blocks (CLIP's and CoCa's)."""
    v = cfg.vision
    tb.add("visual/conv1/kernel", "visual.conv1.weight", L.conv())
    tb.add("visual/class_embedding", "visual.class_embedding", L.same())
    tb.add("visual/positional_embedding", "visual.positional_embedding", L.same())
    if v.ln_pre:
        tb.ln("visual/ln_pre", "visual.ln_pre")
    open_clip_blocks(tb, cfg, "visual/transformer", "visual.transformer.resblocks", v.layers,
                     v.heads)


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    tb = L.Table()
    open_clip_visual_trunk(tb, cfg)
    tb.ln("visual/ln_post", "visual.ln_post")
    tb.add("visual/proj", "visual.proj", L.same())
    open_clip_text(tb, cfg)
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v, t = cfg.vision, cfg.text
    tb = L.Table()
    e = "vision_model.embeddings"
    tb.add("visual/conv1/kernel", f"{e}.patch_embedding.weight", L.conv())
    tb.add("visual/class_embedding", f"{e}.class_embedding", L.same())
    tb.add("visual/positional_embedding", f"{e}.position_embedding.weight", L.same())
    tb.ln("visual/ln_pre", "vision_model.pre_layrnorm")  # sic, as transformers spells it
    hf_blocks(tb, "visual/transformer", "vision_model.encoder.layers", v.layers, v.heads)
    tb.ln("visual/ln_post", "vision_model.post_layernorm")
    tb.add("visual/proj", "visual_projection.weight", L.transpose())
    e = "text_model.embeddings"
    tb.add("text/token_embedding", f"{e}.token_embedding.weight", L.same())
    tb.add("text/positional_embedding", f"{e}.position_embedding.weight", L.same())
    hf_blocks(tb, "text/transformer", "text_model.encoder.layers", t.layers, t.heads)
    tb.ln("text/ln_final", "text_model.final_layer_norm")
    tb.add("text/text_projection", "text_projection.weight", L.transpose())
    tb.add("logit_scale", "logit_scale", L.same())
    return tb.rules


def normalize(sd: dict, fmt: str) -> dict:
    """open_clip's CustomTextCLIP keeps the text tower under ``text.``: drop the prefix."""
    if fmt == "open_clip" and "text.token_embedding.weight" in sd:
        sd = {k[len("text."):] if k.startswith("text.") else k: v for k, v in sd.items()}
    return sd
