"""Self-distillation from the EMA teacher (clip_jax/objectives/silc.py, tips.py, data/views.py):
each loss against a float64 NumPy version on a small batch, the teacher gets no gradient, the
gradient cache and 8 devices equal one device's global batch, the views are a pure function of
the sample (resume makes the same ones, the main crop is untouched), and the terms switch on at
their step, with a resume across that step exact."""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from clip_jax import checkpoint, gradients, input_pipeline, models, params, train
from clip_jax.data import pipeline, views
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.objectives import tips

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
sys.path.insert(0, os.path.join(REPO, "tests"))
import test_pipeline  # noqa: E402
import tiny  # noqa: E402

STEP = 6  # a step after the switch (round(0.5 * 10) = 5)


def _config(accum=1, data=1, fsdp=1, total=10):
    c = tiny.get_config()
    c.batch_size, c.accum_steps, c.total_steps, c.log_every_steps = 8, accum, total, 1
    c.mesh.data, c.mesh.fsdp = data, fsdp
    c.silc.weight, c.tips.weight, c.silc.local_crops = 1.0, 0.5, 3
    for t in (c.silc, c.tips):
        t.start_fraction, t.head_hidden, t.head_bottleneck, t.head_dim = 0.5, 16, 8, 32
    c.ema.decay, c.ema.start_step = 0.9, 5
    return c


def _host_batch(c, model_cfg, step=STEP):
    """The synthetic source's batch of the 0-based ``step``, with the views it carries then."""
    v = model_cfg.vision
    src = SyntheticSource(c.batch_size, v.image_size, model_cfg.text.context_length,
                          model_cfg.text.vocab_size, 16, 0.5, c.seed,
                          views=views.spec_from_config(c, v.image_size, v.patch_size))
    src.set_state({"batch_index": step})
    return next(src)


def _run(c, devices):
    """loss_and_grads on the batch of STEP with a teacher that differs from the student (the
    EMA perturbed): returns (result, params, average, host batch)."""
    setup = train.build(c, devices)
    state = train.init_state(setup)
    noise = jax.jit(lambda e: jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape, x.dtype), e),
        out_shardings=setup.state_shardings.ema)
    avg = noise(state.ema)
    host = _host_batch(c, setup.model_cfg)
    batch = input_pipeline.to_global(setup.batch_sharding, host)
    with jax.set_mesh(setup.mesh):
        r = jax.jit(lambda p, b, a, s=setup: gradients.loss_and_grads(
            s, p, b, STEP, (), None, a))(state.params, batch, avg)
    return jax.device_get(r), jax.device_get(state.params), jax.device_get(avg), host, setup


@pytest.fixture(scope="module")
def runs():
    one = _run(_config(), jax.devices()[:1])
    sharded = _run(_config(accum=2, data=2, fsdp=2), jax.devices()[:4])
    return one, sharded


# -- float64 reference --------------------------------------------------------------------------

def _gelu(x):  # the tanh form (jax.nn.gelu's default)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _head(p, x):
    x = np.asarray(x, np.float64)
    for i in range(3):
        x = x @ np.asarray(p[f"layer_{i}"]["kernel"], np.float64) + p[f"layer_{i}"]["bias"]
        x = _gelu(x) if i < 2 else x
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    w = np.asarray(p["prototypes"]["kernel"], np.float64)
    return x @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _ce(teacher_logits, student_logits, c):
    """DINO's loss: teacher centred over every row of the batch and sharpened, student
    tempered, mean cross-entropy."""
    flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    t = np.exp(_log_softmax((teacher_logits - flat.mean(0)) / c.teacher_temp))
    return float(np.mean(-(t * _log_softmax(student_logits / c.student_temp)).sum(-1)))


