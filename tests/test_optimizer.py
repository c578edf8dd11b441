"""Frozen parameters (LiT, locked towers), lr multipliers and partial init_from."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_jax import bundle, input_pipeline, models, optimizer, sources, train
from clip_jax import config as config_lib
from clip_jax import params as params_lib
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import lit_demo  # noqa: E402
import tiny  # noqa: E402


def _config(**opt):
    c = tiny.get_config()
    c.mesh.data, c.mesh.fsdp = 1, 2  # params and optimizer state sharded over 2 devices
    c.batch_size = 16
    for k, v in opt.items():
        c.optimizer[k] = v
    return c


def _run(c, steps=3):
    setup = train.build(c, jax.devices()[:2])
    state = train.init_state(setup)
    init = jax.device_get(state.params)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 16, 0.5, 0)
    for _ in range(steps):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
    return setup, init, state, metrics


def _flat(tree):
    return params_lib.flatten_params(jax.device_get(tree))


def _init(cfg, seed):
    """Random parameters of ``cfg``'s shapes (no model init to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (0.05 * rng.normal(size=x.shape)).astype(x.dtype),
                        models.abstract_params(cfg))


@pytest.fixture(scope="module")
def frozen_run():
    return _run(_config(frozen=("image",), grad_clip_norm=0.0))


def test_frozen_image_tower_is_bit_identical_has_no_state_and_the_rest_trains(frozen_run):
    setup, init, state, metrics = frozen_run
    before, after = _flat(init), _flat(state.params)
    for k in before:
        if k.startswith("visual/"):
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        elif k.endswith("kernel") or k.endswith("embedding"):
            assert not np.array_equal(after[k], before[k]), k
    assert np.isfinite(float(metrics["loss"]))
    # no optimizer state for the image tower: Adam's mu and nu cover the other params only
    n_all = models.count_params(init)
    n_vis = sum(x.size for k, x in before.items() if k.startswith("visual/"))
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.dtype == jnp.float32)
    assert moments == 2 * (n_all - n_vis)
    # and that state is sharded like its parameters
    mu = optax.tree_utils.tree_get(state.opt_state.inner_states["trainable"], "mu")
    assert mu["text"]["token_embedding"].sharding.spec == \
        state.params["text"]["token_embedding"].sharding.spec
    assert isinstance(mu["visual"]["proj"], optax.MaskedNode)


def test_factor_zero_equals_freezing_in_its_effect_on_params(frozen_run):
    frozen = frozen_run[2]
    _, _, zero, _ = _run(_config(lr_multipliers=(("^visual/", 0.0),), grad_clip_norm=0.0))
    a, b = _flat(frozen.params), _flat(zero.params)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_half_factor_is_half_the_first_adamw_update_computed_by_hand():
    c = _config(lr_multipliers=(("^text/", 0.5), ("^text/ln_final", 3.0)), grad_clip_norm=0.0,
                warmup_steps=0, schedule="constant", weight_decay=0.1)
    cfg = models.get_model_config("tiny")
    params = jax.tree.map(np.asarray, _init(cfg, 0))
    grads = jax.tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape)
                         .astype(np.float32), params)
    tx, schedule = optimizer.make_optimizer(c.optimizer, 10)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    o = c.optimizer
    decay = _flat(optimizer.decay_mask(params))
    g, p, u = _flat(grads), _flat(params), _flat(updates)
    lr = float(schedule(0))
    for k in p:
        # AdamW's first step: m_hat = g, v_hat = g^2 -> g / (|g| + eps), plus decoupled decay
        want = -lr * (g[k] / (np.abs(g[k]) + o.eps) + (o.weight_decay * p[k] if decay[k] else 0))
        factor = 0.5 if k.startswith("text/") else 1.0  # first match wins: ln_final is 0.5
        np.testing.assert_allclose(u[k], factor * want, rtol=1e-5, atol=1e-9, err_msg=k)
    # exactly half of the factor-1 update (the multiplier scales the update, nothing else)
    plain, _ = optimizer.make_optimizer(_config(grad_clip_norm=0.0, warmup_steps=0,
                                                schedule="constant",
                                                weight_decay=0.1).optimizer, 10)
    u1 = _flat(jax.jit(plain.update)(grads, plain.init(params), params)[0])
    for k in u:
        np.testing.assert_array_equal(u[k], u1[k] * (0.5 if k.startswith("text/") else 1.0))


