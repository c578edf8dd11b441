"""The building blocks in clip_jax.layers against the library versions they replace."""


import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import convolution, layers

REPO = Path(__file__).resolve().parents[1]


def test_fast_layers_equal_their_references():
    """The speed-motivated layers compute the same function, and the same gradients, as the
    straightforward versions they replace (jax.nn.gelu, jax.nn.dot_product_attention, nn.Conv,
    the two-pass layer norm)."""
    x = jax.random.normal(jax.random.key(0), (4096,)) * 4
    np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False),
                               atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: layers.gelu(v).sum())(x),
                               jax.grad(lambda v: jax.nn.gelu(v, approximate=False).sum())(x),
                               atol=2e-6, rtol=1e-6)

    ks = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(key, (3, 4, 9, 16)) for key in ks[:3])  # (B, H, T, D)
    g = jax.random.normal(ks[3], (3, 4, 9, 16))
    sw = lambda a: a.swapaxes(1, 2)
    for causal in (False, True):
        ref = lambda q, k, v, c=causal: sw(jax.nn.dot_product_attention(
            sw(q), sw(k), sw(v), is_causal=c))
        got = lambda q, k, v, c=causal: layers.attention(q, k, v, c, "xla")
        np.testing.assert_allclose(got(q, k, v), ref(q, k, v), atol=1e-5)
        for a, b in zip(jax.vjp(got, q, k, v)[1](g), jax.vjp(ref, q, k, v)[1](g)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="attention implementation"):
        layers.attention(q, k, v, False, "flash")

    images = jax.random.normal(jax.random.key(2), (2, 20, 20, 3))  # 20 % 8: a remainder
    embed = layers.PatchEmbed(8, 12)
    params = embed.init(jax.random.key(3), images)
    conv = nn.Conv(12, (8, 8), strides=8, padding="VALID", use_bias=False)
    want = conv.apply({"params": {"kernel": params["params"]["kernel"]}}, images)
    np.testing.assert_allclose(embed.apply(params, images), want.reshape(2, 4, 12),
                               atol=1e-5)

    h = jax.random.normal(jax.random.key(4), (5, 7, 64)) * 3 + 2
    scale = jax.random.normal(jax.random.key(5), (64,))
    bias = jax.random.normal(jax.random.key(6), (64,))
    gh = jax.random.normal(jax.random.key(7), (5, 7, 64))

    def two_pass(h, scale, bias):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5) * scale + bias

    np.testing.assert_allclose(layers.layer_norm(h, scale, bias, 1e-5),
                               two_pass(h, scale, bias), atol=2e-5)
    for a, b in zip(jax.vjp(lambda *xs: layers.layer_norm(*xs, 1e-5), h, scale, bias)[1](gh),
                    jax.vjp(two_pass, h, scale, bias)[1](gh)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_gelu_tanh_is_torchs_tanh_approximation():
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    c = np.sqrt(2 / np.pi)
    want = 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(layers.ACTIVATIONS["gelu_tanh"](x), want, atol=1e-6)
    # and not the erf GELU (the two differ by up to ~5e-4 here)
    assert np.abs(np.asarray(layers.gelu(x)) - want).max() > 1e-4


def _np_ln(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _perturb(params, seed=0):
    """Every parameter random (LN scales, biases and gammas too), so nothing hides at its init."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) * 0.3 + (x.ndim == 1)
                                     for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("causal", [False, True])
def test_block_with_qk_norm_and_layer_scale_equals_a_numpy_reference(causal):
    """open_clip's CustomResidualAttentionBlock with qk_norm and ls_init_value, written out in
    NumPy: x + ls_1 * out(attn(LN_q(q), LN_k(k), v)) then x + ls_2 * mlp(ln_2(x)); LN over
    head_dim on q and k after the projection, before the 1/sqrt(hd) scaling, same eps."""
    d, h, m, t, eps = 24, 3, 40, 7, 1e-6
    hd = d // h
    block = layers.ResidualAttentionBlock(h, m, 2, "gelu_tanh", causal, eps, "xla",
                                          qk_norm=True, ls_init_value=0.1)
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, t, d)))
    p = _perturb(nn.unbox(block.init(jax.random.key(0), x)["params"]))
    got = np.asarray(block.apply({"params": p}, x)[0])
    assert p["ls_1"]["gamma"].shape == (d,) and p["attn"]["q_norm"]["scale"].shape == (hd,)
    n = jax.tree.map(np.asarray, p)
    a = n["attn"]
    y = _np_ln(x, n["ln_1"]["scale"], n["ln_1"]["bias"], eps)
    qkv = np.einsum("btd,dshk->sbhtk", y, a["kernel_in"]) + a["bias_in"][:, None, :, None]
    q = _np_ln(qkv[0], a["q_norm"]["scale"], a["q_norm"]["bias"], eps)
    k = _np_ln(qkv[1], a["k_norm"]["scale"], a["k_norm"]["bias"], eps)
    s = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(hd)
    if causal:
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    o = np.einsum("bhts,bhsk->bhtk", _np_softmax(s), qkv[2])
    o = np.einsum("bhtk,hkd->btd", o, a["kernel_out"]) + a["bias_out"]
    x1 = x + n["ls_1"]["gamma"] * o
    y = _np_ln(x1, n["ln_2"]["scale"], n["ln_2"]["bias"], eps)
    mlp = n["mlp"]
    hid = y @ mlp["c_fc"]["kernel"] + mlp["c_fc"]["bias"]
    hid = 0.5 * hid * (1 + np.tanh(np.sqrt(2 / np.pi) * (hid + 0.044715 * hid**3)))
    want = x1 + n["ls_2"]["gamma"] * (hid @ mlp["c_proj"]["kernel"] + mlp["c_proj"]["bias"])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_softmax_runs_in_float32_under_bfloat16(causal):
    """With bf16 q, k, v (model.dtype=bfloat16) the softmax's exp runs on float32 in both cores;
    ``xla`` stores the logits (the q k^T matmul's output) in bf16 and ``xla_f32`` in float32.
    Values and the gradients of q, k, v (the bf16 core's written-out softmax backward) match a
    float32 reference to bf16 precision."""
    ks = jax.random.split(jax.random.key(3), 4)
    q, k, v, g = (jax.random.normal(key, (2, 4, 16, 32)) * 2 for key in ks)
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]

    def eqns(jaxpr):  # nested ones too (custom_jvp / custom_vjp calls)
        for e in jaxpr.eqns:
            yield e
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                yield from eqns(sub)

    f32 = [a.astype(jnp.float32) for a in bf]
    want = layers.attention(*f32, causal, "xla")
    want_grads = jax.grad(lambda *a: jnp.sum(layers.attention(*a, causal, "xla") * g),
                          argnums=(0, 1, 2))(*f32)
    # logits of up to ~20 here: rounded to bf16 they move by up to 0.06, so the bf16-logit
    # core's tolerance is wider
    for impl, logits, tol in (("xla", jnp.bfloat16, 8e-2), ("xla_f32", jnp.float32, 3e-2)):
        jaxpr = jax.make_jaxpr(lambda *a, i=impl: layers.attention(*a, causal, i))(*bf)
        exps = [e for e in eqns(jaxpr.jaxpr) if e.primitive.name == "exp"]
        assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps), impl
        dots = [e for e in eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
        assert dots[0].outvars[0].aval.dtype == logits, impl  # q k^T
        got = layers.attention(*bf, causal, impl)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=tol, rtol=2e-2)
        grads = jax.grad(lambda *a, i=impl: jnp.sum(layers.attention(*a, causal, i).astype(
            jnp.float32) * g), argnums=(0, 1, 2))(*bf)
        for got_g, want_g in zip(grads, want_grads):
            assert got_g.dtype == jnp.bfloat16
            scale = float(jnp.abs(want_g).max())
            np.testing.assert_allclose(np.asarray(got_g, np.float32) / scale, want_g / scale,
                                       atol=tol)


def test_patch_embed_bias():
    images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    embed = layers.PatchEmbed(8, 12, bias=True)
    p = nn.unbox(embed.init(jax.random.key(3), images)["params"])
    p = dict(p, bias=jnp.arange(12.0))
    conv = nn.Conv(12, (8, 8), strides=8, padding="VALID", use_bias=True)
    want = conv.apply({"params": p}, images).reshape(2, 4, 12)
    np.testing.assert_allclose(embed.apply({"params": p}, images), want, atol=1e-5)


def _onednn_or_skip():
    """oneDNN's kernels run where the 'onednn' extra and a C++ compiler are (CI installs both);
    elsewhere their tests skip, printing why."""
    why = convolution.reason()
    if why is not None:
        pytest.skip(f"oneDNN's kernels are not available: {why}")


@pytest.mark.parametrize("impl", ["onednn", "xla"])
@pytest.mark.parametrize("k,stride,pad,groups,features,bias", [
    (1, 1, 0, 1, 12, False), (1, 2, 0, 1, 12, False),  # 1x1: a matmul (strided: subsampled)
    (2, 2, 0, 1, 12, True), (4, 4, 0, 1, 12, True),  # patchifying (ConvNeXt stem, downsamples)
    (3, 1, 1, 1, 12, False), (5, 1, 2, 1, 4, True),  # "same": im2col weight gradient on CPU
    (3, 2, 1, 1, 12, False), (7, 1, 3, 6, 12, True),  # XLA's conv
    (7, 1, 3, 6, 6, True)])  # depthwise "same" (ConvNeXt's): shifted products on CPU
def test_conv_equals_flax_conv(k, stride, pad, groups, features, bias, impl, monkeypatch):
    """layers.Conv computes nn.Conv's function and gradients from the same parameters, both on
    oneDNN's kernels (the custom calls of clip_jax.convolution, where the 'onednn' extra is
    installed) and on XLA (the matmul, shifted-product and im2col-gradient
    forms included), odd sizes (rows no strided window reaches) included."""
    x = jax.random.normal(jax.random.key(0), (2, 11, 13, 6))
    if impl == "xla":
        monkeypatch.setenv("CLIP_JAX_CONV", "xla")
    else:
        _onednn_or_skip()
    ours = layers.Conv(features, k, stride, pad, groups, bias,
                       bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(features, (k, k), strides=stride, padding=[(pad, pad)] * 2,
                  feature_group_count=groups, use_bias=bias)
    params = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, ref.init(jax.random.key(1), x))
    assert ("clip_jax_conv_fwd" in jax.jit(ours.apply).lower(params, x).as_text()) == (
        impl == "onednn")
    g = jax.random.normal(jax.random.key(2), ref.apply(params, x).shape)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
    for a, b in zip(jax.vjp(ours.apply, params, x)[1](g), jax.vjp(ref.apply, params, x)[1](g)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), a, b)


def test_onednn_conv_under_a_mesh_stays_sharded_and_equal():
    """On an 8-device mesh the custom calls run per batch shard (shard_map): the loss and
    gradients equal the unsharded ones, and the compiled step gathers no activations (the
    weight gradient is summed over the shards); a batch the mesh does not divide is computed
    whole, equal too; bfloat16 runs XLA's convolution; a missing oneDNN is a one-line reason."""
    _onednn_or_skip()
    conv = layers.Conv(16, 3, 2, 1, use_bias=False)
    x = jax.random.normal(jax.random.key(0), (8, 9, 9, 8))
    params = conv.init(jax.random.key(1), x)
    loss = lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x)))
    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    want = step(params, x)
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.NamedSharding(mesh, jax.P(("data", "fsdp"))))
        hlo = step.lower(params, xs).compile().as_text()
        got = step(params, xs)
        assert "clip_jax_conv_bwd_weights" in hlo and "all-gather" not in hlo
        odd = step(params, x[:6])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 odd, step(params, x[:6]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    assert "clip_jax_conv" not in jax.jit(
        layers.Conv(16, 3, 2, 1, dtype=jnp.bfloat16).apply).lower(half, x).as_text()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(convolution, "_dist_file", lambda *a: None)
        with pytest.raises(convolution.Unavailable, match="'onednn' extra is not installed"):
            convolution.build()


def test_no_compiler_falls_back_to_xla_and_a_failed_build_is_remembered(tmp_path, monkeypatch):
    """Without a C++ compiler (CXX names none, none on the PATH) a fresh process runs XLA's
    convolution, equal to nn.Conv, saying why once; a compile that fails is tried once per
    machine and key: the next build raises the remembered error without running the compiler,
    and another compiler (another key) tries again."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "import flax.linen as nn, jax, numpy as np\n"
        "from clip_jax import convolution, layers\n"
        "x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))\n"
        "ours = layers.Conv(8, 3, 1, 1, use_bias=False)\n"
        "ref = nn.Conv(8, (3, 3), padding=[(1, 1)] * 2, use_bias=False)\n"
        "p = ours.init(jax.random.key(1), x)\n"
        "assert 'clip_jax_conv' not in jax.jit(ours.apply).lower(p, x).as_text()\n"
        "np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x), atol=1e-5)\n"
        "print('ok')\n")
    env = dict(os.environ, PATH=str(tmp_path / "empty"), CXX=str(tmp_path / "no" / "c++"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    said = [ln for ln in done.stderr.splitlines() if "instead of oneDNN's" in ln]
    assert len(said) == 1, done.stderr[-2000:]
    assert ("CXX=" + env["CXX"] + " was not found" in said[0]
            or "'onednn' extra is not installed" in said[0]
            or "Linux x86-64 only" in said[0]), said

    # a compiler that fails, counting its runs
    calls = tmp_path / "calls"
    for name in ("cxx1", "cxx2"):
        fake = tmp_path / name
        fake.write_text(f"#!/bin/sh\necho {name} >> {calls}\necho 'error: no' >&2\nexit 1\n")
        fake.chmod(0o755)
    lib = tmp_path / "onednn" / "lib" / "libdnnl.so"
    header = tmp_path / "onednn" / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    monkeypatch.setattr(convolution, "_PLATFORM_OK", True)
    monkeypatch.setattr(convolution, "_onednn_install", lambda: (lib, header, "2023.2.0"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "cxx1"))
    with pytest.raises(convolution.Unavailable, match="failed: .*cxx1: error: no"):
        convolution.build()
    with pytest.raises(convolution.Unavailable, match="failed on this machine before"):
        convolution.build()
    assert calls.read_text().split() == ["cxx1"]
    monkeypatch.setenv("CXX", str(tmp_path / "cxx2"))
    with pytest.raises(convolution.Unavailable, match="failed: .*cxx2"):
        convolution.build()
    assert calls.read_text().split() == ["cxx1", "cxx2"]
