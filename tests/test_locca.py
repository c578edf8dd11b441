"""LocCa's decoder tasks (clip_jax/models/locca.py, clip_jax/objectives/locca.py): the sequences
against a plain-Python construction, the loss against NumPy's cross-entropy on the output tokens
only, the gradient cache and 8 devices equal to 1 device and the whole batch, the task draw, and
greedy box decoding + IoU on hand-set logits."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import gradients, input_pipeline, models, train
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.models import locca
from clip_jax.objectives import locca as locca_objective

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny  # noqa: E402

N, K, STEP, WEIGHT, BINS = 8, 2, 5, 2.0, 16


def _config(accum=1, mesh=(1, 1, 1), prob=0.0):
    c = tiny.get_config()
    c.batch_size, c.accum_steps = N, accum
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.model.vision.layers = c.model.text.layers = 1
    c.model.decoder.layers, c.model.decoder.width = 1, 32
    c.model.decoder.heads, c.model.decoder.mlp_dim = 2, 64
    c.model.decoder.loc_bins = BINS
    c.caption.weight, c.caption.masked_pred_prob, c.caption.max_boxes = WEIGHT, prob, K
    return c


def _host_batch(cfg):
    """Synthetic images; captions and box captions ``[1, tokens..., 2, 0...]`` (pad 0); rows
    0 and 1 have no box, the others one or two."""
    host = next(SyntheticSource(N, cfg.vision.image_size, cfg.text.context_length,
                                cfg.text.vocab_size, 16, 0.5, 0))
    rng = np.random.default_rng(0)
    length = cfg.text.context_length

    def caption(n):
        row = np.zeros((length,), np.int32)
        row[0], row[n + 1] = 1, 2
        row[1:n + 1] = rng.integers(3, cfg.text.vocab_size, n)
        return row

    host["text"] = np.stack([caption(int(n)) for n in rng.integers(2, 13, N)])
    host["box_text"] = np.stack([[caption(int(n)) for n in rng.integers(1, 6, K)]
                                 for _ in range(N)])
    lo = rng.uniform(0, 0.5, (N, K, 2))
    host["boxes"] = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, (N, K, 2))], -1).astype(
        np.float32)
    host["box_valid"] = np.zeros((N, K), bool)
    host["box_valid"][2:, 0] = True
    host["box_valid"][5:, 1] = True
    return host


def _run(c, devices):
    setup = train.build(c, devices)
    params = train.init_state(setup).params
    batch = input_pipeline.to_global(setup.batch_sharding, _host_batch(setup.model_cfg))
    with jax.set_mesh(setup.mesh):
        r = jax.jit(lambda p, b: gradients.loss_and_grads(setup, p, b, STEP))(params, batch)
    return setup, jax.device_get(params), jax.device_get(r)


@pytest.fixture(scope="module")
def one_device():
    return _run(_config(), jax.devices()[:1])


def _python_sequence(task, text, box, box_text, vocab, bins, pad=0):
    """One example's sequence and scored target positions, built token by token."""
    length = len(text)
    content = lambda row: [int(t) for t in row if t != pad]
    coords = [vocab + 3 + min(int(v * bins), bins - 1) for v in box]
    if task == locca.CAP:
        seq, out = [vocab] + list(text[:-1]), None
    elif task == locca.AREF:
        expr = content(box_text)[:length - 5]
        seq = [vocab + 1] + expr + coords
        out = set(range(1 + len(expr), 5 + len(expr)))
    else:
        seq = [vocab + 2] + coords + content(box_text)[:length - 5]
        out = set(range(5, len(seq)))
    seq = (seq + [pad] * length)[:length]
    scored = [p for p in range(1, length) if (seq[p] != pad if out is None else p in out)]
    return seq, scored


