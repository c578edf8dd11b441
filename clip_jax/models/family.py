"""The tower families and their registry: each family registers itself from its own module.

A :class:`Family` is everything clip_jax needs of one image or text tower: its Flax module
(built as ``module(model_cfg)``), the checks of its switches, its FLOPs, its layer ids (for
``optimizer.layer_decay``), its presets, its open_clip model-config JSON and a pointer to its
state-dict key maps (``keymap``: the dotted name of a :mod:`clip_jax.interop` module, or such a
module itself; interop resolves it, so models never import the formats). ``model.vision.family``
and ``model.text.family`` name a registered family; :func:`register` adds one (its presets
join :data:`PRESETS`), :func:`unregister` takes it out again.

Adding a family: write its module (say ``models/foo.py``) ending in ``register(Family(...))``,
and import it once in ``models/__init__.py``. Nothing else names it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

TOWERS = ("vision", "text")


@dataclasses.dataclass(frozen=True)
class Family:
    """One tower family. Hooks take the :class:`~clip_jax.models.config.ModelConfig` (``cfg``)
    unless said otherwise; a hook left None means the family has no such thing."""

    name: str
    module: Any  # the Flax module class: module(cfg)(inputs, train) (text: module(cfg)(ids))
    check: Callable[[Any], None]  # the tower config's own switches (VisionConfig / TextConfig)
    tower: str = "vision"  # "vision" | "text"
    check_model: Callable[[Any], None] | None = None  # switches across the whole ModelConfig
    # (cfg, train, remat policy) -> (forward matmul FLOPs per sample, what remat recomputes)
    flops: Callable[[Any, bool, str], tuple[float, float]] | None = None
    depth: Callable[[Any], int] | None = None  # L: the tower's number of blocks
    # (cfg, path inside the tower, shape) -> layer id in [0, L + 1] (an array over a scanned
    # stack's leading axis) or None (no layer: an error under layer decay)
    layer_id: Callable[[Any, str, tuple], Any] | None = None
    scanned: bool = False  # model.scan stacks its blocks into transformer/resblocks
    tokens: bool = False  # un-pooled tokens for a captioning decoder (encode_image_tokens)
    presets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    keymap: Any = None  # "clip_jax.interop.keymap_x" (or several, a tuple), a module, None
    # open_clip JSON: vision_cfg -> (VisionConfig, act, ln eps), or None if not this family's;
    # and back: cfg -> (vision_cfg dict, the image tower's act open_clip's quick_gelu must
    # agree with, or None)
    from_open_clip: Callable[[Mapping, bool], Any] | None = None
    to_open_clip: Callable[[Any], tuple[dict, str | None]] | None = None


VISION: dict[str, Family] = {}
TEXT: dict[str, Family] = {}
_REGISTRY = {"vision": VISION, "text": TEXT}
PRESETS: dict[str, Any] = {}  # every registered family's presets, by name
_OWNER: dict[str, str] = {}  # preset name -> the family that registered it


def register(fam: Family) -> Family:
    """Add ``fam`` (its presets to :data:`PRESETS`); a name already taken is a ValueError."""
    if fam.tower not in TOWERS:
        raise ValueError(f"family {fam.name!r}: tower must be one of {', '.join(TOWERS)}")
    table = _REGISTRY[fam.tower]
    if fam.name in table:
        raise ValueError(f"a {fam.tower} family {fam.name!r} is already registered")
    clash = sorted(set(fam.presets) & set(PRESETS))
    if clash:
        raise ValueError(f"family {fam.name!r}: presets {clash} are already registered")
    table[fam.name] = fam
    add_presets(fam.name, fam.presets)
    return fam


def add_presets(owner: str, presets: Mapping[str, Any]) -> None:
    """Presets built after their family is registered (they are checked against it)."""
    for name, cfg in presets.items():
        if name in PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        PRESETS[name] = cfg
        _OWNER[name] = owner


def unregister(name: str, tower: str = "vision") -> Family:
    """Take family ``name`` and its presets out again (a test's toy family)."""
    fam = _REGISTRY[tower].pop(name)
    for preset in [p for p, o in _OWNER.items() if o == name]:
        del PRESETS[preset], _OWNER[preset]
    return fam


def get(tower: str, name: str) -> Family:
    table = _REGISTRY[tower]
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"model.{tower}.family={name!r}: must be one of {', '.join(table)}")
    return table[name]


def vision(cfg) -> Family:
    return get("vision", cfg.vision.family)


def text(cfg) -> Family:
    return get("text", cfg.text.family)


# --- helpers the families share ---------------------------------------------------------------

# The matmuls of a block each rematerialisation policy (clip_jax.remat.POLICIES) recomputes in
# the backward: those whose outputs it does not keep and the backward needs. ``c_proj`` is
# never recomputed (its gradients need only its input and weight); ``full`` recomputes every
# other one (measured so on XLA's unrolled compiles); ``values`` (p v) is redone only where the
# attention output feeds the output projection's weight gradient unsaved; ``scores`` wherever
# the softmax is not kept (no policy keeps it); ``out`` where the residual sum after attention
# (the second LayerNorm's input) must be rebuilt.
REMAT_REDO = {
    "none": (),
    "save_dot_except_mlp": ("scores", "c_fc"),
    "minimal": ("scores", "values"),
    "minimal_offloaded": ("scores", "values"),
    "save_attention": ("scores", "out", "c_fc"),
    "save_qkv_proj": ("scores", "values", "out", "c_fc"),
    "save_out_proj": ("qkv", "scores", "values", "c_fc"),
    "full": ("qkv", "scores", "values", "out", "c_fc"),
}


def block_flops(tokens: int, width: int, mlp_dim: int, remat: str = "full") -> tuple[float, float]:
    """Forward matmul FLOPs of one residual attention block on one sample, and the part of
    them that the ``remat`` policy recomputes in the backward (:data:`REMAT_REDO`)."""
    t, d, m = tokens, width, mlp_dim
    parts = {"qkv": 2 * t * d * 3 * d,
             "scores": 2 * t * t * d,  # q k^T over all heads
             "values": 2 * t * t * d,  # p v
             "out": 2 * t * d * d,
             "c_fc": 2 * t * d * m,
             "c_proj": 2 * t * d * m}
    return sum(parts.values()), sum(parts[k] for k in REMAT_REDO[remat])


def conv_flops(hw: int, k: int, cin: int, cout: int, groups: int = 1) -> int:
    """A k x k convolution producing an (hw x hw x cout) map from cin channels."""
    return 2 * hw * hw * k * k * (cin // groups) * cout


_BLOCK = re.compile(r"^transformer/resblocks(?:_(\d+))?/")


def transformer_layer_id(path: str, shape: tuple, layers: int, embeddings, final_norm, head):
    """A transformer tower's layer ids (BEiT / timm): the ``embeddings`` names 0, block i
    (``transformer/resblocks_i``; a scanned stack: one id per block) i + 1, the
    ``final_norm`` names the last block's L (timm groups ViT's final norm so), the ``head``
    names L + 1; None for any other name. ``path`` is inside the tower, e.g. ``ln_pre/scale``."""
    m = _BLOCK.match(path)
    if m:
        return int(m[1]) + 1 if m[1] is not None else np.arange(1, shape[0] + 1)
    first = path.split("/", 1)[0]
    if first in embeddings:
        return 0
    if first in final_norm:
        return layers
    if first in head:
        return layers + 1
    return None
