"""Model structure, presets, open_clip configs, scan/remat equivalence."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import models


def _abstract_params(cfg):
    return jax.eval_shape(
        lambda r: models.CLIP(cfg).init(r, *models.init_inputs(cfg))["params"],
        jax.random.key(0))


def test_vit_b32_matches_open_clip_parameter_count():
    # open_clip ViT-B-32: 302 state-dict tensors, 151,277,313 parameters.
    params = _abstract_params(models.get_model_config("ViT-B-32"))
    assert models.count_params(params) == 151_277_313
    assert len(jax.tree.leaves(params)) == 302


def test_every_parameter_has_logical_names():
    params = _abstract_params(models.get_model_config("tiny").replace(scan=True))
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned)
        assert len(leaf.names) == leaf.value.ndim


def _stack_blocks(params, layers):
    """Turn resblocks_0..L-1 (scan=False) into one stacked resblocks (scan=True)."""
    out = jax.tree.map(lambda x: x, params)
    for tower in ("visual", "text"):
        tr = out[tower]["transformer"]
        blocks = [tr.pop(f"resblocks_{i}") for i in range(layers)]
        tr["resblocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return out


def test_scan_and_remat_compute_the_same_function():
    cfg = models.get_model_config("tiny")
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    text = jnp.array([[49, 5, 7, 511, 0, 0] + [0] * 10] * 3, jnp.int32)
    params = nn.unbox(models.CLIP(cfg).init(jax.random.key(0), images, text)["params"])
    ref = models.CLIP(cfg).apply({"params": params}, images, text)
    scanned = _stack_blocks(params, cfg.vision.layers)
    for variant in (cfg.replace(scan=True), cfg.replace(scan=True, remat=True)):
        out = models.CLIP(variant).apply({"params": scanned}, images, text)
        for a, b in zip(ref[:2], out[:2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    out = models.CLIP(cfg.replace(remat=True)).apply({"params": params}, images, text)
    np.testing.assert_allclose(ref[1], out[1], rtol=1e-5, atol=1e-6)
    # Gradients agree too (remat only changes what is stored).
    def f(p, c):
        i, t, _, _ = models.CLIP(c).apply({"params": p}, images, text)
        return jnp.sum(i * t)
    g1 = jax.grad(f)(params, cfg)
    g2 = jax.grad(f)(params, cfg.replace(remat=True))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_every_remat_policy_gives_the_same_gradients_scanned_or_not():
    """Each named policy only changes what the backward keeps: gradients of a block stack equal
    no remat's (unrolled; one policy scanned too: ``full`` scanned is covered above;
    host offloading needs a TPU/GPU)."""
    from clip_jax import remat as remat_lib
    from clip_jax.layers import Transformer

    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    kw = dict(layers=2, heads=2, mlp_dim=32, act="gelu_tanh")
    params = nn.unbox(Transformer(**kw).init(jax.random.key(0), x)["params"])
    stacked = {"resblocks": jax.tree.map(lambda *xs: jnp.stack(xs),
                                         *[params[f"resblocks_{i}"] for i in range(2)])}

    def grads(p, remat, scan):
        loss = lambda p, x: jnp.sum(jnp.sin(Transformer(**kw, remat=remat, scan=scan).apply(
            {"params": p}, x)))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)

    ref = {False: grads(params, "none", False), True: grads(stacked, "none", True)}
    for a, b in zip(jax.tree.leaves(ref[False][1]), jax.tree.leaves(ref[True][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in remat_lib.POLICIES:
        if "offload" in name or name == "none":
            continue
        for scan in (False, True) if name == "save_dot_except_mlp" else (False,):
            got = grads(stacked if scan else params, name, scan)
            for a, b in zip(jax.tree.leaves(ref[scan]), jax.tree.leaves(got)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_text_features_come_from_the_end_token_and_are_causal():
    cfg = models.get_model_config("tiny")
    model = models.CLIP(cfg)
    eot = cfg.text.vocab_size - 1
    a = jnp.array([[510, 5, 6, eot, 0, 0, 0, 0] + [0] * 8], jnp.int32)
    b = a.at[0, 5].set(77)  # a token after the end token must not matter
    c = a.at[0, 2].set(99)  # a token before it must
    params = model.init(jax.random.key(0), *models.init_inputs(cfg))["params"]
    enc = lambda t: model.apply({"params": params}, t, method=models.CLIP.encode_text)
    np.testing.assert_allclose(enc(a), enc(b), atol=1e-6)
    assert not np.allclose(enc(a), enc(c), atol=1e-4)
    np.testing.assert_allclose(jnp.linalg.norm(enc(a), axis=-1), 1.0, rtol=1e-5)


def test_scan_keeps_compiled_program_size_independent_of_depth():
    sizes = []
    for layers in (2, 8):
        cfg = models.get_model_config("tiny").replace(
            scan=True, vision={"layers": layers}, text={"layers": layers})
        model = models.CLIP(cfg)
        params = nn.unbox(_abstract_params(cfg))
        f = jax.jit(lambda p, i, t, m=model: m.apply({"params": p}, i, t)[0])
        sizes.append(len(f.lower(params, *models.init_inputs(cfg)).as_text()))
    assert sizes[1] < sizes[0] * 1.1, sizes


def test_open_clip_config_round_trip_and_errors(tmp_path):
    for name in ("ViT-B-32", "ViT-L-14", "ViT-H-14", "ViT-g-14", "ViT-bigG-14"):
        cfg = models.get_model_config(name)
        oc = models.to_open_clip_config(cfg)
        assert models.from_open_clip_config(oc) == cfg
    # The file form, as open_clip ships it (ViT-H-14.json), with the wrapper of exports.
    h14 = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280,
           "head_width": 80, "patch_size": 14},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024,
                        "heads": 16, "layers": 24}}
    path = tmp_path / "h14.json"
    path.write_text(json.dumps({"model_cfg": h14, "preprocess_cfg": {}}))
    assert models.from_open_clip_config(str(path)) == models.get_model_config("ViT-H-14")
    bad = dict(h14, vision_cfg=dict(h14["vision_cfg"], ls_init_value=1e-5))
    with pytest.raises(ValueError, match="ls_init_value"):
        models.from_open_clip_config(bad)
    with pytest.raises(ValueError, match="unknown model preset"):
        models.get_model_config("ViT-X-99")


def test_patch_embed_keeps_the_conv_parameter_and_its_init():
    """Checkpoints and exports see the same ``visual/conv1/kernel`` (p, p, 3, width) as when
    the layer was an ``nn.Conv``, initialised to the same values."""
    cfg = models.get_model_config("tiny")
    params = models.CLIP(cfg).init(jax.random.key(0), *models.init_inputs(cfg))["params"]
    kernel = nn.unbox(params)["visual"]["conv1"]["kernel"]
    p, w = cfg.vision.patch_size, cfg.vision.width
    assert kernel.shape == (p, p, 3, w)
    # nn.Conv's lecun_normal: fan_in = p * p * 3 (6,144 draws here: the std is within 5%)
    np.testing.assert_allclose(float(kernel.std()), (p * p * 3) ** -0.5, rtol=0.05)


def test_init_logit_scale_is_clips_log_inverse_temperature():
    assert models.INIT_LOGIT_SCALE == pytest.approx(2.6592, abs=1e-4)  # log(1 / 0.07)
    assert models.ModelConfig().init_logit_scale == models.INIT_LOGIT_SCALE