def test_sequences_equal_a_token_by_token_construction():
    rng = np.random.default_rng(1)
    n, length, vocab = 12, 14, 50
    text = np.zeros((n, length), np.int32)
    box_text = np.zeros((n, length), np.int32)
    for i in range(n):
        a, b = rng.integers(1, length), rng.integers(1, length + 3)
        text[i, :a] = rng.integers(1, vocab, a)
        box_text[i, :min(b, length)] = rng.integers(1, vocab, min(b, length))
    box = rng.uniform(0, 1, (n, 4)).astype(np.float32)
    box[0] = [0.0, 0.999, 1.0, 0.5]  # the edges: bins 0 and B - 1
    task = np.arange(n) % 3
    ids, w = jax.device_get(locca.sequences(task, text, box, box_text, 0, vocab, BINS))
    for i in range(n):
        seq, scored = _python_sequence(task[i], text[i], box[i], box_text[i], vocab, BINS)
        assert ids[i].tolist() == seq, i
        assert np.flatnonzero(w[i]).tolist() == [p - 1 for p in scored], i


def _numpy_locca_loss(logits, ids, scored):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    total = count = 0.0
    for i, positions in enumerate(scored):
        for p in positions:  # target ids[p] predicted at position p - 1
            total -= logp[i, p - 1, ids[i][p]]
            count += 1
    return total / count


def test_the_loss_is_numpys_cross_entropy_on_the_output_tokens_only(one_device):
    setup, params, r = one_device
    host = _host_batch(setup.model_cfg)
    rng = jax.random.fold_in(jax.random.key(setup.config.seed), STEP)
    task, pick = jax.device_get(locca.draw(rng, setup.objective.terms[-1].probs,
                                           jnp.asarray(host["box_valid"])))
    assert (task[:2] == locca.CAP).all()  # no box: captioning
    assert {int(t) for t in task[2:]} > {locca.CAP} or len(set(task.tolist())) > 1
    assert all(host["box_valid"][i, pick[i]] for i in range(2, N))
    vocab = setup.model_cfg.text.vocab_size
    seqs, scored = zip(*[_python_sequence(task[i], host["text"][i], host["boxes"][i, pick[i]],
                                          host["box_text"][i, pick[i]], vocab, BINS)
                         for i in range(N)], strict=True)
    pixels = input_pipeline.device_pixels(jnp.asarray(host["image"]))
    _, logits = jax.jit(lambda p, x, t, d: setup.model.apply(
        {"params": p}, x, t, decoder_ids=d, method=models.CLIP.caption_forward))(
        setup.objective.model_params(params), pixels, jnp.asarray(host["text"]),
        jnp.asarray(np.array(seqs, np.int32)))
    assert logits.shape[-1] == vocab + 3 + BINS
    want = _numpy_locca_loss(logits, seqs, scored)
    np.testing.assert_allclose(r.parts["caption"], want, rtol=1e-5)
    for t, name in enumerate(locca.TASKS):  # each task's own mean, reported beside the loss
        mine = [i for i in range(N) if task[i] == t]
        got = r.parts[f"caption_{name}"]
        if mine:
            np.testing.assert_allclose(got, _numpy_locca_loss(
                logits[np.array(mine)], [seqs[i] for i in mine], [scored[i] for i in mine]),
                rtol=1e-5, err_msg=name)
        else:
            assert got == 0, name
    np.testing.assert_allclose(r.loss, r.parts["clip"] + WEIGHT * r.parts["caption"], rtol=1e-6)