def test_lock_image_unlocked_groups_follows_open_clip_and_needs_scan_false():
    abstract = models.abstract_params(models.get_model_config("tiny"))  # 2 vision blocks
    mask = _flat(optimizer.frozen_mask(abstract, ("image",), 2))
    frozen = sorted({k.split("/")[1] if "resblocks" not in k else k.split("/")[2]
                     for k, f in mask.items() if f})
    assert frozen == ["class_embedding", "conv1", "ln_pre", "positional_embedding",
                      "resblocks_0"]
    trainable_visual = {k for k, f in mask.items() if not f and k.startswith("visual/")}
    assert {k.split("/")[1] for k in trainable_visual} == {"transformer", "ln_post", "proj"}
    assert all("resblocks_1" in k for k in trainable_visual if "transformer" in k)
    one = _flat(optimizer.frozen_mask(abstract, ("image",), 1))
    assert [k for k, f in one.items() if k.startswith("visual/") and not f] == ["visual/proj"]
    with pytest.raises(ValueError, match="nothing would be frozen"):
        optimizer.frozen_mask(abstract, ("image",), 4)
    scanned = models.abstract_params(models.get_model_config("tiny").replace(scan=True))
    with pytest.raises(ValueError, match="set model.scan=False"):
        optimizer.frozen_mask(scanned, ("image",), 2)
    # a whole tower freezes by path with scan too
    assert all(f for k, f in _flat(optimizer.frozen_mask(scanned, ("image",))).items()
               if k.startswith("visual/"))


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c.optimizer, "frozen", ("visual/transformer/resblocks_[",)),
     "not a valid regex"),
    (lambda c: setattr(c.optimizer, "frozen", ("^vision/",)), "matches no parameter"),
    (lambda c: setattr(c.optimizer, "frozen", ("image", "text", "logit")), "every parameter"),
    (lambda c: setattr(c.optimizer, "lr_multipliers", (("^text/", -1.0),)), "finite number"),
    (lambda c: setattr(c.optimizer, "lr_multipliers", (("^text/",),)), "(regex, factor)"),
    (lambda c: setattr(c.model, "lock_image_unlocked_groups", 2), "add 'image'"),
    (lambda c: (setattr(c.model, "scan", True),
                setattr(c.optimizer, "frozen", ("visual/transformer/resblocks_1/",))),
     "set model.scan=False"),
    (lambda c: setattr(c.checkpoint, "init_from_params", "^visual/"), "needs checkpoint.init"),
    (lambda c: setattr(c.optimizer, "layer_decay", 0.0), "optimizer.layer_decay"),
    (lambda c: setattr(c.optimizer, "layer_decay", 1.5), "optimizer.layer_decay"),
    (lambda c: (setattr(c.model.vision, "family", "resnet"),
                setattr(c.model.vision, "stages", (1, 1, 1, 1)),
                setattr(c.optimizer, "layer_decay", 0.8)), "defines no layer ids"),
])
def test_bad_settings_fail_validation_naming_the_key(edit, message):
    c = tiny.get_config()
    edit(c)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(c)


def test_a_resume_refuses_a_frozen_change_and_takes_multipliers():
    a, b = tiny.get_config(), tiny.get_config()
    b.optimizer.frozen = ("image",)
    with pytest.raises(config_lib.ResumeConfigError, match="optimizer.frozen"):
        config_lib.check_resume(a, b)
    b = tiny.get_config()
    b.optimizer.lr_multipliers = (("^visual/", 0.1),)
    b.model.vision.patch_dropout = 0.5
    assert {k for k, _, _ in config_lib.check_resume(a, b)} == {
        "optimizer.lr_multipliers", "model.vision.patch_dropout"}
    saved = config_lib._as_plain(a)  # a run saved before the key existed resumes
    del saved["optimizer"]["frozen"]
    config_lib.check_resume(saved, a)


