"""The captioning decoder (:mod:`clip_jax.models.decoder`) and its objective
(:mod:`clip_jax.objectives.captioning`): sharded over 8 devices it equals 1 device, the gradient
cache equals the global batch, the loss equals NumPy's cross-entropy of the logits with padding
left out, CapPa's draw is exact and deterministic and its rows really are parallel, greedy and
beam search equal their definitions, ``predict --caption`` prints a trained model's caption, and
open_clip CoCa's wiring (``decoder.input='text'``) trains sharded with the gradient cache.
"""

from __future__ import annotations

import itertools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from clip_jax import bundle, cli, gradients, inference, input_pipeline, models, predict, train
from clip_jax.data.hf_tokenizer import train_tokenizer
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.interop import hf as interop_hf
from clip_jax.interop import open_clip as interop_open_clip
from clip_jax.models import decoder as decoder_lib
from clip_jax.objectives import captioning

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny  # noqa: E402

N, STEP, WEIGHT, PROB = 8, 3, 2.0, 0.5


def _config(accum=1, mesh=(1, 1, 1)):
    c = tiny.get_config()
    c.batch_size, c.accum_steps = N, accum
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.model.vision.layers = c.model.text.layers = 1
    c.model.decoder.layers, c.model.decoder.width = 1, 32
    c.model.decoder.heads, c.model.decoder.mlp_dim = 2, 64
    c.caption.weight, c.caption.masked_pred_prob = WEIGHT, PROB
    return c


def _host_batch(cfg):
    """Synthetic images; captions ``[1, tokens..., 2, 0...]`` of lengths 2..12 (pad id 0)."""
    host = next(SyntheticSource(N, cfg.vision.image_size, cfg.text.context_length,
                                cfg.text.vocab_size, 16, 0.5, 0))
    rng = np.random.default_rng(0)
    text = np.zeros((N, cfg.text.context_length), np.int32)
    for i, n in enumerate(rng.integers(2, 13, N)):
        text[i, 0], text[i, n + 1] = 1, 2
        text[i, 1:n + 1] = rng.integers(3, cfg.text.vocab_size, n)
    host["text"] = text
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


