"""The building blocks of both CLIP towers, in Flax Linen: activations, layer norm, attention,
patch embedding, MLP, residual block and the block stack (``transformer``).

Parameter names follow open_clip (``ln_1``, ``attn/{kernel_in, bias_in, kernel_out, bias_out}``,
``mlp/{c_fc, c_proj}``, ``resblocks`` or ``resblocks_{i}``), and every parameter carries logical
axis names (:func:`logical_init`). Several pieces are written for speed on CPU as well as GPU:
an erf GELU and a layer norm with written-out derivatives, one fused qkv matmul with heads before
time, a plain-XLA attention core (cuDNN flash on GPU in half precision), and the stride-``patch``
convolution as one matmul; each is tested against its library counterpart in tests/test_models.py.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from clip_jax import convolution
from clip_jax import remat as remat_lib


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@jax.custom_jvp
def gelu(x):
    """Exact (erf) GELU, ``x * Phi(x)``, as ``torch.nn.GELU()``.

    ``jax.nn.gelu(approximate=False)`` goes through ``erfc``, which XLA lowers to an exp plus a
    piecewise polynomial; ``erf`` is one rational polynomial, and the derivative
    ``Phi(x) + x * phi(x)`` written out lets XLA fuse value and derivative in one pass over the
    MLP activations: 1.8x faster forward + backward on CPU (docs/benchmarks.md), same values to
    1e-6.
    """
    return 0.5 * x * (1 + jax.lax.erf(x * _SQRT_HALF))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * _SQRT_HALF))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return x * cdf, t * (cdf + x * pdf)


def gelu_tanh(x):
    """The tanh approximation of GELU (``torch.nn.GELU(approximate="tanh")``), as SigLIP uses."""
    return jax.nn.gelu(x, approximate=True)


# ModelConfig.act names one of these.
ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu}


def logical_init(init, names):
    """``init`` for a parameter with logical axis ``names`` (mapped to mesh axes by
    :mod:`clip_jax.sharding`)."""
    return nn.with_logical_partitioning(init, names)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps: float = 1e-5):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, computed in float32
    whatever ``x``'s dtype (the result is float32; its gradient has ``x``'s dtype).

    Both moments come from one pass over ``x`` (var = E[x^2] - E[x]^2, as flax's LayerNorm does
    by default), and the backward is written out (two row means and one elementwise pass)
    instead of autodiff's chain of broadcasts: the layer norms took ~20% of a small model's
    step on CPU before. The backward keeps ``x`` itself (bfloat16 in a bf16 model) and the row
    statistics and rebuilds the normalised input from them, rather than keeping a float32 copy
    of it (XLA's TPU byte count of a ViT-B/16 block is the same either way: docs/benchmarks.md).
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.maximum(jnp.square(xf).mean(-1, keepdims=True) - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + eps)
    return (xf - mean) * inv * scale + bias, (x, mean, inv, scale)


def _layer_norm_bwd(eps, res, g):
    del eps
    x, mean, inv, scale = res
    xhat = (x.astype(jnp.float32) - mean) * inv
    gs = g * scale
    dx = inv * (gs - gs.mean(-1, keepdims=True) - xhat * (gs * xhat).mean(-1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    return dx.astype(x.dtype), (g * xhat).sum(rows), g.sum(rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (stable under bf16), params named scale/bias."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", logical_init(nn.initializers.ones, ("norm",)), (d,),
                           self.param_dtype)
        bias = self.param("bias", logical_init(nn.initializers.zeros, ("norm",)), (d,),
                          self.param_dtype)
        y = layer_norm(x, scale.astype(jnp.float32), bias.astype(jnp.float32), self.eps)
        return y.astype(self.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (open_clip's in_proj).

    ``qk_norm``: a LayerNorm over ``head_dim`` on the queries and on the keys (``q_norm``,
    ``k_norm``, shared by the heads), after the projection and before the scaling, as open_clip's
    ``Attention(qk_norm=True)`` (``ln_q``, ``ln_k``) does."""

    heads: int
    out_init_std: float
    causal: bool = False
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    qk_norm: bool = False
    ln_eps: float = 1e-5

    @nn.compact
    def __call__(self, x, mask=None, rope=None):
        """``mask``: None, or (B, T) bool, False for keys no token may attend to (padding);
        ``rope``: None, or a rotary position embedding applied to the queries and the keys
        (B, H, T, hd) -> same (PE-Core's, :func:`clip_jax.models.pe.apply_rope`)."""
        d = x.shape[-1]
        hd = d // self.heads
        # Explicit params (not DenseGeneral, whose flattened init breaks logical constraints).
        w_in = self.param("kernel_in", logical_init(nn.initializers.normal(d**-0.5),
                                                    ("embed", None, "heads", "kv")),
                          (d, 3, self.heads, hd), self.param_dtype)
        b_in = self.param("bias_in", logical_init(nn.initializers.zeros, (None, "heads", "kv")),
                          (3, self.heads, hd), self.param_dtype)
        # One (d, 3d) matmul (the 4-D kernel viewed as a matrix: a free reshape), then heads
        # moved before time once, so both attention matmuls and their gradients are plain
        # batched GEMMs with no layout copies in between.
        qkv = checkpoint_name(jnp.einsum("btd,dshk->sbhtk", x, w_in.astype(self.dtype))
                              + b_in.astype(self.dtype)[:, None, :, None], "qkv")
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, hd)
        if self.qk_norm:
            kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            q = LayerNorm(self.ln_eps, name="q_norm", **kw)(q)
            k = LayerNorm(self.ln_eps, name="k_norm", **kw)(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        q = nn.with_logical_constraint(q, ("batch", "act_heads", "length", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "act_heads", "length", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "act_heads", "length", "kv"))
        out = attention(q, k, v, self.causal, self.implementation, mask)
        out = checkpoint_name(nn.with_logical_constraint(out, ("batch", "act_heads", "length",
                                                               "kv")), "attn_core")
        w_out = self.param("kernel_out", logical_init(nn.initializers.normal(self.out_init_std),
                                                      ("heads", "kv", "embed")),
                           (self.heads, hd, d), self.param_dtype)
        b_out = self.param("bias_out", logical_init(nn.initializers.zeros, ("embed",)), (d,),
                           self.param_dtype)
        return checkpoint_name(jnp.einsum("bhtk,hkd->btd", out, w_out.astype(self.dtype))
                               + b_out.astype(self.dtype), "attn_out")


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "xla_f32", "cudnn")


