"""Distillation from frozen teachers (online, :mod:`clip_jax.distill`) or from their stored
embeddings (``distill.embeddings``): parts ``kd`` (cross-entropy to the teachers' image <-> text
distributions over the global batch) and ``feature`` (``1 - cos`` to their embeddings, through a
learned projection where the widths differ), weighted by ``distill.kd_weight`` and
``distill.feature_weight`` (:mod:`clip_jax.kd_losses`).

It adds ``params["distill"] = {"proj_k": (D_student, D_k)}`` (teacher ``k``'s projection, only
with the feature loss and another width): trained and checkpointed with the student, no part of
its model (export and the evaluators leave them out). It reads ``teacher{k}_text`` (teacher
``k``'s own token ids, when its tokenizer differs from the student's) and ``stored{k}_image`` /
``stored{k}_text`` (stored rows). Its targets, each teacher's ``(image, text, logit scale)`` on
the whole global batch, are computed once per step without gradient, outside the gradient cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clip_jax import distill, kd_losses, sharding
from clip_jax.data import stored as stored_lib
from clip_jax.objectives.base import Objective, loss_fn


class Distillation(Objective):
    name = distill.EXTRA

    def __init__(self, config, student_embed_dim: int, teachers=(), stored=()):
        d = config.distill
        self.teachers, self.stored = list(teachers), list(stored)
        self.kd_weight, self.feature_weight = float(d.kd_weight), float(d.feature_weight)
        self.combine, self.fixed_scale = d.combine, float(d.teacher_logit_scale)
        self.kd_fn = loss_fn("kd", config)
        self.dim = int(student_embed_dim)

    def weights(self) -> dict[str, float]:
        w = {"kd": self.kd_weight, "feature": self.feature_weight}
        return {k: v for k, v in w.items() if v > 0}

    def _widths(self) -> list[int]:
        return [t.cfg.embed_dim for t in self.teachers] + [s.embed_dim for s in self.stored]

    def param_shapes(self) -> dict:
        """``{"proj_k": (D_s, D_k)}`` for the feature loss where teacher ``k``'s width differs."""
        if self.feature_weight == 0:
            return {}
        return {f"proj_{k}": jax.ShapeDtypeStruct((self.dim, w), jnp.float32)
                for k, w in enumerate(self._widths()) if w != self.dim}

    def init_params(self, rng) -> dict:
        """Normal, variance 1 / D_s."""
        shapes = self.param_shapes()
        leaves = sorted(shapes)
        keys = jax.random.split(jax.random.fold_in(rng, 24), len(leaves))
        return {k: jax.random.normal(r, shapes[k].shape) / np.sqrt(shapes[k].shape[0])
                for k, r in zip(leaves, keys)}

    def batch_fields(self, batch_size: int) -> dict:
        out = {distill.text_key(k): jax.ShapeDtypeStruct((batch_size, t.cfg.text.context_length),
                                                 np.int32)
               for k, t in enumerate(self.teachers) if t.own_text}
        for k, s in enumerate(self.stored):  # each sample's float16 rows
            for key in stored_lib.field_names(k):
                out[key] = jax.ShapeDtypeStruct((batch_size, s.embed_dim), np.float16)
        return out

    def targets(self, teacher_params, batch):
        """``[(image, text, logit scale)]`` of each teacher on the global batch, float32, no
        gradient: the online teachers' forward, or the batch's stored rows."""
        out = []
        for k, s in enumerate(self.stored):
            img_key, txt_key = stored_lib.field_names(k)
            out.append(tuple(jax.lax.stop_gradient(batch[key].astype(jnp.float32))
                             for key in (img_key, txt_key)) + (jnp.float32(s.logit_scale),))
        for k, (t, p) in enumerate(zip(self.teachers, teacher_params)):
            img, txt, scale = distill.embed(t, p, batch["image"], batch.get(distill.text_key(k),
                                                                            batch["text"]))
            if self.fixed_scale > 0:
                scale = jnp.float32(self.fixed_scale)
            out.append(jax.tree.map(lambda x: jax.lax.stop_gradient(x.astype(jnp.float32)),
                                    (img, txt, scale)))
        return out

    def target_specs(self, targets):
        axes = sharding.BATCH_AXES
        return [(P(axes), P(axes), P())] * len(targets)

    def parts(self, local, targets, params):
        i, t, out = local.img, local.txt, {}
        if self.kd_weight > 0:
            out["kd"] = self.kd_fn(i, t, local.scale, targets, self.combine,
                                   axis_name=local.axes)
        if self.feature_weight > 0:
            pairs = []
            for k, (ti, tt, _) in enumerate(targets):
                w = params.get(f"proj_{k}")
                pairs.append((ti, tt) if w is None else (i @ w, t @ w, ti, tt))
            out["feature"] = kd_losses.feature_loss(i, t, pairs, axis_name=local.axes)
        return out

