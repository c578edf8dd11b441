"""Online distillation: frozen teachers from any model source inside the sharded train step.

    --config.distill.teachers="('workdirs/big',)" [--config.distill.kd_weight=1.0 ...]

Each teacher (:mod:`clip_jax.sources`: bundle, workdir, HF CLIP / SigLIP directory, open_clip
weights) is read once, laid out over the student's mesh with its own logical sharding (FSDP
shards it like the student), optionally cast to bfloat16, and passed to the jitted step as an
argument that is never donated nor updated: no optimizer state, no gradient (its embeddings are
behind ``stop_gradient``), its params bit-identical after training. In the step it sees the
student's batch through its own preprocessing: the pixels resized on the device when its image
size differs and renormalised with its mean/std; the student's token ids when the tokenizers
agree (padded to a longer context), else its own ids, tokenised on the host beside the
student's as their own batch field (:class:`JointTokenizer`, :func:`text_key`); without
captions a differing vocabulary is refused. What the step computes from them is the
distillation objective (:mod:`clip_jax.objectives.distillation`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import flops, kd_losses, models, sharding, sources
from clip_jax.data import stored as stored_lib
from clip_jax.data import transforms

DTYPES = ("float32", "bfloat16")
EXTRA = "distill"  # the student's params key of the feature projections (not in the model)
_PROBE_TEXTS = ("a photo of a red circle", "Two BLUE squares, on grass!", "x")


@dataclasses.dataclass
class Teacher:
    """A frozen teacher: where it came from, its model, preprocessing and host params."""

    path: str
    cfg: models.ModelConfig
    model: models.CLIP
    preprocess: dict
    tokenizer: Any
    host_params: Any
    specs: Any  # PartitionSpecs of its params on the student's mesh
    own_text: bool = False  # its tokenizer differs: the host tokenises each caption for it too


@dataclasses.dataclass
class StoredTeacher:
    """A teacher's embeddings stored by :mod:`clip_jax.embed`: its directory, width and the
    scale of its logits (``distill.teacher_logit_scale``, or 0: the one embed recorded)."""

    path: str
    embed_dim: int
    logit_scale: float


def active(config) -> bool:
    """Whether the run distils: online teachers or stored embeddings."""
    return bool(config.distill.teachers) or bool(stored_lib.parse_dirs(config.distill.embeddings))


def check_config(config) -> None:
    """The distill section's values, one line per problem (no file is read)."""
    d = config.distill
    teachers = d.teachers
    if isinstance(teachers, str) or not all(isinstance(t, str) and t for t in teachers):
        raise ValueError(f"config distill.teachers={teachers!r} must be a tuple of model "
                         "sources (bundle, workdir, HF directory, open_clip weights)")
    for key in ("clip_weight", "kd_weight", "feature_weight", "teacher_logit_scale"):
        if not d[key] >= 0:
            raise ValueError(f"config distill.{key}={d[key]} must be >= 0")
    if d.combine not in kd_losses.COMBINE:
        raise ValueError(f"config distill.combine={d.combine!r}: choose one of "
                         f"{kd_losses.COMBINE}")
    if d.dtype not in DTYPES:
        raise ValueError(f"config distill.dtype={d.dtype!r}: choose one of {DTYPES}")
    dirs = stored_lib.parse_dirs(d.embeddings)
    if dirs and teachers:
        raise ValueError("config distill.teachers and distill.embeddings are both set: "
                         "distil online from teachers or from stored embeddings, not both")
    if dirs and config.data.source != "webdataset":
        raise ValueError(f"config distill.embeddings needs data.source='webdataset' (got "
                         f"{config.data.source!r}): stored embeddings join shards by key")
    what = "distill.teachers" if teachers else "distill.embeddings"
    if (teachers or dirs) and d.kd_weight == 0 and d.feature_weight == 0:
        raise ValueError(f"config {what} is set but distill.kd_weight and "
                         "distill.feature_weight are both 0: nothing to distil")
    if (teachers or dirs) and config.distill.clip_weight == 0 and config.loss != "clip":
        raise ValueError("config distill.clip_weight=0 with loss='siglip': the SigLIP bias "
                         "would get no gradient; keep clip_weight > 0")


def load(config, mesh, student_cfg: models.ModelConfig) -> list[Teacher]:
    """Read each of ``distill.teachers`` on the host and check it fits the student (one-line
    ValueErrors naming the teacher and the mismatch)."""
    out = []
    for path in config.distill.teachers:
        try:
            src = sources.resolve(path)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"config distill.teachers: {path}: {e}") from None
        cfg = src.cfg
        if config.distill.dtype == "bfloat16":
            cfg = cfg.replace(dtype="bfloat16")
        if cfg.text.context_length < student_cfg.text.context_length:
            raise ValueError(f"distill teacher {path}: context length {cfg.text.context_length} "
                             f"< the student's {student_cfg.text.context_length} (captions would "
                             "be cut differently); use a student context <= the teacher's")
        init = jax.eval_shape(lambda c=cfg: models.CLIP(c).init(
            jax.random.key(0), *models.init_inputs(c)))  # + batch_stats of a BatchNorm tower
        boxed = models.merge_variables(init["params"], init.get(models.STATS))
        out.append(Teacher(str(path), cfg, models.CLIP(cfg), dict(src.preprocess),
                           src.tokenizer, src.params, sharding.param_specs(boxed, mesh)))
    return out


