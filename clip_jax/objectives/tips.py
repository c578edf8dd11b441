"""TIPS's masked prediction (Maninis et al. 2024, iBOT's loss; SigLIP 2's second extra term):
part ``tips``.

The student sees the global view ``view_global`` (:mod:`clip_jax.data.views`) with
``round(tips.mask_ratio * patches)`` of its patch embeddings replaced by a learned mask token
(``params["tips"]["mask_token"]``, before the position embedding, as iBOT does); the EMA teacher
sees the same view unmasked. Through the head of :mod:`.selfdist` (``params["tips"]["head"]``
and its EMA) each masked patch's output token is pulled toward the teacher's distribution of
that patch: the mean over the global batch's masked patches of ``CE(teacher, student)``, the
teacher centred over the same patches. Which patches are masked is drawn once per step on the
whole global batch from the step's key (``forward_inputs``), so the gradient cache and any mesh
mask the same ones, and a resume redraws them exactly. The masked tokens are per-example values
(``view_rows``), carried by the gradient cache like the embeddings.

The term runs on the batches that carry ``view_global``: from the step
``round(tips.start_fraction * total_steps)`` on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import clip_jax.objectives.selfdist as selfdist
from clip_jax import sharding
from clip_jax.data import views
from clip_jax.objectives.base import Objective

MASKED = "tips_masked"  # forward_inputs' key: (N, masked) int32, the masked patches (sorted)
ROWS = "tips_tokens"  # view_rows' key: (N, masked, width) the student's masked tokens
_RNG_SALT = 35  # folded into the step's key for the mask draw


def masked_patches(rng, n: int, patches: int, masked: int):
    """(n, masked) int32: for each row, ``masked`` distinct patch indices (sorted), one
    independent draw per row from ``rng``."""
    keys = jax.random.split(jax.random.fold_in(rng, _RNG_SALT), n)
    idx = jax.vmap(lambda k: jax.random.permutation(k, patches)[:masked])(keys)
    return jnp.sort(idx, axis=1).astype(jnp.int32)


def patch_mask(idx, patches: int):
    """(n, masked) indices -> (n, patches) bool."""
    return jnp.any(idx[:, :, None] == jnp.arange(patches)[None, None], axis=1)


def gather(tokens, idx):
    """(n, patches, D) tokens at (n, masked) indices -> (n, masked, D)."""
    return jnp.take_along_axis(tokens, idx[:, :, None], axis=1)


class TIPS(Objective):
    name = "tips"
    ema_teacher = True

    def __init__(self, config, model_cfg):
        self.cfg, v = config.tips, model_cfg.vision
        self.weight = float(self.cfg.weight)
        self.size, self.width = v.image_size, int(v.width)
        self.patches = (v.image_size // v.patch_size) ** 2
        self.masked = max(1, round(float(self.cfg.mask_ratio) * self.patches))
        selfdist.check_model(model_cfg, self.name)

    def weights(self) -> dict[str, float]:
        return {"tips": self.weight}

    def param_shapes(self) -> dict:
        return {"head": selfdist.head_shapes(self.width, self.cfg),
                "mask_token": jax.ShapeDtypeStruct((self.width,), jnp.float32)}

    def init_params(self, rng) -> dict:
        rng = jax.random.fold_in(rng, _RNG_SALT)
        shapes = self.param_shapes()
        return {"head": selfdist.head_init(rng, shapes["head"]),
                "mask_token": 0.02 * jax.random.normal(jax.random.fold_in(rng, 1),
                                                       (self.width,))}

    def batch_fields(self, batch_size: int) -> dict:
        s = self.size
        return {views.GLOBAL: jax.ShapeDtypeStruct((batch_size, s, s, 3), np.uint8)}

    def requires(self) -> tuple[str, ...]:
        return (views.GLOBAL,)

    def student_fields(self) -> tuple[str, ...]:
        return (views.GLOBAL,)

    def forward_inputs(self, batch, rng) -> dict:
        return {MASKED: masked_patches(rng, batch["text"].shape[0], self.patches, self.masked)}

    def view_rows(self, apply, own, fields, inputs) -> dict:
        idx = inputs[MASKED]
        _, tokens = selfdist.encode(apply, fields[views.GLOBAL],
                                    patch_mask=patch_mask(idx, self.patches),
                                    mask_token=own["mask_token"])
        return {ROWS: gather(tokens, idx)}

    def self_targets(self, teacher, batch, inputs):
        _, tokens = selfdist.teacher_view(teacher, batch)
        logits = selfdist.head_apply(teacher.own[self.name]["head"],
                                     gather(tokens, inputs[MASKED]))
        return selfdist.teacher_probs(logits, float(self.cfg.teacher_temp))  # (N, masked, K)

    def target_specs(self, targets):
        return P(sharding.BATCH_AXES)

    def parts(self, local, targets, params):
        student = selfdist.head_apply(params["head"], local.rows[ROWS])
        ce = selfdist.cross_entropy(targets, student, float(self.cfg.student_temp))
        return {"tips": selfdist.mean_over_batch(ce, local.axes).astype(jnp.float32)}
