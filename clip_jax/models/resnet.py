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

The ``resnet`` family (:mod:`clip_jax.models.family`): switches, FLOPs, presets (open_clip's
RN*), open_clip JSON here; key maps :mod:`clip_jax.interop.keymap_resnet`; no layer ids.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import clip_jax.models.family as families
import clip_jax.models.openclip_config as oc
from clip_jax.layers import Conv, attention, logical_init
from clip_jax.models.config import ModelConfig, TextConfig, VisionConfig, check_stages

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


# --- the family: switches, FLOPs, presets, open_clip JSON ---------------------------------------


def check(v: VisionConfig) -> None:
    check_stages(v)
    if (v.width * 32) % v.heads:
        raise ValueError(f"model.vision.heads={v.heads}: must divide the attention pool's "
                         f"width 32 * model.vision.width = {v.width * 32}")


def flops(cfg: ModelConfig, train: bool, remat: str) -> tuple[float, float]:
    """Forward per sample: the 3-conv stem, the Bottlenecks (1x1, 3x3, avg-pool stride, 1x1 x4;
    the avg-pool + 1x1 downsample) and the attention pool (token 0's query only, as computed);
    nothing recomputed by a remat policy of its own."""
    conv = families.conv_flops
    v, w = cfg.vision, cfg.vision.width
    h = v.image_size // 2
    f = conv(h, 3, 3, w // 2) + conv(h, 3, w // 2, w // 2) + conv(h, 3, w // 2, w)
    h, inplanes = h // 2, w
    for s, blocks in enumerate(v.stages):
        planes = w * 2**s
        for j in range(blocks):
            stride = 2 if s and not j else 1
            out = h // stride
            f += conv(h, 1, inplanes, planes) + conv(h, 3, planes, planes)
            f += conv(out, 1, planes, 4 * planes)
            if j == 0 and (stride > 1 or inplanes != 4 * planes):
                f += conv(out, 1, inplanes, 4 * planes)
            h, inplanes = out, 4 * planes
    c, t = inplanes, h * h + 1
    return float(f + 2 * c * c + 2 * 2 * t * c * c + 2 * 2 * t * c + 2 * c * cfg.embed_dim), 0.0


def resnet_config(embed, img, stages, width, tw, th, quick_gelu: bool = False, ctx=77,
                  vocab=49408) -> ModelConfig:
    """OpenAI's ModifiedResNet image tower (attention-pool heads = 32 * width / 64, as open_clip
    builds it) with CLIP's text tower; ``quick_gelu`` for OpenAI's weights."""
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(img, width=width, heads=width * 32 // 64, family="resnet",
                            stages=tuple(stages)),
        text=TextConfig(ctx, vocab, tw, 12, th, 4 * tw),
        act="quick_gelu" if quick_gelu else "gelu")


# open_clip's model_configs/RN*.json (embed, image size, stages, width, text width and heads)
_RESNETS = {"RN50": (1024, 224, (3, 4, 6, 3), 64, 512, 8),
            "RN101": (512, 224, (3, 4, 23, 3), 64, 512, 8),
            "RN50x4": (640, 288, (4, 6, 10, 6), 80, 640, 10),
            "RN50x16": (768, 384, (6, 8, 18, 8), 96, 768, 12),
            "RN50x64": (1024, 448, (3, 15, 36, 10), 128, 1024, 16)}
_OC_KEYS = {"image_size", "layers", "width", "head_width", "patch_size", "output_tokens"}


def from_open_clip(vc, quick_gelu: bool) -> tuple[VisionConfig, str, float] | None:
    """open_clip's ModifiedResNet (``layers`` a list): heads = width * 32 // head_width."""
    if vc.get("timm_model_name") or not isinstance(vc.get("layers"), list | tuple):
        return None
    oc.check_keys("vision_cfg", vc, _OC_KEYS)
    if vc.get("patch_size") is not None:
        raise ValueError(f"open_clip vision_cfg.patch_size={vc['patch_size']!r} with a layers "
                         "list: a ResNet has no patches (null)")
    width, head_width = vc.get("width", 64), vc.get("head_width", 64)
    vision = VisionConfig(image_size=oc.square(vc.get("image_size", 224)), width=width,
                          heads=width * 32 // head_width, family="resnet",
                          stages=tuple(vc["layers"]))
    return vision, "quick_gelu" if quick_gelu else "gelu", 1e-5


def to_open_clip(cfg: ModelConfig) -> tuple[dict, None]:
    v = cfg.vision
    oc.plain_text_tower(cfg)
    return {"image_size": v.image_size, "layers": list(v.stages), "width": v.width,
            "head_width": v.width * 32 // v.heads, "patch_size": None}, None


FAMILY = families.register(families.Family(
    "resnet", ModifiedResNet, check, flops=flops, keymap="clip_jax.interop.keymap_resnet",
    from_open_clip=from_open_clip, to_open_clip=to_open_clip))
_PRESETS = {}
for _name, _args in _RESNETS.items():
    _PRESETS[_name] = resnet_config(*_args)
    _PRESETS[f"{_name}-quickgelu"] = resnet_config(*_args, quick_gelu=True)
# A ResNet the size of "tiny", for tests (stem width 8: 256 channels into the attention pool).
_PRESETS["tiny-rn"] = resnet_config(32, 64, (1, 1, 1, 1), 8, 32, 2, ctx=16, vocab=512).replace(
    text=dict(layers=2))
families.add_presets("resnet", _PRESETS)
