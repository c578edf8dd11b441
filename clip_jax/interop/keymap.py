"""open_clip and Hugging Face state-dict keys and layouts for our parameter tree.

Each model family has its own table of names, which its model file points to
(``Family.keymap``, :mod:`clip_jax.models.family`; a model with a decoder is CoCa's):
:mod:`~clip_jax.interop.keymap_clip`: OpenAI's ViT, as open_clip's ``CLIP`` and HF's
``CLIPModel`` name it, and open_clip's text tower; :mod:`~clip_jax.interop.keymap_siglip`:
SigLIP, as HF's ``SiglipModel`` and open_clip's timm trunk name it;
:mod:`~clip_jax.interop.keymap_resnet`: OpenAI's ModifiedResNet with its BatchNorm statistics,
as open_clip names it; :mod:`~clip_jax.interop.keymap_convnext`: timm's ConvNeXt in open_clip's
TimmModel; :mod:`~clip_jax.interop.keymap_siglip2`: SigLIP 2 NaFlex in HF's ``Siglip2Model``;
:mod:`~clip_jax.interop.keymap_coca`: open_clip's CoCa, any model with a decoder. A text
family with names of its own (``Family.keymap`` of ``model.text.family``:
:mod:`~clip_jax.interop.keymap_hf_text`, Hugging Face text towers) supplies the ``text/``
subtree's rules, composed with the image table's others (the logit parameters stay there).
:func:`family` says which table holds a config (for the ViT, by its image-tower switches), and a
config that no family (or the chosen format) can hold is refused with the reason.
Every conversion is a permutation/reshape/split (:mod:`~clip_jax.interop.layouts`), so round
trips are bit-exact. :func:`to_external` / :func:`from_external` work on NumPy arrays, JAX arrays
and (under ``jax.eval_shape``) ShapeDtypeStructs; every key's shape is checked and errors name
the key.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from clip_jax import models
from clip_jax import params as params_lib
from clip_jax.interop import keymap_clip, keymap_coca, keymap_siglip
from clip_jax.interop import layouts as L

FORMATS = ("open_clip", "hf")
_FORMAT_NAMES = {"open_clip": "open_clip", "hf": "Hugging Face"}

# The image-tower switches that make each of the ViT family's two tables (config path ->
# value); what else a format needs of the model, each table's module says (``unsupported``).
SHAPES = {"clip": keymap_clip.SHAPE, "siglip": keymap_siglip.SHAPE}


def _tables(cfg: models.ModelConfig) -> list:
    """The key-map modules of ``cfg``'s image-tower family: ``keymap_coca`` for a model with a
    captioning decoder, else those the family registered (``Family.keymap``: module names or
    modules, :mod:`clip_jax.models.family`)."""
    if cfg.decoder is not None:
        return [keymap_coca]
    fam = models.family.vision(cfg)
    if fam.keymap is None:
        raise ValueError(f"model.vision.family={fam.name!r} has no key maps: neither open_clip "
                         "nor Hugging Face can hold it")
    pointers = fam.keymap if isinstance(fam.keymap, tuple | list) else (fam.keymap,)
    return [_load(p) for p in pointers]


def _load(pointer):
    return importlib.import_module(pointer) if isinstance(pointer, str) else pointer


def _text_table(cfg: models.ModelConfig):
    """The key-map module of a text family with names of its own (``Family.keymap`` of
    ``model.text.family``, e.g. :mod:`~clip_jax.interop.keymap_hf_text`), or None (the
    default ``transformer`` tower, which each image family's table names). Its rules replace
    the image table's ``text/`` rules: a model's table is the two composed."""
    fam = models.family.text(cfg)
    return None if fam.keymap is None else _load(fam.keymap)


def _table(cfg: models.ModelConfig):
    """The table that holds ``cfg``: its family's only one, or the one whose ``SHAPE`` (the
    image-tower switches) ``cfg`` has; a ValueError names the switches that keep it from the
    nearer one otherwise."""
    tables = _tables(cfg)
    if len(tables) == 1:
        return tables[0]
    diffs = {t.NAME: L.mismatches(cfg, t.SHAPE, t.NAME) for t in tables}
    for t in tables:
        if not diffs[t.NAME]:
            return t
    near = min(diffs, key=lambda n: len(diffs[n]))
    raise ValueError(f"this model is neither CLIP- nor SigLIP-shaped, so neither open_clip nor "
                     f"Hugging Face can hold it; nearest is {near}, which differs in "
                     f"{', '.join(diffs[near])}")


def family(cfg: models.ModelConfig) -> str:
    """The name of the key-map table that holds ``cfg`` (``"coca"``: a model with a captioning
    decoder, ``"resnet"``, ``"convnext"``, ``"naflex"``: SigLIP 2 NaFlex, ``"clip"`` or
    ``"siglip"``: the ViT by its switches, or a registered family's own)."""
    return _table(cfg).NAME


def _family_module(cfg: models.ModelConfig, fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    mod = _table(cfg)
    fam = mod.NAME
    text = _text_table(cfg)
    why = mod.unsupported(cfg, fmt) + (text.unsupported(cfg, fmt) if text else [])
    if why:
        raise ValueError(f"the {_FORMAT_NAMES[fmt]} format cannot hold this {fam} model: "
                         f"{'; '.join(why)}")
    return mod


@functools.lru_cache(maxsize=32)
def _rules(cfg: models.ModelConfig, fmt: str) -> tuple[L.Rule, ...]:
    mods = [_family_module(cfg, fmt)]
    text = _text_table(cfg)
    if text is not None:
        mods.append(text)
    rules = [mod.open_clip_rules(cfg) if fmt == "open_clip" else mod.hf_rules(cfg)
             for mod in mods]
    if text is not None:  # the text family's own names for the whole text/ subtree
        rules[0] = [r for r in rules[0] if not r.ours[0].startswith("text/")]
    return tuple(r for group in rules for r in group)


def _our_expected(cfg: models.ModelConfig, fmt: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Per-layer (unstacked) flat shapes of ``cfg``'s parameters that ``fmt``'s state dict
    holds."""
    flat = params_lib.unstack_layers(params_lib.flatten_params(models.abstract_params(cfg)))
    outside = _family_module(cfg, fmt).OUTSIDE[fmt]
    return {k: v for k, v in flat.items() if k not in outside}


def to_external(params, cfg: models.ModelConfig, fmt: str) -> dict[str, Any]:
    """Our params (nested or flat, scanned or not) -> an open_clip / HF state dict.

    Works on NumPy arrays (exact: only transposes and reshapes), on JAX arrays, and under
    ``jax.eval_shape`` on ShapeDtypeStructs (key and shape map without allocating).
    Arrays may be non-contiguous views; :func:`save_safetensors` makes them contiguous.
    """
    rules = _rules(cfg, fmt)
    outside = _family_module(cfg, fmt).OUTSIDE[fmt]
    flat = params_lib.unstack_layers(params_lib.flatten_params(params))
    flat = {k: v for k, v in flat.items() if k not in outside}
    expected = _our_expected(cfg, fmt)
    params_lib.check(flat, expected, "clip_jax params", cast=False)
    out: dict[str, Any] = {}
    for rule in rules:
        out.update(zip(rule.theirs, rule.fwd(tuple(flat[k] for k in rule.ours)), strict=True))
    return out


def external_shapes(cfg: models.ModelConfig, fmt: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Keys and shapes of ``cfg``'s open_clip / HF state dict, computed without allocating."""
    return jax.eval_shape(functools.partial(to_external, cfg=cfg, fmt=fmt),
                          params_lib.flatten_params(models.abstract_params(cfg)))


def from_external(state_dict: Mapping[str, Any], cfg: models.ModelConfig, fmt: str,
                  source: str = "state dict", allow_damaged: bool = False) -> dict:
    """An open_clip / HF state dict -> our nested params, stacked when ``cfg.scan``.

    Every expected key must be present with the expected shape and a float dtype (cast to
    ``cfg.param_dtype``); missing and unexpected keys are listed in the ValueError. A parameter
    the format keeps outside its state dict (CLIPModel's logit bias) takes ``cfg``'s value.
    Values that cannot be right are refused with the tensor's name (:func:`check_values`)
    unless ``allow_damaged`` (``export import --allow-damaged-weights``).
    """
    mod = _family_module(cfg, fmt)
    sd = _normalize_state_dict(state_dict, mod, fmt)
    text = _text_table(cfg)
    if text is not None:
        sd = text.normalize(sd)
    expected = external_shapes(cfg, fmt)
    params_lib.check(sd, expected, source, cast=False)
    if not allow_damaged:
        check_values(sd, source)
    flat = {}
    for rule in _rules(cfg, fmt):
        ours = rule.inv(tuple(np.asarray(sd[k]) for k in rule.theirs))
        flat.update(zip(rule.ours, ours, strict=True))
    if "logit_bias" in mod.OUTSIDE[fmt] and cfg.init_logit_bias is not None:
        flat["logit_bias"] = np.asarray(cfg.init_logit_bias, np.float32)
    want = params_lib.unstack_layers(params_lib.flatten_params(models.abstract_params(cfg)))
    flat = params_lib.check(flat, want, source, cast=True)
    return params_lib.unflatten_params(params_lib.stack_layers(flat) if cfg.scan else flat)


def check_values(sd: Mapping[str, Any], source: str) -> None:
    """Every imported tensor is finite, and statistics are possible (a variance is >= 0): a
    model built from anything else gives NaN embeddings, so the import is refused, naming the
    tensor (and the first bad value's index)."""
    for key in sorted(sd):
        a = np.asarray(sd[key])
        if a.dtype.kind == "V":  # bfloat16 (ml_dtypes)
            a = a.astype(np.float32)
        if a.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(a)
        what = "a non-finite value"
        if not bad.any() and key.endswith(("running_var", "/var")):
            bad, what = a < 0, "a negative variance"
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{source}: {key} holds {what} ({a[at] if at else a.item()!r} at "
                             f"index {at}); the weights are damaged, refusing to import them "
                             "(--allow-damaged-weights imports them anyway)")


def _normalize_state_dict(sd: Mapping[str, Any], mod, fmt: str) -> dict[str, Any]:
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = mod.normalize(sd, fmt)
    return {k: v for k, v in sd.items() if k not in mod.IGNORED[fmt]}
