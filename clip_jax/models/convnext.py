"""The ConvNeXt image tower as open_clip builds it through timm (``timm_model_name:
convnext_*``, ``timm_pool: ""``, ``timm_proj: linear | mlp``), NHWC.

``stem (4x4/4 conv + bias, LayerNorm) -> 4 stages (stage > 0 starts with LayerNorm + 2x2/2 conv;
blocks: 7x7 depthwise conv -> LayerNorm -> Linear 4C, GELU, Linear C -> layer scale gamma ->
[drop path] + shortcut) -> global average pool -> LayerNorm (timm's head.norm) -> projection
(open_clip's head: Linear without bias, or Mlp C -> 2E (bias), GELU, 2E -> E (no bias))``.
Channels ``width * (1, 2, 4, 8)``, blocks per stage ``vision.stages``, LayerNorm eps
``vision.norm_eps`` (timm: 1e-6, convnext_xxlarge 1e-5). Parameters (timm's names with
``.`` -> ``_``; ``interop/keymap_convnext.py`` maps them)::

    visual/{stem_0 (conv), stem_1 (LN)}
    visual/stages_{i}_downsample_{0 (LN), 1 (conv)}   (i > 0)
    visual/stages_{i}_blocks_{j}/{conv_dw, norm, mlp/{fc1, fc2}, gamma}
    visual/head_norm, visual/{head_proj | head_mlp/{fc1, fc2}}
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.layers import Conv, LayerNorm, gelu, logical_init
from clip_jax.models.config import ModelConfig

LS_INIT = 1e-6  # timm's ConvNeXt ls_init_value


def _conv(features: int, k: int, name: str, groups: int = 1, **kw):
    return Conv(features, k, 1 if k == 7 else k, 3 if k == 7 else 0, groups, True, name=name,
                kernel_init=logical_init(nn.initializers.truncated_normal(0.02),
                                         (None, None, None, None)),
                bias_init=logical_init(nn.initializers.zeros, (None,)), **kw)


def _dense(features: int, name: str, bias: bool = True, **kw):
    return nn.Dense(features, use_bias=bias, name=name,
                    kernel_init=logical_init(nn.initializers.truncated_normal(0.02),
                                             (None, None)),
                    bias_init=logical_init(nn.initializers.zeros, (None,)), **kw)


class ConvNeXtBlock(nn.Module):
    eps: float
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        y = _conv(c, 7, "conv_dw", groups=c, **kw)(x)
        y = LayerNorm(self.eps, name="norm", **kw)(y)
        y = Mlp(c, name="mlp", **kw)(y)
        gamma = self.param("gamma", logical_init(nn.initializers.constant(LS_INIT), ("norm",)),
                           (c,), self.param_dtype)
        y = y * gamma.astype(self.dtype)
        if train and self.drop_path:
            keep = 1.0 - self.drop_path
            mask = jax.random.bernoulli(self.make_rng("patch_dropout"), keep,
                                        (x.shape[0], 1, 1, 1))
            y = y * mask.astype(y.dtype) / keep
        return x + y


class Mlp(nn.Module):
    out: int
    hidden: int | None = None  # default 4 * out
    out_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = gelu(_dense(self.hidden or 4 * self.out, "fc1", **kw)(x))
        return _dense(self.out, "fc2", self.out_bias, **kw)(h)


class ConvNeXt(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        """images: (B, H, W, 3) float, CLIP-normalised. Returns (B, embed_dim), unnormalised.
        ``train`` with ``vision.drop_path`` > 0: stochastic depth (the ``patch_dropout`` rng,
        one draw per image and block)."""
        c, v = self.cfg, self.cfg.vision
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        eps = v.norm_eps if v.norm_eps is not None else c.ln_eps
        x = _conv(v.width, 4, "stem_0", **kw)(images.astype(kw["dtype"]))
        x = LayerNorm(eps, name="stem_1", **kw)(x)
        total, done = sum(v.stages), 0
        for i, blocks in enumerate(v.stages):
            width = v.width * 2**i
            if i:
                x = LayerNorm(eps, name=f"stages_{i}_downsample_0", **kw)(x)
                x = _conv(width, 2, f"stages_{i}_downsample_1", **kw)(x)
            for j in range(blocks):
                rate = v.drop_path * (done / max(total - 1, 1))  # timm: linear in depth
                x = ConvNeXtBlock(eps, rate, name=f"stages_{i}_blocks_{j}", **kw)(x, train)
                done += 1
        x = x.astype(jnp.float32).mean((1, 2)).astype(kw["dtype"])
        x = LayerNorm(eps, name="head_norm", **kw)(x)
        if v.proj_type == "mlp":
            return Mlp(c.embed_dim, 2 * c.embed_dim, False, name="head_mlp", **kw)(x)
        return _dense(c.embed_dim, "head_proj", False, **kw)(x)