def test_each_loss_equals_its_float64_reference(runs):
    """SILC: the teacher (the average) on the global view vs the student on each local crop;
    TIPS: the teacher's tokens of the masked patches vs the student's tokens with those patch
    embeddings replaced by the mask token. Heads, centring, softmaxes and cross-entropies in
    float64 NumPy; the features from the model's own view forward."""
    (r, p, avg, host, setup) = runs[0]
    c, n = setup.config, setup.config.batch_size
    model = models.CLIP(setup.model_cfg)
    own = setup.objective.model_params

    def enc(tree, x, **kw):
        return jax.device_get(model.apply({"params": own(tree)}, x,
                                          method=models.CLIP.encode_views, **kw))

    g, loc = host[views.GLOBAL], host[views.LOCAL]
    t_pooled, t_tokens = enc(avg, g)
    s_pooled = enc(p, loc.reshape(-1, *loc.shape[2:]))[0].reshape(n, c.silc.local_crops, -1)
    silc = _ce(_head(avg["silc"]["head"], t_pooled)[:, None],
               _head(p["silc"]["head"], s_pooled), c.silc)

    patches = (setup.model_cfg.vision.image_size // setup.model_cfg.vision.patch_size) ** 2
    m = round(c.tips.mask_ratio * patches)
    rng = jax.random.fold_in(jax.random.key(c.seed), STEP)
    idx = np.asarray(tips.masked_patches(rng, n, patches, m))
    assert all(len(set(row)) == m for row in idx)
    mask = np.zeros((n, patches), bool)
    mask[np.arange(n)[:, None], idx] = True
    s_tokens = enc(p, g, patch_mask=mask, mask_token=p["tips"]["mask_token"])[1]
    assert not np.allclose(s_tokens, enc(p, g)[1])  # the mask changes what the student sees
    rows = np.arange(n)[:, None]
    tips_ref = _ce(_head(avg["tips"]["head"], t_tokens[rows, idx]),
                   _head(p["tips"]["head"], s_tokens[rows, idx]), c.tips)

    assert sorted(r.parts) == ["clip", "silc", "tips"]
    np.testing.assert_allclose(r.parts["silc"], silc, rtol=2e-5)
    np.testing.assert_allclose(r.parts["tips"], tips_ref, rtol=2e-5)
    np.testing.assert_allclose(r.loss, r.parts["clip"] + 1.0 * silc + 0.5 * tips_ref, rtol=2e-5)
    for name, leaf in (("silc", "layer_0"), ("tips", "layer_0")):
        assert np.abs(r.grads[name]["head"][leaf]["kernel"]).max() > 0
    assert np.abs(r.grads["tips"]["mask_token"]).max() > 0


def test_the_teacher_gets_no_gradient():
    """The loss differentiated with respect to the average (the teacher) is zero everywhere,
    while the student's params get a gradient from the same terms."""
    c = _config()
    setup = train.build(c, jax.devices()[:1])
    state = train.init_state(setup)
    batch = input_pipeline.to_global(setup.batch_sharding, _host_batch(c, setup.model_cfg))
    with jax.set_mesh(setup.mesh):
        g = jax.jit(jax.grad(lambda a: gradients.loss_and_grads(
            setup, state.params, batch, STEP, (), None, a).loss))(state.ema)
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(jax.device_get(g)))


