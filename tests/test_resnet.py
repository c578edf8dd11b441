"""OpenAI's ModifiedResNet image tower: presets and open_clip's RN JSONs, validation, and
BatchNorm over the global batch in training (8 devices == 1 device, losses and running
statistics step by step), the gradient cache and a frozen (LiT) ResNet tower."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from clip_jax import input_pipeline, models, train
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

# open_clip's RN50.json
RN50_JSON = {"embed_dim": 1024,
             "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64,
                            "patch_size": None},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                          "layers": 12}}
# a tiny ResNet CLIP in open_clip's JSON format
TINY_RN_JSON = {"embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4,
                               "head_width": 32, "patch_size": None},
                "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2,
                             "layers": 1}}


def test_presets_have_open_clips_sizes():
    cfg = models.from_open_clip_config(RN50_JSON)
    assert cfg == models.get_model_config("RN50")
    assert cfg.vision.family == "resnet" and cfg.vision.stages == (3, 4, 6, 3)
    assert cfg.vision.heads == 32
    flat = models.abstract_params(cfg)
    assert models.count_params({k: v for k, v in flat.items() if k != models.STATS}) == 102007137
    assert models.get_model_config("RN50-quickgelu").act == "quick_gelu"
    for name in ("RN101", "RN50x4", "RN50x16", "RN50x64"):
        c = models.get_model_config(name)
        assert models.from_open_clip_config(models.to_open_clip_config(c)) == c
    assert models.to_open_clip_config(models.get_model_config("RN50x4"))["vision_cfg"] == {
        "image_size": 288, "layers": [4, 6, 10, 6], "width": 80, "head_width": 64,
        "patch_size": None}
    # JSON round trip of the ModelConfig itself (stages come back as a list)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert models.ModelConfig.from_dict(d) == cfg


def test_open_clips_rn_jsons_parse():
    oc = pytest.importorskip("open_clip")
    folder = os.path.join(os.path.dirname(oc.__file__), "model_configs")
    for name in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"):
        for suffix in ("", "-quickgelu"):
            with open(os.path.join(folder, f"{name}{suffix}.json")) as f:
                got = models.from_open_clip_config(json.load(f))
            assert got == models.get_model_config(name + suffix), name + suffix


@pytest.mark.parametrize("change, message", [
    (dict(stages=(3, 4, 6)), r"model.vision.stages=\(3, 4, 6\): a resnet tower needs four"),
    (dict(stages=None), "a resnet tower needs four positive block counts"),
    (dict(heads=7), r"model.vision.heads=7: must divide the attention pool's width"),
    (dict(image_size=100), "model.vision.image_size=100: a resnet tower needs a multiple of 32"),
    (dict(family="conv"), "model.vision.family=.conv.: must be one of vit, resnet, convnext"),
    (dict(family="vit", stages=(1, 1, 1, 1)), "model.vision.stages=.*only for"),
])
def test_resnet_switches_are_validated_with_one_line_errors(change, message):
    with pytest.raises(ValueError, match=message) as e:
        models.get_model_config("RN50").replace(vision=change)
    assert "\n" not in str(e.value)


def test_open_clip_json_errors_name_the_key():
    bad = json.loads(json.dumps(RN50_JSON))
    bad["vision_cfg"]["patch_size"] = 16
    with pytest.raises(ValueError, match="patch_size=16 with a layers list"):
        models.from_open_clip_config(bad)
    bad["vision_cfg"].update(patch_size=None, mlp_ratio=2.0)
    with pytest.raises(ValueError, match="vision_cfg.mlp_ratio=2.0 is not supported"):
        models.from_open_clip_config(bad)


def _config(tmp_path, **mesh):
    path = tmp_path / "tiny_rn.json"
    path.write_text(json.dumps(TINY_RN_JSON))
    c = tiny.get_config()
    c.model.name = ""
    c.model.open_clip_config = str(path)
    c.batch_size = 16
    c.mesh.data, c.mesh.fsdp = mesh.get("data", -1), mesh.get("fsdp", 1)
    return c


def _run(config, devices, steps):
    setup = train.build(config, devices)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(config.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, config.data.synthetic_classes, 0.5, config.seed)
    losses, stats = [], []
    for _ in range(steps):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        losses.append(float(metrics["loss"]))
        stats.append(jax.device_get(state.batch_stats))
    return setup, state, np.array(losses), stats


def test_batchnorm_over_the_global_batch_8_devices_match_1(tmp_path):
    assert jax.device_count() >= 8
    _, s8, l8, st8 = _run(_config(tmp_path, data=4, fsdp=2), jax.devices()[:8], 4)
    _, s1, l1, st1 = _run(_config(tmp_path, data=1), jax.devices()[:1], 4)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert jax.tree.leaves(st1[0])
    for step, (a8, a1) in enumerate(zip(st8, st1, strict=True)):
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a1), jax.tree.leaves(a8)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6,
                                       err_msg=f"step {step + 1} {path}")
    bn = st1[-1]["visual"]["bn1"]
    assert float(bn["num_batches_tracked"]) == 4.0
    assert not np.allclose(bn["mean"], 0.0) and not np.allclose(bn["var"], 1.0)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)


def _batches(setup, n, seed=0):
    m, c = setup.model_cfg, setup.config
    data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, c.data.synthetic_classes, 0.5, seed)
    return [next(data) for _ in range(n)], data


def test_gradient_cache_updates_the_statistics_once_per_micro_batch(tmp_path):
    c = _config(tmp_path, data=2)
    c.accum_steps = 2
    setup = train.build(c, jax.devices()[:2])
    state = train.init_state(setup)
    (batch,), _ = _batches(setup, 1)
    state, metrics = train.make_train_step(setup)(
        state, input_pipeline.to_global(setup.batch_sharding, batch))
    assert np.isfinite(float(metrics["loss"]))
    stats = jax.device_get(state.batch_stats)
    assert float(stats["visual"]["bn1"]["num_batches_tracked"]) == 2.0
    assert not np.allclose(stats["visual"]["layer4_0"]["bn3"]["mean"], 0.0)


def test_a_frozen_resnet_tower_runs_batchnorm_in_inference_mode(tmp_path):
    c = _config(tmp_path, data=2)
    c.optimizer.frozen = ("image",)
    setup = train.build(c, jax.devices()[:2])
    state0 = jax.device_get(train.init_state(setup))
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    batches, _ = _batches(setup, 2)
    for b in batches:
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, b))
    got = jax.device_get(state)
    for a, b in zip(jax.tree.leaves(state0.batch_stats), jax.tree.leaves(got.batch_stats)):
        np.testing.assert_array_equal(a, b)  # running statistics untouched
    visual0, visual = state0.params["visual"], got.params["visual"]
    for a, b in zip(jax.tree.leaves(visual0), jax.tree.leaves(visual)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(state0.params["text"]["ln_final"]["scale"],
                              got.params["text"]["ln_final"]["scale"])
    with pytest.raises(ValueError, match="a ResNet or ConvNeXt image tower is locked whole"):
        c.model.lock_image_unlocked_groups = 1
        train.build(c, jax.devices()[:2])


@pytest.mark.slow
def test_batch_stats_are_checkpointed_restored_exactly_and_exported(tmp_path):
    from clip_jax import checkpoint, sources

    c = _config(tmp_path, data=2)
    src = train.build(c, jax.devices()[:2])
    state = train.init_state(src)
    step = train.make_train_step(src)
    batches, data = _batches(src, 3)
    for b in batches[:2]:
        state, _ = step(state, input_pipeline.to_global(src.batch_sharding, b))
    work = tmp_path / "run"
    saver = checkpoint.Checkpointer(str(work), c.checkpoint, src.state_shardings,
                                    src.abstract_state)
    saver.save(2, state, data.get_state(), c.to_json_best_effort(), force=True)
    saver.close()
    want = jax.device_get(state)
    c1 = _config(tmp_path, data=1)
    dst = train.build(c1, jax.devices()[:1])
    reader = checkpoint.Checkpointer(str(work), c1.checkpoint, dst.state_shardings,
                                     dst.abstract_state)
    got, _ = reader.restore_latest()
    reader.close()
    assert jax.tree.leaves(want.batch_stats)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    # the resumed run's next step is the uninterrupted one's
    s_ref, m_ref = step(state, input_pipeline.to_global(src.batch_sharding, batches[2]))
    s_res, m_res = train.make_train_step(dst)(
        got, input_pipeline.to_global(dst.batch_sharding, batches[2]))
    np.testing.assert_allclose(float(m_res["loss"]), float(m_ref["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(s_ref.batch_stats)),
                    jax.tree.leaves(jax.device_get(s_res.batch_stats))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    # any model source (export, inference) reads the statistics with the weights
    params = sources.resolve(str(work)).params
    for a, b in zip(jax.tree.leaves(want.batch_stats), jax.tree.leaves(params[models.STATS]),
                    strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_resolution_change_resamples_the_attention_pools_positional_embedding():
    """RN50's shape at 224 px evaluated at 288 (tiny-rn: 64 px -> 96 px, a 2x2 -> 3x3 grid)."""
    import flax.linen as nn

    from clip_jax import params as params_lib

    cfg = models.get_model_config("tiny-rn")
    big = cfg.replace(vision={"image_size": 96})
    tree = nn.meta.unbox(models.CLIP(cfg).init(jax.random.key(0), *models.init_inputs(cfg)))
    flat = params_lib.flatten_params(models.merge_variables(tree["params"], tree[models.STATS]))
    want = params_lib.flatten_params(models.abstract_params(big))
    key = params_lib.ATTNPOOL_POS_EMBED
    out = params_lib.adapt({k: np.asarray(v) for k, v in flat.items()}, want, "tiny-rn")
    assert flat[key].shape == (2 * 2 + 1, 256) and out[key].shape == (3 * 3 + 1, 256)
    np.testing.assert_array_equal(out[key][0], np.asarray(flat[key][0]))  # the mean token's
    np.testing.assert_allclose(out[key][1:].mean(0), np.asarray(flat[key][1:]).mean(0),
                               atol=0.1)
    images = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    emb = models.CLIP(big).apply(models.variables(params_lib.unflatten_params(out)), images,
                                 method=models.CLIP.encode_image)
    assert emb.shape == (2, 32) and np.isfinite(np.asarray(emb)).all()


