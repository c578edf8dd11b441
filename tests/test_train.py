"""The sharded train step: 8-device mesh == 1 device, learning happens, params really sharded."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import config as config_lib
from clip_jax import gradients, input_pipeline, models, optimizer, sharding, train
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402


def _run(config, devices, steps):
    setup = train.build(config, devices)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(config.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, config.data.synthetic_classes, 0.5, config.seed)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        losses.append(float(metrics["loss"]))
    return setup, state, np.array(losses)


def _config(**mesh):
    c = tiny.get_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh.get("data", -1), mesh.get(
        "fsdp", 1), mesh.get("tensor", 1)
    return c


@pytest.mark.parametrize("loss", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_mesh_2x2x2_matches_single_device(loss):
    assert jax.device_count() >= 8
    c8 = _config(data=2, fsdp=2, tensor=2)
    c1 = _config(data=1)
    for c in (c8, c1):
        c.loss = loss
        if loss == "siglip":  # the SigLIP architecture (MAP head, bidirectional text, bias -10)
            c.model.name = "tiny-siglip"
    setup8, state8, l8 = _run(c8, jax.devices()[:8], 6)
    _, state1, l1 = _run(c1, jax.devices()[:1], 6)
    np.testing.assert_allclose(l8, l1, rtol=2e-4)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)

    if loss == "siglip":  # the MAP head's probe and attention are sharded like the blocks'
        head = state8.params["visual"]["map_head"]
        assert any(x.sharding.spec != P() for x in jax.tree.leaves(head)), head
    if loss == "clip":
        # Parameters and Adam moments are sharded as the logical rules say.
        blk = state8.params["visual"]["transformer"]["resblocks_0"]
        assert blk["mlp"]["c_fc"]["kernel"].sharding.spec == P("fsdp", "tensor")
        assert blk["attn"]["kernel_in"].sharding.spec == P("fsdp", None, "tensor", None)
        assert blk["mlp"]["c_fc"]["kernel"].addressable_shards[0].data.shape == (16, 32)
        assert state8.params["text"]["token_embedding"].sharding.spec == P("tensor", "fsdp")
        assert state8.params["logit_scale"].sharding.spec == P()
        mu = state8.opt_state[1][0].mu
        assert mu["visual"]["transformer"]["resblocks_0"]["mlp"]["c_fc"][
            "kernel"].sharding.spec == P("fsdp", "tensor")


def test_loss_decreases_on_learnable_synthetic_task():
    c = _config(data=-1)
    c.total_steps = 60
    c.optimizer.warmup_steps = 5
    _, state, losses = _run(c, jax.devices()[:2], 60)
    assert losses[0] > 3.0  # ~ ln(32) at init
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses
    assert float(np.exp(state.params["logit_scale"])) <= 100.0 + 1e-3


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs 12 devices but 8 are present"):
        sharding.mesh_shape({"data": 3, "fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    c = _config(data=8)
    c.batch_size = 12
    with pytest.raises(ValueError, match="batch_size=12 must be divisible"):
        train.build(c)


def test_cli_trains_writes_metrics_and_rejects_typos(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    cmd = [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
           "--workdir", str(tmp_path / "run"), "--config.total_steps=10",
           "--config.mesh.fsdp=2"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10]
    for key in ("step", "loss", "lr", "logit_scale", "samples_per_sec", "grad_norm"):
        assert key in lines[-1]
    assert "mesh data=2 x fsdp=2 x tensor=1" in out.stdout

    bad = subprocess.run(cmd[:-2] + ["--config.optimzer.lr=1e-3"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "optimzer" in bad.stderr


# (tests/test_objectives.py checks the cache for every objective in the default run)
@pytest.mark.parametrize("loss", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_gradient_cache_accumulation_equals_global_batch_gradients(loss):
    grads = {}
    for k in (1, 4):
        c = _config(data=2, fsdp=2)
        c.accum_steps = k
        c.loss = loss
        if loss == "siglip":  # the SigLIP architecture, with a bias that gives gradients
            c.model.name = "tiny-siglip"
            c.model.init_logit_bias = -5.0
        setup = train.build(c, jax.devices()[:4])
        state = train.init_state(setup)
        m = setup.model_cfg
        data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                               m.text.vocab_size, 64, 0.5, 0)
        batch = input_pipeline.to_global(setup.batch_sharding, next(data))
        with jax.set_mesh(setup.mesh):
            fn = jax.jit(lambda p, b, s=setup: gradients.loss_and_grads(s, p, b))
            r = jax.device_get(fn(state.params, batch))
            grads[k] = (r.loss, r.grads)
    np.testing.assert_allclose(grads[4][0], grads[1][0], rtol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(grads[1][1])
    flat4 = jax.tree.leaves(grads[4][1])
    for (path, a), b in zip(flat1, flat4):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_fsdp_falls_back_to_the_largest_divisible_dim():
    """An ``embed`` width the fsdp axis does not divide (as bigG's 1664 over 256) must not leave
    the weight replicated: its largest fsdp-divisible dimension is sharded instead."""
    cfg = models.get_model_config("tiny").replace(vision={"width": 96, "mlp_dim": 384,
                                                          "heads": 2})
    boxed = jax.eval_shape(lambda r: models.CLIP(cfg).init(r, *models.init_inputs(cfg)),
                           jax.random.key(0))["params"]
    mesh = sharding.abstract_mesh({"data": 1, "fsdp": 64, "tensor": 1}, 64)
    specs = sharding.param_specs(boxed, mesh)
    blk = specs["visual"]["transformer"]["resblocks_0"]
    assert blk["mlp"]["c_fc"]["kernel"] == P(None, "fsdp")  # (96, 384): 96 % 64 != 0
    assert blk["mlp"]["c_proj"]["kernel"] == P("fsdp", None)
    assert all(a is None for a in blk["ln_1"]["scale"])  # small: stays replicated
    # where the rules already shard over fsdp nothing changes
    mesh4 = sharding.abstract_mesh({"data": 1, "fsdp": 4, "tensor": 1}, 4)
    assert sharding.param_specs(boxed, mesh4)["visual"]["transformer"]["resblocks_0"]["mlp"][
        "c_fc"]["kernel"] == P("fsdp", None)


def _is_spec(x):
    return isinstance(x, P)


def test_opt_state_specs_follow_the_params_through_adamw_and_masks():
    params = {"dense": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
              "logit_scale": jnp.zeros(())}
    specs = {"dense": {"kernel": P("fsdp", "tensor"), "bias": P("tensor")}, "logit_scale": P()}
    # ours: clipping + AdamW whose weight decay is masked (no decay of biases, logit scale)
    tx, _ = optimizer.make_optimizer(config_lib.base_config().optimizer, 10)
    state = jax.eval_shape(tx.init, params)
    out = sharding.opt_state_specs(tx, state, specs)
    assert jax.tree.structure(out, is_leaf=_is_spec) == jax.tree.structure(
        jax.tree.map(lambda _: 0, state))
    adam, decay, schedule = out[1]
    assert adam.mu == specs and adam.nu == specs and adam.count == P()
    assert decay == optax.MaskedState(optax.EmptyState()) and schedule.count == P()
    # a masked optimizer keeps no moments for masked-out params: they stay MaskedNode
    masked = optax.masked(optax.adam(1e-3), {"dense": {"kernel": True, "bias": False},
                                              "logit_scale": False})
    out = sharding.opt_state_specs(masked, jax.eval_shape(masked.init, params), specs)
    assert out.inner_state[0].mu == {"dense": {"kernel": P("fsdp", "tensor"),
                                               "bias": optax.MaskedNode()},
                                     "logit_scale": optax.MaskedNode()}
    assert out.inner_state[0].count == P()


@pytest.mark.slow
def test_train_leaves_the_callers_config_unchanged(tmp_path):
    """The demo corpus and the tokenizer fill in data paths, eval cards and the vocabulary
    size: on the run's own copy, never on the config passed in."""
    c = tiny.get_config()
    c.total_steps, c.log_every_steps, c.batch_size = 2, 1, 8
    c.mesh.data = 1
    c.data.source, c.data.demo, c.data.demo_train_samples = "webdataset", str(
        tmp_path / "demo"), 64
    c.data.tokenizer, c.data.tokenizer_vocab_size, c.data.workers = "train", 300, 0
    c.eval.at_end = False
    before = c.to_json_best_effort(sort_keys=True)
    last = train.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
    assert np.isfinite(last["loss"])
    assert c.to_json_best_effort(sort_keys=True) == before
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["text"]["vocab_size"] == 300 and saved["data"]["train"]