def test_gradient_cache_and_four_devices_equal_one_device(runs):
    """accum_steps=2 on 4 devices (2 data x 2 FSDP) against one device's global batch: the
    loss, each part and every gradient (heads and mask token included)."""
    full, other = runs[0][0], runs[1][0]
    np.testing.assert_allclose(other.loss, full.loss, rtol=2e-5)
    assert sorted(other.parts) == sorted(full.parts)
    for k in full.parts:
        np.testing.assert_allclose(other.parts[k], full.parts[k], rtol=2e-5, err_msg=k)
    flat = jax.tree_util.tree_leaves_with_path(full.grads)
    for (path, a), b in zip(flat, jax.tree.leaves(other.grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-6, err_msg=str(path))


# -- the views ------------------------------------------------------------------------------

def test_synthetic_views_appear_at_their_step_and_resume_exactly():
    """The global view from step 3, the local ones from step 4; the main images are those of a
    source without views; a source restored from the state after 4 batches makes the same
    last two batches, views included."""
    spec = views.ViewSpec(32, 3, 16, 2, 4)
    src = SyntheticSource(4, 32, 16, 512, 8, 0.5, 0, views=spec)
    plain = SyntheticSource(4, 32, 16, 512, 8, 0.5, 0)
    got = [next(src) for _ in range(4)]
    state = json.loads(json.dumps(src.get_state()))
    got += [next(src) for _ in range(2)]
    for step, b in enumerate(got):
        assert sorted(b) == sorted(["image", "text", *spec.fields(step)]), step
        np.testing.assert_array_equal(b["image"], next(plain)["image"])  # main crop untouched
    assert got[4][views.LOCAL].shape == (4, 2, 16, 16, 3)
    assert got[3][views.GLOBAL].shape == (4, 32, 32, 3)
    assert not np.array_equal(got[4][views.GLOBAL], got[5][views.GLOBAL])
    again = SyntheticSource(4, 32, 16, 512, 8, 0.5, 0, views=spec)
    again.set_state(state)
    for want in got[4:]:
        b = next(again)
        assert sorted(b) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(b[k], want[k])


def test_pipeline_views_resume_exactly_and_leave_the_main_stream_alone(tmp_path):
    """Webdataset shards through the train iterator: batches before the switch carry no view,
    after it uint8 views of the declared shapes; a resume from a saved state gives the same
    bytes; the main images and captions equal those of an iterator without views."""
    spec_str = test_pipeline.make_shards(tmp_path / "s", 2, 8)
    vs = views.ViewSpec(16, 2, 8, 3, 3)

    def it(v):
        return pipeline.make_train_iterator(test_pipeline.cfg(spec_str), test_pipeline
                                            .FakeTokenizer(), 16, 4, 0, views=v)

    a, plain = it(vs), it(None)
    first = test_pipeline.take(a, 3)
    state = a.get_state()
    rest = test_pipeline.take(a, 2)
    base = test_pipeline.take(plain, 5)
    for step, (b, p) in enumerate(zip(first + rest, base, strict=True)):
        assert sorted(b) == sorted(["image", "text", *vs.fields(step)]), step
        assert b["image"].tobytes() == p["image"].tobytes() and b["text"].tobytes() == p[
            "text"].tobytes()
    assert rest[0][views.LOCAL].shape == (4, 3, 8, 8, 3) and rest[0][views.LOCAL].dtype == \
        np.uint8
    b = it(vs)
    b.set_state(state)
    assert test_pipeline.same(test_pipeline.take(b, 2), rest)
    for x in (a, plain, b):
        x.close()


# -- switch-on and a resume across it ---------------------------------------------------------

@pytest.mark.slow  # an end-to-end run and its resume (about a minute): `-m slow` runs it
def test_terms_switch_on_at_their_step_and_a_resume_across_it_is_exact(tmp_path):
    """4 steps, switch at 0.5: steps 1-2 log no silc / tips part, steps 3-4 do (the batch
    carries the views from then on). The same run resumed from its step-2 checkpoint (the
    later ones deleted) crosses the switch and ends with the same metrics, params and
    average."""
    c = _config(total=4)
    c.checkpoint.every_steps, c.checkpoint.async_save, c.ema.start_step = 1, False, 2
    work = tmp_path / "run"
    train.train(c, str(work), jax.devices()[:1])
    rows = [json.loads(x) for x in open(work / "metrics.jsonl")]
    rows = {r["step"]: r for r in rows if "loss" in r}
    for s in (1, 2):
        assert "loss_silc" not in rows[s] and "loss_tips" not in rows[s], rows[s]
    for s in (3, 4):
        assert rows[s]["loss_silc"] > 0 and rows[s]["loss_tips"] > 0, rows[s]

    again = tmp_path / "again"
    shutil.copytree(work, again)
    for s in (3, 4):
        shutil.rmtree(again / "checkpoints" / str(s))
    train.train(c, str(again), jax.devices()[:1])
    rows2 = {r["step"]: r for r in map(json.loads, open(again / "metrics.jsonl")) if "loss" in r}
    for s in (3, 4):
        for k in ("loss", "loss_clip", "loss_silc", "loss_tips"):
            np.testing.assert_allclose(rows2[s][k], rows[s][k], rtol=1e-6, err_msg=f"{s} {k}")
    setup = train.build(c, jax.devices()[:1])
    for which in ("raw", "ema"):
        a, b = (params.flatten_params(jax.device_get(checkpoint.load_params(
            str(w), setup.abstract_state.params, setup.state_shardings.params, which)))
            for w in (work, again))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{which} {k}")


# -- what it refuses --------------------------------------------------------------------------

@pytest.mark.parametrize("change,needle", [
    ({"ema.decay": 0.0}, "needs the EMA teacher"),
    ({"silc.local_scale": (0.5, 0.2)}, "silc.local_scale"),
    ({"model.name": "tiny-rn"}, "is not a ViT"),
    ({"silc.local_size": 12}, "not a multiple of the patch"),
])
def test_settings_it_cannot_run_are_one_line_errors(change, needle):
    c = _config()
    for key, value in change.items():
        section, name = key.split(".")
        c[section][name] = value
    with pytest.raises(ValueError, match=needle) as e:
        train.build(c, jax.devices()[:1])
    assert "\n" not in str(e.value)
