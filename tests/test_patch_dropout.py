"""FLIP patch dropout: training only, static shapes, the right count, per-image and per-step
draws, the same on a sharded mesh as on one device."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import bundle, gradients, input_pipeline, models, train
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

TINY = models.get_model_config("tiny")  # 32 px images in 8 px patches: 16 patch tokens


def _with(p):
    return TINY.replace(vision={"patch_dropout": p})


@pytest.mark.parametrize("p, kept", [(0.0, 16), (0.5, 8), (0.75, 4), (0.9, 2), (0.99, 1)])
def test_kept_count_is_round_one_minus_p_times_n(p, kept):
    assert _with(p).vision.kept_patches() == kept


def test_drop_patches_equals_a_per_image_loop_and_keeps_cls():
    b, n, d, keep = 3, 16, 5, 6
    x = jnp.asarray(np.random.default_rng(0).normal(size=(b, 1 + n, d)), jnp.float32)
    rng = jax.random.key(7)
    out = np.asarray(jax.jit(models.drop_patches, static_argnums=1)(x, keep, rng))
    assert out.shape == (b, 1 + keep, d)
    keys = jax.random.split(rng, b)
    for i in range(b):  # the reference: one image at a time, NumPy indexing
        perm = np.asarray(jax.random.permutation(keys[i], n))[:keep]
        np.testing.assert_array_equal(out[i, 0], np.asarray(x[i, 0]))  # CLS first, kept
        np.testing.assert_array_equal(out[i, 1:], np.asarray(x[i, 1:])[perm])
        assert len(set(perm.tolist())) == keep
    assert not np.array_equal(out[0, 1:], out[1, 1:])  # each image its own draw


def _images(b=4):
    return jnp.asarray(np.random.default_rng(1).normal(size=(b, 32, 32, 3)), jnp.float32)


def test_inference_is_unchanged_and_training_draws_per_step():
    params = models.CLIP(TINY).init(jax.random.key(0), *models.init_inputs(TINY))["params"]
    images = _images()

    @functools.partial(jax.jit, static_argnums=0)
    def encode(p, rng=None):
        model = models.CLIP(_with(p))
        if rng is None:
            return model.apply({"params": params}, images, method=models.CLIP.encode_image)
        return model.apply({"params": params}, images, train=True, rngs={"patch_dropout": rng},
                           method=models.CLIP.encode_image)

    base = np.asarray(encode(0.0))
    np.testing.assert_array_equal(np.asarray(encode(0.5)), base)  # eval: every patch
    # training with p=0 is the eval forward; with p=0.5 it depends on the step's rng only
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(encode(0.0, key)), base)
    s1, s2 = (np.asarray(encode(0.5, jax.random.fold_in(key, s))) for s in (1, 2))
    np.testing.assert_array_equal(np.asarray(encode(0.5, jax.random.fold_in(key, 1))), s1)
    assert not np.allclose(s1, s2) and not np.allclose(s1, base)
    # the vision tower really runs on 1 + 8 tokens (static shape in the jaxpr)
    jaxpr = str(jax.make_jaxpr(lambda r: models.CLIP(_with(0.5)).apply(
        {"params": params}, images, train=True, rngs={"patch_dropout": r},
        method=models.CLIP.encode_image))(key))
    assert "f32[4,9,32]" in jaxpr and "f32[4,17,32]" in jaxpr


def _run(config, devices, steps=3):
    setup = train.build(config, devices)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(config.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 16, 0.5, 0)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


def test_sharded_2x2x2_mesh_matches_one_device_with_patch_dropout():
    out = {}
    for name, mesh, devices in (("8", (2, 2, 2), jax.devices()[:8]),
                                ("1", (1, 1, 1), jax.devices()[:1])):
        c = tiny.get_config()
        c.batch_size = 16
        c.model.vision.patch_dropout = 0.5
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
        out[name] = _run(c, devices)
    np.testing.assert_allclose(out["8"][1], out["1"][1], rtol=2e-4)
    for a, b in zip(jax.tree.leaves(out["8"][0].params), jax.tree.leaves(out["1"][0].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)


def test_config_round_trips_and_bad_values_are_named(tmp_path):
    cfg = _with(0.5)
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert models.from_open_clip_config(models.to_open_clip_config(cfg)).vision.patch_dropout \
        == 0.5
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="model.vision.patch_dropout"):
            TINY.replace(vision={"patch_dropout": bad})
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), models.abstract_params(cfg))
    bundle.save_bundle(tmp_path / "b", params, cfg)
    assert bundle.bundle_config(tmp_path / "b")[0] == cfg
    text = (tmp_path / "b" / "config.json").read_text()
    (tmp_path / "b" / "config.json").write_text(text.replace('"patch_dropout": 0.5',
                                                             '"patch_dropout": 1.5'))
    with pytest.raises(ValueError, match=r"model.vision.patch_dropout=1.5: must be a number"):
        bundle.bundle_config(tmp_path / "b")


def test_the_train_step_drops_patches_seeded_by_the_step():
    c = tiny.get_config()
    c.batch_size, c.mesh.data, c.model.vision.patch_dropout = 4, 1, 0.5
    setup = train.build(c, jax.devices()[:1])
    batch = {"image": jnp.zeros((4, 32, 32, 3), jnp.uint8), "text": jnp.ones((4, 16), jnp.int32)}
    params = models.abstract_params(setup.model_cfg)
    jaxpr = str(jax.make_jaxpr(lambda p, s: gradients.loss_and_grads(setup, p, batch, s))(
        params, jnp.int32(3)))
    assert "f32[4,9,32]" in jaxpr and "f32[4,17,32]" in jaxpr  # 16 patches + CLS -> 8 + CLS
    assert "random_fold_in" in jaxpr  # the draw depends on the step


def test_gradient_cache_draws_each_micro_batch_once_for_both_of_its_passes():
    """accum_steps=2 with patch dropout: the cached loss and gradients equal plain autodiff of
    the loss of the two micro-batches' embeddings, each drawn with its own key (the embedding
    pass and the re-run under vjp must drop the same patches)."""
    c = tiny.get_config()
    c.batch_size, c.mesh.data, c.accum_steps, c.model.vision.patch_dropout = 8, 1, 2, 0.5
    setup = train.build(c, jax.devices()[:1])
    params = train.init_state(setup).params
    data = SyntheticSource(8, 32, 16, 512, 16, 0.5, 0)
    batch = input_pipeline.to_global(setup.batch_sharding, next(data))
    step = jnp.int32(5)

    def reference(p):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(c.seed), step), 2)
        outs = [gradients.forward(setup, p, batch["image"][4 * j:4 * j + 4],
                                  batch["text"][4 * j:4 * j + 4], keys[j])[0] for j in range(2)]
        img = jnp.concatenate([o[0] for o in outs])
        txt = jnp.concatenate([o[1] for o in outs])
        return setup.objective.loss(setup.mesh, img, txt, {"logit_scale": p["logit_scale"]},
                                    [None])[0]

    with jax.set_mesh(setup.mesh):
        loss, _, grads, _ = jax.jit(lambda p: gradients.loss_and_grads(setup, p, batch, step))(
            params)
        ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
        other = jax.jit(lambda p: gradients.loss_and_grads(setup, p, batch, step + 1))(params)[0]
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert float(other) != float(loss)  # the next step draws other patches