def test_take_merges_the_matching_source_params_any_layout():
    cfg = models.get_model_config("tiny")
    other = cfg.replace(text={"vocab_size": 100}, scan=True)  # another text tower, scanned
    src = jax.tree.map(np.asarray, _init(other, 1))
    mesh = jax.make_mesh((2,), ("fsdp",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    target = jax.device_put(_init(cfg, 0), sh)
    out = params_lib.take(target, src, "^visual/", "src")
    got, want_src, want_tgt = _flat(out), params_lib.unstack_layers(_flat(src)), _flat(target)
    for k, x in got.items():
        np.testing.assert_array_equal(x, want_src[k] if k.startswith("visual/") else want_tgt[k])
    assert jax.tree.leaves(out)[0].sharding == jax.tree.leaves(target)[0].sharding
    with pytest.raises(ValueError, match="matches no parameter"):
        params_lib.take(target, src, "^vision/", "src")
    with pytest.raises(ValueError, match="shape"):  # the source's text tower does not fit
        params_lib.take(target, src, "^text/", "src")


def test_lit_run_keeps_the_image_tower_of_its_source_bit_identical(tmp_path):
    """LiT from a model source (a bundle): image tower taken and frozen, text tower fresh and
    trained; the image tower after the run equals the source's bit for bit."""
    tiny_cfg = models.get_model_config("tiny")
    bundle.save_bundle(tmp_path / "pre", _init(tiny_cfg, 5), tiny_cfg)
    lit = _config(frozen=("image",))
    lit.seed = 1
    lit.total_steps, lit.log_every_steps, lit.checkpoint.async_save = 3, 1, False
    lit.eval.at_end = False
    lit.checkpoint.init_from, lit.checkpoint.init_from_params = str(tmp_path / "pre"), "^visual/"
    train.train(lit, str(tmp_path / "lit"), devices=jax.devices()[:2])
    pre = _flat(sources.resolve(tmp_path / "pre").params)
    out = _flat(sources.resolve(tmp_path / "lit").params)
    fresh = _flat(train.init_state(train.build(lit, jax.devices()[:2])).params)  # seed 1
    for k in pre:
        if k.startswith("visual/"):
            np.testing.assert_array_equal(out[k], pre[k], err_msg=k)
        elif k == "text/token_embedding":  # fresh (seed 1), then trained: neither source's
            assert not np.allclose(out[k], pre[k]) and not np.allclose(out[k], fresh[k])


def test_lit_demo_config_builds_and_validates():
    c = lit_demo.get_config()
    config_lib.validate(c)
    assert c.optimizer.frozen == ("image",) and c.checkpoint.init_from_params == "^visual/"
    model_cfg, mesh = train.check_config(c, jax.devices()[:1])
    _, tx, _, abstract, specs = train.plan_state(c, model_cfg, mesh)
    n_vis = sum(x.size for k, x in _flat(abstract.params).items() if k.startswith("visual/"))
    moments = sum(x.size for x in jax.tree.leaves(abstract.opt_state)
                  if x.dtype == jnp.float32)
    assert moments == 2 * (models.count_params(abstract.params) - n_vis)


def _siglip(**overrides):
    """A SigLIP-family model shrunk (open_clip's image tower is then a timm ViT)."""
    return models.get_model_config("ViT-B-16-SigLIP").replace(
        embed_dim=32, vision={"width": 32, "layers": 3, "heads": 2, "mlp_dim": 64,
                              "image_size": 32, "patch_size": 8},
        text={"width": 32, "layers": 2, "heads": 2, "mlp_dim": 64, "vocab_size": 64,
              "context_length": 8}, **overrides)


def _timm_scales(timm_optim, ref, decay) -> dict:
    """timm's ``param_groups_layer_decay`` lr scale of each of ``ref``'s parameter names."""
    names = {id(p): n for n, p in ref.named_parameters()}
    return {names[id(p)]: g["lr_scale"]
            for g in timm_optim.param_groups_layer_decay(ref, layer_decay=decay)
            for p in g["params"]}


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_factors_equal_timms_param_groups_layer_decay(scan):
    """Each image-tower factor equals timm's ``param_groups_layer_decay`` lr_scale for the
    parameter the open_clip key map names (``visual.trunk.*``: a timm VisionTransformer of the
    same shape): our factors written as parameter values through ``interop.keymap`` land, per
    timm name, as constants equal to timm's. With ``scan`` the stacked blocks carry one factor
    per block."""
    torch = pytest.importorskip("torch")
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    timm_optim = pytest.importorskip("timm.optim")
    from clip_jax.interop import keymap

    cfg, decay = _siglip(scan=scan), 0.6
    v = cfg.vision
    with torch.device("cpu"):
        ref = timm_vit.VisionTransformer(
            img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.layers,
            num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width, class_token=False,
            global_pool="map", num_classes=0, no_embed_class=True)
    scales = _timm_scales(timm_optim, ref, decay)
    abstract = models.abstract_params(cfg)
    factors = optimizer.layer_decay_factors(abstract, decay, cfg)
    filled = jax.tree.map(lambda x, f: np.broadcast_to(np.float32(1) * f, x.shape).copy(),
                          abstract, factors)
    external = keymap.to_external(filled, cfg, "open_clip")
    trunk = {k[len("visual.trunk."):]: np.asarray(a) for k, a in external.items()
             if k.startswith("visual.trunk.")}
    assert set(trunk) == set(scales)  # every timm parameter has its clip_jax counterpart
    for name, arr in trunk.items():
        np.testing.assert_allclose(arr, scales[name], rtol=1e-6, err_msg=name)
    assert len(set(scales.values())) == v.layers + 2  # embeddings, 3 blocks, head
    # The text tower by the same rule, its own depth: d ** (L + 1 - layer).
    flat = _flat(jax.tree.map(np.asarray, filled))
    L = cfg.text.layers
    assert flat["text/token_embedding"].max() == pytest.approx(decay ** (L + 1))
    assert flat["text/ln_final/scale"].min() == decay  # the final norm: the last block's
    assert flat["text/text_projection"].min() == flat["logit_bias"] == 1.0
    blocks = {k: a for k, a in flat.items() if k.startswith("text/transformer/")}
    if scan:
        np.testing.assert_allclose(blocks["text/transformer/resblocks/ln_1/scale"][:, 0],
                                   [decay ** (L - i) for i in range(L)], rtol=1e-6)
    else:
        for i in range(L):
            assert blocks[f"text/transformer/resblocks_{i}/ln_1/scale"].max() == pytest.approx(
                decay ** (L - i))


def test_layer_decay_scales_the_adamw_update_and_keeps_depth_with_a_frozen_tower():
    """The update of every parameter is the undecayed one times its factor (multipliers
    multiply), and freezing the image tower changes neither the text factors nor the state."""
    cfg = models.get_model_config("tiny")
    params = jax.tree.map(np.asarray, _init(cfg, 0))
    grads = jax.tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape)
                         .astype(np.float32), params)
    base = dict(grad_clip_norm=0.0, warmup_steps=0, schedule="constant", weight_decay=0.1)

    def first_update(**opt):
        tx, _ = optimizer.make_optimizer(_config(**base, **opt).optimizer, 10, model_cfg=cfg)
        state = tx.init(params)
        return _flat(jax.jit(tx.update)(grads, state, params)[0]), state

    plain, plain_state = first_update()
    decayed, decayed_state = first_update(layer_decay=0.5,
                                          lr_multipliers=(("^text/ln_final", 3.0),))
    assert jax.tree.structure(plain_state) == jax.tree.structure(decayed_state)
    factors = _flat(optimizer.layer_decay_factors(params, 0.5, cfg))
    assert factors["visual/conv1/kernel"] == 0.5 ** 3 and factors["visual/proj"] == 1.0
    assert factors["visual/transformer/resblocks_1/ln_1/scale"] == 0.5
    for k in plain:
        mult = 3.0 if k.startswith("text/ln_final") else 1.0
        np.testing.assert_allclose(decayed[k], plain[k] * factors[k] * mult, rtol=1e-6,
                                   err_msg=k)
    locked, _ = first_update(layer_decay=0.5, frozen=("image",))
    for k in plain:
        want = 0.0 if k.startswith("visual/") else plain[k] * factors[k]
        np.testing.assert_allclose(locked[k], want, rtol=1e-6, err_msg=k)