@pytest.mark.parametrize("pattern", [pytest.param("^visual/", marks=pytest.mark.slow), ""])
def test_init_from_takes_the_batchnorm_statistics_with_the_weights(tmp_path, pattern):
    """LiT with a pretrained ResNet (``init_from_params='^visual/'``, the image tower frozen):
    its running statistics come with its weights; a full ``init_from`` takes all of them."""
    import flax.linen as nn

    from clip_jax import bundle as bundle_lib
    from clip_jax import params as params_lib

    c = _config(tmp_path, data=1)
    cfg = models.from_open_clip_config(TINY_RN_JSON)
    tree = nn.meta.unbox(models.CLIP(cfg).init(jax.random.key(7), *models.init_inputs(cfg)))
    rng = np.random.default_rng(0)
    src = jax.tree.map(lambda x: np.asarray(x) + np.abs(rng.standard_normal(np.shape(x))).astype(
        np.float32), models.merge_variables(tree["params"], tree[models.STATS]))
    bundle_lib.save_bundle(tmp_path / "src", src, cfg)
    c.checkpoint.init_from = str(tmp_path / "src")
    c.checkpoint.init_from_params = pattern or None
    if pattern:
        c.optimizer.frozen = ("image",)
    setup = train.build(c, jax.devices()[:1])
    state = jax.device_get(train.init_from(setup, c))
    want = params_lib.flatten_params(src)
    got = params_lib.flatten_params(models.merge_variables(state.params, state.batch_stats))
    for key, x in want.items():
        taken = not pattern or key.startswith(("visual/", "batch_stats/visual/"))
        assert np.array_equal(got[key], x) == taken, key


