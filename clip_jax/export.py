"""Export and import: self-contained inference bundles, open_clip and Hugging Face CLIP.

CLI::

    # SRC: a training workdir, its checkpoints/ directory (latest step), or a bundle
    python -m clip_jax.export bundle    --checkpoint SRC --out DIR
    python -m clip_jax.export open_clip --checkpoint SRC --out DIR
    python -m clip_jax.export hf        --checkpoint SRC --out DIR
    # open_clip (.safetensors, or a .pt/.bin state dict read with torch.load(weights_only=True))
    # or an HF CLIP directory -> bundle; a bundle is a valid ``checkpoint.init_from`` (fine-tuning)
    python -m clip_jax.export import --from {open_clip,hf} --src PATH [--model-config JSON]
        [--tokenizer SPEC] [--scan] --out BUNDLE

Formats:

* **bundle**: ``model.safetensors`` (our parameter tree, keys ``/``-joined paths such as
  ``visual/conv1/kernel``, in the layout of the recorded config: ``resblocks_N`` or one stacked
  ``resblocks`` when ``scan``), ``config.json`` (``{"format": "clip_jax.bundle", "version": 1,
  "model": ModelConfig.to_dict(), "preprocess": {"image_size", "mean", "std", "resize"}}``) and
  the tokenizer's own files (``tok.save(bundle)``). :func:`load_bundle` (``clip_jax.load``) turns
  it into an :class:`InferenceModel`; :func:`load_bundle_params` reads it into any layout.
* **open_clip**: ``open_clip_model.safetensors`` with open_clip's exact ``state_dict`` keys and
  torch layouts, ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``, as open_clip's
  hub format) and our tokenizer in ``tokenizer/``.
* **hf**: a ``transformers.CLIPModel`` directory: ``config.json`` (CLIPConfig),
  ``model.safetensors`` (q/k/v split), ``preprocessor_config.json``, the HF tokenizer files
  when the tokenizer can be expressed as one (CLIP BPE: ``vocab.json`` + ``merges.txt``; trained
  BPE: ``tokenizer.json``) and our tokenizer in ``tokenizer/``. ``text_config.eos_token_id``
  is the end-of-text id, so HF pools at the first end token, which is where our
  ``argmax(ids)`` pools (eot is the largest id).

Layouts (ours -> torch): Dense kernel (in, out) -> Linear weight (out, in); conv HWIO -> OIHW;
``attn/kernel_in`` (d, 3, heads, head_dim) -> ``in_proj_weight`` (3d, d) stacked q;k;v (HF:
three (d, d) ``{q,k,v}_proj``); ``attn/kernel_out`` (heads, head_dim, d) -> ``out_proj`` (d, d);
LayerNorm ``scale`` -> ``weight``. Every conversion is a permutation/reshape, so round trips are
bit-exact. Imports check every key's shape and dtype (errors name the key, and list missing and
unexpected keys); pickles are never unpickled except through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import cli, models

BUNDLE_FORMAT = "clip_jax.bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
TOKENIZER_SUBDIR = "tokenizer"  # our tokenizer inside workdirs and open_clip/hf exports
FORMATS = ("open_clip", "hf")

# Non-parameter entries that some state dicts carry (buffers, OpenAI's metadata); skipped.
_IGNORED = {
    "open_clip": {"attn_mask", "input_resolution", "context_length", "vocab_size"},
    "hf": {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"},
}
_FLOATS = (np.float16, np.float32, np.float64)


# ---------------------------------------------------------------------------------------------
# Parameter trees: flat '/'-joined keys, stacked (scan) <-> per-layer (resblocks_N) blocks


def _key_str(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        else:
            parts.append(str(p))
    return "/".join(parts)


def flatten_params(tree) -> dict[str, Any]:
    """``{'visual/conv1/kernel': leaf, ...}`` from a (possibly boxed) nested or flat tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))
    return {_key_str(p): x for p, x in leaves}


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


_STACKED = re.compile(r"^(.*/transformer)/resblocks/(.+)$")
_PER_LAYER = re.compile(r"^(.*/transformer)/resblocks_(\d+)/(.+)$")


def _is_abstract(x) -> bool:
    return not isinstance(x, np.ndarray | np.generic)


def _stack(xs: Sequence[Any], axis: int = 0):
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in xs):
        s = list(xs[0].shape)
        s.insert(axis, len(xs))
        return jax.ShapeDtypeStruct(tuple(s), xs[0].dtype)
    if any(_is_abstract(x) for x in xs):
        return jnp.stack(xs, axis=axis)
    return np.stack(xs, axis=axis)


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned blocks (``transformer/resblocks/...`` with a leading layer axis) to
    ``transformer/resblocks_N/...``; other keys unchanged. ShapeDtypeStructs are supported."""
    out = {}
    for key, x in flat.items():
        m = _STACKED.match(key)
        if not m:
            out[key] = x
            continue
        for i in range(x.shape[0]):
            out[f"{m[1]}/resblocks_{i}/{m[2]}"] = (
                jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                if isinstance(x, jax.ShapeDtypeStruct) else x[i])
    return out


def stack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`unstack_layers`: ``resblocks_0..L-1`` stacked into ``resblocks``."""
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    out = {}
    for key, x in flat.items():
        m = _PER_LAYER.match(key)
        if m:
            groups.setdefault((m[1], m[3]), {})[int(m[2])] = x
        else:
            out[key] = x
    for (prefix, rest), layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{prefix}/resblocks_N/{rest}: layers {sorted(layers)} are not "
                             f"0..{len(layers) - 1}")
        out[f"{prefix}/resblocks/{rest}"] = _stack([layers[i] for i in range(len(layers))])
    return out


