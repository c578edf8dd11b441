"""Referring-expression accuracy (clip_jax/evaluate/referring.py): a tiny LocCa decoder that
learnt the boxes of a few demo pictures from their expressions scores 1.0 through
``python -m clip_jax.evaluate --eval referring``; the report's accuracy and mean IoU equal a
NumPy IoU of the boxes it decoded against the demo's own; a decoder without coordinate tokens
is one line, exit 2."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_jax import bundle, cli, inference, models
from clip_jax.data import demo
from clip_jax.data.hf_tokenizer import train_tokenizer
from clip_jax.data.tario import iterate_samples
from clip_jax.evaluate import __main__ as evaluate_main
from clip_jax.evaluate import referring
from clip_jax.models import decoder as decoder_lib
from clip_jax.models import locca

BINS = 32


def _np_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])
    return ix * iy / (area(a) + area(b) - ix * iy)


def test_a_decoder_that_learnt_the_boxes_scores_one(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    info = demo.generate(str(tmp_path / "demo"), train_samples=12, eval_samples=6,
                         image_size=32, samples_per_shard=12, workers=1)
    card = str(tmp_path / "demo" / "zeroshot.json")
    images, exprs, truth, skipped = referring.queries(card, 32)
    assert skipped == 0 and len(exprs) >= 6
    # the eval images are square: the boxes are the demo's own, as written in KEY.json

    written = [b for _k, _i, _c, ex in iterate_samples(
        os.path.join(str(tmp_path / "demo"), info["eval_shards"]), decode=False,
        extra_fields=("json",)) for b in json.loads(ex["json"])["boxes"]]
    np.testing.assert_allclose(truth, written, atol=1e-6)

    tok = train_tokenizer(exprs * 4 + ["a red star"] * 4, 300, tmp_path / "tok")
    cfg = models.get_model_config("tiny").replace(
        vision={"layers": 1}, text={"layers": 1, "vocab_size": tok.vocab_size},
        decoder={"layers": 1, "width": 64, "heads": 2, "mlp_dim": 128, "loc_bins": BINS})
    model = models.CLIP(cfg)
    params = jax.jit(lambda k: nn.unbox(model.init(k, *models.init_inputs(cfg)))["params"])(
        jax.random.key(1))
    pixels = jnp.asarray(inference.preprocess_images(list(images), 32))
    text = jnp.asarray(tok(exprs, cfg.text.context_length))
    task = jnp.full((len(exprs),), locca.AREF)
    ids, w = locca.sequences(task, text, jnp.asarray(truth), text, 0, tok.vocab_size, BINS)
    opt = optax.adam(1e-2)

    def loss(p):
        _, logits = model.apply({"params": p}, pixels, text, decoder_ids=ids,
                                method=models.CLIP.caption_forward)
        return jnp.sum(decoder_lib.token_nll(logits, ids[:, 1:]) * w) / jnp.sum(w)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(50):
        params, state = step(params, state)
    assert float(loss(params)) < 0.05
    path = bundle.save_bundle(tmp_path / "model", params, cfg, tok)

    code = cli.run(evaluate_main.main, ["--model", str(path), "--eval", "referring",
                                        "--dataset", card, "--out", str(tmp_path / "ev")])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and line["eval/referring/accuracy@0.5"] == 1.0, line
    with open(tmp_path / "ev" / "report.json") as f:
        rep = json.load(f)["evals"]["referring"]
    # the IoU of the decoded boxes, computed again in NumPy, against the demo's boxes
    m = inference.load(str(path))
    got = referring.captioning.Captioner(m).refer(images, m.tokenize(exprs))
    np.testing.assert_allclose(got[:len(rep["examples"])],
                               [e["predicted"] for e in rep["examples"]], atol=1e-3)
    ious = [_np_iou(a, b) for a, b in zip(got, truth, strict=True)]
    assert rep["queries"] == len(exprs)
    np.testing.assert_allclose(rep["mean_iou"], np.mean(ious), rtol=1e-5)
    assert rep["accuracy@0.5"] == np.mean(np.asarray(ious) > 0.5) == 1.0

    # a decoder without coordinate tokens: one line, exit 2
    plain = cfg.replace(decoder=dict(cfg.decoder.__dict__, loc_bins=0))
    p2 = jax.jit(lambda k: nn.unbox(models.CLIP(plain).init(k, *models.init_inputs(plain)))[
        "params"])(jax.random.key(0))
    path2 = bundle.save_bundle(tmp_path / "plain", p2, plain, tok)
    code = cli.run(evaluate_main.main, ["--model", str(path2), "--eval", "referring",
                                        "--dataset", card, "--out", str(tmp_path / "ev2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "loc_bins" in err[0], err
