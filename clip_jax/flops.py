"""Analytic FLOPs of one train step, counted from the matmul shapes of the two towers and the loss.

XLA's ``cost_analysis()`` counts the body of a ``lax.scan`` once, whatever its trip count, so for
``model.scan=True`` (the recipes' default) it undercounts the step by about the number of layers
(and the blockwise loss, also a scan, by the number of ring hops). These counts do not depend on
how the program is compiled; ``tests/test_plan.py`` checks them against ``cost_analysis()`` of
unrolled (``scan=False``) compiles.

Counted: every matmul (2 m n k FLOPs): patch embedding, q|k|v, attention scores and
values (the full T x T, also for the causal text tower, which is what the plain XLA attention
computes), attention output, MLP, projections, and the similarity matmuls of the loss; for the
conv image towers (ResNet, ConvNeXt) every convolution, padded taps included, and the attention
pool or head. Not
counted: element-wise work (LayerNorm, GELU, softmax, AdamW), which XLA's own count includes,
a few percent for real widths.

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


# The matmuls of a block each rematerialisation policy (clip_jax.remat_lib.POLICIES)
# recomputes in the backward: those whose outputs it does not keep and the backward needs.
# ``c_proj`` is never recomputed (its gradients need only its input and weight); ``full``
# recomputes every other one (measured so on XLA's unrolled compiles); ``values`` (p v) is redone
# only where the attention output feeds the output projection's weight gradient unsaved;
# ``scores`` wherever the softmax is not kept (no policy keeps it); ``out`` where the residual
# sum after attention (the second LayerNorm's input) must be rebuilt.
_REMAT_REDO = {
    "none": (),
    "save_dot_except_mlp": ("scores", "c_fc"),
    "minimal": ("scores", "values"),
    "minimal_offloaded": ("scores", "values"),
    "save_attention": ("scores", "out", "c_fc"),
    "save_qkv_proj": ("scores", "values", "out", "c_fc"),
    "save_out_proj": ("qkv", "scores", "values", "c_fc"),
    "full": ("qkv", "scores", "values", "out", "c_fc"),
}


def _block_flops(tokens: int, width: int, mlp_dim: int,
                 remat: str = "full") -> tuple[float, float]:
    """Forward matmul FLOPs of one residual attention block on one sample, and the part of
    them that the ``remat`` policy recomputes in the backward (:data:`_REMAT_REDO`)."""
    t, d, m = tokens, width, mlp_dim
    parts = {"qkv": 2 * t * d * 3 * d,
             "scores": 2 * t * t * d,  # q k^T over all heads
             "values": 2 * t * t * d,  # p v
             "out": 2 * t * d * d,
             "c_fc": 2 * t * d * m,
             "c_proj": 2 * t * d * m}
    return sum(parts.values()), sum(parts[k] for k in _REMAT_REDO[remat])


def _conv(hw: int, k: int, cin: int, cout: int, groups: int = 1) -> int:
    """A k x k convolution producing an (hw x hw x cout) map from cin channels."""
    return 2 * hw * hw * k * k * (cin // groups) * cout


def _resnet_flops(cfg: models.ModelConfig) -> float:
    """ModifiedResNet (models/resnet.py) forward per sample: the 3-conv stem, the Bottlenecks
    (1x1, 3x3, avg-pool stride, 1x1 x4; the avg-pool + 1x1 downsample) and the attention pool
    (token 0's query only, as computed)."""
    v, w = cfg.vision, cfg.vision.width
    h = v.image_size // 2
    f = _conv(h, 3, 3, w // 2) + _conv(h, 3, w // 2, w // 2) + _conv(h, 3, w // 2, w)
    h, inplanes = h // 2, w
    for s, blocks in enumerate(v.stages):
        planes = w * 2**s
        for j in range(blocks):
            stride = 2 if s and not j else 1
            out = h // stride
            f += _conv(h, 1, inplanes, planes) + _conv(h, 3, planes, planes)
            f += _conv(out, 1, planes, 4 * planes)
            if j == 0 and (stride > 1 or inplanes != 4 * planes):
                f += _conv(out, 1, inplanes, 4 * planes)
            h, inplanes = out, 4 * planes
    c, t = inplanes, h * h + 1
    return float(f + 2 * c * c + 2 * 2 * t * c * c + 2 * 2 * t * c + 2 * c * cfg.embed_dim)


def _convnext_flops(cfg: models.ModelConfig) -> float:
    """timm's ConvNeXt (models/convnext.py) forward per sample: the 4x4 stem, per block the
    depthwise 7x7 and the 4x MLP, the 2x2 downsamples, the head projection."""
    v = cfg.vision
    h, f = v.image_size // 4, _conv(v.image_size // 4, 4, 3, v.width)
    for i, blocks in enumerate(v.stages):
        c = v.width * 2**i
        if i:
            h //= 2
            f += _conv(h, 2, c // 2, c)
        f += blocks * (_conv(h, 7, c, c, groups=c) + 2 * (2 * h * h * c * 4 * c))
    c, e = v.width * 2 ** (len(v.stages) - 1), cfg.embed_dim
    head = 2 * c * 2 * e + 2 * 2 * e * e if v.proj_type == "mlp" else 2 * c * e
    return float(f + head)


def tower_flops(cfg: models.ModelConfig, train: bool = False,
                remat: str | bool = "full") -> dict[str, float]:
    """Forward matmul FLOPs per sample, ``{"vision", "text"}``, and what the ``remat`` policy
    recomputes of them per sample, ``{"vision_remat", "text_remat"}``. ``train``: the vision
    blocks see only the patches that ``vision.patch_dropout`` keeps (every patch is still
    embedded)."""
    v, t = cfg.vision, cfg.text
    remat = remat_lib.remat_name(remat)
    t_block, t_redo = _block_flops(t.context_length, t.width, t.mlp_dim, remat)
    text = t.layers * t_block + 2 * t.width * cfg.embed_dim
    if v.family not in ("vit", "naflex"):  # conv towers: no remat of their own
        vision = _resnet_flops(cfg) if v.family == "resnet" else _convnext_flops(cfg)
        return {"vision": vision, "vision_remat": 0.0, "text": float(text),
                "text_remat": float(t.layers * t_redo)}
    patches = (v.image_size // v.patch_size) ** 2  # NaFlex: at its position table's size
    tokens = (v.kept_patches() if train else patches) + 1
    v_block, v_redo = _block_flops(tokens, v.width, v.mlp_dim, remat)
    vision = (2 * patches * (v.patch_size**2 * 3) * v.width + v.layers * v_block
              + 2 * v.width * cfg.embed_dim)
    return {"vision": float(vision), "vision_remat": float(v.layers * v_redo),
            "text": float(text), "text_remat": float(t.layers * t_redo)}


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
