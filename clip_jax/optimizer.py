"""AdamW with CLIP's defaults, warmup + cosine schedule, global-norm clipping.

Weight decay applies to matrices only: biases, LayerNorm scales/shifts, the class token and the
logit scale/bias are never decayed. The mask works on names, so it is the same whether blocks
are scanned (stacked with a leading layer axis) or not. Token and position embeddings are not
decayed either unless ``decay_embeddings`` is set (open_clip excludes them too).
"""

from __future__ import annotations

import jax
import optax

_NO_DECAY_LEAVES = {"bias", "scale", "logit_scale", "logit_bias", "class_embedding"}
_EMBEDDINGS = {"token_embedding", "positional_embedding"}


def decay_mask(params, decay_embeddings: bool = False):
    def keep(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] in _NO_DECAY_LEAVES:
            return False
        return decay_embeddings or keys[-1] not in _EMBEDDINGS

    return jax.tree_util.tree_map_with_path(keep, params)


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    warmup = int(opt_cfg.warmup_steps)
    if warmup >= total_steps:
        return optax.linear_schedule(0.0, opt_cfg.lr, max(warmup, 1))
    if opt_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, opt_cfg.lr, warmup, total_steps, end_value=opt_cfg.lr * opt_cfg.end_lr_ratio)
    if opt_cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, opt_cfg.lr, max(warmup, 1)),
             optax.constant_schedule(opt_cfg.lr)], [warmup])
    raise ValueError(f"optimizer.schedule={opt_cfg.schedule!r}: use 'cosine' or 'constant'")


def make_optimizer(opt_cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                       optax.Schedule]:
    schedule = make_schedule(opt_cfg, total_steps)
    parts = []
    if opt_cfg.grad_clip_norm and opt_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
    parts.append(optax.adamw(
        schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        mask=lambda p: decay_mask(p, opt_cfg.decay_embeddings)))
    return optax.chain(*parts), schedule