def _assert_same(got, want, rtol=2e-3):
    np.testing.assert_allclose(got.loss, want.loss, rtol=2e-5)
    for k in want.parts:
        np.testing.assert_allclose(got.parts[k], want.parts[k], rtol=2e-5, err_msg=k)
    flat = jax.tree_util.tree_leaves_with_path(want.grads)
    for (path, a), b in zip(flat, jax.tree.leaves(got.grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=2e-6, err_msg=str(path))


@pytest.mark.slow  # the 8-device test below runs the cache too
def test_the_gradient_cache_equals_the_global_batch(one_device):
    _, _, got = _run(_config(accum=2), jax.devices()[:1])
    _assert_same(got, one_device[2])


def test_8_devices_with_the_cache_equal_1_device(one_device):
    _, _, got = _run(_config(accum=2, mesh=(2, 2, 2)), jax.devices()[:8])
    _assert_same(got, one_device[2])


def test_cappa_applies_only_to_captioning_rows_and_the_draw_is_the_steps():
    c = _config(prob=0.5)
    setup = train.build(c, jax.devices()[:1])
    host = _host_batch(setup.model_cfg)
    rng = jax.random.fold_in(jax.random.key(0), STEP)
    term = setup.objective.terms[-1]
    assert isinstance(term, locca_objective.LocCa)
    a = term.forward_inputs(jax.tree.map(jnp.asarray, host), rng)
    b = term.forward_inputs(jax.tree.map(jnp.asarray, host), rng)
    assert all((np.asarray(a[k]) == np.asarray(b[k])).all() for k in a)
    cap = np.asarray(a["decoder_ids"])[:, 0] == setup.model_cfg.text.vocab_size + locca.CAP
    assert not np.asarray(a["parallel"])[~cap].any()
    # over many draws, the three tasks come about equally often among rows with a box
    valid = jnp.ones((3000, 1), bool)
    task, _ = locca.draw(jax.random.key(7), (1 / 3,) * 3, valid)
    freq = np.bincount(np.asarray(task), minlength=3) / 3000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.03)


def test_greedy_box_decoding_and_iou_on_hand_set_logits():
    vocab, bins, length = 20, 10, 12
    box_text = np.array([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                         [8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    prompt, plen = locca.aref_prompts(box_text, 0, vocab)
    assert np.asarray(plen).tolist() == [4, 2]
    truth = np.array([[1, 2, 6, 8], [0, 0, 9, 3]])  # bins each row's model "knows"

    def logits_fn(ids):  # a text token first; among coordinates the true bin only when the
        ids = np.asarray(ids)  # coordinates before it were written where they belong
        out = np.zeros((2, length, vocab + 3 + bins), np.float32)
        out[:, :, 3] = 50.0
        out[:, :, vocab + 3] = 5.0  # bin 0 otherwise
        for i in range(2):
            j = int((ids[i] >= vocab + 3).sum())  # coordinates written so far
            assert (ids[i, int(plen[i]):int(plen[i]) + j] == vocab + 3 + truth[i, :j]).all()
            if j < 4:
                out[i, int(plen[i]) + j - 1, vocab + 3 + truth[i, j]] = 10.0
        return jnp.asarray(out)

    got = np.asarray(locca.decode_boxes(logits_fn, prompt, plen, vocab, bins))
    np.testing.assert_allclose(got, (truth + 0.5) / bins)

    def np_iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])
        return ix * iy / (area(a) + area(b) - ix * iy)

    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (50, 4)), rng.uniform(0, 1, (50, 4))
    a[:, 2:] += a[:, :2]
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
    np.testing.assert_allclose(np.asarray(locca.iou(a, b)),
                               [np_iou(x, y) for x, y in zip(a, b, strict=True)], rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("probs", [(1, -2, 0), (0, 0, 0), (0.5, 0.5), ("a", 1, 1)])
def test_bad_task_probs_are_one_line(probs):
    from clip_jax import config as config_lib
    c = _config()
    c.caption.task_probs = probs
    with pytest.raises(ValueError, match="caption.task_probs") as e:
        config_lib.validate(c)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_locca_run_trains_on_the_demos_boxes(tmp_path):
    """train.train end to end: the demo's boxes through the pipeline (batch fields placed on
    the mesh), the three tasks, a finite loss; synthetic data (no boxes) is refused in one
    line."""
    import json

    c = _config(accum=2, mesh=(2, 1, 1))
    c.total_steps, c.log_every_steps = 2, 1
    c.data.source, c.data.demo, c.data.demo_train_samples = "webdataset", str(
        tmp_path / "demo"), 64
    c.data.tokenizer, c.data.tokenizer_vocab_size, c.data.workers = "train", 300, 0
    c.eval.at_end = False
    last = train.train(c, str(tmp_path / "run"), devices=jax.devices()[:2])
    assert np.isfinite(last["loss"]) and np.isfinite(last["loss_caption"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["decoder"]["loc_bins"] == BINS
    c.data.source = "synthetic"
    with pytest.raises(ValueError, match="synthetic"):
        train.train(c, str(tmp_path / "run2"), devices=jax.devices()[:2])