def _assert_same(got, want, rtol=2e-3):
    np.testing.assert_allclose(got.loss, want.loss, rtol=2e-5)
    assert sorted(got.parts) == sorted(want.parts) == ["caption", "clip"]
    for k in want.parts:
        np.testing.assert_allclose(got.parts[k], want.parts[k], rtol=2e-5, err_msg=k)
    flat = jax.tree_util.tree_leaves_with_path(want.grads)
    assert len(flat) == len(jax.tree.leaves(got.grads))
    for (path, a), b in zip(flat, jax.tree.leaves(got.grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=2e-6, err_msg=str(path))


def test_the_decoder_on_8_devices_with_the_cache_equals_1_device_and_shards_like_the_towers(
        one_device):
    """data 2 x fsdp 2 x tensor 2 with the gradient cache (``accum_steps=2``: each micro-batch's
    caption NLL travels with its embeddings) against one device and the whole batch at once:
    loss, parts, every gradient (the decoder's included); the decoder's kernels are split over
    fsdp and tensor."""
    setup, _, got = _run(_config(accum=2, mesh=(2, 2, 2)), jax.devices()[:8])
    _assert_same(got, one_device[2])
    specs = jax.tree.map(lambda s: s.spec, setup.state_shardings.params["text_decoder"])
    assert specs["cross_attn_0"]["attn"]["kernel_q"] == jax.sharding.PartitionSpec(
        "fsdp", "tensor", None)
    assert specs["resblocks_0"]["mlp"]["c_fc"]["kernel"] == jax.sharding.PartitionSpec(
        "fsdp", "tensor")
    assert np.abs(one_device[2].grads["text_decoder"]["mask_embedding"]).max() > 0  # CapPa ran


@pytest.mark.slow
@pytest.mark.parametrize("accum, mesh, n", [(1, (2, 2, 2), 8), (2, (1, 2, 1), 2)])
def test_the_mesh_alone_and_the_cache_alone_equal_1_device(one_device, accum, mesh, n):
    _, _, got = _run(_config(accum=accum, mesh=mesh), jax.devices()[:n])
    _assert_same(got, one_device[2])


def _numpy_caption_loss(logits, text, pad_id=0):
    """Mean over the non-pad targets ``text[:, 1:]`` of -log softmax(logits), float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    labels = np.asarray(text)[:, 1:]
    nll = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    keep = labels != pad_id
    return nll[keep].sum() / keep.sum()


def test_the_teacher_forced_loss_is_numpys_cross_entropy_without_padding(one_device):
    """The step's ``caption`` part equals NumPy's cross-entropy of the model's logits for the
    same CapPa draw, pad targets left out; the loss is clip + weight x caption."""
    setup, params, r = one_device
    host = _host_batch(setup.model_cfg)
    assert (host["text"][:, 1:] == 0).sum() > 0  # there is padding to leave out
    rng = jax.random.fold_in(jax.random.key(setup.config.seed), STEP)
    parallel = captioning.parallel_rows(rng, N, PROB)
    pixels = input_pipeline.device_pixels(jnp.asarray(host["image"]))
    _, logits = jax.jit(lambda p, x, t, par: setup.model.apply(
        {"params": p}, x, t, parallel=par, method=models.CLIP.caption_forward))(
        setup.objective.model_params(params), pixels, jnp.asarray(host["text"]), parallel)
    want = _numpy_caption_loss(logits, host["text"])
    np.testing.assert_allclose(r.parts["caption"], want, rtol=1e-5)
    np.testing.assert_allclose(r.loss, r.parts["clip"] + WEIGHT * r.parts["caption"], rtol=1e-6)


def _tiny_decoder_model(vocab_size=512):
    cfg = models.get_model_config("tiny").replace(
        vision={"layers": 1}, text={"layers": 1, "vocab_size": vocab_size},
        decoder={"layers": 1, "width": 32, "heads": 2, "mlp_dim": 64})
    model = models.CLIP(cfg)
    params = jax.jit(lambda k: nn.unbox(model.init(k, *models.init_inputs(cfg)))["params"])(
        jax.random.key(1))
    return cfg, model, params


def test_cappa_draws_an_exact_fraction_deterministically_and_its_rows_are_parallel():
    keys = [jax.random.fold_in(jax.random.key(0), s) for s in range(4)]
    draws = [np.asarray(captioning.parallel_rows(k, 64, 0.75)) for k in keys]
    assert all(d.sum() == 48 for d in draws)  # round(0.75 * 64), exactly
    np.testing.assert_array_equal(draws[0], np.asarray(captioning.parallel_rows(keys[0], 64,
                                                                                0.75)))
    assert len({d.tobytes() for d in draws}) == 4  # each step its own rows
    assert not np.asarray(captioning.parallel_rows(keys[0], 64, 0.0)).any()
    # a parallel row sees only mask embeddings: its logits do not depend on the ids; a causal
    # row's logits at position i do not depend on the ids after i
    cfg, model, params = _tiny_decoder_model()
    images, _ = models.init_inputs(cfg, 2)
    images = jax.random.normal(jax.random.key(2), images.shape)
    _, tokens = jax.jit(lambda x: model.apply({"params": params}, x,
                                              method=models.CLIP.encode_image_tokens))(images)
    ids = jax.random.randint(jax.random.key(3), (2, 10), 3, cfg.text.vocab_size)
    other = ids.at[:, 5:].set(7)
    parallel = jnp.array([True, False])
    fwd = jax.jit(lambda x: model.apply({"params": params}, tokens, x, parallel,
                                        method=models.CLIP.decode))
    dec = lambda x: np.asarray(fwd(x))
    a, b = dec(ids), dec(other)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a[1, :5], b[1, :5], rtol=1e-6, atol=1e-6)
    assert np.abs(a[1, 5:] - b[1, 5:]).max() > 1e-3
    all_ids = np.asarray(dec(ids.at[0].set(9)))  # a parallel row ignores even position 0
    np.testing.assert_allclose(all_ids[0], a[0], rtol=1e-6, atol=1e-6)


def _reference_greedy(logits_fn, prompt, length, eot, pad):
    """Step by step in NumPy: at step i the argmax of a full-sequence forward at position
    i - 1, a row's tokens after its end token set to pad."""
    b, p = prompt.shape
    ids = np.full((b, length), pad, np.int32)
    ids[:, :p] = prompt
    done = np.zeros(b, bool)
    for i in range(p, length):
        nxt = np.argmax(np.asarray(logits_fn(ids))[:, i - 1], axis=-1)
        ids[:, i] = np.where(done, pad, nxt)
        done |= ids[:, i] == eot
    return ids


def test_greedy_decoding_is_the_step_by_step_argmax_of_the_full_forward():
    cfg, model, params = _tiny_decoder_model()
    images = jax.random.normal(jax.random.key(4), models.init_inputs(cfg, 3)[0].shape)
    _, tokens = jax.jit(lambda x: model.apply({"params": params}, x,
                                              method=models.CLIP.encode_image_tokens))(images)
    fwd = jax.jit(lambda x: model.apply({"params": params}, tokens, x,
                                        method=models.CLIP.decode))
    prompt, length = np.ones((3, 1), np.int32), 8
    ref = _reference_greedy(fwd, prompt, length, -1, 0)
    eot = int(ref[0, 3])  # what row 0 emits third: it stops there, padded after
    ref = _reference_greedy(fwd, prompt, length, eot, 0)
    got = jax.jit(lambda: decoder_lib.greedy(fwd, prompt, length, eot, 0))()
    np.testing.assert_array_equal(np.asarray(got), ref)
    assert (ref[0, 4:] == 0).all() and not (ref[1:, 1:] == 0).all()
    one = jax.jit(lambda: decoder_lib.beam_search(fwd, prompt, length, eot, 0, beams=1)[0])()
    np.testing.assert_array_equal(np.asarray(one), ref)  # one beam is greedy


def test_beam_search_with_enough_beams_is_the_exhaustive_search():
    """A bigram model over 5 tokens, 3 generated: 25 beams keep every prefix, so the result is
    the best of all 125 sequences (a sequence ends at its end token, padded after)."""
    rng = np.random.default_rng(0)
    v, length, eot, pad = 5, 4, 4, 0
    w, u = rng.normal(size=(v, v)) * 2, rng.normal(size=(length, v))
    logits_fn = lambda ids: jnp.asarray(w)[ids] + jnp.asarray(u)[None]
    prompt = np.asarray([[1], [2]], np.int32)
    got, score = decoder_lib.beam_search(logits_fn, prompt, length, eot, pad, beams=25)
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(w)[:, None] + u[None], -1))  # [prev, t]
    for b, p in enumerate(prompt[:, 0]):
        best = (-np.inf, None)
        for seq in itertools.product(range(v), repeat=length - 1):
            ids, s, done = [int(p)], 0.0, False
            for t, tok in enumerate(seq):
                if done:
                    if tok != pad:
                        break
                else:
                    s += logp[ids[-1], t, tok]
                    done = tok == eot
                ids.append(tok)
            else:
                best = max(best, (s, ids))
        np.testing.assert_allclose(float(score[b]), best[0], rtol=1e-5)
        assert list(np.asarray(got[b])) == best[1]


