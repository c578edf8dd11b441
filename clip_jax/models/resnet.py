"""OpenAI's ModifiedResNet image tower (CLIP's ``clip/model.py``, open_clip's
``modified_resnet.py``), NHWC, with BatchNorm whose running statistics live in the
``batch_stats`` collection.

``stem (3x3/2, 3x3, 3x3 convs, BN + ReLU each, 2x2 average pool) -> 4 stages of Bottlenecks
(1x1 -> 3x3 -> avg-pool(stride) -> 1x1 (x4), BN after each conv; downsample = avg-pool(stride),
1x1 conv, BN) -> AttentionPool2d (mean token prepended, positional embedding, q/k/v/c
projections, token 0)``. Parameters (open_clip's names, ``.`` -> ``/``, ``layer1.0`` ->
``layer1_0``, ``downsample.0/1`` -> ``downsample_0/1``)::

    visual/{conv1, bn1, conv2, bn2, conv3, bn3}
    visual/layer{s}_{j}/{conv1, bn1, conv2, bn2, conv3, bn3[, downsample_0, downsample_1]}
    visual/attnpool/{positional_embedding, q_proj, k_proj, v_proj, c_proj}

Convolutions ``kernel`` (HWIO, no bias); BatchNorm params ``scale``, ``bias``; its statistics
``batch_stats/visual/.../{mean, var, num_batches_tracked}`` (torch's running_mean, running_var
and num_batches_tracked). In training (``train=True``, ``batch_stats`` mutable) a BatchNorm
normalises with the statistics of the batch it sees, which under ``jax.jit`` on a sharded batch
is the global batch (XLA all-reduces the moments), and updates the running statistics as torch
does (momentum 0.1, the unbiased variance); in evaluation it uses the running statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.layers import Conv, attention, logical_init
from clip_jax.models.config import ModelConfig

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch.nn.BatchNorm2d's defaults
EXPANSION = 4


class BatchNorm(nn.Module):
    """torch's ``BatchNorm2d`` over the last (channel) axis, statistics in float32."""

    zero_init: bool = False  # scale starts at 0 (open_clip's bn3 of every Bottleneck)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        scale = self.param("scale", logical_init(init, ("norm",)), (c,), self.param_dtype)
        bias = self.param("bias", logical_init(nn.initializers.zeros, ("norm",)), (c,),
                          self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing():
                n = xf.size // c
                m, s = BN_MOMENTUM, jax.lax.stop_gradient
                ra_mean.value = (1 - m) * ra_mean.value + m * s(mean)
                ra_var.value = (1 - m) * ra_var.value + m * s(var) * (n / max(n - 1, 1))
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = jax.lax.rsqrt(var + BN_EPS) * scale.astype(jnp.float32)
        return ((xf - mean) * mul + bias.astype(jnp.float32)).astype(self.dtype)


def avg_pool(x, k: int):
    """torch's ``AvgPool2d(k)``: window k, stride k, no padding."""
    return x if k == 1 else nn.avg_pool(x, (k, k), strides=(k, k), padding="VALID")


def _conv(features: int, k: int, name: str, stride: int = 1, **kw):
    return Conv(features, k, stride, k // 2, name=name,
                kernel_init=logical_init(nn.initializers.variance_scaling(
                    2.0, "fan_out", "normal"), (None, None, None, None)), **kw)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.planes
        out = nn.relu(BatchNorm(name="bn1", **kw)(_conv(p, 1, "conv1", **kw)(x), train))
        out = nn.relu(BatchNorm(name="bn2", **kw)(_conv(p, 3, "conv2", **kw)(out), train))
        out = avg_pool(out, self.stride)
        out = BatchNorm(True, name="bn3", **kw)(_conv(p * EXPANSION, 1, "conv3", **kw)(out),
                                                 train)
        if self.downsample:
            x = _conv(p * EXPANSION, 1, "downsample_0", **kw)(avg_pool(x, self.stride))
            x = BatchNorm(name="downsample_1", **kw)(x, train)
        return nn.relu(out + x)


class AttentionPool2d(nn.Module):
    """The mean token prepended to the (H*W) tokens, positional embedding, multi-head attention
    with separate q/k/v projections (biases) and the output projection ``c_proj``; token 0.
    Only token 0's query is computed: the other rows of the attention are never used."""

    heads: int
    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = jnp.concatenate([x.astype(jnp.float32).mean(1, keepdims=True).astype(x.dtype), x], 1)
        pos = self.param("positional_embedding",
                         logical_init(nn.initializers.normal(c**-0.5), (None, None)),
                         (h * w + 1, c), self.param_dtype)
        x = x + pos.astype(self.dtype)

        def dense(features, name):
            return nn.Dense(features, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=logical_init(nn.initializers.normal(c**-0.5),
                                                     (None, None)),
                            bias_init=logical_init(nn.initializers.zeros, (None,)))

        def heads(y):  # (B, T, C) -> (B, H, T, hd)
            return y.reshape(b, y.shape[1], self.heads, -1).transpose(0, 2, 1, 3)

        q = heads(dense(c, "q_proj")(x[:, :1]))
        k, v = heads(dense(c, "k_proj")(x)), heads(dense(c, "v_proj")(x))
        out = attention(q, k, v, causal=False, implementation="xla")  # (B, H, 1, hd)
        return dense(self.out_dim, "c_proj")(out.transpose(0, 2, 1, 3).reshape(b, c))


class ModifiedResNet(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised.
        ``train``: BatchNorm on the batch's statistics, updating ``batch_stats`` (mutable)."""
        c, v = self.cfg, self.cfg.vision
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"images of size {images.shape[1:3]}: a ResNet needs multiples "
                             "of 32")
        w = v.width
        x = images.astype(kw["dtype"])
        for i, (width, stride) in enumerate(((w // 2, 2), (w // 2, 1), (w, 1)), start=1):
            x = _conv(width, 3, f"conv{i}", stride, **kw)(x)
            x = nn.relu(BatchNorm(name=f"bn{i}", **kw)(x, train))
        x = avg_pool(x, 2)
        inplanes = w
        # remat: each Bottleneck's activations are recomputed in the backward pass (the
        # BatchNorm statistics are updated once: the recomputation's writes are discarded)
        block = nn.remat(Bottleneck, static_argnums=(2,)) if c.remat != "none" else Bottleneck
        for s, blocks in enumerate(v.stages):
            planes, stride = w * 2**s, 1 if s == 0 else 2
            for j in range(blocks):
                st = stride if j == 0 else 1
                down = j == 0 and (st > 1 or inplanes != planes * EXPANSION)
                x = block(planes, st, down, name=f"layer{s + 1}_{j}", **kw)(x, train)
                inplanes = planes * EXPANSION
        return AttentionPool2d(v.heads, c.embed_dim, name="attnpool", **kw)(x)