def load_stored(config) -> list[StoredTeacher]:
    """Each of ``distill.embeddings`` (its ``embed.json``: width, recorded logit scale), with
    one-line errors: not a directory, not an embed output, no scale to use."""
    out = []
    for d in stored_lib.parse_dirs(config.distill.embeddings):
        report = stored_lib.read_report(d)
        scale = float(config.distill.teacher_logit_scale)
        if scale == 0:
            scale = float(report.get("logit_scale") or 0)
            if not scale > 0:
                raise ValueError(f"config distill.teacher_logit_scale=0 (each teacher's own) but "
                                 f"{d}/{stored_lib.REPORT} records no logit_scale (written by "
                                 "an older embed): set distill.teacher_logit_scale > 0")
        out.append(StoredTeacher(d, int(report["embed_dim"]), scale))
    return out


def check_tokenizers(teachers: list[Teacher], tokenizer, vocab_size: int) -> None:
    """Which teachers read the student's token ids as they are (same vocabulary size and the
    same ids for a few probe captions) and which get their own (``own_text``: the host
    tokenises each caption with the teacher's tokenizer too, :class:`JointTokenizer`). Without
    captions (synthetic data) or a teacher tokenizer, a differing vocabulary is refused."""
    for t in teachers:
        same = t.cfg.text.vocab_size == vocab_size
        if tokenizer is not None and t.tokenizer is not None:
            a = tokenizer(list(_PROBE_TEXTS), 16)
            b = t.tokenizer(list(_PROBE_TEXTS), 16)
            same = same and a.shape == b.shape and bool((a == b).all())
            t.own_text = not same
        elif not same:
            raise ValueError(f"distill teacher {t.path}: vocabulary of {t.cfg.text.vocab_size} "
                             f"tokens != the student's {vocab_size}, and no tokenizer to "
                             f"retokenise with ({'teacher' if tokenizer else 'student'} has "
                             "none)")


class JointTokenizer:
    """The student's ids and each ``own_text`` teacher's as their own batch fields: ``{"text":
    (b, L), "teacher{k}_text": (b, L_k)}`` (:func:`text_key`), tokenised on the host by the
    pipeline's workers."""

    def __init__(self, student, context_length: int, teachers: list[Teacher]):
        self.student, self.context_length = student, context_length
        self.vocab_size = student.vocab_size
        self.others = [(text_key(k), t.tokenizer, t.cfg.text.context_length)
                       for k, t in enumerate(teachers) if t.own_text]

    def __call__(self, texts, context_length=None):
        out = {"text": np.asarray(self.student(texts, context_length or self.context_length),
                                  np.int32)}
        out.update({key: np.asarray(tok(texts, ctx), np.int32) for key, tok, ctx in self.others})
        return out


def host_tokenizer(setup, tokenizer):
    """The pipeline's tokenizer: the student's, or with ``own_text`` teachers a
    :class:`JointTokenizer` that adds their ids."""
    if not any(t.own_text for t in setup.teachers):
        return tokenizer
    return JointTokenizer(tokenizer, setup.model_cfg.text.context_length, setup.teachers)


def text_key(k: int) -> str:
    """The batch field of teacher ``k``'s own token ids (its tokenizer differs)."""
    return f"teacher{k}_text"


def place(teachers: list[Teacher], mesh, dtype: str):
    """Each teacher's params on ``mesh`` (sharded by its specs, cast to ``dtype``)."""
    out = []
    for t in teachers:
        shardings = sharding.to_shardings(t.specs, mesh)
        cast = functools.partial(jax.tree.map, lambda x: x.astype(jnp.dtype(dtype)))
        put = jax.jit(cast, out_shardings=shardings)
        out.append(put(jax.tree.map(jnp.asarray, t.host_params)))
    return out


def shardings(teachers: list[Teacher], mesh):
    return [sharding.to_shardings(t.specs, mesh) for t in teachers]


def abstract(teachers: list[Teacher], mesh, dtype: str):
    """The teachers' params as sharded ShapeDtypeStructs (what the step is lowered on)."""
    return [jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype),
                                                            sharding=sh),
                         models.abstract_params(t.cfg), shd)
            for t, shd in zip(teachers, shardings(teachers, mesh))]


def forward_flops(teachers: list[Teacher], batch: int) -> float:
    """The teachers' forward matmul FLOPs for a global batch (both towers)."""
    return float(sum(batch * (f["vision"] + f["text"])
                     for f in (flops.tower_flops(t.cfg) for t in teachers)))


def _pixels(t: Teacher, images):
    """The student's batch images as this teacher sees them: its normalisation, its size."""
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32)
    else:  # already CLIP-normalised floats: back to 0..255
        mean, inv_std = transforms.pixel_scale()
        x = images.astype(jnp.float32) / jnp.asarray(inv_std) + jnp.asarray(mean)
    mean, inv_std = transforms.pixel_scale(t.preprocess.get("mean"), t.preprocess.get("std"))
    x = (x - jnp.asarray(mean)) * jnp.asarray(inv_std)
    size = t.cfg.vision.image_size
    if x.shape[1:3] != (size, size):
        method = "bicubic" if t.preprocess.get("resize", "bicubic") == "bicubic" else "bilinear"
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method)
    return x


def _tokens(t: Teacher, text):
    extra = t.cfg.text.context_length - text.shape[1]
    return jnp.pad(text, ((0, 0), (0, extra))) if extra > 0 else text


def embed(t: Teacher, params, images, text):
    """``(image, text, logit scale)`` of teacher ``t`` (its ``params`` placed by :func:`place`)
    on the student's batch ``images`` (through :func:`_pixels`) and token ids ``text`` (its own
    ids, or the student's padded to its context); BatchNorm on its running statistics."""
    with nn.logical_axis_rules(sharding.RULES):
        img, txt, log_scale, _ = t.model.apply(models.variables(params), _pixels(t, images),
                                               _tokens(t, text))
    return img, txt, jnp.exp(log_scale.astype(jnp.float32))
