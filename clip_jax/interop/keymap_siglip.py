"""The SigLIP family's names (image tower: patch bias, no class token, no pre-LN, MAP head, no
projection; HF's text tower: bidirectional, pooled at the last position, head with bias) in
Hugging Face's ``SiglipModel`` (SigLIP, and SigLIP 2 at a fixed resolution) and in open_clip,
whose image tower is then a timm ViT (``visual.trunk.*``, pooling ``visual.trunk.attn_pool.*``)
and whose text tower is its own ``TextTransformer`` (``text.*`` in its ``CustomTextCLIP``).

The MAP head's attention is torch's ``nn.MultiheadAttention`` in HF (``in_proj_weight`` rows
q;k;v) and timm's ``AttentionPoolLatent`` in open_clip (``q`` and ``kv`` Linears, ``kv`` rows
k;v); both map onto our ``kernel_q`` (d, H, hd) and ``kernel_kv`` (d, 2, H, hd).
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import keymap_clip
from clip_jax.interop import layouts as L
from clip_jax.interop.keymap_clip import hf_blocks

NAME = "siglip"  # keymap.family's name for this table
# The image-tower switches that make this table's ViT (the ViT family's other one is CLIP's).
SHAPE = {"vision.class_token": False, "vision.ln_pre": False, "vision.patch_bias": True,
         "vision.pool": "map", "vision.proj": False}
IGNORED = keymap_clip.IGNORED
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}
HF_SWITCHES = {"text.causal": False, "text.pool": "last", "text.proj_bias": True}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    """Why ``fmt`` cannot hold this SigLIP-family model (empty if it can)."""
    name = "transformers' SiglipModel" if fmt == "hf" else "open_clip's timm SigLIP trunk"
    why = L.mismatches(cfg, HF_SWITCHES, name) if fmt == "hf" else []
    if cfg.qk_norm:
        why.append(f"model.qk_norm=True ({name} has no qk-norm)")
    if cfg.ls_init_value is not None:
        why.append(f"model.ls_init_value is set ({name} has no layer scale)")
    if cfg.embed_dim != cfg.vision.width:
        why.append(f"model.embed_dim={cfg.embed_dim} differs from vision.width="
                   f"{cfg.vision.width} ({name}'s image embedding is the MAP head's output)")
    return why


def _logits(tb: L.Table, cfg: models.ModelConfig, shape: tuple[int, ...]) -> None:
    tb.add("logit_scale", "logit_scale", L.reshape((), shape))
    if cfg.init_logit_bias is not None:  # HF's export writes a zero bias for a model without
        tb.add("logit_bias", "logit_bias", L.reshape((), shape))


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v, t = cfg.vision, cfg.text
    tb = L.Table()
    e = "vision_model.embeddings"
    tb.add("visual/conv1/kernel", f"{e}.patch_embedding.weight", L.conv())
    tb.add("visual/conv1/bias", f"{e}.patch_embedding.bias", L.same())
    tb.add("visual/positional_embedding", f"{e}.position_embedding.weight", L.same())
    hf_blocks(tb, "visual/transformer", "vision_model.encoder.layers", v.layers, v.heads)
    tb.ln("visual/ln_post", "vision_model.post_layernorm")
    o, h = "visual/map_head", "vision_model.head"
    tb.add(f"{o}/probe", f"{h}.probe", L.same())
    tb.add((f"{o}/attn/kernel_q", f"{o}/attn/kernel_kv"), f"{h}.attention.in_proj_weight",
           L.q_kv_fused_w(v.heads))
    tb.add((f"{o}/attn/bias_q", f"{o}/attn/bias_kv"), f"{h}.attention.in_proj_bias",
           L.q_kv_fused_b(v.heads))
    tb.add(f"{o}/attn/kernel_out", f"{h}.attention.out_proj.weight", L.out_w(v.heads))
    tb.add(f"{o}/attn/bias_out", f"{h}.attention.out_proj.bias", L.same())
    tb.ln(f"{o}/ln", f"{h}.layernorm")
    tb.dense(f"{o}/mlp/c_fc", f"{h}.mlp.fc1")
    tb.dense(f"{o}/mlp/c_proj", f"{h}.mlp.fc2")
    e = "text_model.embeddings"
    tb.add("text/token_embedding", f"{e}.token_embedding.weight", L.same())
    tb.add("text/positional_embedding", f"{e}.position_embedding.weight", L.same())
    hf_blocks(tb, "text/transformer", "text_model.encoder.layers", t.layers, t.heads)
    tb.ln("text/ln_final", "text_model.final_layer_norm")
    tb.add("text/text_projection", "text_model.head.weight", L.transpose())
    tb.add("text/text_projection_bias", "text_model.head.bias", L.same())
    _logits(tb, cfg, (1,))
    return tb.rules


def timm_blocks(tb: L.Table, ours: str, theirs: str, layers: int, heads: int) -> None:
    for i in range(layers):
        o, t = f"{ours}/resblocks_{i}", f"{theirs}.{i}"
        tb.ln(f"{o}/ln_1", f"{t}.norm1")
        tb.add(f"{o}/attn/kernel_in", f"{t}.attn.qkv.weight", L.fused_in_w(heads))
        tb.add(f"{o}/attn/bias_in", f"{t}.attn.qkv.bias", L.fused_in_b(heads))
        tb.add(f"{o}/attn/kernel_out", f"{t}.attn.proj.weight", L.out_w(heads))
        tb.add(f"{o}/attn/bias_out", f"{t}.attn.proj.bias", L.same())
        tb.ln(f"{o}/ln_2", f"{t}.norm2")
        tb.dense(f"{o}/mlp/c_fc", f"{t}.mlp.fc1")
        tb.dense(f"{o}/mlp/c_proj", f"{t}.mlp.fc2")


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v = cfg.vision
    tb = L.Table()
    tr = "visual.trunk"
    tb.add("visual/conv1/kernel", f"{tr}.patch_embed.proj.weight", L.conv())
    tb.add("visual/conv1/bias", f"{tr}.patch_embed.proj.bias", L.same())
    n = (v.image_size // v.patch_size) ** 2
    tb.add("visual/positional_embedding", f"{tr}.pos_embed", L.reshape((n, v.width),
                                                                         (1, n, v.width)))
    timm_blocks(tb, "visual/transformer", f"{tr}.blocks", v.layers, v.heads)
    tb.ln("visual/ln_post", f"{tr}.norm")
    timm_attn_pool(tb, "visual/map_head", f"{tr}.attn_pool", v.heads)
    keymap_clip.open_clip_text(tb, cfg)
    return tb.rules


def timm_attn_pool(tb: L.Table, o: str, h: str, heads: int) -> None:
    """timm's ``AttentionPoolLatent`` (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp``)
    as our MAP head (SigLIP's and the Perception Encoder's)."""
    tb.add(f"{o}/probe", f"{h}.latent", L.same())
    tb.add((f"{o}/attn/kernel_q", f"{o}/attn/kernel_kv"), (f"{h}.q.weight", f"{h}.kv.weight"),
           L.q_kv_split_w(heads))
    tb.add((f"{o}/attn/bias_q", f"{o}/attn/bias_kv"), (f"{h}.q.bias", f"{h}.kv.bias"),
           L.q_kv_split_b(heads))
    tb.add(f"{o}/attn/kernel_out", f"{h}.proj.weight", L.out_w(heads))
    tb.add(f"{o}/attn/bias_out", f"{h}.proj.bias", L.same())
    tb.ln(f"{o}/ln", f"{h}.norm")
    tb.dense(f"{o}/mlp/c_fc", f"{h}.mlp.fc1")
    tb.dense(f"{o}/mlp/c_proj", f"{h}.mlp.fc2")


normalize = keymap_clip.normalize
