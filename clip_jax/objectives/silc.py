"""SILC's local-to-global self-distillation (Naeem et al. 2023; SigLIP 2's first extra term):
part ``silc``.

The EMA teacher (:class:`~clip_jax.objectives.base.Teacher`) embeds the global view
``view_global`` of each image; the student embeds its ``silc.local_crops`` local crops
``view_local`` (:mod:`clip_jax.data.views`); through the head of :mod:`.selfdist` (the
student's own, ``params["silc"]["head"]``, and its EMA for the teacher) each local crop's
distribution is pulled toward the teacher's distribution of the global view: the mean over the
global batch's (image, local crop) pairs of ``CE(teacher(global), student(local))``. The
features are the image tower's pooled output (before the L2 normalisation of the image-text
losses). The local crops' pooled features are per-example values (``view_rows``), so the
gradient cache carries them like the embeddings and the cached loss equals the global batch's.

The term runs on the batches that carry both views: from the step ``round(silc.start_fraction
* total_steps)`` on (:func:`clip_jax.data.views.switch_step`).
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

ROWS = "silc_local"  # view_rows' key: (N, crops, D) pooled features of the local crops


class SILC(Objective):
    name = "silc"
    ema_teacher = True

    def __init__(self, config, model_cfg):
        self.cfg, v = config.silc, model_cfg.vision
        self.weight = float(self.cfg.weight)
        self.crops = int(self.cfg.local_crops)
        self.size = v.image_size
        self.local = views.local_size(self.cfg, v.image_size, v.patch_size)
        self.dim = int(model_cfg.embed_dim)
        selfdist.check_model(model_cfg, self.name, self.local)

    def weights(self) -> dict[str, float]:
        return {"silc": self.weight}

    def param_shapes(self) -> dict:
        return {"head": selfdist.head_shapes(self.dim, self.cfg)}

    def init_params(self, rng) -> dict:
        return {"head": selfdist.head_init(jax.random.fold_in(rng, 35),
                                           self.param_shapes()["head"])}

    def batch_fields(self, batch_size: int) -> dict:
        n, s, c = batch_size, self.size, self.local
        return {views.GLOBAL: jax.ShapeDtypeStruct((n, s, s, 3), np.uint8),
                views.LOCAL: jax.ShapeDtypeStruct((n, self.crops, c, c, 3), np.uint8)}

    def requires(self) -> tuple[str, ...]:
        return (views.GLOBAL, views.LOCAL)

    def student_fields(self) -> tuple[str, ...]:
        return (views.LOCAL,)

    def view_rows(self, apply, own, fields, inputs) -> dict:
        x = fields[views.LOCAL]
        n, k = x.shape[:2]
        pooled, _ = selfdist.encode(apply, x.reshape(n * k, *x.shape[2:]))
        return {ROWS: pooled.reshape(n, k, -1)}

    def self_targets(self, teacher, batch, inputs):
        pooled, _ = selfdist.teacher_view(teacher, batch)
        logits = selfdist.head_apply(teacher.own[self.name]["head"], pooled)
        return selfdist.teacher_probs(logits, float(self.cfg.teacher_temp))  # (N, head_dim)

    def target_specs(self, targets):
        return P(sharding.BATCH_AXES)

    def parts(self, local, targets, params):
        student = selfdist.head_apply(params["head"], local.rows[ROWS])  # (n, crops, K)
        ce = selfdist.cross_entropy(targets[:, None], student, float(self.cfg.student_temp))
        return {"silc": selfdist.mean_over_batch(ce, local.axes).astype(jnp.float32)}
