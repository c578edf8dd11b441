"""The one place that turns "a path the user gave" into a model: config, params, tokenizer.

Accepted everywhere a model is read (``checkpoint.init_from``, ``clip_jax.load``, the
``evaluate``, ``predict`` and ``export`` CLIs):

=============  ===============================================================================
kind           what the path is
=============  ===============================================================================
``bundle``     a clip_jax bundle directory (``model.safetensors`` + ``config.json`` format
               ``clip_jax.bundle``), see :mod:`clip_jax.bundle`
``hf``         a Hugging Face ``CLIPModel`` directory (``config.json`` with ``text_config`` /
               ``vision_config`` and safetensors or ``pytorch_model.bin`` weights)
``open_clip``  an open_clip weights file (``.safetensors``, ``.pt``, ``.bin``) or a directory
               holding ``open_clip_config.json`` and its weights
``hf_text``    a transformers text encoder directory (XLM-R, RoBERTa, BERT, T5, mT5): the text
               tower's encoder only (``checkpoint.init_from_params='^text/transformer/'``),
               see :mod:`clip_jax.interop.hf_text`
``checkpoint`` a training workdir or its ``checkpoints/`` directory (latest complete step)
=============  ===============================================================================

``weights``: :data:`WEIGHTS`, the trained params (``raw``) or, from a ``checkpoint`` whose run
kept one (``ema.decay`` > 0), their exponential moving average (``ema``, :mod:`clip_jax.ema`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax

from clip_jax import bundle, checkpoint, models
from clip_jax import config as config_lib
from clip_jax import params as params_lib
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.interop import hf, hf_text, open_clip

KINDS = ("bundle", "hf", "open_clip", "checkpoint", "hf_text")
WEIGHTS = ("raw", "ema")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclasses.dataclass
class Source:
    """A model read from disk: nested NumPy ``params`` in ``cfg``'s layout."""

    kind: str
    path: Path
    cfg: models.ModelConfig
    params: Any
    tokenizer: Any = None
    preprocess: dict = dataclasses.field(default_factory=dict)


def kind_of(path: str | os.PathLike) -> str:
    """Which of :data:`KINDS` ``path`` is; FileNotFoundError/ValueError say why none fits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint, workdir, bundle or weights file: {path}")
    if path.is_file():
        if path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".index.json"):
            return "open_clip"
        raise ValueError(f"{path} is a file but not a weights file ({', '.join(_WEIGHT_SUFFIXES)})")
    if bundle.is_bundle(path):
        return "bundle"
    if hf.is_hf_dir(path):
        return "hf"
    if hf_text.is_hf_text_dir(path):
        return "hf_text"
    if (path / open_clip.OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    ckpt = checkpoint.checkpoints_dir(path)
    if not any(name.isdigit() for name in os.listdir(ckpt)):
        raise FileNotFoundError(
            f"{path}: no model weights found: looked for a bundle or Hugging Face CLIP directory "
            f"({', '.join(hf.HF_WEIGHTS)} with a {bundle.CONFIG_FILE}), open_clip weights "
            f"({open_clip.OPEN_CLIP_CONFIG} beside them) and orbax checkpoint steps in {ckpt}")
    return "checkpoint"


def _run_config(path: Path) -> dict:
    """The run config of a workdir/checkpoints dir: the one saved with the latest step, else
    ``config.json`` in the directory or in the workdir above ``checkpoints/``."""
    run = checkpoint.saved_config(str(path))
    for d in (path, path.parent):
        if run is None:
            c = bundle.read_config(d)
            run = c if isinstance(c, dict) and "model" in c else None
    if run is None:
        raise FileNotFoundError(f"{path}: no run config found (neither {bundle.CONFIG_FILE} in "
                                f"the workdir nor a config saved with the checkpoint)")
    return run


def _other_shape(path: Path, abstract_tree) -> bool:
    """Whether the checkpoint's saved model has another patch kernel, position-embedding shape
    or depth than ``abstract_tree`` (then it is restored on the host: resampled, its blocks
    picked by :func:`clip_jax.params.pick_blocks`)."""
    try:
        cfg = config_lib.resolve_model_config(_run_config(path)["model"])
    except FileNotFoundError:  # no run config saved: restore as it is
        return False
    saved = params_lib.flatten_params(models.abstract_params(cfg))
    want = params_lib.flatten_params(abstract_tree)
    return params_lib.depths(saved) != params_lib.depths(want) or any(
        k in saved and k in want and tuple(saved[k].shape) != tuple(want[k].shape)
        for k in (params_lib.POS_EMBED, params_lib.PATCH_KERNEL, params_lib.ATTNPOOL_POS_EMBED))


def _checkpoint_source(path: Path, weights: str = "raw") -> Source:
    cfg = config_lib.resolve_model_config(_run_config(path)["model"])
    abstract = models.abstract_params(cfg)
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    params = jax.device_get(checkpoint.load_params(
        str(path), abstract, jax.tree.map(lambda _: cpu, abstract), weights))
    tok = checkpoint.load_tokenizer(str(path))  # the one saved with these weights
    for d in (path, path.parent):
        tdir = bundle.tokenizer_dir(d) if tok is None else None
        if tdir is not None:
            tok = load_tokenizer(str(tdir))
    return Source("checkpoint", path, cfg, params, tok,
                  bundle.default_preprocess(cfg.vision.image_size))


def refit(src: Source, cfg: models.ModelConfig) -> Source:
    """``src`` as the model ``cfg`` describes (same weights in another block layout, dtype or
    ``vision`` image/patch size): params laid out like ``cfg``'s, position embeddings and patch
    kernel resampled when the grid changed (:func:`clip_jax.params.resample_vision`, one logged
    line), the preprocessing's image size updated."""
    params_lib.vision_grid(cfg.vision.image_size, cfg.vision.patch_size)
    flat = params_lib.adapt(params_lib.flatten_params(src.params),
                            params_lib.flatten_params(models.abstract_params(cfg)), str(src.path))
    pre = dict(src.preprocess)
    if "image_size" in pre:
        pre["image_size"] = cfg.vision.image_size
    return dataclasses.replace(src, cfg=cfg, params=params_lib.unflatten_params(flat),
                               preprocess=pre)


