"""The short Python API: clip_jax.list_models / create_model / load, and clip_jax.sources.

Every model source kind loads to the same embeddings; SigLIP's zero-shot is a per-class sigmoid
with the learned bias; create_model's params and preprocess equal the model's own init and the
evaluation transform.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

import clip_jax
from clip_jax import bundle, models, sources
from clip_jax import params as params_lib
from clip_jax.data.transforms import eval_transform
from clip_jax.interop import hf, open_clip

TINY = models.get_model_config("tiny")


def _perturbed(cfg, seed):
    p = nn.meta.unbox(models.CLIP(cfg).init(jax.random.key(seed),
                                            *models.init_inputs(cfg))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x))
                        .astype(np.float32), p)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 7 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_list_models_and_create_model_from_a_preset():
    names = clip_jax.list_models()
    assert {"ViT-B-32", "ViT-L-14", "tiny"} <= set(names)
    model, params, preprocess, tokenizer = clip_jax.create_model("tiny", seed=3)
    assert tokenizer is None
    # unboxed, and the model's own initialisation for that seed
    assert not any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    want = nn.meta.unbox(model.init(jax.random.key(3), *models.init_inputs(TINY))["params"])
    for k, v in params_lib.flatten_params(want).items():
        np.testing.assert_allclose(params_lib.flatten_params(params)[k], v, rtol=1e-6,
                                   atol=1e-8, err_msg=k)  # jitted init: ulp-level differences
    pics = _images()
    x = preprocess(pics)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1], eval_transform(Image.fromarray(pics[1]), 32))
    img = model.apply({"params": params}, x, method=models.CLIP.encode_image)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1, rtol=1e-5)
    # config overrides and an open_clip JSON work like presets; unknown names say so
    _, p2, _, _ = clip_jax.create_model("tiny", scan=True)
    assert params_lib.is_stacked(params_lib.flatten_params(p2))
    with pytest.raises(ValueError, match="'ViT-Q-99' is neither a model name"):
        clip_jax.create_model("ViT-Q-99")


def test_every_source_kind_loads_the_same_model(tmp_path, bpe_vocab_path):
    from clip_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(f"clip_bpe:{bpe_vocab_path}")
    cfg = TINY.replace(text=dataclasses.replace(TINY.text, vocab_size=tok.vocab_size))
    params = _perturbed(cfg, seed=1)
    bundle.save_bundle(tmp_path / "bundle", params, cfg, tok)
    hf.export_hf(tmp_path / "hf", params, cfg, tok)
    open_clip.export_open_clip(tmp_path / "oc", params, cfg, tok)
    paths = {"bundle": tmp_path / "bundle", "hf": tmp_path / "hf", "open_clip": tmp_path / "oc",
             "open_clip file": tmp_path / "oc" / open_clip.OPEN_CLIP_WEIGHTS}
    texts = ["a photo of a cat", "two dogs"]
    ref = None
    for name, path in paths.items():
        assert sources.kind_of(path) == name.split()[0]
        m = clip_jax.load(path, batch_size=8)
        emb = (m.encode_image(_images()), m.encode_text(texts))
        if ref is None:
            ref = emb
        np.testing.assert_allclose(emb[0], ref[0], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(emb[1], ref[1], atol=1e-6, err_msg=name)
        model, p, preprocess, t = clip_jax.create_model(str(path))
        assert t is not None, name
        np.testing.assert_allclose(
            model.apply({"params": p}, preprocess(_images()), method=models.CLIP.encode_image),
            ref[0], atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="not a weights file"):
        sources.kind_of(tmp_path / "bundle" / "config.json")
    with pytest.raises(FileNotFoundError, match="no model weights found"):
        sources.kind_of(tmp_path)


def test_siglip_zero_shot_is_a_sigmoid_with_the_learned_bias(tmp_path, bpe_vocab_path):
    from clip_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(f"clip_bpe:{bpe_vocab_path}")
    cfg = TINY.replace(init_logit_bias=-10.0,
                       text=dataclasses.replace(TINY.text, vocab_size=tok.vocab_size))
    params = _perturbed(cfg, seed=2)
    bundle.save_bundle(tmp_path / "b", params, cfg, tok)
    m = clip_jax.load(tmp_path / "b")
    classes = ["cat", "dog", "zebra"]
    probs = m.zero_shot(_images(), classes)
    img = m.encode_image(_images())
    txt = m.encode_text([f"a photo of a {c}." for c in classes])
    logits = math.exp(float(params["logit_scale"])) * img @ txt.T + float(params["logit_bias"])
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-7)
    assert not np.allclose(probs.sum(1), 1)  # independent per class, not a softmax


@pytest.mark.parametrize("kind", ["bundle", "open_clip"])
def test_init_from_any_source_starts_training_from_its_params(tmp_path, kind):
    from clip_jax import config as config_lib
    from clip_jax import train

    params = _perturbed(TINY, seed=4)
    if kind == "bundle":
        path = bundle.save_bundle(tmp_path / "b", params, TINY)
    else:
        path = open_clip.export_open_clip(tmp_path / "oc", params, TINY)
    config = config_lib.base_config()  # tiny, synthetic
    config.mesh.data, config.mesh.fsdp = 2, 4  # the params land sharded over fsdp
    config.checkpoint.init_from = str(path)
    setup = train.build(config)
    state = train.init_from(setup, config)
    got = params_lib.flatten_params(jax.device_get(state.params))
    for k, v in params_lib.flatten_params(params).items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    for k, x in params_lib.flatten_params(state.params).items():
        want = params_lib.flatten_params(setup.state_shardings.params)[k]
        assert x.sharding.is_equivalent_to(want, x.ndim), k


@pytest.mark.parametrize("pool", ["argmax", "first", "last-bidirectional"])
def test_encode_text_trims_padding_only_where_it_is_exact(pool):
    """A causal tower is encoded without the padding after the longest row's pooled token
    (fewer positions, one compile per power-of-two length); the embeddings equal the full
    context's computed directly with ``model.apply``. A bidirectional tower keeps every position."""
    text = dict(pool="last", causal=False) if pool.startswith("last") else dict(pool=pool)
    cfg = TINY.replace(text=text)
    params = _perturbed(cfg, 5)
    enc = clip_jax.InferenceModel(cfg, params, batch_size=8)
    ctx, rng = cfg.text.context_length, np.random.default_rng(0)
    ids = np.zeros((6, ctx), np.int32)
    for i, n in enumerate((3, 5, 2, 6, 4, 3)):  # sot ... eot (the largest id), then padding
        ids[i, 0], ids[i, n] = 1, cfg.text.vocab_size - 1
        ids[i, 1:n] = rng.integers(2, cfg.text.vocab_size - 2, n - 1)
    if pool.startswith("last"):
        ids[:, ctx // 2:] = rng.integers(2, 50, (6, ctx - ctx // 2))  # padding that matters
    want = models.CLIP(cfg).apply({"params": params}, ids, method=models.CLIP.encode_text)
    assert enc._trim(ids).shape[1] == {"argmax": 8, "first": 8}.get(pool, ctx)
    np.testing.assert_allclose(enc.encode_text(ids), np.asarray(want), rtol=1e-5, atol=1e-6)
