"""Distillation: the KD loss against a float64 NumPy reference on the global batch (1 and 8
devices, dense and blockwise, one and two teachers, both ways of combining them), and the
feature loss."""

from __future__ import annotations

import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import clip_jax
from clip_jax import (
    bundle,
    distill,
    gradients,
    input_pipeline,
    kd_losses,
    losses,
    models,
    plan,
    sources,
    train,
)
from clip_jax import config as config_lib
from clip_jax import params as params_lib
from clip_jax import topology as tpu
from clip_jax.data import transforms
from clip_jax.data.synthetic import SyntheticSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import distill_demo  # noqa: E402
import tiny  # noqa: E402

N, D = 32, 16
RTOL = 1e-5


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_kd(x, y, s, teachers, combine):
    """(loss, d/dx, d/dy, d/ds) of the KD loss, float64, analytic gradients."""
    n = x.shape[0]
    t_logits = [ts * ti @ tt.T for ti, tt, ts in teachers]
    if combine == "logits":
        m = sum(t_logits) / len(t_logits)
        p, q = _softmax(m, 1), _softmax(m, 0)
    else:
        p = sum(_softmax(t, 1) for t in t_logits) / len(t_logits)
        q = sum(_softmax(t, 0) for t in t_logits) / len(t_logits)
    sims = x @ y.T
    logits = s * sims
    log_row = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
        1, keepdims=True)) - logits.max(1, keepdims=True)
    log_col = logits - np.log(np.exp(logits - logits.max(0, keepdims=True)).sum(
        0, keepdims=True)) - logits.max(0, keepdims=True)
    loss = -(np.sum(p * log_row) + np.sum(q * log_col)) / (2 * n)
    d_logits = (_softmax(logits, 1) + _softmax(logits, 0) - p - q) / (2 * n)
    return loss, s * d_logits @ y, s * d_logits.T @ x, np.sum(d_logits * sims)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _case(seed, n_teachers, d_teacher=(24, 8)):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N, D))
    x, y = _unit(base), _unit(base + 0.8 * rng.normal(size=(N, D)))
    teachers = []
    for k in range(n_teachers):
        dt = d_teacher[k]
        proj = rng.normal(size=(D, dt))
        ti = _unit(base @ proj + 0.3 * rng.normal(size=(N, dt)))
        tt = _unit(base @ proj + 0.5 * rng.normal(size=(N, dt)))
        teachers.append((ti, tt, (100.0, 30.0)[k]))
    return x, y, teachers


MESHES = {"none": (1, None), "k1": (1, ("data",)), "k8": (8, ("data", "fsdp"))}


@functools.cache
def _fn(mesh_key, impl, combine, n_teachers, block):
    k, names = MESHES[mesh_key]
    if impl == "dense":
        loss = functools.partial(kd_losses.kd_loss, combine=combine)
    else:
        loss = functools.partial(kd_losses.kd_loss_blockwise, combine=combine, block_size=block)

    def body(x, y, s, teach):
        return loss(x, y, s, [(ti, tt, ts) for ti, tt, ts in teach],
                    axis_name=None if names is None else names)

    if names is not None:
        if len(jax.devices()) < k:
            pytest.skip(f"needs {k} devices")
        shape = (1,) if k == 1 else (2, 4)
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:k]).reshape(shape), names,
                                 axis_types=(AxisType.Auto,) * len(names))
        b = P(names)
        body = jax.shard_map(body, mesh=mesh, in_specs=(b, b, P(), [(b, b, P())] * n_teachers),
                             out_specs=P())
    return jax.jit(jax.value_and_grad(body, argnums=(0, 1, 2)))


def _close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    atol = RTOL * max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


CASES = [(m, impl, combine, nt) for m in MESHES for impl in ("dense", "blockwise")
         for combine, nt in (("probs", 1), ("probs", 2), ("logits", 2))]


