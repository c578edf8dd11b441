"""The clip_jax bundle: a self-contained directory that inference, export and fine-tuning read.

``model.safetensors`` (our parameter tree, keys ``/``-joined paths such as
``visual/conv1/kernel``, in the layout of the recorded config: ``resblocks_N`` or one stacked
``resblocks`` when ``scan``), ``config.json`` (``{"format": "clip_jax.bundle", "version": 1,
"model": ModelConfig.to_dict(), "preprocess": {"image_size", "mean", "std", "resize"}}``) and the
tokenizer's own files (``tok.save(bundle)``). :func:`bundle_config` checks every field of a
hand-edited or damaged ``config.json`` and names each bad one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jax

from clip_jax import files, layers, models
from clip_jax import params as params_lib
from clip_jax import remat as remat_lib
from clip_jax.data.tokenizer import KINDS as TOKENIZER_KINDS
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.data.transforms import CLIP_MEAN, CLIP_STD
from clip_jax.interop.weights_io import read_safetensors, save_safetensors

BUNDLE_FORMAT = "clip_jax.bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_SUBDIR = "tokenizer"  # our tokenizer inside workdirs and open_clip/hf exports


def default_preprocess(image_size: int) -> dict:
    """CLIP's preprocessing: resize the shorter side (bicubic), center crop, normalise."""
    return {"image_size": int(image_size), "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
            "resize": "bicubic"}


def tokenizer_dir(path: Path) -> Path | None:
    """Our tokenizer next to weights: ``path`` itself or ``path/tokenizer``."""
    for d in (path, path / TOKENIZER_SUBDIR):
        if (d / "tokenizer_config.json").is_file():
            try:
                kind = json.loads((d / "tokenizer_config.json").read_text()).get("kind")
            except ValueError:
                continue
            if kind in TOKENIZER_KINDS:
                return d
    return None


def save_bundle(out_dir: str | os.PathLike, params, cfg: models.ModelConfig, tokenizer=None,
                preprocess: Mapping | None = None) -> Path:
    """Write a bundle: ``model.safetensors`` + ``config.json`` + the tokenizer's files."""
    out = Path(out_dir)
    files.make_dir(out)
    flat = params_lib.flatten_params(jax.device_get(params))
    expected = params_lib.flatten_params(models.abstract_params(cfg))
    flat = params_lib.check(flat, expected, "params to bundle", cast=False)
    if tokenizer is not None and tokenizer.vocab_size != cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model "
                         f"{cfg.text.vocab_size}")
    save_safetensors(flat, out / WEIGHTS_FILE, {"format": BUNDLE_FORMAT})
    pre = dict(preprocess or default_preprocess(cfg.vision.image_size))
    pre["image_size"] = cfg.vision.image_size
    files.write_json(out / CONFIG_FILE, {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                         "model": cfg.to_dict(), "preprocess": pre})
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def read_config(path: Path) -> dict | None:
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
    d = read_config(path)
    return d is None or (isinstance(d, dict) and d.get("format") == BUNDLE_FORMAT)


_DTYPES = ("float32", "bfloat16", "float16")
_RESIZE = ("bicubic", "bilinear")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def bundle_config(path: str | os.PathLike) -> tuple[models.ModelConfig, dict]:
    """``(model config, preprocess)`` of a bundle's ``config.json``, every field checked: a
    ValueError names the bad fields (``model.act='relu': ...``; the model's fields through
    ModelConfig's own validation, which names the first bad one), so a hand-edited or damaged
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
        t = m.get(sub, {})
        if not isinstance(t, dict):
            errors.append(f"model.{sub}: must be an object")
        elif _is_int(t.get("width")) and _is_int(t.get("heads")) and t["heads"] > 0 and \
                t["width"] % t["heads"] and t.get("family", "vit") == "vit":  # conv: own checks
            errors.append(f"model.{sub}.width={t['width']} is not divisible by "
                          f"heads={t['heads']}")
    # the fields ModelConfig leaves to the runtime; every other field ModelConfig checks itself
    checks = {
        "dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
        "param_dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
        "remat": (lambda v: isinstance(v, bool) or v in remat_lib.POLICIES,
                  f"true, false or one of {list(remat_lib.POLICIES)}"),
        "scan": (lambda v: isinstance(v, bool), "true or false"),
        "attention": (lambda v: v in layers.ATTENTION_IMPLEMENTATIONS,
                      f"one of {list(layers.ATTENTION_IMPLEMENTATIONS)}"),
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
    pre = d.get("preprocess")
    if not pre and cfg is not None:
        pre = default_preprocess(cfg.vision.image_size)
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


def read_bundle(path: str | os.PathLike):
    """``(cfg, flat params (NumPy, layout of cfg), tokenizer or None, preprocess dict)``."""
    path = Path(path)
    cfg, pre = bundle_config(path)
    flat = read_safetensors(path / WEIGHTS_FILE)
    flat = params_lib.adapt(flat, params_lib.flatten_params(models.abstract_params(cfg)),
                            f"bundle {path}")
    tok_dir = tokenizer_dir(path)
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir else None
    return cfg, flat, tokenizer, pre


def load_params(path: str | os.PathLike, abstract_tree, shardings=None):
    """A bundle's params laid out, typed and sharded like ``abstract_tree`` (boxed or not).

    The block layout (scan or not) follows the target; shapes must match exactly (the error
    names the key); float dtypes are cast to the target's.
    """
    path = Path(path)
    cfg, _ = bundle_config(path)
    flat = read_safetensors(path / WEIGHTS_FILE)
    return params_lib.place(flat, abstract_tree, shardings,
                            f"bundle {path} (model {cfg.to_dict()})")
