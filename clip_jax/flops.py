"""Analytic FLOPs of one train step, counted from the matmul shapes of the two towers and the loss.

XLA's ``cost_analysis()`` counts the body of a ``lax.scan`` once, whatever its trip count, so for
``model.scan=True`` (the recipes' default) it undercounts the step by about the number of layers
(and the blockwise loss, also a scan, by the number of ring hops). These counts do not depend on
how the program is compiled; ``tests/test_plan.py`` checks them against ``cost_analysis()`` of
unrolled (``scan=False``) compiles.

Each tower family counts its own forward (``Family.flops`` in its module,
:mod:`clip_jax.models.family`). Counted: every matmul (2 m n k FLOPs): patch embedding, q|k|v,
attention scores and values (the full T x T, also for the causal text tower, which is what the
plain XLA attention computes), attention output, MLP, projections, and the similarity matmuls of
the loss; for the conv image towers (ResNet, ConvNeXt) every convolution, padded taps included,
and the attention pool or head. Not counted: element-wise work (LayerNorm, GELU, softmax,
AdamW), which XLA's own count includes, a few percent for real widths.

Two totals:

* ``model``: forward + backward (2x forward) of the towers and the loss, what MFU conventionally
  counts (PaLM appendix B);
* ``hardware``: what actually runs: ``model`` + the block recomputation of ``remat`` + the
  extra forward of the gradient cache (``accum_steps > 1``) + the loss's own recomputation
  (blockwise backward).
"""

from __future__ import annotations

import dataclasses

from clip_jax import models
from clip_jax import remat as remat_lib
from clip_jax.models import family as families


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one train step for the whole global batch (divide by the chip count for per-chip
    figures)."""

    forward: float  # one forward of both towers (no loss)
    remat: float  # what ``remat`` recomputes in the backward (0 without remat)
    loss: float  # the similarity matmuls of the loss, forward + backward as run
    model: float  # towers fwd + bwd, loss fwd + bwd (no recomputation): the MFU numerator
    hardware: float  # what runs: ``model`` + remat + gradient-cache forward + loss recompute

    def per_sample(self, batch: int) -> float:
        return self.model / batch


def tower_flops(cfg: models.ModelConfig, train: bool = False,
                remat: str | bool = "full") -> dict[str, float]:
    """Forward matmul FLOPs per sample, ``{"vision", "text"}``, and what the ``remat`` policy
    recomputes of them per sample, ``{"vision_remat", "text_remat"}``, each tower's as its
    family counts them (``Family.flops``: a ViT's blocks, ResNet's and ConvNeXt's
    convolutions...). ``train``: the vision blocks see only the patches that
    ``vision.patch_dropout`` keeps (every patch is still embedded)."""
    remat = remat_lib.remat_name(remat)
    out = {}
    for tower, fam in (("vision", families.vision(cfg)), ("text", families.text(cfg))):
        if fam.flops is None:
            raise ValueError(f"model.{tower}.family={fam.name!r} does not count its FLOPs")
        out[tower], out[f"{tower}_remat"] = fam.flops(cfg, train, remat)
    return out


# Similarity matmuls (each 2 N^2 D FLOPs over the global batch) of each loss, as run:
# (in the forward, in the backward). Dense CLIP builds both directions (image->text and
# text->image logits), each with two gradient matmuls; dense SigLIP one direction; the blockwise
# losses compute one (n x b) tile per block in the forward and, in their custom backward,
# recompute it and take both gradients.
_LOSS_MATMULS = {
    ("clip", "dense"): (2, 4),
    ("siglip", "dense"): (1, 2),
    ("clip", "blockwise"): (1, 3),
    ("siglip", "blockwise"): (1, 3),
}


def train_step_flops(model_cfg: models.ModelConfig, batch: int,
                     remat: str | bool | None = None,
                     accum_steps: int = 1, loss: str = "clip",
                     loss_impl: str = "dense") -> StepFlops:
    """FLOPs of one train step on a global batch of ``batch`` samples.

    ``remat`` (a policy name; true/false: full/none) defaults to ``model_cfg.remat``.
    ``accum_steps > 1`` is the gradient cache (one extra forward of both towers). Divide by the
    number of chips for per-chip figures.
    """
    remat = remat_lib.remat_name(model_cfg.remat if remat is None else remat)
    if (loss, loss_impl) not in _LOSS_MATMULS:
        raise ValueError(f"unknown loss {loss!r} / loss_impl {loss_impl!r}")
    per = tower_flops(model_cfg, train=True, remat=remat)
    forward = batch * (per["vision"] + per["text"])
    redo = batch * (per["vision_remat"] + per["text_remat"])
    sim = 2.0 * batch * batch * model_cfg.embed_dim
    fwd_mm, bwd_mm = _LOSS_MATMULS[(loss, loss_impl)]
    model_loss = sim * 3 * (2 if loss == "clip" else 1)  # fwd + 2x bwd, no recomputation
    run_loss = sim * (fwd_mm + bwd_mm)
    model = 3 * forward + model_loss
    hardware = 3 * forward + redo + (forward if accum_steps > 1 else 0.0) + run_loss
    return StepFlops(forward=forward, remat=redo, loss=run_loss, model=model,
                     hardware=hardware)