@pytest.mark.parametrize("mesh_key,impl,combine,n_teachers", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_kd_matches_reference(mesh_key, impl, combine, n_teachers):
    k = MESHES[mesh_key][0]
    x, y, teachers = _case(k + n_teachers, n_teachers)
    fn = _fn(mesh_key, impl, combine, n_teachers, (N // k) // 2)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    teach = [(f32(ti), f32(tt), jnp.float32(ts)) for ti, tt, ts in teachers]
    for s in (10.0, 50.0):
        value, grads = fn(f32(x), f32(y), jnp.float32(s), teach)
        want = ref_kd(x, y, s, teachers, combine)
        for got, ref, name in zip((value, *grads), want, ("loss", "d_img", "d_txt", "d_scale"),
                                  strict=True):
            _close(got, ref, f"{name} s={s} {mesh_key} {impl} {combine} x{n_teachers}")


def test_kd_is_zero_gradient_for_the_teacher_and_minimal_at_the_teacher():
    """The teacher gets no gradient; a student equal to its teacher has d loss / d x = 0."""
    x, y, teachers = _case(0, 1, (D,))
    ti, tt, _ = teachers[0]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    g = jax.grad(lambda a, b, t: kd_losses.kd_loss(a, b, 20.0, [(t, f32(tt), 20.0)]),
                 argnums=(0, 1, 2))(f32(ti), f32(tt), f32(ti))
    np.testing.assert_allclose(np.asarray(g[0]), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g[2]), 0.0, atol=0.0)


def test_feature_loss():
    x, y, teachers = _case(1, 1, (D,))
    ti, tt, _ = teachers[0]
    want = (np.mean(1 - np.sum(x * ti, 1)) + np.mean(1 - np.sum(y * tt, 1))) / 2
    got = kd_losses.feature_loss(jnp.asarray(x * 3), jnp.asarray(y), [(ti, tt)])
    _close(got, want, "feature loss")
    with pytest.raises(ValueError, match="combine"):
        kd_losses.kd_loss(x, y, 1.0, [(ti, tt, 1.0)], combine="mean")


# ---------------------------------------------------------------------------------------------
# In the train step: teachers from a model source, the gradient cache, FSDP, frozen teachers


def _teacher_bundle(tmp_path, image_size=48, embed_dim=24, context=24, seed=1):
    """A random tiny teacher saved as a bundle: another image size, width and context."""
    cfg = models.get_model_config("tiny").replace(
        embed_dim=embed_dim, vision=dict(image_size=image_size),
        text=dict(context_length=context))
    params = nn.unbox(models.CLIP(cfg).init(jax.random.key(seed), *models.init_inputs(cfg))[
        "params"])
    return str(bundle.save_bundle(tmp_path / f"teacher{seed}", params, cfg))


def _student(teachers, devices=1, impl="dense", accum=1, **distill):
    c = tiny.get_config()
    c.mesh.data, c.mesh.fsdp = (1, 1) if devices == 1 else (2, 4)
    c.loss_impl, c.accum_steps = impl, accum
    c.loss_block_size = 2 if impl == "blockwise" else 0
    c.distill.teachers = tuple(teachers)
    c.distill.teacher_logit_scale = 30.0
    for k, v in distill.items():
        c.distill[k] = v
    return c


def _targets(setup, tparams, batch):
    """The distillation objective's teacher targets on ``batch`` (no gradient)."""
    return jax.jit(lambda t, b: setup.objective.terms[-1].targets(t, b))(tparams, batch)


def _batch(setup, seed=0):
    m = setup.model_cfg
    data = SyntheticSource(setup.config.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 16, 0.5, seed)
    return input_pipeline.to_global(setup.batch_sharding, next(data))


STEP_CASES = [(1, "dense"), (8, "dense"), (8, "blockwise")]
SLOW_CASES = {(1, "dense"), (8, "blockwise")}  # 8dev-dense stays in the default run


@pytest.mark.parametrize("devices,impl", [
    pytest.param(d, i, id=f"{d}dev-{i}", marks=[pytest.mark.slow] if (d, i) in SLOW_CASES else [])
    for d, i in STEP_CASES])
def test_step_loss_and_grads_global_reference_with_and_without_cache(tmp_path, devices, impl):
    teachers = [_teacher_bundle(tmp_path, seed=1), _teacher_bundle(tmp_path, 32, 16, 16, 2)]
    out = {}
    for accum in (1, 2):
        c = _student(teachers, devices, impl, accum, clip_weight=0.5, kd_weight=2.0)
        setup = train.build(c, jax.devices()[:devices])
        state = train.init_state(setup)
        tparams = distill.place(setup.teachers, setup.mesh, "float32")
        batch = _batch(setup)
        with jax.set_mesh(setup.mesh):
            r = jax.jit(lambda p, b, t, s=setup: gradients.loss_and_grads(
                s, p, b, 0, t))(state.params, batch, tparams)
        loss = r.loss
        out[accum] = (float(loss), jax.device_get(r.grads))
        if accum == 1:  # the NumPy reference on the embeddings of the global batch
            with jax.set_mesh(setup.mesh):
                (img, txt, log_s, _), _ = jax.jit(lambda p, b, s=setup: gradients.forward(
                    s, p, b["image"], b["text"], jax.random.key(0)))(state.params, batch)
                teach = _targets(setup, tparams, batch)
            x, y = (np.asarray(a, np.float64) for a in (img, txt))
            ref = [(np.asarray(a, np.float64), np.asarray(b, np.float64), float(s))
                   for a, b, s in teach]
            s = float(np.exp(np.asarray(log_s)))
            want = 0.5 * float(losses.clip_loss(x, y, s)) + 2.0 * ref_kd(x, y, s, ref, "probs")[0]
            np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(out[2][1]), jax.tree.leaves(out[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)


def test_teacher_frozen_bit_identical_student_trains_with_fsdp(tmp_path):
    teacher = _teacher_bundle(tmp_path)
    c = _student([teacher], 8)
    setup = train.build(c, jax.devices()[:8])
    state, step = train.init_state(setup), train.make_train_step(setup)
    assert any("fsdp" in str(s) for s in jax.tree.leaves(
        setup.state_shardings.params, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)))
    m = setup.model_cfg
    data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 16, 0.3, 0)
    seen = []
    for _ in range(12):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        seen.append(float(metrics["loss"]))
    assert np.mean(seen[-3:]) < np.mean(seen[:3]), seen
    host = params_lib.flatten_params(setup.teachers[0].host_params)
    after = params_lib.flatten_params(jax.device_get(step.teacher_params()[0][0]))
    assert host.keys() == after.keys()
    for k in host:
        assert np.asarray(after[k]).tobytes() == np.asarray(host[k]).tobytes(), k
    bf16 = distill.place(setup.teachers, setup.mesh, "bfloat16")[0]
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype("bfloat16")}


