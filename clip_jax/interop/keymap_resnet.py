"""The ResNet family's names: OpenAI's ModifiedResNet as open_clip's ``CLIP`` holds it
(``visual.conv1/bn1 .. conv3/bn3``, ``visual.layer{1..4}.{j}.{conv1,bn1,...,downsample.0/1}``,
``visual.attnpool.{positional_embedding, q_proj, k_proj, v_proj, c_proj}``) with open_clip's
text tower. BatchNorm: ``weight``/``bias`` are our ``scale``/``bias`` params; ``running_mean``,
``running_var`` and ``num_batches_tracked`` our ``batch_stats`` (``mean``, ``var``, and the
count, kept as float32 by us and written as torch's int64). transformers has no such model.
"""

from __future__ import annotations

import numpy as np

from clip_jax import models
from clip_jax.interop import keymap_clip
from clip_jax.interop import layouts as L

NAME = "resnet"  # keymap.family's name for this table
IGNORED = {"open_clip": keymap_clip.IGNORED["open_clip"], "hf": frozenset()}
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}
_COUNT = "num_batches_tracked"


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    if fmt == "hf":
        return ["model.vision.family='resnet' (transformers has no ModifiedResNet CLIP)"]
    return []


def _count():
    """Our float32 count <-> torch's int64 ``num_batches_tracked`` (abstract values pass)."""
    def fwd(xs):
        x = xs[0]
        return (np.asarray(x).astype(np.int64),) if isinstance(x, np.ndarray) else (x,)
    return fwd, (lambda ys: ys)


def _bn(tb: L.Table, ours: str, theirs: str) -> None:
    tb.ln(f"visual/{ours}", theirs)  # weight, bias
    stats = f"{models.STATS}/visual/{ours}"
    tb.add(f"{stats}/mean", f"{theirs}.running_mean", L.same())
    tb.add(f"{stats}/var", f"{theirs}.running_var", L.same())
    tb.add(f"{stats}/{_COUNT}", f"{theirs}.{_COUNT}", _count())


def _conv(tb: L.Table, ours: str, theirs: str) -> None:
    tb.add(f"visual/{ours}/kernel", f"{theirs}.weight", L.conv())


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    v = cfg.vision
    tb = L.Table()
    for i in (1, 2, 3):
        _conv(tb, f"conv{i}", f"visual.conv{i}")
        _bn(tb, f"bn{i}", f"visual.bn{i}")
    for s, blocks in enumerate(v.stages, start=1):
        for j in range(blocks):
            o, t = f"layer{s}_{j}", f"visual.layer{s}.{j}"
            for i in (1, 2, 3):
                _conv(tb, f"{o}/conv{i}", f"{t}.conv{i}")
                _bn(tb, f"{o}/bn{i}", f"{t}.bn{i}")
            if j == 0:  # every stage's first block changes the width (layer1: w -> 4w)
                _conv(tb, f"{o}/downsample_0", f"{t}.downsample.0")
                _bn(tb, f"{o}/downsample_1", f"{t}.downsample.1")
    a = "attnpool"
    tb.add(f"visual/{a}/positional_embedding", f"visual.{a}.positional_embedding", L.same())
    for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
        tb.dense(f"visual/{a}/{name}", f"visual.{a}.{name}")
    keymap_clip.open_clip_text(tb, cfg)
    return tb.rules


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:  # pragma: no cover (unsupported)
    raise ValueError("transformers has no ModifiedResNet CLIP")


def normalize(sd: dict, fmt: str) -> dict:
    """torch's int64 counts as float32 (our batch_stats' dtype)."""
    sd = keymap_clip.normalize(sd, fmt)
    return {k: (np.asarray(v, np.float32) if k.endswith(_COUNT) else v) for k, v in sd.items()}
