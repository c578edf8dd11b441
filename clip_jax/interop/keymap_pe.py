"""The Perception Encoder family's names: timm's ``Eva`` (``vit_pe_core_*``) as open_clip's
``TimmModel`` holds it (``visual.trunk.{patch_embed.proj, cls_token, pos_embed, norm_pre,
blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, attn_pool.*, head}``;
the RoPE tables are timm's non-persistent buffers, in no state dict), with open_clip's text
tower. open_clip builds PE-Core as a ``CustomTextCLIP`` (``text.*``): import takes either
naming; export writes ``CLIP``'s (no ``text.`` prefix) with a JSON open_clip builds as a
``CLIP``, whose state and embeddings are the same. transformers has no PE-Core CLIP here.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import keymap_clip, keymap_siglip
from clip_jax.interop import layouts as L

NAME = "pe"  # keymap.family's name for this table
IGNORED = {"open_clip": keymap_clip.IGNORED["open_clip"], "hf": frozenset()}
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    if fmt == "hf":
        return ["model.vision.family='pe' (transformers' CLIP classes hold no PE-Core)"]
    return []


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v = cfg.vision
    tb = L.Table()
    t = "visual.trunk"
    tb.add("visual/conv1/kernel", f"{t}.patch_embed.proj.weight", L.conv())
    if v.class_token:
        tb.add("visual/class_embedding", f"{t}.cls_token", L.reshape((v.width,), (1, 1, v.width)))
    n = (v.image_size // v.patch_size) ** 2 + int(v.class_token)
    tb.add("visual/positional_embedding", f"{t}.pos_embed", L.reshape((n, v.width),
                                                                        (1, n, v.width)))
    tb.ln("visual/ln_pre", f"{t}.norm_pre")
    keymap_siglip.timm_blocks(tb, "visual/transformer", f"{t}.blocks", v.layers, v.heads)
    tb.ln("visual/ln_post", f"{t}.norm")
    keymap_siglip.timm_attn_pool(tb, "visual/map_head", f"{t}.attn_pool", v.attn_pooler_heads)
    tb.dense("visual/head", f"{t}.head")
    keymap_clip.open_clip_text(tb, cfg)
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:  # pragma: no cover (unsupported)
    raise ValueError("transformers has no PE-Core CLIP")


normalize = keymap_clip.normalize  # CustomTextCLIP's text.* -> CLIP's names