def _is_stacked(flat: Iterable[str]) -> bool:
    return any(_STACKED.match(k) for k in flat)


@functools.lru_cache(maxsize=16)
def _abstract_params_cached(cfg: models.ModelConfig):
    model = models.CLIP(cfg)
    boxed = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *models.init_inputs(cfg))["params"])
    return nn.meta.unbox(boxed)


def abstract_params(cfg: models.ModelConfig):
    """The parameter tree of ``cfg`` as ShapeDtypeStructs (nothing is allocated)."""
    return _abstract_params_cached(cfg)


# ---------------------------------------------------------------------------------------------
# Key/layout maps to open_clip and Hugging Face state dicts


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
            (lambda ys: _stack([y.T.reshape(y.shape[1], heads, -1) for y in ys], axis=1)))


def _split_in_b(heads: int):  # (3, H, hd) <-> three (d,)
    return ((lambda x: tuple(x[s].reshape(-1) for s in range(3))),
            (lambda ys: _stack([y.reshape(heads, -1) for y in ys], axis=0)))


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
    return unstack_layers(flatten_params(abstract_params(cfg)))


def to_external(params, cfg: models.ModelConfig, fmt: str) -> dict[str, Any]:
    """Our params (nested or flat, scanned or not) -> an open_clip / HF state dict.

    Works on NumPy arrays (exact: only transposes and reshapes), on JAX arrays, and under
    ``jax.eval_shape`` on ShapeDtypeStructs (key and shape map without allocating).
    Arrays may be non-contiguous views; :func:`save_safetensors` makes them contiguous.
    """
    flat = unstack_layers(flatten_params(params))
    if fmt == "hf":
        flat.pop("logit_bias", None)
    expected = _our_expected(cfg)
    if fmt == "hf":
        expected.pop("logit_bias", None)
    _check(flat, expected, "clip_jax params", cast=False)
    out: dict[str, Any] = {}
    for rule in _rules(cfg, fmt):
        out.update(zip(rule.theirs, rule.fwd(flat[rule.ours]), strict=True))
    return out


def external_shapes(cfg: models.ModelConfig, fmt: str) -> dict[str, jax.ShapeDtypeStruct]:
    """Keys and shapes of ``cfg``'s open_clip / HF state dict, computed without allocating."""
    return jax.eval_shape(functools.partial(to_external, cfg=cfg, fmt=fmt),
                          flatten_params(abstract_params(cfg)))


def from_external(state_dict: Mapping[str, Any], cfg: models.ModelConfig, fmt: str,
                  source: str = "state dict") -> dict:
    """An open_clip / HF state dict -> our nested params, stacked when ``cfg.scan``.

    Every expected key must be present with the expected shape and a float dtype (cast to
    ``cfg.param_dtype``); missing and unexpected keys are listed in the ValueError.
    """
    sd = _normalize_state_dict(state_dict, fmt)
    expected = external_shapes(cfg, fmt)
    _check(sd, expected, source, cast=False)
    flat = {}
    for rule in _rules(cfg, fmt):
        flat[rule.ours] = rule.inv(tuple(np.asarray(sd[k]) for k in rule.theirs))
    if fmt == "hf" and cfg.init_logit_bias is not None:
        flat["logit_bias"] = np.asarray(cfg.init_logit_bias, np.float32)
    flat = _check(flat, _our_expected(cfg), source, cast=True)
    return unflatten_params(stack_layers(flat) if cfg.scan else flat)


