"""The objective seam (:mod:`clip_jax.objectives`): every objective through the gradient cache
equals its global-batch loss and gradients (contrastive softmax, sigmoid, online distillation
with KD and a feature projection, stored embeddings), the loss function is chosen in one table,
and a run that adds params of its own (feature distillation's projection) evaluates in training.
"""

from __future__ import annotations

import inspect
import json
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle, distill, gradients, input_pipeline, models, objectives, train
from clip_jax.data.synthetic import SyntheticSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny  # noqa: E402

KINDS = ("clip", "siglip", "distill", "stored")
PARTS = {"clip": ["clip"], "siglip": ["clip"], "distill": ["clip", "feature", "kd"],
         "stored": ["clip", "feature", "kd"]}


def _teacher(root, embed_dim=24) -> str:
    cfg = models.get_model_config("tiny").replace(embed_dim=embed_dim)
    params = nn.unbox(models.CLIP(cfg).init(jax.random.key(1), *models.init_inputs(cfg))[
        "params"])
    return str(bundle.save_bundle(os.path.join(root, "teacher"), params, cfg))


def _config(kind, accum, root):
    c = tiny.get_config()
    c.batch_size, c.accum_steps = 8, accum
    c.mesh.data, c.mesh.fsdp = 1, 2
    if kind == "siglip":  # the SigLIP architecture, with a bias that gives gradients
        c.loss, c.model.name, c.model.init_logit_bias = "siglip", "tiny-siglip", -5.0
    if kind in ("distill", "stored"):
        c.distill.clip_weight, c.distill.kd_weight, c.distill.feature_weight = 0.5, 2.0, 0.5
        c.distill.teacher_logit_scale = 30.0
    if kind == "distill":
        c.distill.teachers = (_teacher(root),)
    if kind == "stored":  # what clip_jax.embed writes beside the rows: their width and scale
        os.makedirs(os.path.join(root, "emb"), exist_ok=True)
        with open(os.path.join(root, "emb", "embed.json"), "w") as f:
            json.dump({"embed_dim": 24, "logit_scale": 20.0}, f)
        c.data.source, c.distill.embeddings = "webdataset", os.path.join(root, "emb")
        c.data.train = os.path.join(root, "unread.tar")  # the batch comes from _batch
    return c


def _batch(setup):
    """A synthetic batch and, for each field the objective reads, random rows (unit float16
    embeddings, token ids)."""
    m, n = setup.model_cfg, setup.config.batch_size
    host = next(SyntheticSource(n, m.vision.image_size, m.text.context_length,
                                m.text.vocab_size, 16, 0.5, 0))
    rng = np.random.default_rng(0)
    for key, f in setup.objective.batch_fields(n).items():
        x = rng.standard_normal(f.shape)
        host[key] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(f.dtype)
    return input_pipeline.to_global(setup.batch_sharding, host)


@pytest.mark.parametrize("kind", KINDS)
def test_the_gradient_cache_equals_the_global_batch_for_every_objective(tmp_path, kind):
    """``accum_steps=2`` on 2 FSDP devices (each micro-batch spread over both) against the
    objective of the whole global batch (``accum_steps=1``): loss, parts and every gradient,
    the objective's own params (the feature projection) included."""
    out = {}
    for accum in (1, 2):
        setup = train.build(_config(kind, accum, str(tmp_path)), jax.devices()[:2])
        state = train.init_state(setup)
        teachers = distill.place(setup.teachers, setup.mesh, "float32")
        batch = _batch(setup)
        with jax.set_mesh(setup.mesh):
            r = jax.jit(lambda p, b, t, s=setup: gradients.loss_and_grads(s, p, b, 0, t))(
                state.params, batch, teachers)
        out[accum] = jax.device_get(r)
    full, cached = out[1], out[2]
    assert sorted(full.parts) == sorted(cached.parts) == PARTS[kind]
    if kind in ("distill", "stored"):
        assert full.grads[distill.EXTRA]["proj_0"].shape == (32, 24)
        assert np.abs(full.grads[distill.EXTRA]["proj_0"]).max() > 0
        w = setup.objective.weights
        np.testing.assert_allclose(full.loss, sum(w[k] * full.parts[k] for k in w), rtol=1e-6)
    np.testing.assert_allclose(cached.loss, full.loss, rtol=2e-5)
    for k in full.parts:
        np.testing.assert_allclose(cached.parts[k], full.parts[k], rtol=2e-5, err_msg=k)
    flat = jax.tree_util.tree_leaves_with_path(full.grads)
    assert len(flat) == len(jax.tree.leaves(cached.grads))
    for (path, a), b in zip(flat, jax.tree.leaves(cached.grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-6, err_msg=str(path))


def test_one_table_chooses_every_loss_function():
    """``(loss, loss_impl)`` -> function lives in :data:`clip_jax.objectives.LOSSES` alone: the
    step and the teachers' module no longer choose it."""
    assert {k for k in objectives.LOSSES} == {
        (loss, impl) for loss in ("clip", "siglip", "kd") for impl in ("dense", "blockwise")}
    for module in (gradients, distill, train):
        assert "loss_impl" not in inspect.getsource(module), module.__name__
    c = tiny.get_config()
    c.loss_impl, c.loss_block_size = "blockwise", 4
    fn = objectives.loss_fn("siglip", c)
    assert fn.func is objectives.LOSSES[("siglip", "blockwise")] and fn.keywords == {
        "block_size": 4}


def test_feature_distillation_evaluates_during_training(tmp_path):
    """The crash of issue 33: with a feature projection in the params (teacher width 24,
    student 32) the in-training evaluator was compiled for params that include it and given
    the model's alone. It now runs, on the model's params."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        os.makedirs(root / name)
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    c = tiny.get_config()
    c.distill.teachers, c.distill.feature_weight = (_teacher(str(tmp_path)),), 1.0
    c.eval.fewshot, c.eval.fewshot_shots = f"folder:{root}", (1, 2)
    c.total_steps, c.log_every_steps, c.checkpoint.every_steps = 2, 1, 0
    c.logging.tensorboard = False
    setup = train.build(c, jax.devices()[:1])
    assert distill.EXTRA in setup.state_shardings.params
    assert distill.EXTRA not in setup.objective.model_params(setup.state_shardings.params)
    last = train.train(c, str(tmp_path / "run"), jax.devices()[:1])
    assert np.isfinite(last["loss"]) and "loss_feature" in last
    assert 0 <= last["eval/fewshot/1shot"] <= 1, sorted(last)