def test_predict_caption_prints_a_trained_models_caption(tmp_path, capsys):
    """A tiny model whose decoder learnt one image's caption, bundled with a BPE fitted on a few
    captions: ``predict --caption`` prints it (greedy and beam search); a model without a
    decoder is one line, exit 2; the open_clip and HF exports refuse the decoder, writing
    nothing."""
    pytest.importorskip("tokenizers")
    captions = ["a red star", "a blue circle", "two green squares", "a red square"] * 8
    tok = train_tokenizer(captions, 300, tmp_path / "tok")
    cfg, model, params = _tiny_decoder_model(tok.vocab_size)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8))
    img.save(tmp_path / "x.png")
    pixels = jnp.asarray(inference.preprocess_images([img], cfg.vision.image_size))
    text = jnp.asarray(tok(["a red star"], cfg.text.context_length))
    opt = optax.adam(1e-2)

    def loss(p):
        _, logits = model.apply({"params": p}, pixels, text, method=models.CLIP.caption_forward)
        inputs, labels, w = decoder_lib.caption_targets(text, 0)
        return jnp.sum(decoder_lib.token_nll(logits, labels) * w) / jnp.sum(w)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(60):
        params, state = step(params, state)
    assert float(loss(params)) < 0.05
    path = bundle.save_bundle(tmp_path / "model", params, cfg, tok)
    for extra in ([], ["--beams", "3"]):
        code = cli.run(predict.main, ["--model", str(path), "--image", str(tmp_path / "x.png"),
                                      "--caption", *extra])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0 and out == [f"{tmp_path / 'x.png'}\ta red star"], out
    plain = cfg.replace(decoder=None)
    p2 = {k: v for k, v in params.items() if k != "text_decoder"}
    path2 = bundle.save_bundle(tmp_path / "plain", p2, plain, tok)
    code = cli.run(predict.main, ["--model", str(path2), "--image", str(tmp_path / "x.png"),
                                  "--caption"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no captioning decoder" in err[0], err
    # open_clip holds CoCa's wiring only (tests/test_coca_interop.py), HF no decoder
    for fn in (interop_open_clip.export_open_clip, interop_hf.export_hf):
        with pytest.raises(ValueError, match="captioning decoder"):
            fn(tmp_path / "out", params, cfg)
    assert not (tmp_path / "out").exists()



# open_clip CoCa's wiring (coca_ViT-B-32.json at tiny's size): the attentional pooler, the text
# tower's appended class token, the decoder reading the text tower's tokens
COCA_JSON = {
    "embed_dim": 32, "custom_text": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "patch_size": 8, "head_width": 24,
                   "attentional_pool": True, "attn_pooler_queries": 5, "attn_pooler_heads": 4,
                   "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1},
}


def test_a_coca_wired_model_trains_sharded_with_the_cache_on_its_own_logits(tmp_path):
    """data 2 x fsdp 2 x tensor 2 with the gradient cache: the step's caption part is NumPy's
    cross-entropy of the model's own teacher-forced logits (its forward on the whole batch on one
    device), every CoCa parameter gets a gradient and shards like the towers; CapPa's masking
    is refused (the decoder has no embeddings to mask)."""
    import json

    path = tmp_path / "coca.json"
    path.write_text(json.dumps(COCA_JSON))
    c = tiny.get_config()
    c.batch_size, c.accum_steps = N, 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.model.open_clip_config = str(path)
    c.caption.weight, c.caption.masked_pred_prob = WEIGHT, 0.0
    setup, params, r = _run(c, jax.devices()[:8])
    cfg = setup.model_cfg
    assert cfg.decoder.input == "text" and cfg.text.embed_cls and cfg.vision.attn_pooler_queries
    host = _host_batch(cfg)
    pixels = input_pipeline.device_pixels(jnp.asarray(host["image"]))
    _, logits = jax.jit(lambda p, x, t: setup.model.apply(
        {"params": p}, x, t, method=models.CLIP.caption_forward))(
        jax.device_put(setup.objective.model_params(params), jax.devices()[0]), pixels,
        jnp.asarray(host["text"]))
    np.testing.assert_allclose(r.parts["caption"], _numpy_caption_loss(logits, host["text"]),
                               rtol=1e-5)
    g = r.grads
    for leaf in (g["visual"]["attn_pool"]["query"], g["text"]["cls_emb"],
                 g["text_decoder"]["cross_attn_0"]["attn"]["kernel_kv"]):
        assert np.abs(leaf).max() > 0
    specs = jax.tree.map(lambda s: s.spec, setup.state_shardings.params)
    P = jax.sharding.PartitionSpec
    assert specs["visual"]["attn_pool"]["attn"]["kernel_kv"] == P("fsdp", None, "tensor", None)
    assert specs["text_decoder"]["resblocks_0"]["mlp"]["c_fc"]["kernel"] == P("fsdp", "tensor")
    assert "text_decoder" in specs and "token_embedding" not in specs["text_decoder"]
    c.caption.masked_pred_prob, c.accum_steps = 0.5, 1
    c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
    with pytest.raises(ValueError, match="masked_pred_prob"):
        train.build(c, jax.devices()[:1])
