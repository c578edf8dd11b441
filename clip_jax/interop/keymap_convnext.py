"""The ConvNeXt family's names: timm's ConvNeXt as open_clip's ``TimmModel`` holds it
(``visual.trunk.stem.{0,1}``, ``visual.trunk.stages.i.{downsample.{0,1}, blocks.j.{conv_dw,
norm, mlp.fc1, mlp.fc2, gamma}}``, ``visual.trunk.head.norm``, then open_clip's
``visual.head.proj`` (Linear, no bias) or ``visual.head.mlp.{fc1, fc2}``), with open_clip's
text tower. transformers has no such CLIP.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import keymap_clip
from clip_jax.interop import layouts as L

NAME = "convnext"  # keymap.family's name for this table
IGNORED = {"open_clip": keymap_clip.IGNORED["open_clip"], "hf": frozenset()}
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    if fmt == "hf":
        return ["model.vision.family='convnext' (transformers has no ConvNeXt CLIP)"]
    return []


def _conv(tb: L.Table, ours: str, theirs: str) -> None:
    tb.add(f"{ours}/kernel", f"{theirs}.weight", L.conv())
    tb.add(f"{ours}/bias", f"{theirs}.bias", L.same())


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v = cfg.vision
    tb = L.Table()
    t = "visual.trunk"
    _conv(tb, "visual/stem_0", f"{t}.stem.0")
    tb.ln("visual/stem_1", f"{t}.stem.1")
    for i, blocks in enumerate(v.stages):
        o, s = f"visual/stages_{i}", f"{t}.stages.{i}"
        if i:
            tb.ln(f"{o}_downsample_0", f"{s}.downsample.0")
            _conv(tb, f"{o}_downsample_1", f"{s}.downsample.1")
        for j in range(blocks):
            ob, b = f"{o}_blocks_{j}", f"{s}.blocks.{j}"
            _conv(tb, f"{ob}/conv_dw", f"{b}.conv_dw")
            tb.ln(f"{ob}/norm", f"{b}.norm")
            tb.dense(f"{ob}/mlp/fc1", f"{b}.mlp.fc1")
            tb.dense(f"{ob}/mlp/fc2", f"{b}.mlp.fc2")
            tb.add(f"{ob}/gamma", f"{b}.gamma", L.same())
    tb.ln("visual/head_norm", f"{t}.head.norm")
    if v.proj_type == "mlp":
        tb.dense("visual/head_mlp/fc1", "visual.head.mlp.fc1")
        tb.dense("visual/head_mlp/fc2", "visual.head.mlp.fc2", bias=False)
    else:
        tb.dense("visual/head_proj", "visual.head.proj", bias=False)
    keymap_clip.open_clip_text(tb, cfg)
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:  # pragma: no cover (unsupported)
    raise ValueError("transformers has no ConvNeXt CLIP")


def normalize(sd: dict, fmt: str) -> dict:
    return keymap_clip.normalize(sd, fmt)
