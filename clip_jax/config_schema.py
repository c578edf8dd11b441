"""Every numeric config key's type and range, declared once and checked before anything runs.

``RANGES`` maps each int/float key of :func:`clip_jax.config.base_config` to a :class:`Range`
(``tests/test_hostile.py`` asserts that none is missing). :func:`check` refuses a wrong type
(a bool or a string where a number goes), NaN and infinities, and a value outside the range, in
one line naming the key; ``off`` lists the values that mean "off" or "fill" outside the range
(``stability.spike_factor=0``, ``mesh.data=-1``). Cross-key rules stay in ``config.validate``.
The model-config files a run reads (open_clip JSON, HF ``config.json``) declare their keys the
same way and go through :func:`check_mapping`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    kind: type = int  # int, float (an int is accepted for a float) or bool
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo < value (else lo <= value)
    hi_open: bool = False
    off: tuple = ()  # values accepted outside [lo, hi], with their meaning in the message

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        kind = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        extra = f" (or {', '.join(f'{o:g}' for o in self.off)})" if self.off else ""
        return f"{kind} {' and '.join(parts)}{extra}".strip()

    def ok(self, v) -> bool:
        if self.kind is bool or isinstance(v, bool):
            return self.kind is bool and isinstance(v, bool)
        if not isinstance(v, int | float):
            return False
        if self.kind is int and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if v in self.off:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


COUNT, POSITIVE = Range(int, 0), Range(int, 1)
ANY_INT, ANY_FLOAT = Range(int), Range(float)
NONNEG, POS_FLOAT = Range(float, 0), Range(float, 0, lo_open=True)
FRACTION = Range(float, 0, 1)  # [0, 1]
OPEN_UNIT = Range(float, 0, 1, lo_open=True, hi_open=True)  # (0, 1)
MESH = Range(int, 1, off=(-1,))
BOOL = Range(bool)

RANGES: dict[str, Range] = {
    "seed": ANY_INT, "batch_size": POSITIVE, "total_steps": POSITIVE,
    "log_every_steps": POSITIVE, "accum_steps": POSITIVE, "loss_block_size": COUNT,
    "model.embed_dim": POSITIVE, "model.init_logit_scale": ANY_FLOAT,
    "model.init_logit_bias": ANY_FLOAT, "model.ln_eps": OPEN_UNIT,
    "model.ls_init_value": ANY_FLOAT, "model.lock_image_unlocked_groups": COUNT,
    **{f"model.{t}.{k}": POSITIVE for t in ("vision", "text")
       for k in ("width", "layers", "heads", "mlp_dim")},
    "model.vision.image_size": POSITIVE, "model.vision.patch_size": POSITIVE,
    "model.vision.patch_dropout": Range(float, 0, 1, hi_open=True),
    "model.text.context_length": POSITIVE, "model.text.vocab_size": POSITIVE,
    "model.text.eot_id": COUNT,
    "optimizer.lr": POS_FLOAT, "optimizer.warmup_steps": COUNT,
    "optimizer.end_lr_ratio": FRACTION, "optimizer.weight_decay": NONNEG,
    "optimizer.b1": Range(float, 0, 1, hi_open=True), "optimizer.b2": Range(float, 0, 1,
                                                                              hi_open=True),
    "optimizer.eps": POS_FLOAT, "optimizer.grad_clip_norm": NONNEG,
    "optimizer.layer_decay": Range(float, 0, 1, lo_open=True),
    "ema.decay": Range(float, 0, 1, hi_open=True), "ema.every_steps": POSITIVE,
    "ema.start_step": COUNT, "ema.warmup_power": NONNEG,
    "mesh.data": MESH, "mesh.fsdp": MESH, "mesh.tensor": MESH,
    "data.demo_train_samples": POSITIVE, "data.demo_seed": ANY_INT,
    "data.tokenizer_vocab_size": COUNT, "data.shuffle_buffer": COUNT, "data.workers": COUNT,
    "data.image_size": POSITIVE, "data.synthetic_classes": POSITIVE,
    "data.synthetic_noise": NONNEG, "data.prefetch": COUNT, "data.worker_prefetch": POSITIVE,
    "data.tfds_weight": POS_FLOAT, "data.naflex.tokens": COUNT,
    "data.naflex.batch_multiple": COUNT,
    "checkpoint.every_steps": COUNT, "checkpoint.keep": COUNT, "checkpoint.keep_period": COUNT,
    "eval.every_steps": COUNT, "eval.probe_max_per_class": COUNT, "eval.batch_size": POSITIVE,
    "stability.max_skips_in_a_row": COUNT, "stability.spike_factor": Range(
        float, 1, lo_open=True, off=(0,)),
    "stability.spike_warmup_steps": COUNT, "stability.spike_ema_decay": OPEN_UNIT,
    "stability.rollback_skip_steps": COUNT, "stability.max_rollbacks": COUNT,
    "debug.spike_scale": POS_FLOAT,
    "distill.clip_weight": NONNEG, "distill.kd_weight": NONNEG, "distill.feature_weight": NONNEG,
    "distill.teacher_logit_scale": NONNEG,
    **{f"model.decoder.{k}": POSITIVE for k in ("layers", "width", "heads", "mlp_dim")},
    "model.decoder.pad_id": COUNT, "caption.weight": NONNEG, "caption.masked_pred_prob": FRACTION,
    "model.decoder.loc_bins": COUNT, "caption.max_boxes": POSITIVE,
    **{f"{t}.{k}": r for t in ("silc", "tips") for k, r in (
        ("weight", NONNEG), ("start_fraction", Range(float, 0, 1, hi_open=True)),
        ("head_hidden", POSITIVE), ("head_bottleneck", POSITIVE), ("head_dim", POSITIVE),
        ("teacher_temp", POS_FLOAT), ("student_temp", POS_FLOAT))},
    "silc.local_crops": POSITIVE, "silc.local_size": COUNT, "tips.mask_ratio": OPEN_UNIT,
}

# The decoder objective's keys (clip_jax.objectives.captioning, .locca): the loss weight,
# CapPa's parallel fraction and, with model.decoder.loc_bins > 0 (LocCa), each task's
# probability (captioning, referring expression -> box, box -> region caption) and the
# boxes per example the data pipeline carries
CAPTION = dict(weight=1.0, masked_pred_prob=0.0, task_probs=(1 / 3, 1 / 3, 1 / 3), max_boxes=4)


def locca_boxes(config, model_cfg) -> int:
    """Boxes per example LocCa's decoder tasks read (``caption.max_boxes``; 0: LocCa off, no
    decoder with ``loc_bins`` > 0 or ``caption.weight`` 0): what the input pipeline carries."""
    d = model_cfg.decoder
    on = d is not None and d.loc_bins > 0 and float(config.caption.weight) > 0
    return int(config.caption.max_boxes) if on else 0


# Self-distillation from the EMA teacher (clip_jax/objectives/silc.py, tips.py; weight 0 = off),
# SigLIP 2's settings (docs/self_distillation.md says where each comes from).
_HEAD = dict(head_hidden=2048, head_bottleneck=256, teacher_temp=0.04, student_temp=0.1)
SELF_DISTILL = (
    dict(weight=0.0, start_fraction=0.8, local_crops=8, local_size=0, head_dim=65536,
         global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), **_HEAD),
    dict(weight=0.0, start_fraction=0.8, mask_ratio=0.5, head_dim=8192, **_HEAD))


def check_self_distill(c) -> None:
    """The cross-key rules of ``silc`` / ``tips``: an EMA teacher, square images, crop scales."""
    for name in ("silc", "tips"):
        if float(c[name].weight) > 0 and float(c.ema.decay) <= 0:
            raise ValueError(f"config {name}.weight > 0 needs the EMA teacher: set ema.decay "
                             "(e.g. 0.996) and ema.start_step (the switch step)")
        if float(c[name].weight) > 0 and c.data.naflex.buckets:
            raise ValueError(f"config {name}.weight > 0: self-distillation's views are square "
                             "crops, not NaFlex batches (SigLIP 2 leaves it out of NaFlex too)")
    for key in ("global_scale", "local_scale"):
        v = tuple(c.silc[key])
        if len(v) != 2 or not all(isinstance(x, int | float) for x in v) or \
                not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"config silc.{key}={c.silc[key]!r}: must be (lo, hi) with "
                             "0 < lo <= hi <= 1")


def _get(c, key: str):
    for part in key.split("."):
        c = c[part]
    return c


def check_value(name: str, v, r: Range) -> None:
    if not r.ok(v):
        raise ValueError(f"{name}={v!r}: must be {r.describe()}")


def check(c) -> None:
    """Each declared key of ``c`` that is set (a placeholder left ``None`` is the preset's) has
    its type and range; else one line naming the key, the value and what it must be."""
    for key, r in RANGES.items():
        v = _get(c, key)
        if v is not None:
            check_value(f"config {key}", v, r)
    probs = c.caption.task_probs
    if not isinstance(probs, list | tuple) or len(probs) != 3 or not all(
            NONNEG.ok(p) for p in probs) or not sum(probs) > 0:
        raise ValueError(f"config caption.task_probs={probs!r}: must be three weights >= 0, "
                         "not all 0 (captioning, referring expression -> box, box -> caption)")
    check_self_distill(c)


def check_mapping(where: str, d, table: dict[str, Range]) -> dict:
    """``d`` is a JSON object and its declared keys that are present and not null are in range
    (a list: each element); returns ``d``."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__} {d!r:.60}")
    for key, r in table.items():
        v = d.get(key)
        for i, x in enumerate(v if isinstance(v, list | tuple) else [v]):
            if x is not None:
                check_value(f"{where}.{key}" + (f"[{i}]" if isinstance(v, list | tuple) else ""),
                            x, r)
    return d
