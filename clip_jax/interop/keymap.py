"""open_clip and Hugging Face ``CLIPModel`` state-dict keys and layouts for our parameter tree.

Layouts (ours -> torch): Dense kernel (in, out) -> Linear weight (out, in); conv HWIO -> OIHW;
``attn/kernel_in`` (d, 3, heads, head_dim) -> ``in_proj_weight`` (3d, d) stacked q;k;v (HF:
three (d, d) ``{q,k,v}_proj``); ``attn/kernel_out`` (heads, head_dim, d) -> ``out_proj`` (d, d);
LayerNorm ``scale`` -> ``weight``. Every conversion is a permutation/reshape, so round trips are
bit-exact. :func:`to_external` / :func:`from_external` work on NumPy arrays, JAX arrays and (under
``jax.eval_shape``) ShapeDtypeStructs; every key's shape is checked and errors name the key.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from clip_jax import models
from clip_jax import params as params_lib

FORMATS = ("open_clip", "hf")

# Non-parameter entries that some state dicts carry (buffers, OpenAI's metadata); skipped.
_IGNORED = {
    "open_clip": {"attn_mask", "input_resolution", "context_length", "vocab_size"},
    "hf": {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"},
}


@dataclasses.dataclass(frozen=True)
class _Rule:
    ours: str
    theirs: tuple[str, ...]
    fwd: Callable[[Any], tuple]  # our array -> their arrays
    inv: Callable[[tuple], Any]  # their arrays -> our array


def _same():
    return (lambda x: (x,)), (lambda ys: ys[0])


def _transpose():  # Dense kernel (in, out) <-> torch Linear weight (out, in)
    return (lambda x: (x.T,)), (lambda ys: ys[0].T)


def _conv():  # HWIO <-> OIHW
    return (lambda x: (x.transpose(3, 2, 0, 1),)), (lambda ys: ys[0].transpose(2, 3, 1, 0))


def _fused_in_w(heads: int):  # (d, 3, H, hd) <-> in_proj_weight (3d, d), rows q;k;v, head-major
    return ((lambda x: (x.reshape(x.shape[0], -1).T,)),
            (lambda ys: ys[0].T.reshape(ys[0].shape[1], 3, heads, -1)))


def _fused_in_b(heads: int):  # (3, H, hd) <-> (3d,)
    return (lambda x: (x.reshape(-1),)), (lambda ys: ys[0].reshape(3, heads, -1))


def _out_w(heads: int):  # (H, hd, d) <-> out_proj.weight (d, d)
    return ((lambda x: (x.reshape(-1, x.shape[-1]).T,)),
            (lambda ys: ys[0].T.reshape(heads, -1, ys[0].shape[0])))


def _split_in_w(heads: int):  # (d, 3, H, hd) <-> q_proj, k_proj, v_proj weights (d, d)
    return ((lambda x: tuple(x[:, s].reshape(x.shape[0], -1).T for s in range(3))),
            (lambda ys: params_lib.stack([y.T.reshape(y.shape[1], heads, -1) for y in ys], axis=1)))


def _split_in_b(heads: int):  # (3, H, hd) <-> three (d,)
    return ((lambda x: tuple(x[s].reshape(-1) for s in range(3))),
            (lambda ys: params_lib.stack([y.reshape(heads, -1) for y in ys], axis=0)))


@functools.lru_cache(maxsize=32)
def _rules(cfg: models.ModelConfig, fmt: str) -> tuple[_Rule, ...]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    oc = fmt == "open_clip"
    rules: list[_Rule] = []

    def add(ours: str, theirs: str | tuple[str, ...], tf) -> None:
        rules.append(_Rule(ours, (theirs,) if isinstance(theirs, str) else tuple(theirs), *tf))

    def ln(ours: str, theirs: str) -> None:
        add(f"{ours}/scale", f"{theirs}.weight", _same())
        add(f"{ours}/bias", f"{theirs}.bias", _same())

    def dense(ours: str, theirs: str) -> None:
        add(f"{ours}/kernel", f"{theirs}.weight", _transpose())
        add(f"{ours}/bias", f"{theirs}.bias", _same())

    def blocks(ours: str, theirs: str, layers: int, heads: int) -> None:
        for i in range(layers):
            o, t = f"{ours}/resblocks_{i}", f"{theirs}.{i}"
            if oc:
                ln(f"{o}/ln_1", f"{t}.ln_1")
                add(f"{o}/attn/kernel_in", f"{t}.attn.in_proj_weight", _fused_in_w(heads))
                add(f"{o}/attn/bias_in", f"{t}.attn.in_proj_bias", _fused_in_b(heads))
                add(f"{o}/attn/kernel_out", f"{t}.attn.out_proj.weight", _out_w(heads))
                add(f"{o}/attn/bias_out", f"{t}.attn.out_proj.bias", _same())
                ln(f"{o}/ln_2", f"{t}.ln_2")
                dense(f"{o}/mlp/c_fc", f"{t}.mlp.c_fc")
                dense(f"{o}/mlp/c_proj", f"{t}.mlp.c_proj")
            else:
                att = f"{t}.self_attn"
                ln(f"{o}/ln_1", f"{t}.layer_norm1")
                add(f"{o}/attn/kernel_in", tuple(f"{att}.{n}_proj.weight" for n in "qkv"),
                    _split_in_w(heads))
                add(f"{o}/attn/bias_in", tuple(f"{att}.{n}_proj.bias" for n in "qkv"),
                    _split_in_b(heads))
                add(f"{o}/attn/kernel_out", f"{att}.out_proj.weight", _out_w(heads))
                add(f"{o}/attn/bias_out", f"{att}.out_proj.bias", _same())
                ln(f"{o}/ln_2", f"{t}.layer_norm2")
                dense(f"{o}/mlp/c_fc", f"{t}.mlp.fc1")
                dense(f"{o}/mlp/c_proj", f"{t}.mlp.fc2")

    v, t = cfg.vision, cfg.text
    if oc:
        add("visual/conv1/kernel", "visual.conv1.weight", _conv())
        add("visual/class_embedding", "visual.class_embedding", _same())
        add("visual/positional_embedding", "visual.positional_embedding", _same())
        ln("visual/ln_pre", "visual.ln_pre")
        blocks("visual/transformer", "visual.transformer.resblocks", v.layers, v.heads)
        ln("visual/ln_post", "visual.ln_post")
        add("visual/proj", "visual.proj", _same())
        add("text/token_embedding", "token_embedding.weight", _same())
        add("text/positional_embedding", "positional_embedding", _same())
        blocks("text/transformer", "transformer.resblocks", t.layers, t.heads)
        ln("text/ln_final", "ln_final")
        add("text/text_projection", "text_projection", _same())
        add("logit_scale", "logit_scale", _same())
        if cfg.init_logit_bias is not None:
            add("logit_bias", "logit_bias", _same())
    else:
        e = "vision_model.embeddings"
        add("visual/conv1/kernel", f"{e}.patch_embedding.weight", _conv())
        add("visual/class_embedding", f"{e}.class_embedding", _same())
        add("visual/positional_embedding", f"{e}.position_embedding.weight", _same())
        ln("visual/ln_pre", "vision_model.pre_layrnorm")  # sic, as transformers spells it
        blocks("visual/transformer", "vision_model.encoder.layers", v.layers, v.heads)
        ln("visual/ln_post", "vision_model.post_layernorm")
        add("visual/proj", "visual_projection.weight", _transpose())
        e = "text_model.embeddings"
        add("text/token_embedding", f"{e}.token_embedding.weight", _same())
        add("text/positional_embedding", f"{e}.position_embedding.weight", _same())
        blocks("text/transformer", "text_model.encoder.layers", t.layers, t.heads)
        ln("text/ln_final", "text_model.final_layer_norm")
        add("text/text_projection", "text_projection.weight", _transpose())
        add("logit_scale", "logit_scale", _same())
        # CLIPModel has no logit_bias: it travels in config.json ("clip_jax_logit_bias").
    return tuple(rules)


def _our_expected(cfg: models.ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Per-layer (unstacked) flat shapes of ``cfg``'s parameters."""
    return params_lib.unstack_layers(params_lib.flatten_params(models.abstract_params(cfg)))


