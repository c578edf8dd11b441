"""SigLIP's pairwise sigmoid loss (``loss='siglip'``) on the global batch: part ``clip`` (the
student's own contrastive term, whichever loss it is)."""

from __future__ import annotations

from clip_jax.objectives.base import Objective, loss_fn


class Sigmoid(Objective):
    """``-(1/N) sum_ij log sigmoid(z_ij (s x_i.y_j + b))`` over the global batch
    (:func:`clip_jax.losses.siglip_loss`, dense or blockwise by ``loss_impl``)."""

    def __init__(self, config, weight: float = 1.0):
        self.fn, self.weight = loss_fn("siglip", config), float(weight)

    def weights(self) -> dict[str, float]:
        return {"clip": self.weight}

    def parts(self, local, targets, params):
        return {"clip": self.fn(local.img, local.txt, local.scale, local.bias,
                                axis_name=local.axes)}
