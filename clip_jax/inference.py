"""Inference: a model on the local devices, zero-shot classifiers, and the short Python API.

::

    import clip_jax
    clip_jax.list_models()                                  # presets + open_clip JSON names
    model, params, preprocess, tokenizer = clip_jax.create_model("ViT-B-32")  # or a path
    m = clip_jax.load(path)                                 # bundle, workdir, HF or open_clip
    probs = m.zero_shot(images, ["cat", "dog"])             # (n_images, n_classes)

:func:`build_zeroshot_classifier` (prompt ensembling) and :func:`run_batched` (fixed-shape
chunks for a jitted encoder) are shared with the evaluators.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clip_jax import bundle, models, sources
from clip_jax import params as params_lib
from clip_jax.data import naflex, transforms
from clip_jax.data import tokenizer as tokenizer_lib
from clip_jax.evaluate.templates import DEFAULT_TEMPLATES

# ---------------------------------------------------------------------------------------------
# Zero-shot classifiers and batching


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 NumPy (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, eps)


def format_prompt(template: str | Callable[[str], str], class_name: str) -> str:
    """``template`` is a callable, or a ``str.format`` string with ``{}`` or ``{c}``."""
    if callable(template):
        return template(class_name)
    if "{c}" in template:
        return template.format(c=class_name)
    return template.format(class_name)


def build_zeroshot_classifier(
    encode_text: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    batch_size: int = 256,
    pad_batches: bool = True,
) -> np.ndarray:
    """CLIP prompt ensembling: ``(num_classes, D)`` float32 classifier with unit-norm rows.

    For each class every template is formatted and encoded; each prompt embedding is
    L2-normalised (a no-op for the normalised output ``encode_text`` is expected to return), the
    embeddings are averaged over templates and the mean is re-normalised (as open_clip's
    ``build_zero_shot_classifier``). Prompts are encoded class-major in batches of
    ``batch_size``; with ``pad_batches`` the last batch is padded (repeating its last prompt) to
    ``batch_size`` so a jitted encoder sees a single shape, and the padding is discarded.
    """
    class_names = list(class_names)
    templates = list(templates)
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    texts = [format_prompt(t, c) for c in class_names for t in templates]
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        n = len(batch)
        if pad_batches and n < batch_size:
            batch = batch + [batch[-1]] * (batch_size - n)
        emb = np.asarray(encode_text(batch), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {emb.shape} for {len(batch)} texts")
        chunks.append(emb[:n])
    emb = l2_normalize(np.concatenate(chunks, axis=0))
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return l2_normalize(emb)


def run_batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
                min_batch: int, out_dim: int) -> np.ndarray:
    """``fn`` over ``x`` (an array, or a dict of arrays with one row per input: NaFlex) in chunks
    of at most ``batch_size`` rows, as float32 NumPy.

    A short chunk is padded (repeating its last row) to ``min_batch * 2**k`` rows, capped at
    ``batch_size``, so a jitted ``fn`` compiles for a few shapes only (``min_batch ==
    batch_size``: one shape); the padding rows are dropped from the result.
    """
    outs = []
    for start in range(0, len(jax.tree.leaves(x)[0]), batch_size):
        chunk = jax.tree.map(lambda a, s=start: a[s:s + batch_size], x)
        m = len(jax.tree.leaves(chunk)[0])
        b = min_batch
        while b < m and b < batch_size:
            b *= 2
        b = min(b, batch_size)
        if b > m:
            chunk = jax.tree.map(
                lambda a, k=b - m: np.concatenate([a, np.repeat(a[-1:], k, axis=0)]), chunk)
        outs.append(np.asarray(fn(chunk), np.float32)[:m])
    return np.concatenate(outs) if outs else np.zeros((0, out_dim), np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ---------------------------------------------------------------------------------------------
# Preprocessing


def preprocess_images(images, image_size: int, mean: Sequence[float] = transforms.CLIP_MEAN,
                      std: Sequence[float] = transforms.CLIP_STD) -> np.ndarray:
    """PIL images, uint8 (H, W, 3) / (N, H, W, 3) arrays or image paths (one or a list) ->
    float32 (N, S, S, 3): shorter side resized (bicubic) to S, center crop, normalised."""
    images = load_images(images)
    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    for i, img in enumerate(images):
        transforms.normalize(transforms.resize_center_crop(img, image_size), out=out[i],
                             mean=mean, std=std)
    return out


def preprocess_naflex(images, cfg: models.ModelConfig, pre: Mapping) -> dict:
    """What :func:`preprocess_images` takes -> a NaFlex model's dict of patches, mask and shapes
    (:func:`clip_jax.data.naflex.preprocess`: each image at its own aspect ratio, at most
    ``pre["max_num_patches"]`` patches, default the position table's size)."""
    return naflex.preprocess(load_images(images), cfg.vision.patch_size,
                             int(pre.get("max_num_patches", cfg.vision.patches())),
                             pre["mean"], pre["std"], pre.get("resize", "bilinear"))


def load_images(images) -> list[Image.Image]:
    """PIL images, uint8 (H, W, 3) / (N, H, W, 3) arrays or image paths (one or a list) -> RGB
    PIL images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, list | tuple):
        images = [images]
    out = []
    for img in images:
        if isinstance(img, str | os.PathLike):
            with Image.open(img) as f:
                f.load()
                img = transforms.to_rgb(f)
        elif isinstance(img, np.ndarray):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise TypeError(f"image arrays must be uint8 (H, W, 3), got {img.dtype} "
                                f"{img.shape}; pass normalised float pixels to encode_image")
            img = Image.fromarray(img)
        elif not isinstance(img, Image.Image):
            raise TypeError(f"cannot preprocess a {type(img).__name__}: expected a PIL image, "
                            f"a uint8 array or a path")
        out.append(transforms.to_rgb(img))
    return out


# ---------------------------------------------------------------------------------------------
# The inference model


class InferenceModel:
    """A CLIP model ready for inference on the local devices (batch split over all of them).

    ``encode_image`` / ``encode_text`` return L2-normalised float32 NumPy arrays; inputs are
    processed in chunks of ``batch_size`` padded to a few fixed sizes (few compilations).
    """

    def __init__(self, cfg: models.ModelConfig, params, tokenizer=None,
                 preprocess: Mapping | None = None, devices=None, batch_size: int = 64):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.preprocess_cfg = dict(preprocess or bundle.default_preprocess(cfg.vision.image_size))
        self.devices = list(devices or jax.local_devices())
        n = len(self.devices)
        self.batch_size = max(n, -(-int(batch_size) // n) * n)
        mesh = jax.sharding.Mesh(np.asarray(self.devices), ("batch",))
        P = jax.sharding.PartitionSpec
        replicated = jax.sharding.NamedSharding(mesh, P())
        self._data = jax.sharding.NamedSharding(mesh, P("batch"))
        flat = params_lib.adapt(params_lib.flatten_params(jax.device_get(params)),
                                params_lib.flatten_params(models.abstract_params(cfg)), "params")
        self.params = jax.device_put(params_lib.unflatten_params(flat), replicated)
        self.logit_scale = float(np.asarray(flat["logit_scale"]))
        self.logit_bias = float(np.asarray(flat["logit_bias"])) if "logit_bias" in flat else None
        model = models.CLIP(cfg)

        def run(method):
            return jax.jit(lambda p, x: model.apply(models.variables(p), x, method=method),
                           in_shardings=(replicated, self._data), out_shardings=replicated)

        self._encode_image = run(models.CLIP.encode_image)
        self._encode_text = run(models.CLIP.encode_text)

    def __repr__(self) -> str:
        v, t = self.cfg.vision, self.cfg.text
        image = (f"{v.image_size}px/{v.patch_size} width {v.width}x{v.layers}"
                 if v.stages is None else f"{v.family} {v.image_size}px width {v.width} "
                 f"stages {list(v.stages)}")
        return (f"InferenceModel(image {image}, text width {t.width}x{t.layers}, embed "
                f"{self.cfg.embed_dim}, {len(self.devices)} devices)")

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    @property
    def naflex(self) -> tuple | None:
        """A NaFlex model's (patch size, patch budget, resampling) for whole images (the
        evaluations' batches, :func:`clip_jax.evaluate.encode.image_batches`), else None."""
        if self.cfg.vision.family != "naflex":
            return None
        pre = self.preprocess_cfg
        return (self.cfg.vision.patch_size,
                int(pre.get("max_num_patches", self.cfg.vision.patches())),
                pre.get("resize", "bilinear"))

    def preprocess(self, images) -> np.ndarray | dict:
        """See :func:`preprocess_images`, with this model's size, mean and std; a NaFlex model's
        images keep their aspect ratio (:func:`clip_jax.data.naflex.preprocess`, the budget
        ``preprocess.max_num_patches``, default the position table's size)."""
        if self.cfg.vision.family == "naflex":
            return preprocess_naflex(images, self.cfg, self.preprocess_cfg)
        return preprocess_images(images, self.image_size, self.preprocess_cfg["mean"],
                                 self.preprocess_cfg["std"])

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (none was bundled): pass token ids "
                               "to encode_text, or re-import with --tokenizer")
        return self.tokenizer(texts, context_length=self.cfg.text.context_length)

    def _batched(self, fn, x: np.ndarray) -> np.ndarray:
        return run_batched(lambda c: fn(self.params, jax.device_put(c, self._data)), x,
                           self.batch_size, len(self.devices), self.cfg.embed_dim)

    def encode_image(self, images) -> np.ndarray:
        """Normalised float NHWC pixels, a NaFlex model's dict of patches, mask and shapes (or
        anything :meth:`preprocess` takes) -> (N, D)."""
        if isinstance(images, Mapping):
            return self._batched(self._encode_image, {k: np.asarray(v) for k, v in
                                                      images.items()})
        if not (isinstance(images, np.ndarray | jax.Array) and images.ndim == 4
                and jnp.issubdtype(images.dtype, jnp.floating)):
            images = self.preprocess(images)
            if isinstance(images, dict):
                return self._batched(self._encode_image, images)
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
        return self._batched(self._encode_text, self._trim(ids.astype(np.int32)))

    def _trim(self, ids: np.ndarray) -> np.ndarray:
        """A causal tower's output at the pooled position depends only on the tokens up to it,
        so the padding after the longest row's pooled position is cut (to a power-of-two length
        >= 8: few compilations): exact, and 3-4x less work for short prompts at context 77."""
        t = self.cfg.text
        if not t.causal or t.pool == "last" or ids.shape[1] <= 8:
            return ids
        if t.pool == "first":
            pos = np.zeros(len(ids), np.int64)
        elif t.eot_id is None:
            pos = ids.argmax(axis=-1)
        else:
            pos = (ids == t.eot_id).argmax(axis=-1)
        need = int(pos.max(initial=0)) + 1
        length = 8
        while length < need:
            length *= 2
        return ids[:, :min(length, ids.shape[1])]

    def classifier(self, class_names: Sequence[str],
                   templates: Sequence[str] | None = None) -> np.ndarray:
        """Prompt-ensembled class embeddings (C, D): mean of normalised prompts, renormalised."""
        return build_zeroshot_classifier(self.encode_text, list(class_names),
                                         list(templates or DEFAULT_TEMPLATES),
                                         batch_size=self.batch_size, pad_batches=False)

    def zero_shot(self, images, class_names: Sequence[str],
                  templates: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (n_images, n_classes) from ``exp(logit_scale) * cosine``: a
        softmax over classes for CLIP; for SigLIP models (with a ``logit_bias``) the sigmoid of
        ``logits + logit_bias``, each class judged on its own, as SigLIP was trained."""
        logits = math.exp(self.logit_scale) * (
            self.encode_image(images) @ self.classifier(class_names, templates).T)
        if self.logit_bias is not None:
            return _sigmoid(logits + self.logit_bias)
        return _softmax(logits)


def load(path: str | os.PathLike, devices=None, batch_size: int = 64,
         weights: str = "raw") -> InferenceModel:
    """Any model source (bundle, training workdir or checkpoints dir, HF CLIP directory,
    open_clip weights; see :mod:`clip_jax.sources`) as an :class:`InferenceModel`;
    ``weights="ema"``: a training run's weight average (:data:`clip_jax.sources.WEIGHTS`)."""
    src = sources.resolve(path, weights=weights)
    return InferenceModel(src.cfg, src.params, src.tokenizer, src.preprocess, devices,
                          batch_size)


# ---------------------------------------------------------------------------------------------
# open_clip-style constructors


def list_models() -> list[str]:
    """Model names :func:`create_model` understands: clip_jax's presets, which use open_clip's
    names (an open_clip model-config JSON path or text is accepted as well)."""
    return sorted(models.PRESETS)


def create_model(name: str | os.PathLike, tokenizer: str | None = None, seed: int = 0,
                 **overrides):
    """``(model, params, preprocess, tokenizer)`` as open_clip's ``create_model_and_transforms``.

    ``name``: a preset (:func:`list_models`) or open_clip model-config JSON -> freshly
    initialised params (``overrides`` replace ModelConfig fields, e.g. ``scan=True``); or a path
    to any model source (bundle, workdir, HF or open_clip weights) -> its trained params, where
    ``vision={"image_size": N}`` / ``{"patch_size": P}`` resamples the position embeddings and
    the patch kernel (:func:`clip_jax.sources.refit`; one logged line says what changed).
    ``params`` are unboxed; ``preprocess(images)`` returns normalised float32 NHWC pixels;
    ``tokenizer`` is the source's own, else the one ``tokenizer`` names (a spec for
    :func:`clip_jax.data.tokenizer.load_tokenizer`); for a preset, its standard tokenizer
    (:func:`clip_jax.data.tokenizer.preset_tokenizer`: None for tiny / small-demo).
    """
    spec = os.fspath(name)
    if spec in models.PRESETS or spec.lstrip().startswith("{") or (
            spec.endswith(".json") and Path(spec).is_file()):
        cfg = (models.get_model_config(spec) if spec in models.PRESETS
               else models.from_open_clip_config(spec)).replace(**overrides)
        params_lib.vision_grid(cfg.vision.image_size, cfg.vision.patch_size)
        tok = (tokenizer_lib.preset_tokenizer(spec, tokenizer, cfg.text.vocab_size)
               if spec in models.PRESETS else None)
        model = models.CLIP(cfg)
        params = jax.jit(lambda k: models.merge_variables(*(lambda v: (
            v["params"], v.get(models.STATS)))(nn.meta.unbox(
                model.init(k, *models.init_inputs(cfg))))))(jax.random.key(seed))
        pre = bundle.default_preprocess(cfg.vision.image_size)
    elif not Path(spec).exists():
        raise ValueError(f"{spec!r} is neither a model name ({', '.join(list_models())}), an "
                         f"open_clip model-config JSON, nor an existing path")
    else:
        src = sources.resolve(spec, overrides=overrides)  # another image/patch size: resampled
        cfg, params, tok, pre = src.cfg, src.params, src.tokenizer, src.preprocess
        model = models.CLIP(cfg)
    if tokenizer is not None:
        tok = tokenizer_lib.load_tokenizer(tokenizer)

    def preprocess(images) -> np.ndarray | dict:
        if cfg.vision.family == "naflex":
            return preprocess_naflex(images, cfg, pre)
        return preprocess_images(images, cfg.vision.image_size, pre["mean"], pre["std"])

    return model, params, preprocess, tok