def attention(q, k, v, causal: bool, implementation: str = "auto", mask=None):
    """Softmax attention on (B, H, T, head_dim) q, k, v; returns (B, H, T, head_dim).

    ``q`` may be shorter than ``k``/``v`` (a pooling probe attending to the tokens). ``mask``:
    None, or (B, S) bool over the keys, False for padding no query may attend to (NaFlex's
    padded patches; every row needs one True); a masked call runs the ``xla`` core.
    ``xla``: two batched matmuls around a softmax computed in float32 (with the causal mask as a
    constant select); on CPU this is 1.4x faster forward + backward than
    ``jax.nn.dot_product_attention``, whose (B, T, H, D) layout costs transposes around every
    matmul. With half-precision q, k, v the logits and the probabilities kept for the backward
    are stored in that precision (the max, exp and sum are float32), as big_vision's bf16
    attention and most trainers store them: on TPU the (B, H, T, T) tensors are the largest HBM
    traffic of a ViT block, and their float32 copies cost 18% more bytes per ViT-B/16 block
    (docs/benchmarks.md, "The TPU step"). ``xla_f32``: the same with float32 logits and
    probabilities whatever the inputs' precision (for runs whose attention logits grow large).
    ``cudnn``: the fused flash kernel of ``jax.nn.dot_product_attention`` (GPU,
    float16/bfloat16 only). ``auto``: cuDNN on a GPU with half-precision inputs, else ``xla``.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: use one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    half = q.dtype in (jnp.bfloat16, jnp.float16) and implementation != "xla_f32"
    if mask is None and (implementation == "cudnn" or (
            implementation == "auto" and half and jax.default_backend() == "gpu")):
        swap = lambda a: a.swapaxes(1, 2)  # cuDNN wants (B, T, H, D)
        out = jax.nn.dot_product_attention(swap(q), swap(k), swap(v), is_causal=causal,
                                           implementation="cudnn")
        return swap(out)
    scale = q.shape[-1] ** -0.5
    # half precision (not xla_f32): the logits leave the matmul in q's dtype and the
    # probabilities are kept in v's for the backward (:func:`_softmax_half`), the softmax itself
    # in float32 in between; otherwise float32 logits and autodiff's softmax
    s = jnp.einsum("bhtk,bhsk->bhts", q * jnp.asarray(scale, q.dtype), k,
                   preferred_element_type=q.dtype if half else jnp.float32)
    low = jnp.finfo(s.dtype).min
    if causal:
        t = s.shape[-1]
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, low)
    if mask is not None:
        s = jnp.where(mask[:, None, None, :], s, low)
    if half:
        p = _softmax_half(s.astype(v.dtype))
    else:
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", p, v)


@jax.custom_vjp
def _softmax_half(s):
    """Softmax over the last axis of half-precision logits, computed in float32 and returned in
    ``s``'s dtype; its backward keeps only that half-precision output. Autodiff of a float32
    softmax keeps the float32 probabilities (B, H, T, T) for the backward: on a bf16 ViT-B/16
    that tensor and its gradient were the largest HBM traffic of the step (docs/benchmarks.md,
    "The TPU step"). The gradient is the same formula, p * (g - sum(g * p)), in float32."""
    return jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(s.dtype)


def _softmax_half_fwd(s):
    p = _softmax_half(s)
    return p, p


def _softmax_half_bwd(p, g):
    pf, gf = p.astype(jnp.float32), g.astype(jnp.float32)
    return ((pf * (gf - (gf * pf).sum(-1, keepdims=True))).astype(p.dtype),)


_softmax_half.defvjp(_softmax_half_fwd, _softmax_half_bwd)


class PatchEmbed(nn.Module):
    """open_clip's ``conv1`` (a stride-``patch`` convolution, no bias) as reshape + one matmul:
    (B, H, W, 3) -> (B, patches, width), row-major over the patch grid. Same parameter
    (``kernel``, (p, p, 3, width), as ``nn.Conv`` stores it) and same result as the
    convolution; a convolution whose stride equals its window is a matmul over patches, which
    XLA's CPU backend runs 3x faster than its convolution (ViT-B-32 shapes). ``bias``: a
    ``bias`` (width,) parameter added, as SigLIP's patch embedding has."""

    patch: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bias: bool = False

    @nn.compact
    def __call__(self, images):
        p = self.patch
        b, h, w, c = images.shape
        kernel = self.param("kernel", logical_init(nn.initializers.lecun_normal(),
                                                   (None, None, None, "embed")),
                            (p, p, c, self.width), self.param_dtype)
        gh, gw = h // p, w // p  # like a VALID convolution, a remainder is ignored
        x = images[:, :gh * p, :gw * p].astype(self.dtype).reshape(b, gh, p, gw, p, c)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
        x = jnp.dot(x, kernel.astype(self.dtype).reshape(p * p * c, self.width))
        if self.bias:
            b = self.param("bias", logical_init(nn.initializers.zeros, ("embed",)),
                           (self.width,), self.param_dtype)
            x = x + b.astype(self.dtype)
        return x


