"""What SILC (:mod:`.silc`) and TIPS (:mod:`.tips`) share: the DINO-style head, its loss, the
model checks and the EMA teacher's forward of the global view.

The head (DINO's ``DINOHead``, iBOT's for patches): a 3-layer MLP (``head_hidden``, GELU) to a
``head_bottleneck``-wide feature, L2-normalised, then the cosine to ``head_dim`` prototypes
(DINO's weight-normalised last layer with its norm fixed at 1: each prototype is normalised).
The teacher's head is the EMA of the student's (both live in ``params[name]["head"]``). Loss:
the cross-entropy from the teacher's ``softmax((t - c) / teacher_temp)`` to the student's
``softmax(s / student_temp)``, ``c`` the mean of the teacher's logits over the global batch
(DINO's centering with no running average: a running centre would need state beside the
params; see docs/self_distillation.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import input_pipeline, models
from clip_jax.data import views


def check_model(model_cfg, name: str, local: int = 0) -> None:
    """The term's views run through a plain ViT tower: refuse what they cannot."""
    v = model_cfg.vision
    why = (f"model.vision.family={v.family!r} is not a ViT" if v.family != "vit" else
           "an attentional pooler's tokens are not patches" if v.attn_pooler_queries else
           f"image_size {v.image_size} is not a multiple of the patch {v.patch_size}"
           if v.image_size % v.patch_size else
           f"silc.local_size={local} is not a multiple of the patch {v.patch_size}"
           if local % v.patch_size else "")
    if why:
        raise ValueError(f"config {name}.weight > 0: its views need a ViT image tower ({why})")


def head_shapes(dim: int, cfg) -> dict:
    """The head's parameters (``ShapeDtypeStruct``) on ``dim``-wide features."""
    f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    h, b = int(cfg.head_hidden), int(cfg.head_bottleneck)
    widths = [(dim, h), (h, h), (h, b)]
    return {**{f"layer_{i}": {"kernel": f(a, o), "bias": f(o)}
               for i, (a, o) in enumerate(widths)},
            "prototypes": {"kernel": f(b, int(cfg.head_dim))}}


def head_init(rng, shapes: dict) -> dict:
    """Weights normal with std ``1 / sqrt(fan_in)`` (DINO's 0.02 at its widths, 2048 in;
    well-scaled at small ones too), biases 0."""
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(rng, len(leaves))
    out = [jnp.zeros(s.shape, s.dtype) if len(s.shape) == 1 else
           jax.random.normal(k, s.shape, s.dtype) / np.sqrt(s.shape[0])
           for s, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, out)


def head_apply(p: dict, x):
    """(..., dim) features -> (..., head_dim) cosine logits, float32."""
    x = x.astype(jnp.float32)
    for i in range(3):
        layer = p[f"layer_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        x = jax.nn.gelu(x) if i < 2 else x  # tanh GELU: erfc fails shard_map's vma check
    x = models.l2_normalize(x)
    w = p["prototypes"]["kernel"]
    return x @ (w * jax.lax.rsqrt(jnp.maximum(jnp.sum(w * w, axis=0, keepdims=True), 1e-12)))


def teacher_probs(logits, temp: float):
    """Centred and sharpened teacher distributions: ``softmax((t - mean_rows t) / temp)``,
    the mean over every row of the global batch (all axes but the last), no gradient."""
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    center = jnp.mean(logits.reshape(-1, logits.shape[-1]), axis=0)
    return jax.nn.softmax((logits - center) / temp, axis=-1)


def cross_entropy(probs, student_logits, temp: float):
    """``-sum_k p_k log softmax(s / temp)_k`` over the last axis."""
    return -jnp.sum(probs * jax.nn.log_softmax(student_logits / temp, axis=-1), axis=-1)


def mean_over_batch(values, axes):
    """The mean of this device's ``values`` and every other device's (inside ``shard_map``)."""
    total = jax.lax.psum(jnp.sum(values), axes)
    return total / jax.lax.psum(jnp.float32(values.size), axes)


def encode(apply, images, **kw):
    """The views' ``(pooled (B, D), patch tokens (B, n, width))``: raw pixels normalised as the
    train step does, then :meth:`clip_jax.models.CLIP.encode_views`."""
    return apply(input_pipeline.device_pixels(images), method=models.CLIP.encode_views, **kw)


def teacher_view(teacher, batch):
    """The EMA teacher's :func:`encode` of ``view_global``, once per step (cached)."""
    if views.GLOBAL not in teacher.cache:
        out = encode(teacher.apply, batch[views.GLOBAL])
        teacher.cache[views.GLOBAL] = jax.tree.map(jax.lax.stop_gradient, out)
    return teacher.cache[views.GLOBAL]