def test_a_layer_decay_step_equals_the_hand_computed_adamw_update():
    """AdamW's first step is ``-lr * (g / (|g| + eps) + wd * p)`` (bias-corrected moments: g,
    g^2), weight decay on matrices only; with layer decay each parameter's is multiplied by
    ``d ** (L + 1 - layer)`` written out here by hand (scanned towers: one per block)."""
    cfg = models.get_model_config("tiny").replace(scan=True)
    p = jax.tree.map(np.asarray, _init(cfg, 1))
    g = jax.tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape)
                     .astype(np.float32), p)
    lr, wd, eps, d = 0.1, 0.1, 1e-6, 0.7
    opt = _config(grad_clip_norm=0.0, warmup_steps=0, schedule="constant", lr=lr,
                  weight_decay=wd, eps=eps, layer_decay=d).optimizer
    tx, _ = optimizer.make_optimizer(opt, 10, model_cfg=cfg)
    got = _flat(jax.jit(tx.update)(g, tx.init(p), p)[0])
    fp, fg = _flat(p), _flat(g)
    decayed = _flat(optimizer.decay_mask(p))
    L = 2  # both tiny towers: 2 blocks; embeddings 0, block i i + 1, final norm 2, head 3
    by_hand = {"visual/conv1/kernel": d**3, "visual/class_embedding": d**3,
               "visual/positional_embedding": d**3, "visual/ln_pre/scale": d**3,
               "visual/ln_post/scale": d, "visual/proj": 1.0,
               "text/token_embedding": d**3, "text/ln_final/bias": d,
               "text/text_projection": 1.0, "logit_scale": 1.0}
    for k, f in by_hand.items():
        want = -f * lr * (fg[k] / (np.abs(fg[k]) + eps) + wd * fp[k] * decayed[k])
        np.testing.assert_allclose(got[k], want, rtol=2e-5, atol=1e-8, err_msg=k)
    k = "visual/transformer/resblocks/mlp/c_fc/kernel"  # stacked (L, ...): d ** (L - i)
    want = -lr * (fg[k] / (np.abs(fg[k]) + eps) + wd * fp[k])
    want = want * np.array([d ** (L - i) for i in range(L)])[:, None, None]
    np.testing.assert_allclose(got[k], want, rtol=2e-5, atol=1e-8, err_msg=k)