class Conv(nn.Module):
    """A square 2-D convolution, NHWC, ``kernel`` (k, k, in / groups, features) as ``nn.Conv``
    stores it (open_clip's and timm's weights map onto it unchanged), computed as each backend
    runs it fastest and exactly: on CPU by oneDNN (:mod:`clip_jax.convolution`) where it is
    built; else a 1x1 convolution is one matmul over the channels and a patchifying one (stride
    = window, no padding) a reshape + matmul, like :class:`PatchEmbed` (their weight gradients
    are then matmuls too, without the activation transposes XLA:CPU's convolution gradient
    makes), and the rest go to :func:`clip_jax.convolution.xla`."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        k, s, p, cin = self.kernel_size, self.stride, self.padding, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init,
                            (k, k, cin // self.groups, self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if convolution.usable(x, kernel):
            y = convolution.onednn(x, kernel, s, p)
        elif self.groups == 1 and p == 0 and (k == 1 or k == s):
            if k == 1:
                x = x[:, ::s, ::s]
            else:  # non-overlapping k x k patches, (dy, dx, c) as the kernel's rows
                b, h, w = x.shape[0], x.shape[1] // k, x.shape[2] // k
                x = x[:, :h * k, :w * k].reshape(b, h, k, w, k, cin).transpose(0, 1, 3, 2, 4, 5)
                x = x.reshape(b, h, w, k * k * cin)
            y = jnp.dot(x, kernel.reshape(k * k * cin, -1))
        else:
            y = convolution.xla(x, kernel, s, p, self.groups)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,),
                               self.param_dtype).astype(self.dtype)
        return y


class MLP(nn.Module):
    mlp_dim: int
    act: str
    proj_init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim, name="c_fc", dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=logical_init(nn.initializers.normal((2 * d) ** -0.5), ("embed", "mlp")),
            bias_init=logical_init(nn.initializers.zeros, ("mlp",)),
        )(x)
        h = checkpoint_name(h, "mlp_fc")
        h = nn.with_logical_constraint(ACTIVATIONS[self.act](h), ("batch", "length", "act_mlp"))
        return checkpoint_name(nn.Dense(
            d, name="c_proj", dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=logical_init(nn.initializers.normal(self.proj_init_std), ("mlp", "embed")),
            bias_init=logical_init(nn.initializers.zeros, ("embed",)),
        )(h), "mlp_out")


class LayerScale(nn.Module):
    """open_clip's / timm's ``LayerScale``: ``x * gamma``, ``gamma`` (D,) starting at ``init``."""

    init: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", logical_init(nn.initializers.constant(self.init), ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        return x * gamma.astype(self.dtype)


class ResidualAttentionBlock(nn.Module):
    """``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))`` (open_clip's block; the
    layer scales only when ``ls_init_value`` is set)."""

    heads: int
    mlp_dim: int
    layers: int  # depth of the tower, for the init scale of residual projections
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-5
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    qk_norm: bool = False
    ls_init_value: float | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        d = x.shape[-1]
        proj_std = d**-0.5 * (2 * self.layers) ** -0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        ls = self.ls_init_value
        y = LayerNorm(self.ln_eps, name="ln_1", **kw)(x)
        y = Attention(self.heads, proj_std, self.causal, self.attention, name="attn",
                      qk_norm=self.qk_norm, ln_eps=self.ln_eps, **kw)(y, mask)
        x = x + (y if ls is None else LayerScale(ls, name="ls_1", **kw)(y))
        y = LayerNorm(self.ln_eps, name="ln_2", **kw)(x)
        y = MLP(self.mlp_dim, self.act, proj_std, name="mlp", **kw)(y)
        x = x + (y if ls is None else LayerScale(ls, name="ls_2", **kw)(y))
        return x, None


class Transformer(nn.Module):
    layers: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    causal: bool = False
    ln_eps: float = 1e-5
    remat: str | bool = "none"  # a name of clip_jax.remat.POLICIES
    scan: bool = False
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    qk_norm: bool = False
    ls_init_value: float | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        """``mask``: None, or (B, T) bool, False for padded tokens (no block attends to them)."""
        block = remat_lib.remat(ResidualAttentionBlock, self.remat, self.scan)
        kw = dict(heads=self.heads, mlp_dim=self.mlp_dim, layers=self.layers, act=self.act,
                  causal=self.causal, ln_eps=self.ln_eps, attention=self.attention,
                  dtype=self.dtype, param_dtype=self.param_dtype, qk_norm=self.qk_norm,
                  ls_init_value=self.ls_init_value)
        if self.scan:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=nn.broadcast, length=self.layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(name="resblocks", **kw)(x, mask)
        else:
            for i in range(self.layers):
                x, _ = block(name=f"resblocks_{i}", **kw)(x, mask)
        return x