def test_config_errors_are_one_line(tmp_path):
    teacher = _teacher_bundle(tmp_path)
    for key, value, match in (("combine", "mean", "distill.combine"),
                              ("kd_weight", -1.0, "distill.kd_weight"),
                              ("dtype", "float16", "distill.dtype"),
                              ("embeddings", "/x", "distill.embeddings")):
        c = _student([teacher], **{key: value})
        with pytest.raises(ValueError, match=match) as e:
            train.check_config(c, jax.devices()[:1])
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no such"):
        train.build(_student([str(tmp_path / "missing")]), jax.devices()[:1])
    setup = train.build(_student([teacher]), jax.devices()[:1])
    with pytest.raises(ValueError, match="vocabulary of 512 tokens != the student's 1000"):
        distill.check_tokenizers(setup.teachers, None, 1000)
    small = _teacher_bundle(tmp_path, context=8, seed=3)
    with pytest.raises(ValueError, match="context length 8"):
        train.build(_student([small]), jax.devices()[:1])


def test_plan_compiles_a_distillation_recipe_and_reports_the_teachers_share(tmp_path):
    if not tpu.libtpu_available():
        pytest.skip("needs libtpu (compile-only TPU devices)")
    c = _student([_teacher_bundle(tmp_path)], 1, "blockwise", 2)
    c.mesh.data, c.mesh.fsdp = -1, 1
    r = plan.compiled_plan(c, "v5e:2x2")
    assert r["teachers"] == 1 and 0 < r["teacher_hbm_share"] < 1
    assert 0 < r["teacher_flops_share"] < 1 and r["teacher_gib_per_chip"] > 0
    assert "distillation teachers" in plan.format_table(r)


def test_train_loop_distils_on_synthetic_data(tmp_path):
    """The whole loop (transfer guard on, checkpoint at the end) with a teacher."""
    c = _student([_teacher_bundle(tmp_path)], 1)
    c.total_steps, c.log_every_steps, c.checkpoint.every_steps = 3, 1, 0
    c.logging.tensorboard = False
    last = train.train(c, str(tmp_path / "run"), jax.devices()[:1])
    assert np.isfinite(last["loss"])