@pytest.mark.slow
def test_sigkill_and_resume_is_exact_with_batch_stats(tmp_path):
    """A ResNet run (from an open_clip JSON) killed hard after its first checkpoint and resumed
    logs the uninterrupted run's metrics and ends with its running statistics."""
    import signal
    import subprocess
    import time

    from clip_jax import checkpoint

    steps, every = 200, 40
    path = tmp_path / "tiny_rn.json"
    path.write_text(json.dumps(TINY_RN_JSON))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONUNBUFFERED="1")

    def cmd(work):
        return [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
                "--workdir", str(work), "--config.model.name=",
                f"--config.model.open_clip_config={path}", "--config.batch_size=16",
                f"--config.total_steps={steps}", f"--config.checkpoint.every_steps={every}",
                "--config.log_every_steps=10"]

    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(run), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    done = run / "checkpoints" / str(every) / "commit_success.txt"
    t0 = time.time()
    while not done.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd(run), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout

    def metrics(work):
        rows = [json.loads(x) for x in open(work / "metrics.jsonl")]
        return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]

    m_ref, m_run = metrics(tmp_path / "ref"), metrics(run)
    assert [m[0] for m in m_run] == [m[0] for m in m_ref]
    np.testing.assert_allclose(np.array(m_run), np.array(m_ref), rtol=1e-5)
    cfg = models.from_open_clip_config(TINY_RN_JSON)
    abstract = models.abstract_params(cfg)
    a, b = (checkpoint.load_params(str(w), abstract) for w in (tmp_path / "ref", run))
    assert float(a[models.STATS]["visual"]["bn1"]["num_batches_tracked"]) == steps
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_create_model_of_a_resnet_preset_carries_its_statistics():
    from clip_jax import inference

    model, params, _, tok = inference.create_model("tiny-rn")
    assert tok is None and models.STATS in params  # a fitted-vocabulary test preset
    m = inference.InferenceModel(model.cfg, params)
    assert "resnet 64px" in repr(m)
    emb = m.encode_image(np.zeros((2, 64, 64, 3), np.float32))
    assert emb.shape == (2, 32) and np.isfinite(emb).all()