def _normalize_state_dict(sd: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if fmt == "open_clip" and "text.token_embedding.weight" in sd:
        # open_clip's CustomTextCLIP layout: the text tower lives under "text."
        sd = {k[len("text."):] if k.startswith("text.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _IGNORED[fmt]}


def _fmt_keys(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check(got: Mapping[str, Any], want: Mapping[str, Any], source: str, *, cast: bool) -> dict:
    """Same key set, same shapes, float dtypes; with ``cast``, arrays cast to ``want``'s dtypes."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_fmt_keys(unexpected)}")
        raise ValueError(f"{source} does not match the model config: " + "; ".join(parts))
    bad = []
    for key, w in want.items():
        x = got[key]
        if tuple(x.shape) != tuple(w.shape):
            bad.append(f"{key} has shape {tuple(x.shape)}, expected {tuple(w.shape)}")
        elif not jnp.issubdtype(x.dtype, jnp.floating):
            bad.append(f"{key} has dtype {x.dtype}, expected a floating point dtype")
    if bad:
        raise ValueError(f"{source}: {len(bad)} parameters do not fit the model config: "
                         + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if not cast:
        return dict(got)
    return {k: (np.asarray(got[k]).astype(w.dtype, copy=False)) for k, w in want.items()}


# ---------------------------------------------------------------------------------------------
# Files


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write (atomically: temp file + rename) contiguous NumPy copies of ``tensors``."""
    from safetensors.numpy import save_file

    path = Path(path)
    arrays = {k: np.array(v, order="C", copy=None) for k, v in tensors.items()}  # keeps 0-d
    tmp = path.with_name(path.name + ".tmp")
    save_file(arrays, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict through ``torch.load(weights_only=True)``: no code is executed."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; clip_jax reads those only through "
            f"torch.load(weights_only=True), which needs torch (pip install torch==2.13.0). "
            f"Alternatively convert it to safetensors (safetensors.torch.save_file) where you "
            f"trust the file, and pass the .safetensors file.") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True): {e}. TorchScript "
            f"archives (OpenAI's original .pt files) and pickles of custom classes are refused; "
            f"convert the state dict to safetensors.") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoints: {"epoch", "state_dict", ...}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: _torch_to_numpy(v) for k, v in obj.items() if torch.is_tensor(v)}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``.safetensors``, a ``*.safetensors.index.json`` shard index, or ``.pt/.pth/.bin``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        out: dict[str, np.ndarray] = {}
        for name in sorted(set(weight_map.values())):
            out.update(read_state_dict(path.parent / name))
        return out
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return read_torch_state_dict(path)
    raise ValueError(f"{path}: unknown weights format (expected .safetensors, a "
                     f".safetensors.index.json, or a .pt/.pth/.bin PyTorch state dict)")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _default_preprocess(image_size: int) -> dict:
    from clip_jax.data.transforms import CLIP_MEAN, CLIP_STD

    return {"image_size": int(image_size), "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
            "resize": "bicubic"}


def _load_tokenizer(spec):
    from clip_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(spec)


def _tokenizer_dir(path: Path) -> Path | None:
    """Our tokenizer next to weights: ``path`` itself or ``path/tokenizer``."""
    for d in (path, path / TOKENIZER_SUBDIR):
        if (d / "tokenizer_config.json").is_file():
            try:
                kind = json.loads((d / "tokenizer_config.json").read_text()).get("kind")
            except ValueError:
                continue
            if kind in ("clip_bpe", "hf"):
                return d
    return None


# ---------------------------------------------------------------------------------------------
# Bundles


def save_bundle(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
                preprocess: Mapping | None = None) -> Path:
    """Write a bundle: ``model.safetensors`` + ``config.json`` + the tokenizer's files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = flatten_params(jax.device_get(params))
    expected = flatten_params(abstract_params(cfg))
    flat = _check(flat, expected, "params to bundle", cast=False)
    if tokenizer is not None and tokenizer.vocab_size != cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model "
                         f"{cfg.text.vocab_size}")
    save_safetensors(flat, out / WEIGHTS_FILE, {"format": BUNDLE_FORMAT})
    pre = dict(preprocess or _default_preprocess(cfg.vision.image_size))
    pre["image_size"] = cfg.vision.image_size
    _write_json(out / CONFIG_FILE, {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                    "model": cfg.to_dict(), "preprocess": pre})
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_bundle(path: str | os.PathLike) -> bool:
    """Weights + a ``config.json`` of the bundle format (or one that does not parse, so that
    reading it reports the parse error instead of "not a bundle")."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        return False
    d = _read_config(path)
    return d is None or (isinstance(d, dict) and d.get("format") == BUNDLE_FORMAT)


_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION = ("auto", "xla", "cudnn")
_RESIZE = ("bicubic", "bilinear")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def bundle_config(path: str | os.PathLike) -> tuple[models.ModelConfig, dict]:
    """``(model config, preprocess)`` of a bundle's ``config.json``, every field checked: a
    ValueError lists each bad field (``model.act='relu': ...``), so a hand-edited or damaged
    bundle fails here, in words, and not as NaN embeddings or a KeyError deep in the model."""
    path = Path(path)
    file = path / CONFIG_FILE
    try:
        d = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a clip_jax bundle: no {CONFIG_FILE}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{file} cannot be read as JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a clip_jax bundle ({CONFIG_FILE} has no "
                         f"format={BUNDLE_FORMAT!r})")
    version = d.get("version", 0)
    if not _is_int(version) or version > BUNDLE_VERSION:
        raise ValueError(f"{file}: bundle version {version!r} is not one this clip_jax reads "
                         f"(<= {BUNDLE_VERSION})")
    errors = []
    m = d.get("model")
    if not isinstance(m, dict):
        raise ValueError(f"{file}: 'model' must be an object of model config fields")
    for sub in ("vision", "text"):
        if not isinstance(m.get(sub, {}), dict):
            errors.append(f"model.{sub}: must be an object")
            continue
        for k, v in m.get(sub, {}).items():
            if not (_is_int(v) and v > 0):
                errors.append(f"model.{sub}.{k}={v!r}: must be a positive integer")
    checks = {
        "embed_dim": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "act": (lambda v: v in models._ACTS, f"one of {sorted(models._ACTS)}"),
        "ln_eps": (lambda v: _is_num(v) and v > 0, "a positive number"),
        "init_logit_scale": (_is_num, "a finite number"),
        "init_logit_bias": (lambda v: v is None or _is_num(v), "null or a finite number"),
        "dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
        "param_dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
        "remat": (lambda v: isinstance(v, bool), "true or false"),
        "scan": (lambda v: isinstance(v, bool), "true or false"),
        "attention": (lambda v: v in _ATTENTION, f"one of {list(_ATTENTION)}"),
    }
    for k, (ok, want) in checks.items():
        if k in m and not ok(m[k]):
            errors.append(f"model.{k}={m[k]!r}: must be {want}")
    cfg = None
    if not errors:
        try:
            cfg = models.ModelConfig.from_dict(m)
        except (TypeError, ValueError) as e:
            errors.append(str(e))
    if cfg is not None:
        for tower in ("vision", "text"):
            t = getattr(cfg, tower)
            if t.width % t.heads:
                errors.append(f"model.{tower}.width={t.width} is not divisible by "
                              f"heads={t.heads}")
    pre = d.get("preprocess")
    if not pre and cfg is not None:
        pre = _default_preprocess(cfg.vision.image_size)
    if not isinstance(pre, dict):
        errors.append("preprocess: must be an object (image_size, mean, std, resize)")
        pre = {}
    for k in ("mean", "std"):
        v = pre.get(k)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)):
            errors.append(f"preprocess.{k}={v!r}: must be 3 finite numbers (R, G, B)")
        elif k == "std" and min(v) <= 0:
            errors.append(f"preprocess.std={v!r}: must be > 0 (pixels are divided by it)")
    size = pre.get("image_size")
    if cfg is not None and size is not None and size != cfg.vision.image_size:
        errors.append(f"preprocess.image_size={size!r}: must equal model.vision.image_size="
                      f"{cfg.vision.image_size}")
    if pre.get("resize", "bicubic") not in _RESIZE:
        errors.append(f"preprocess.resize={pre.get('resize')!r}: must be one of "
                      f"{list(_RESIZE)}")
    if errors:
        raise ValueError(f"{file} is not a valid bundle config: " + "; ".join(errors))
    return cfg, dict(pre, image_size=cfg.vision.image_size)