def test_a_teacher_with_another_tokenizer_gets_its_own_ids_from_the_host(tmp_path):
    from clip_jax.data.hf_tokenizer import train_tokenizer

    colours, shapes = ["red", "green", "blue", "pale yellow", "dark"], ["circle", "square",
                                                                       "star", "triangle"]
    captions = [f"a {c} {s} on {b}" for c in colours for s in shapes for b in ("grass", "sky")]
    tok_s = train_tokenizer(captions, 300, tmp_path / "tok_s")
    tok_t = train_tokenizer(captions[::-1] + ["zebra xylophone"] * 3, 420, tmp_path / "tok_t")
    cfg = models.get_model_config("tiny").replace(
        embed_dim=24, text=dict(context_length=24, vocab_size=tok_t.vocab_size))
    params = nn.unbox(models.CLIP(cfg).init(jax.random.key(5), *models.init_inputs(cfg))[
        "params"])
    teacher = str(bundle.save_bundle(tmp_path / "teacher", params, cfg, tok_t))
    c = _student([teacher])
    c.model.text.vocab_size = tok_s.vocab_size
    setup = train.build(c, jax.devices()[:1])
    distill.check_tokenizers(setup.teachers, tok_s, tok_s.vocab_size)
    assert setup.teachers[0].own_text
    key = distill.text_key(0)  # its ids: a batch field of their own, tokenised on the host
    fields = setup.objective.batch_fields(32)
    assert {k: f.shape for k, f in fields.items()} == {key: (32, 24)}
    ids = distill.host_tokenizer(setup, tok_s)(captions[:32])
    assert sorted(ids) == ["teacher0_text", "text"]
    np.testing.assert_array_equal(ids["text"], tok_s(captions[:32], 16))
    np.testing.assert_array_equal(ids[key], tok_t(captions[:32], 24))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3), np.uint8)),
             **{k: jnp.asarray(v) for k, v in ids.items()}}
    tparams = distill.place(setup.teachers, setup.mesh, "float32")
    got = _targets(setup, tparams, batch)[0][1]
    want = setup.teachers[0].model.apply({"params": tparams[0]}, jnp.asarray(
        tok_t(captions[:32], 24)), method="encode_text")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    state = train.init_state(setup)
    with jax.set_mesh(setup.mesh):
        loss = jax.jit(lambda p, b, t: gradients.loss_and_grads(setup, p, b, 0, t))(
            state.params, batch, tparams).loss
    assert np.isfinite(float(loss))


def test_blockwise_kd_never_builds_the_logits_matrix():
    """The compiled KD loss+grad's temporaries are O(n * block), not O(n * N)."""
    n, d, block = 1024, 32, 64
    rng = np.random.default_rng(0)
    x, y, ti, tt = (jnp.asarray(_unit(rng.normal(size=(n, d))), jnp.float32) for _ in range(4))

    def temp_bytes(fn):
        grad = jax.jit(jax.value_and_grad(
            lambda a, b, s: fn(a, b, s, [(ti, tt, 100.0)]), argnums=(0, 1, 2)))
        stats = grad.lower(x, y, jnp.float32(10.0)).compile().memory_analysis()
        if stats is None:
            pytest.skip("no memory analysis on this backend")
        return stats.temp_size_in_bytes

    logits_bytes = n * n * 4
    dense = temp_bytes(kd_losses.kd_loss)
    blockwise = temp_bytes(functools.partial(kd_losses.kd_loss_blockwise, block_size=block))
    assert dense >= logits_bytes
    assert blockwise < logits_bytes / 4, (blockwise, dense)


