"""CLIP's contrastive softmax loss (``loss='clip'``) on the global batch: part ``clip``."""

from __future__ import annotations

from clip_jax.objectives.base import Objective, loss_fn


class Contrastive(Objective):
    """``0.5 * (CE(image -> text) + CE(text -> image))`` over the global batch
    (:func:`clip_jax.losses.clip_loss`, dense or blockwise by ``loss_impl``)."""

    def __init__(self, config, weight: float = 1.0):
        self.fn, self.weight = loss_fn("clip", config), float(weight)

    def weights(self) -> dict[str, float]:
        return {"clip": self.weight}

    def parts(self, local, targets, params):
        return {"clip": self.fn(local.img, local.txt, local.scale, axis_name=local.axes)}