def _is_hf_dir(path: Path) -> bool:
    d = _read_config(path)
    return isinstance(d, dict) and (d.get("model_type") == "clip" or (
        "text_config" in d and "vision_config" in d))


def read_bundle(path: str | os.PathLike):
    """``(cfg, flat params (NumPy, layout of cfg), tokenizer or None, preprocess dict)``."""
    path = Path(path)
    cfg, pre = bundle_config(path)
    flat = read_safetensors(path / WEIGHTS_FILE)
    flat = _adapt(flat, flatten_params(abstract_params(cfg)), f"bundle {path}")
    tok_dir = _tokenizer_dir(path)
    tokenizer = _load_tokenizer(str(tok_dir)) if tok_dir else None
    return cfg, flat, tokenizer, pre


def _adapt(flat_src: Mapping[str, Any], abstract_flat: Mapping[str, Any], source: str) -> dict:
    """Source params (any block layout) checked against and laid out like ``abstract_flat``."""
    got = unstack_layers(flat_src)
    want = unstack_layers(abstract_flat)
    out = _check(got, want, source, cast=True)
    return stack_layers(out) if _is_stacked(abstract_flat) else out


def _read_hf_dir(path: Path):
    """``(cfg, flat params, state dict source name)`` of a Hugging Face CLIP directory."""
    hf = _read_config(path)
    if not isinstance(hf, dict):
        raise ValueError(f"{path} has no readable {CONFIG_FILE}")
    cfg = model_config_from_hf(hf)
    for name in (WEIGHTS_FILE, "model.safetensors.index.json", "pytorch_model.bin"):
        if (path / name).is_file():
            sd = read_state_dict(path / name)
            break
    else:
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}, model.safetensors.index.json "
                                f"or pytorch_model.bin")
    params = from_external(sd, cfg.replace(scan=False), "hf", source=f"HF weights in {path}")
    return cfg, flatten_params(params)