def test_a_resnet_teacher_runs_batchnorm_on_its_running_statistics(tmp_path):
    """A BatchNorm teacher (tiny-rn, perturbed running statistics) is placed with its
    ``batch_stats`` and embeds the batch in inference mode: its targets equal
    ``clip_jax.load(teacher).encode_image`` of the same pixels."""
    cfg = models.get_model_config("tiny-rn")
    init = models.CLIP(cfg).init(jax.random.key(3), *models.init_inputs(cfg))
    tree = nn.unbox(models.merge_variables(init["params"], init[models.STATS]))
    rng = np.random.default_rng(0)
    tree[models.STATS] = jax.tree.map(
        lambda x: np.asarray(x) + np.abs(rng.standard_normal(np.shape(x))).astype(np.float32),
        tree[models.STATS])
    teacher = str(bundle.save_bundle(tmp_path / "rn", tree, cfg))
    setup = train.build(_student([teacher]), jax.devices()[:1])
    tparams = distill.place(setup.teachers, setup.mesh, "float32")
    assert models.STATS in tparams[0]
    batch = _batch(setup)
    with jax.set_mesh(setup.mesh):
        (img, _, _), = _targets(setup, tparams, batch)
    pixels = np.asarray(batch["image"])
    if pixels.dtype == np.uint8:
        mean, inv_std = transforms.pixel_scale()
        pixels = (pixels.astype(np.float32) - mean) * inv_std
    size = cfg.vision.image_size  # the teacher's size (the student's is smaller): bicubic
    pixels = jax.image.resize(pixels.astype(np.float32), (len(pixels), size, size, 3), "bicubic")
    want = clip_jax.load(teacher).encode_image(np.asarray(pixels))
    np.testing.assert_allclose(np.asarray(img), want, rtol=1e-4, atol=1e-5)


def _ref_feature(x, y, w, ti, tt):
    """Plain-jnp feature loss through the projection ``w``, outside any shard_map."""
    def cos(a, b):
        return jnp.sum(a * b, 1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1))
    return 0.5 * (jnp.mean(1 - cos(x @ w, ti)) + jnp.mean(1 - cos(y @ w, tt)))


def test_feature_distillation_across_widths_learns_a_projection_with_and_without_cache(tmp_path):
    """Student width 32, teacher 24: a (32, 24) projection in the student's params (sharded
    replicated, in the optimizer state), whose gradient equals the plain formula's, through
    the gradient cache too; the loss terms are reported apart and sum with their weights."""
    teacher = _teacher_bundle(tmp_path, embed_dim=24)
    out, devices = {}, 1  # the objective's sharding is tested on 8 devices above
    for accum in (1, 2):
        c = _student([teacher], devices, accum=accum, clip_weight=1.0, kd_weight=2.0,
                     feature_weight=0.5)
        setup = train.build(c, jax.devices()[:devices])
        state = train.init_state(setup)
        assert state.params[distill.EXTRA]["proj_0"].shape == (32, 24)
        assert "proj_0" in str(jax.tree_util.tree_structure(state.opt_state))
        tparams = distill.place(setup.teachers, setup.mesh, "float32")
        batch = _batch(setup)
        with jax.set_mesh(setup.mesh):
            loss, parts, grads, _ = jax.jit(lambda p, b, t, s=setup: (
                gradients.loss_and_grads(s, p, b, 0, t)))(state.params, batch, tparams)
        parts = {k: float(v) for k, v in parts.items()}
        assert sorted(parts) == ["clip", "feature", "kd"]
        np.testing.assert_allclose(float(loss), parts["clip"] + 2 * parts["kd"]
                                   + 0.5 * parts["feature"], rtol=1e-6)
        out[accum] = (float(loss), jax.device_get(grads[distill.EXTRA]["proj_0"]))
        if accum == 1:
            with jax.set_mesh(setup.mesh):
                (img, txt, _, _), _ = jax.jit(lambda p, b, s=setup: gradients.forward(
                    s, p, b["image"], b["text"], jax.random.key(0)))(state.params, batch)
                (ti, tt, _), = _targets(setup, tparams, batch)
            args = [np.asarray(a) for a in (img, txt, state.params[distill.EXTRA]["proj_0"],
                                            ti, tt)]
            want, g_want = jax.value_and_grad(_ref_feature, argnums=2)(*args)
            np.testing.assert_allclose(parts["feature"], float(want), rtol=1e-5)
            np.testing.assert_allclose(out[1][1], g_want * 0.5, rtol=1e-4, atol=1e-7)
            assert np.abs(g_want).max() > 0
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=2e-5)
    np.testing.assert_allclose(out[2][1], out[1][1], rtol=2e-3, atol=1e-7)