def resolve(path: str | os.PathLike, model_config: str | None = None,
            scan: bool | None = None, overrides: dict | None = None,
            weights: str = "raw") -> Source:
    """Read any of :data:`KINDS` into a :class:`Source` (params on the host).

    ``model_config`` (open_clip only): a JSON path/text or preset name when no
    ``open_clip_config.json`` sits next to the weights. ``scan`` overrides the block layout;
    ``overrides`` other ModelConfig fields (``{"vision": {"image_size": 336}}`` resamples, see
    :func:`refit`). ``weights``: ``raw`` or ``ema`` (:data:`WEIGHTS`).
    """
    path = Path(path)
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {WEIGHTS}")
    kind = kind_of(path)
    if weights == "ema" and kind != "checkpoint":
        raise ValueError(f"{path} is a {kind} source, one set of weights without an EMA: EMA "
                         "weights come from a training workdir whose run had ema.decay > 0")
    if model_config and kind != "open_clip":
        raise ValueError(f"a model config applies to open_clip weights only; {path} is a "
                         f"{kind} and carries its own")
    if kind == "bundle":
        cfg, flat, tok, pre = bundle.read_bundle(path)
        src = Source(kind, path, cfg, params_lib.unflatten_params(flat), tok, pre)
    elif kind == "hf":
        src = Source(kind, path, *hf.import_hf(path, scan=bool(scan)))
    elif kind == "open_clip":
        src = Source(kind, path, *open_clip.import_open_clip(path, model_config, bool(scan)))
    elif kind == "hf_text":
        src = Source(kind, path, *hf_text.import_hf_text(path, bool(scan)))
        if overrides:
            raise ValueError(f"{path} is a text encoder alone: model overrides do not apply")
        return src
    else:
        src = _checkpoint_source(path, weights)
    overrides = dict(overrides or {})
    if scan is not None and src.cfg.scan != scan:
        overrides["scan"] = scan
    return refit(src, src.cfg.replace(**overrides)) if overrides else src


def load_params(path: str | os.PathLike, abstract_tree, shardings=None, blocks: str = ""):
    """Params of any source laid out, typed and sharded like ``abstract_tree`` (``init_from``).

    Orbax checkpoints restore straight into the shardings; files are read on the host and
    placed shard by shard. Shapes must match (errors name the key), except that another image
    or patch size is resampled (:func:`clip_jax.params.resample_vision`) and another depth takes
    the source blocks ``blocks`` names (``checkpoint.init_from_blocks``:
    :func:`clip_jax.params.pick_blocks`).
    """
    kind = kind_of(path)
    if kind == "hf_text":
        raise ValueError(f"{path} holds a text encoder only: take it with checkpoint."
                         f"init_from_params='{hf_text.PATTERN}' (the rest starts fresh)")
    if blocks:
        return params_lib.place(params_lib.flatten_params(resolve(path).params), abstract_tree,
                                shardings, f"{kind} {path}", blocks)
    if kind == "checkpoint":
        if not _other_shape(Path(path), abstract_tree):
            return checkpoint.load_params(str(path), abstract_tree, shardings)
        return params_lib.place(params_lib.flatten_params(_checkpoint_source(Path(path)).params),
                                abstract_tree, shardings, f"checkpoint {path}")
    if kind == "bundle":
        return bundle.load_params(path, abstract_tree, shardings)
    if kind == "hf":
        return hf.load_params(path, abstract_tree, shardings)
    src = resolve(path)
    return params_lib.place(params_lib.flatten_params(src.params), abstract_tree, shardings,
                            f"open_clip weights {path}")