def load_bundle_params(path: str | os.PathLike, abstract_params_tree, shardings=None):
    """Params of a bundle (or an HF CLIP directory) laid out, typed and sharded like
    ``abstract_params_tree`` (used by ``checkpoint.load_params`` for ``checkpoint.init_from``).

    The block layout (scan or not) follows the target; shapes must match exactly (the error
    names the key); float dtypes are cast to the target's.
    """
    path = Path(path)
    if is_bundle(path):
        cfg, _ = bundle_config(path)
        flat = read_safetensors(path / WEIGHTS_FILE)
        source = f"bundle {path} (model {cfg.to_dict()})"
    elif _is_hf_dir(path):
        _, flat = _read_hf_dir(path)
        source = f"HF CLIP directory {path}"
    else:
        raise ValueError(f"{path} is neither a clip_jax bundle nor a Hugging Face CLIP "
                         f"directory; convert it with `python -m clip_jax.export import ...`")
    abstract = nn.meta.unbox(abstract_params_tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    abstract_flat = {_key_str(p): x for p, x in leaves}
    params = _adapt(flat, abstract_flat, source)
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        sh_leaves = [one] * len(leaves)
    else:
        sh_leaves = treedef.flatten_up_to(nn.meta.unbox(shardings))
    arrays = []
    for (p, x), s in zip(leaves, sh_leaves, strict=True):
        host = params[_key_str(p)]
        arrays.append(jax.make_array_from_callback(x.shape, s, lambda idx, h=host: h[idx]))
    return jax.tree_util.tree_unflatten(treedef, arrays)


# ---------------------------------------------------------------------------------------------
# Inference model (clip_jax.load)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class InferenceModel:
    """A CLIP model ready for inference on the local devices (batch split over all of them).

    ``encode_image`` / ``encode_text`` return L2-normalised float32 NumPy arrays; inputs are
    processed in chunks of ``batch_size`` padded to a few fixed sizes (few compilations).
    """

    def __init__(self, cfg: models.ModelConfig, params, tokenizer=None,
                 preprocess: Mapping | None = None, devices=None, batch_size: int = 64):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.preprocess_cfg = dict(preprocess or _default_preprocess(cfg.vision.image_size))
        self.devices = list(devices or jax.local_devices())
        n = len(self.devices)
        self.batch_size = max(n, -(-int(batch_size) // n) * n)
        mesh = jax.sharding.Mesh(np.asarray(self.devices), ("batch",))
        P = jax.sharding.PartitionSpec
        replicated = jax.sharding.NamedSharding(mesh, P())
        self._data = jax.sharding.NamedSharding(mesh, P("batch"))
        flat = _adapt(flatten_params(jax.device_get(params)),
                      flatten_params(abstract_params(cfg)), "params")
        self.params = jax.device_put(unflatten_params(flat), replicated)
        self.logit_scale = float(np.asarray(flat["logit_scale"]))
        self.logit_bias = float(np.asarray(flat["logit_bias"])) if "logit_bias" in flat else None
        model = models.CLIP(cfg)

        def run(method):
            return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method),
                           in_shardings=(replicated, self._data), out_shardings=replicated)

        self._encode_image = run(models.CLIP.encode_image)
        self._encode_text = run(models.CLIP.encode_text)

    def __repr__(self) -> str:
        v, t = self.cfg.vision, self.cfg.text
        return (f"InferenceModel(image {v.image_size}px/{v.patch_size} width {v.width}x"
                f"{v.layers}, text width {t.width}x{t.layers}, embed {self.cfg.embed_dim}, "
                f"{len(self.devices)} devices)")

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    # -- inputs --------------------------------------------------------------------------------

    def preprocess(self, images) -> np.ndarray:
        """PIL images, uint8 (H, W, 3) / (N, H, W, 3) arrays or image paths (one or a list) ->
        float32 (N, S, S, 3): shorter side resized (bicubic) to S, center crop, normalised."""
        from PIL import Image

        from clip_jax.data.transforms import resize_center_crop, to_rgb

        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, list | tuple):
            images = [images]
        size = self.image_size
        mean = np.asarray(self.preprocess_cfg["mean"], np.float32) * 255
        inv_std = 1 / (np.asarray(self.preprocess_cfg["std"], np.float32) * 255)
        out = np.empty((len(images), size, size, 3), np.float32)
        for i, img in enumerate(images):
            if isinstance(img, str | os.PathLike):
                with Image.open(img) as f:
                    f.load()
                    img = to_rgb(f)
            elif isinstance(img, np.ndarray):
                if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                    raise TypeError(f"image arrays must be uint8 (H, W, 3), got {img.dtype} "
                                    f"{img.shape}; pass normalised float pixels to encode_image")
                img = Image.fromarray(img)
            elif not isinstance(img, Image.Image):
                raise TypeError(f"cannot preprocess a {type(img).__name__}: expected a PIL image, "
                                f"a uint8 array or a path")
            np.subtract(resize_center_crop(img, size), mean, out=out[i], dtype=np.float32)
            np.multiply(out[i], inv_std, out=out[i])
        return out

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (none was bundled): pass token ids "
                               "to encode_text, or re-import with --tokenizer")
        return self.tokenizer(texts, context_length=self.cfg.text.context_length)

    def _bucket(self, n: int) -> int:
        b = len(self.devices)
        while b < n and b < self.batch_size:
            b *= 2
        return min(b, self.batch_size)

    def _batched(self, fn, x: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            m = len(chunk)
            b = self._bucket(m)
            if b > m:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - m, axis=0)])
            y = fn(self.params, jax.device_put(chunk, self._data))
            outs.append(np.asarray(y, np.float32)[:m])
        if not outs:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        return np.concatenate(outs)

    # -- embeddings ----------------------------------------------------------------------------

    def encode_image(self, images) -> np.ndarray:
        """Normalised float NHWC pixels (or anything :meth:`preprocess` takes) -> (N, D)."""
        if not (isinstance(images, np.ndarray | jax.Array) and images.ndim == 4
                and jnp.issubdtype(images.dtype, jnp.floating)):
            images = self.preprocess(images)
        return self._batched(self._encode_image, np.asarray(images, np.float32))

    def encode_text(self, texts) -> np.ndarray:
        """Strings (one or a list) or int token ids (L,) / (N, L) -> (N, D)."""
        if isinstance(texts, str) or (isinstance(texts, list | tuple) and texts
                                      and isinstance(texts[0], str)):
            ids = self.tokenize(texts)
        else:
            ids = np.asarray(texts)
            if ids.ndim == 1:
                ids = ids[None]
            if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"token ids must be integers of shape (N, L), got {ids.dtype} "
                                f"{ids.shape}")
        return self._batched(self._encode_text, ids.astype(np.int32))

    def classifier(self, class_names: Sequence[str],
                   templates: Sequence[str] | None = None) -> np.ndarray:
        """Prompt-ensembled class embeddings (C, D): mean of normalised prompts, renormalised."""
        from clip_jax.evaluate.metrics import build_zeroshot_classifier

        return build_zeroshot_classifier(self.encode_text, list(class_names),
                                         list(templates or ("a photo of a {}.",)),
                                         batch_size=self.batch_size, pad_batches=False)

    def zero_shot(self, images, class_names: Sequence[str],
                  templates: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (n_images, n_classes): softmax of exp(logit_scale) * cosine."""
        feats = self.encode_image(images)
        cls = self.classifier(class_names, templates)
        return _softmax(math.exp(self.logit_scale) * (feats @ cls.T))


def load_bundle(path: str | os.PathLike, devices=None, batch_size: int = 64) -> InferenceModel:
    """A bundle directory (see :func:`save_bundle`) as an :class:`InferenceModel`."""
    cfg, flat, tokenizer, pre = read_bundle(path)
    return InferenceModel(cfg, unflatten_params(flat), tokenizer, pre, devices, batch_size)


# ---------------------------------------------------------------------------------------------
# Sources: training workdirs / checkpoint directories / bundles


def _config_from_checkpoint(ckpt_dir: Path) -> dict | None:
    """The run config saved with the latest checkpoint step (``config`` item), if any."""
    try:
        import orbax.checkpoint as ocp

        manager = ocp.CheckpointManager(
            str(ckpt_dir.resolve()), item_names=("state", "data", "config"),
            options=ocp.CheckpointManagerOptions(read_only=True))
        step = manager.latest_step()
        if step is None:
            return None
        d = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        manager.close()
        d = d["config"]
        return d if isinstance(d, dict) and d.get("model") else None
    except Exception:  # no such item, an older layout...: fall back to config.json
        return None


def load_source(src: str | os.PathLike):
    """``(cfg, nested NumPy params, tokenizer or None, preprocess)`` from a bundle, a training
    workdir or its ``checkpoints`` directory (latest complete step)."""
    from clip_jax import checkpoint
    from clip_jax import config as config_lib

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"no such checkpoint, workdir or bundle: {src}")
    if is_bundle(src):
        cfg, flat, tok, pre = read_bundle(src)
        return cfg, unflatten_params(flat), tok, pre
    workdir = src.parent if src.name == "checkpoints" or not (src / "checkpoints").is_dir() \
        else src
    ckpt_dir = src / "checkpoints" if (src / "checkpoints").is_dir() else src
    run = _config_from_checkpoint(ckpt_dir)
    if run is None:
        for d in (src, workdir):
            c = _read_config(d)
            if isinstance(c, dict) and "model" in c:
                run = c
                break
    if run is None:
        raise FileNotFoundError(f"{src}: no run config found (neither {CONFIG_FILE} in the "
                                f"workdir nor a config saved with the checkpoint)")
    cfg = config_lib.resolve_model_config(run["model"])
    abstract = abstract_params(cfg)
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    params = checkpoint.load_params(str(src), abstract, jax.tree.map(lambda _: cpu, abstract))
    params = jax.device_get(params)
    tok = checkpoint.load_tokenizer(str(ckpt_dir))  # the one saved with these weights
    for d in (src, workdir):
        tdir = _tokenizer_dir(d) if tok is None else None
        if tdir is not None:
            tok = _load_tokenizer(str(tdir))
            break
    image_size = cfg.vision.image_size
    return cfg, params, tok, _default_preprocess(image_size)


# ---------------------------------------------------------------------------------------------
# open_clip


def _open_clip_preprocess(pre: Mapping) -> dict:
    return {"size": pre["image_size"], "mode": "RGB", "mean": list(pre["mean"]),
            "std": list(pre["std"]), "interpolation": "bicubic", "resize_mode": "shortest"}


def export_open_clip(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
                     preprocess: Mapping | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = to_external(jax.device_get(params), cfg, "open_clip")
    save_safetensors(sd, out / OPEN_CLIP_WEIGHTS, {"format": "pt"})
    pre = dict(preprocess or _default_preprocess(cfg.vision.image_size))
    _write_json(out / OPEN_CLIP_CONFIG, {"model_cfg": models.to_open_clip_config(cfg),
                                         "preprocess_cfg": _open_clip_preprocess(pre)})
    if tokenizer is not None:
        tokenizer.save(out / TOKENIZER_SUBDIR)
    return out


def _resolve_model_config_arg(spec: str) -> models.ModelConfig:
    spec = spec.strip()
    if spec in models.PRESETS:
        return models.get_model_config(spec)
    return models.from_open_clip_config(spec)


def import_open_clip(src: str | os.PathLike, model_config: str | None = None, scan: bool = False):
    """``(cfg, params, tokenizer or None, preprocess)`` from open_clip weights: a weights file
    or a directory holding ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``)
    and ``open_clip_config.json``. ``model_config``: JSON path/text or preset name."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    if src.is_dir():
        for name in (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.bin", "model.safetensors"):
            if (src / name).is_file():
                weights = src / name
                break
        else:
            raise FileNotFoundError(f"{src} has no {OPEN_CLIP_WEIGHTS} or "
                                    f"open_clip_pytorch_model.bin")
    else:
        weights = src
    oc_cfg = None
    if (folder / OPEN_CLIP_CONFIG).is_file():
        oc_cfg = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    if model_config:
        cfg = _resolve_model_config_arg(model_config)
    elif oc_cfg is not None:
        cfg = models.from_open_clip_config(oc_cfg)
    else:
        raise ValueError(f"no {OPEN_CLIP_CONFIG} next to {weights}: pass --model-config (an "
                         f"open_clip model-config JSON with embed_dim, vision_cfg, text_cfg)")
    sd = read_state_dict(weights)
    if "logit_bias" in sd and cfg.init_logit_bias is None:
        cfg = cfg.replace(init_logit_bias=float(np.asarray(sd["logit_bias"])))
    cfg = cfg.replace(scan=scan)
    params = from_external(sd, cfg, "open_clip", source=f"open_clip weights {weights}")
    pre = _default_preprocess(cfg.vision.image_size)
    pc = (oc_cfg or {}).get("preprocess_cfg") or {}
    for key in ("mean", "std"):
        if key in pc:
            pre[key] = list(pc[key])
    tdir = _tokenizer_dir(folder)
    tok = _load_tokenizer(str(tdir)) if tdir else None
    return cfg, params, tok, pre


# ---------------------------------------------------------------------------------------------
# Hugging Face


_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


def model_config_from_hf(hf: Mapping) -> models.ModelConfig:
    """ModelConfig from a ``CLIPConfig`` dict (absent fields take transformers' defaults)."""
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"model_type={hf.get('model_type')!r}: only CLIP ('clip') is supported")
    tc = {**_HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vc = {**_HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    if tc["hidden_act"] != vc["hidden_act"] or tc["hidden_act"] not in ("gelu", "quick_gelu"):
        raise ValueError(f"hidden_act text={tc['hidden_act']!r} vision={vc['hidden_act']!r}: "
                         f"clip_jax supports one activation, 'gelu' or 'quick_gelu'")
    if tc["layer_norm_eps"] != vc["layer_norm_eps"]:
        raise ValueError(f"layer_norm_eps differs between towers ({tc['layer_norm_eps']} vs "
                         f"{vc['layer_norm_eps']}); clip_jax uses one")
    if vc["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels={vc['num_channels']}: must be 3")
    eos, vocab = tc["eos_token_id"], tc["vocab_size"]
    if eos not in (2, vocab - 1):
        raise ValueError(f"text_config.eos_token_id={eos}: HF pools at the first eos token and "
                         f"clip_jax at argmax(ids), which agree only when eos is the largest id "
                         f"({vocab - 1}) (or eos_token_id=2, HF's legacy argmax)")
    bias = hf.get("clip_jax_logit_bias")
    return models.ModelConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=models.VisionConfig(
            image_size=vc["image_size"], patch_size=vc["patch_size"], width=vc["hidden_size"],
            layers=vc["num_hidden_layers"], heads=vc["num_attention_heads"],
            mlp_dim=vc["intermediate_size"]),
        text=models.TextConfig(
            context_length=tc["max_position_embeddings"], vocab_size=vocab,
            width=tc["hidden_size"], layers=tc["num_hidden_layers"],
            heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"]),
        act=tc["hidden_act"], ln_eps=tc["layer_norm_eps"],
        init_logit_scale=hf.get("logit_scale_init_value", 2.6592),
        init_logit_bias=None if bias is None else float(bias),
    )


def hf_config(cfg: models.ModelConfig, tokenizer=None, logit_bias: float | None = None) -> dict:
    """A ``CLIPConfig`` dict for ``cfg`` (``logit_bias``: kept as ``clip_jax_logit_bias``)."""
    v, t = cfg.vision, cfg.text
    eot = t.vocab_size - 1  # the contract: eot is the largest id
    sot = tokenizer.sot_id if tokenizer is not None else t.vocab_size - 2
    dtype = str(np.dtype(jnp.dtype(cfg.param_dtype)))
    d = {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": float(cfg.init_logit_scale),  # the weights hold the value
        "initializer_factor": 1.0,
        "torch_dtype": dtype,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size,
            "hidden_size": t.width, "intermediate_size": t.mlp_dim,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": cfg.act,
            "layer_norm_eps": cfg.ln_eps, "projection_dim": cfg.embed_dim,
            "bos_token_id": sot, "eos_token_id": eot, "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.width,
            "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads, "num_channels": 3, "image_size": v.image_size,
            "patch_size": v.patch_size, "hidden_act": cfg.act, "layer_norm_eps": cfg.ln_eps,
            "projection_dim": cfg.embed_dim,
        },
    }
    if logit_bias is not None:
        d["clip_jax_logit_bias"] = float(logit_bias)
    return d


def _write_hf_tokenizer(out: Path, tokenizer, context_length: int) -> bool:
    """HF tokenizer files for ``tokenizer`` (True if written)."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "clip_bpe":
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        _write_json(out / "vocab.json", tokenizer.encoder)
        (out / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        _write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
            "do_lower_case": True, "errors": "replace", **specials})
        _write_json(out / "special_tokens_map.json", specials)
        return True
    if kind == "hf":
        from clip_jax.data.tokenizer import HF_EOT, HF_SOT

        tokenizer.backend.save(str(out / "tokenizer.json"))
        specials = {"bos_token": HF_SOT, "eos_token": HF_EOT, "pad_token": HF_EOT}
        _write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
            **specials})
        _write_json(out / "special_tokens_map.json", specials)
        return True
    return False


def export_hf(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
              preprocess: Mapping | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = jax.device_get(params)
    flat = flatten_params(params)
    bias = float(np.asarray(flat["logit_bias"])) if "logit_bias" in flat else None
    if bias is not None:
        warnings.warn("transformers' CLIPModel has no logit_bias: it is kept in config.json "
                      "(clip_jax_logit_bias) for re-import, and embeddings are unaffected",
                      stacklevel=2)
    sd = to_external(params, cfg, "hf")
    save_safetensors(sd, out / WEIGHTS_FILE, {"format": "pt"})
    _write_json(out / CONFIG_FILE, hf_config(cfg, tokenizer, bias))
    pre = dict(preprocess or _default_preprocess(cfg.vision.image_size))
    s = cfg.vision.image_size
    _write_json(out / HF_PREPROCESSOR, {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": s}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": s, "width": s}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(pre["mean"]), "image_std": list(pre["std"]),
        "do_convert_rgb": True})
    if tokenizer is not None:
        _write_hf_tokenizer(out, tokenizer, cfg.text.context_length)
        tokenizer.save(out / TOKENIZER_SUBDIR)
    return out


def _tokenizer_from_hf_files(path: Path, vocab_size: int):
    """Our tokenizer from HF tokenizer files (CLIP vocab.json+merges.txt, or a tokenizer.json
    with start/end tokens at the two largest ids); None if not possible."""
    from clip_jax.data import tokenizer as tok_lib

    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [ln for ln in lines[1:] if ln.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            gz = Path(tmp) / tok_lib.CLIP_VOCAB_FILE
            gz.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
            try:
                tok = tok_lib.ClipBPETokenizer(gz)
            except (ValueError, AssertionError):
                return None
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            if vocab != tok.encoder or tok.vocab_size != vocab_size:
                return None
            return tok
    if (path / "tokenizer.json").is_file():
        try:
            tok = tok_lib.HFTokenizer.from_file(path / "tokenizer.json")
        except ValueError:
            return None
        return tok if tok.vocab_size == vocab_size else None
    return None


def import_hf(src: str | os.PathLike, scan: bool = False):
    """``(cfg, params, tokenizer or None, preprocess)`` from a Hugging Face CLIP directory."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a Hugging Face CLIP model "
                                f"directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg, flat = _read_hf_dir(src)
    cfg = cfg.replace(scan=scan)
    flat = _adapt(flat, flatten_params(abstract_params(cfg)), f"HF CLIP directory {src}")
    pre = _default_preprocess(cfg.vision.image_size)
    try:
        pc = json.loads((src / HF_PREPROCESSOR).read_text())
        pre["mean"], pre["std"] = list(pc["image_mean"]), list(pc["image_std"])
    except (OSError, ValueError, KeyError):
        pass
    tdir = _tokenizer_dir(src)  # our own (tokenizer/); HF's files have no 'kind'
    if tdir is not None:
        tok = _load_tokenizer(str(tdir))
    else:
        tok = _tokenizer_from_hf_files(src, cfg.text.vocab_size)
    return cfg, unflatten_params(flat), tok, pre


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m clip_jax.export",
        description="Export a clip_jax checkpoint (bundle, open_clip, Hugging Face) or import "
                    "open_clip / Hugging Face CLIP weights into a bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {"bundle": "self-contained inference bundle (clip_jax.load)",
             "open_clip": "open_clip state dict (safetensors) + open_clip_config.json",
             "hf": "transformers CLIPModel directory"}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text)
        s.add_argument("--checkpoint", required=True,
                       help="training workdir, its checkpoints/ directory, or a bundle")
        s.add_argument("--out", required=True, help="output directory")
    s = sub.add_parser("import", help="open_clip / HF CLIP weights -> bundle (also usable as "
                                      "checkpoint.init_from for fine-tuning)")
    s.add_argument("--from", dest="src_format", required=True, choices=FORMATS)
    s.add_argument("--src", required=True,
                   help="open_clip: weights file (.safetensors/.pt/.bin) or directory; "
                        "hf: model directory")
    s.add_argument("--model-config", default=None,
                   help="open_clip model-config JSON (path or text) or preset name; default: "
                        "open_clip_config.json next to the weights")
    s.add_argument("--tokenizer", default=None,
                   help="tokenizer spec to bundle (clip_bpe:PATH, hf:PATH, or a directory); "
                        "default: the one found next to the weights")
    s.add_argument("--scan", action="store_true",
                   help="store the blocks stacked (model.scan=True layout)")
    s.add_argument("--out", required=True, help="bundle directory to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.command == "import":
        if args.src_format == "open_clip":
            cfg, params, tok, pre = import_open_clip(args.src, args.model_config, args.scan)
        else:
            if args.model_config:
                raise cli.UserError("--model-config applies to --from open_clip only (HF "
                                    "directories carry their config.json)")
            cfg, params, tok, pre = import_hf(args.src, args.scan)
        if args.tokenizer:
            tok = _load_tokenizer(args.tokenizer)
        if tok is None:
            print("warning: no tokenizer found next to the weights; the bundle can encode "
                  "token ids only (pass --tokenizer SPEC to include one)", file=sys.stderr)
        save_bundle(out, params, cfg, tok, pre)
        print(f"wrote bundle {out} ({models.count_params(params):,} parameters)")
        return 0
    src = Path(args.checkpoint)
    if out.resolve() == src.resolve():
        raise cli.UserError("--out must differ from --checkpoint")
    cfg, params, tok, pre = load_source(src)
    if args.command == "bundle":
        save_bundle(out, params, cfg.replace(remat=False), tok, pre)
    elif args.command == "open_clip":
        export_open_clip(out, params, cfg, tok, pre)
    else:
        export_hf(out, params, cfg, tok, pre)
    if tok is None:
        print("warning: no tokenizer found with the checkpoint; none was exported",
              file=sys.stderr)
    print(f"wrote {args.command} export {out} ({models.count_params(params):,} parameters)")
    return 0


__all__ = [
    "InferenceModel", "abstract_params", "external_shapes", "export_hf", "export_open_clip",
    "flatten_params", "from_external", "hf_config", "import_hf", "import_open_clip",
    "is_bundle", "load_bundle", "load_bundle_params", "load_source", "main",
    "model_config_from_hf", "read_bundle", "read_state_dict", "save_bundle", "stack_layers",
    "to_external", "unflatten_params", "unstack_layers",
]

if __name__ == "__main__":
    sys.exit(cli.run(main))