def test_init_from_params_takes_the_student_and_leaves_the_projection_fresh(tmp_path):
    """``checkpoint.init_from_params`` matches the student's own params only: a source (here
    a bundle of the student's shape) has no distillation projection to give."""
    c = _student([_teacher_bundle(tmp_path, embed_dim=24)], feature_weight=0.5)
    setup = train.build(c, jax.devices()[:1])
    fresh = train.init_state(setup)
    src = nn.unbox(models.CLIP(setup.model_cfg).init(jax.random.key(7), *models.init_inputs(
        setup.model_cfg))["params"])
    c.checkpoint.init_from = str(bundle.save_bundle(tmp_path / "student", src, setup.model_cfg))
    c.checkpoint.init_from_params = "."
    state = train.init_from(setup, c)
    got, want = (params_lib.flatten_params(jax.device_get(t)) for t in (state.params, src))
    assert set(got) == set(want) | {f"{distill.EXTRA}/proj_0"}
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    np.testing.assert_array_equal(got[f"{distill.EXTRA}/proj_0"],
                                  fresh.params[distill.EXTRA]["proj_0"])
    c.checkpoint.init_from_params = f"^{distill.EXTRA}/"
    with pytest.raises(ValueError, match="matches no parameter of the model"):
        train.init_from(setup, c)


@pytest.mark.slow
def test_a_shallower_student_inherits_evenly_spaced_teacher_blocks(tmp_path):
    """``checkpoint.init_from_blocks`` (TinyCLIP's weight inheritance): a 2-block student from a
    4-block teacher's workdir takes blocks 0 and 3 of each tower ("even"), or those named, in
    the student's scanned layout; without it another depth is an error naming the option (the
    orbax restore used to take the first blocks silently); a bundle reads the same."""
    t = tiny.get_config()
    t.model.vision.layers = t.model.text.layers = 4
    t.total_steps, t.checkpoint.every_steps, t.logging.tensorboard = 1, 0, False
    train.train(t, str(tmp_path / "teacher"), jax.devices()[:1])
    src = sources.resolve(tmp_path / "teacher")
    want = params_lib.flatten_params(src.params)
    path = bundle.save_bundle(tmp_path / "b", src.params, src.cfg)
    c = tiny.get_config()
    c.model.scan = True
    setup = train.build(c, jax.devices()[:1])
    for source in (tmp_path / "teacher", path):
        c.checkpoint.init_from = str(source)
        with pytest.raises(ValueError, match="has 4 blocks in .*init_from_blocks.* 0,3"):
            train.init_from(setup, c)
        c.checkpoint.init_from_blocks = "even"
        got = params_lib.unstack_layers(params_lib.flatten_params(jax.device_get(
            train.init_from(setup, c).params)))
        assert set(got) == {k for k in want if "resblocks_2" not in k and "resblocks_3" not in k}
        for k, v in got.items():
            np.testing.assert_array_equal(v, want[k.replace("resblocks_1", "resblocks_3")], k)
        c.checkpoint.init_from_blocks = ""
    c.checkpoint.init_from_params, c.checkpoint.init_from_blocks = "^text/", "2,1"
    state = train.init_from(setup, c)
    got = params_lib.unstack_layers(params_lib.flatten_params(jax.device_get(state.params)))
    fresh = params_lib.unstack_layers(params_lib.flatten_params(train.init_state(setup).params))
    for k, v in got.items():
        ref = fresh[k] if k.startswith("visual/") else want[k.replace(
            "resblocks_0", "resblocks_2")]
        np.testing.assert_array_equal(v, ref, k)
    c.checkpoint.init_from_blocks = "0,1,2"
    with pytest.raises(ValueError, match="needs 2 block numbers in 0..3"):
        train.init_from(setup, c)
    for bad, msg in (("0,x", "not 'even' or a comma list"), ("even", "needs checkpoint.init_from")):
        c.checkpoint.init_from, c.checkpoint.init_from_blocks = str(path) * (bad != "even"), bad
        c.checkpoint.init_from_params = ""
        with pytest.raises(ValueError, match=msg):
            config_lib.validate(c)
    for arg, stored in (("T,stored=D,inherit", "D"), ("T,scratch,inherit", "")):  # the demo's
        c = distill_demo.get_config(arg)
        config_lib.validate(c)
        assert (c.checkpoint.init_from, c.checkpoint.init_from_blocks) == ("T", "even")
        assert (c.distill.embeddings, tuple(c.distill.teachers)) == (stored, ())