def to_external(params, cfg: models.ModelConfig, fmt: str) -> dict[str, Any]:
    """Our params (nested or flat, scanned or not) -> an open_clip / HF state dict.

    Works on NumPy arrays (exact: only transposes and reshapes), on JAX arrays, and under
    ``jax.eval_shape`` on ShapeDtypeStructs (key and shape map without allocating).
    Arrays may be non-contiguous views; :func:`save_safetensors` makes them contiguous.
    """
    flat = params_lib.unstack_layers(params_lib.flatten_params(params))
    if fmt == "hf":
        flat.pop("logit_bias", None)
    expected = _our_expected(cfg)
    if fmt == "hf":
        expected.pop("logit_bias", None)
    params_lib.check(flat, expected, "clip_jax params", cast=False)
    out: dict[str, Any] = {}
    for rule in _rules(cfg, fmt):
        out.update(zip(rule.theirs, rule.fwd(flat[rule.ours]), strict=True))
    return out


def external_shapes(cfg: models.ModelConfig, fmt: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Keys and shapes of ``cfg``'s open_clip / HF state dict, computed without allocating."""
    return jax.eval_shape(functools.partial(to_external, cfg=cfg, fmt=fmt),
                          params_lib.flatten_params(models.abstract_params(cfg)))


def from_external(state_dict: Mapping[str, Any], cfg: models.ModelConfig, fmt: str,
                  source: str = "state dict") -> dict:
    """An open_clip / HF state dict -> our nested params, stacked when ``cfg.scan``.

    Every expected key must be present with the expected shape and a float dtype (cast to
    ``cfg.param_dtype``); missing and unexpected keys are listed in the ValueError.
    """
    sd = _normalize_state_dict(state_dict, fmt)
    expected = external_shapes(cfg, fmt)
    params_lib.check(sd, expected, source, cast=False)
    flat = {}
    for rule in _rules(cfg, fmt):
        flat[rule.ours] = rule.inv(tuple(np.asarray(sd[k]) for k in rule.theirs))
    if fmt == "hf" and cfg.init_logit_bias is not None:
        flat["logit_bias"] = np.asarray(cfg.init_logit_bias, np.float32)
    flat = params_lib.check(flat, _our_expected(cfg), source, cast=True)
    return params_lib.unflatten_params(params_lib.stack_layers(flat) if cfg.scan else flat)


def _normalize_state_dict(sd: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if fmt == "open_clip" and "text.token_embedding.weight" in sd:
        # open_clip's CustomTextCLIP layout: the text tower lives under "text."
        sd = {k[len("text."):] if k.startswith("text.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _IGNORED[fmt]}