def test_convnext_layer_decay_factors_equal_timms():
    """The ConvNeXt family's own layer ids (stem 0, each block in order, a stage's downsample
    with its first block, head L + 1): per open_clip name (``visual.trunk.*``, timm's ConvNeXt),
    our factors equal timm's ``param_groups_layer_decay`` lr_scale."""
    pytest.importorskip("torch")
    timm_convnext = pytest.importorskip("timm.models.convnext")
    timm_optim = pytest.importorskip("timm.optim")
    from clip_jax.interop import keymap

    stages, width, decay = (1, 1, 2, 1), 8, 0.6
    cfg = models.get_model_config("convnext_tiny").replace(
        embed_dim=16, vision={"stages": stages, "width": width, "image_size": 32},
        text={"width": 16, "layers": 2, "heads": 2, "mlp_dim": 32, "vocab_size": 64,
              "context_length": 8})
    ref = timm_convnext.ConvNeXt(depths=stages, dims=tuple(width * 2**i for i in range(4)),
                                 num_classes=0)
    scales = _timm_scales(timm_optim, ref, decay)
    abstract = models.abstract_params(cfg)
    factors = optimizer.layer_decay_factors(abstract, decay, cfg)
    filled = jax.tree.map(lambda x, f: np.full(x.shape, f, np.float32), abstract, factors)
    external = keymap.to_external(filled, cfg, "open_clip")
    trunk = {k[len("visual.trunk."):]: np.asarray(a) for k, a in external.items()
             if k.startswith("visual.trunk.")}
    assert set(trunk) == set(scales)
    for name, arr in trunk.items():
        np.testing.assert_allclose(arr, scales[name], rtol=1e-6, err_msg=name)
    assert len(set(scales.values())) == sum(stages) + 2
    assert np.all(np.asarray(external["visual.head.proj.weight"]) == 1.0)