def test_a_checkpoint_from_before_batch_stats_resumes(tmp_path):
    """A ViT run's checkpoint written before TrainState had ``batch_stats`` (the state without
    that field) restores, with empty statistics."""
    from clip_jax import checkpoint

    c = tiny.get_config()
    c.mesh.data = 1
    setup = train.build(c, jax.devices()[:1])
    state = train.init_state(setup)
    old = {k: v for k, v in vars(state).items() if k != "batch_stats"}
    saver = checkpoint.Checkpointer(str(tmp_path), c.checkpoint, setup.state_shardings,
                                    setup.abstract_state)
    saver.save(3, old, {"step": 3}, force=True)
    saver.close()
    reader = checkpoint.Checkpointer(str(tmp_path), c.checkpoint, setup.state_shardings,
                                     setup.abstract_state)
    got, _ = reader.restore_latest()
    reader.close()
    assert isinstance(got, train.TrainState) and got.batch_stats == {}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weight_decay_mask_and_frozen_preset_know_the_conv_tower_names():
    from clip_jax import optimizer
    from clip_jax import params as params_lib

    for name in ("tiny-rn", "convnext_tiny"):
        params = {k: v for k, v in models.abstract_params(models.get_model_config(name)).items()
                  if k != models.STATS}
        decay = params_lib.flatten_params(optimizer.decay_mask(params))
        for key, d in decay.items():
            if not key.startswith("visual/"):
                continue
            leaf = key.rsplit("/", 1)[-1]
            # conv and dense kernels decay; BN/LN scales, biases, layer-scale gammas and the
            # attention pool's positional embedding do not
            assert d == (leaf == "kernel"), key
        frozen = params_lib.flatten_params(optimizer.frozen_mask(params, ["image"]))
        assert all(f == key.startswith("visual/") for key, f in frozen.items())


@pytest.mark.slow
def test_remat_recomputes_bottlenecks_with_the_same_gradients_and_statistics():
    """model.remat on a ResNet tower: the Bottlenecks are rematerialised (checkpoint in the
    jaxpr) and the gradients and the updated BatchNorm statistics equal those without."""
    import dataclasses

    import jax.numpy as jnp

    from clip_jax.models.resnet import ModifiedResNet

    cfg = models.from_open_clip_config(TINY_RN_JSON)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    out = {}
    for remat in (False, True):
        m = ModifiedResNet(dataclasses.replace(cfg, remat=remat))
        v = m.init(jax.random.key(1), x)

        def loss(p, v=v, m=m):
            y, upd = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
            return jnp.sum(y**2), upd

        fn = jax.grad(loss, has_aux=True)
        prims = {e.primitive.name for e in jax.make_jaxpr(fn)(v["params"]).jaxpr.eqns}
        assert ("remat2" in prims) == remat
        out[remat] = fn(v["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 out[False], out[True])
