"""SigLIP 2 NaFlex's names (the ``naflex`` image tower, :mod:`clip_jax.models.naflex`) in Hugging
Face's ``Siglip2Model``: SigLIP's (:mod:`~clip_jax.interop.keymap_siglip`, text tower included)
but for the patch embedding, an ``nn.Linear`` over flattened (row, column, channel) patches:
``patch_embedding.weight`` (D, p*p*3) <-> our ``conv1/kernel`` (p, p, 3, D) transposed and
viewed as a matrix. ``position_embedding.weight`` (G*G, D) is our ``positional_embedding`` as it
is. open_clip's released models have no NaFlex tower.
"""

from __future__ import annotations

from clip_jax import models
from clip_jax.interop import keymap_siglip
from clip_jax.interop import layouts as L

NAME = "naflex"  # keymap.family's name for this table
IGNORED = keymap_siglip.IGNORED
OUTSIDE = {"open_clip": frozenset(), "hf": frozenset()}
_HF = "transformers' Siglip2Model"
HF_SWITCHES = {"vision.ln_pre": False, "vision.patch_bias": True, "vision.pool": "map",
               "vision.proj": False, **keymap_siglip.HF_SWITCHES}


def unsupported(cfg: models.ModelConfig, fmt: str) -> list[str]:
    """Why ``fmt`` cannot hold this NaFlex model (empty if it can)."""
    if fmt == "open_clip":
        return ["model.vision.family='naflex' (open_clip's released models have no NaFlex "
                "tower; export it with 'hf')"]
    why = L.mismatches(cfg, HF_SWITCHES, _HF)
    why += [w.replace("SiglipModel", "Siglip2Model")
            for w in keymap_siglip.unsupported(cfg, "hf") if w not in why]
    return why


def _linear(patch: int):  # (p, p, 3, D) <-> Linear weight (D, p*p*3)
    return ((lambda xs: (xs[0].reshape(-1, xs[0].shape[-1]).T,)),
            (lambda ys: (ys[0].T.reshape(patch, patch, 3, ys[0].shape[0]),)))


def hf_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    kernel = ("visual/conv1/kernel",)
    return [L.Rule(r.ours, r.theirs, *_linear(cfg.vision.patch_size)) if r.ours == kernel
            else r for r in keymap_siglip.hf_rules(cfg)]


def open_clip_rules(cfg: models.ModelConfig) -> list[L.Rule]:
    raise ValueError("; ".join(unsupported(cfg, "open_clip")))


normalize = keymap_siglip.normalize
