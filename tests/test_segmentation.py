"""Patch-level evaluation (clip_jax/evaluate/segmentation.py): the demo's masks are the
pictures' own shapes; the probe's predictions and mIoU equal a NumPy reference written another
way (ridge by least squares on an augmented design, bilinear weights by hand, IoU by loops);
features that encode the label linearly score mIoU 1 and random ones no better than the
majority class; ``--eval segmentation`` on the demo and ``--suite segmentation`` on a fake VOC
folder run through the CLI; bad input is one line, exit 2."""

from __future__ import annotations

import io
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle, cli, inference, models
from clip_jax.data import demo
from clip_jax.evaluate import __main__ as evaluate_main
from clip_jax.evaluate import segmentation as seg


def test_demo_masks_are_the_pictures_shapes():
    held = demo.heldout_pairs(0)
    for split, i in (("train", 3), ("eval", 5), ("eval", 7)):
        _, files = demo.make_sample(split, i, 0, 48, held)
        img, mask = demo.segmentation_sample(split, i, 0, 48, held)
        np.testing.assert_array_equal(img, np.asarray(Image.open(io.BytesIO(files["png"]))))
        meta = json.loads(files["json"])
        cls = 1 + demo.SHAPES.index(meta["shape"])
        assert set(np.unique(mask)) == {0, cls}
        # every labelled pixel lies in an object's box, and each box holds labelled pixels
        ys, xs = np.nonzero(mask)
        inside = np.zeros(len(xs), bool)
        for x0, y0, x1, y1 in (np.asarray(b) * 48 for b in meta["boxes"]):
            box = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            assert box.any()
            inside |= box
        assert inside.all()
        # the labelled pixels differ from the background colour (corner pixel)
        bg = img[0, 0].astype(int)
        assert np.abs(img[ys, xs].astype(int) - bg).max(-1).mean() > 20


def _np_reference(feats, masks, test_feats, test_masks, c, l2, ignore=None):
    """Ridge by lstsq on [X - mean, 1; sqrt(lam) I, 0], bilinear by hand, IoU by loops."""
    n, g, _, d = feats.shape
    s = masks.shape[1]
    p = s // g
    rows, targets = [], []
    for k in range(n):
        for i in range(g):
            for j in range(g):
                block = masks[k, i * p:(i + 1) * p, j * p:(j + 1) * p].ravel()
                block = block[block != ignore] if ignore is not None else block
                if len(block):
                    rows.append(feats[k, i, j])
                    targets.append(np.bincount(block, minlength=c)[:c] / len(block))
    x, y = np.asarray(rows, np.float64), np.asarray(targets)
    xc = x - x.mean(0)
    lam = l2 * np.trace(xc.T @ xc) / d
    a = np.vstack([np.hstack([xc, np.ones((len(x), 1))]),
                   np.hstack([np.sqrt(lam) * np.eye(d), np.zeros((d, 1))])])
    b = np.vstack([y, np.zeros((d, c))])
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    w, bias = sol[:d], sol[d] - x.mean(0) @ sol[:d]
    score = test_feats @ w + bias  # (m, g, g, c)
    coord = (np.arange(s) + 0.5) / p - 0.5  # pixel centre in patch units
    lo = np.clip(np.floor(coord).astype(int), 0, g - 1)
    hi = np.clip(lo + 1, 0, g - 1)
    t = np.clip(coord - np.floor(coord), 0, 1)
    t = np.where(coord < 0, 0, np.where(coord > g - 1, 0, t))
    up = np.zeros((len(score), s, s, c))
    for u in range(s):
        for v in range(s):
            a0, a1, ta = lo[u], hi[u], t[u]
            b0, b1, tb = lo[v], hi[v], t[v]
            up[:, u, v] = ((1 - ta) * (1 - tb) * score[:, a0, b0] + (1 - ta) * tb * score[:, a0, b1]
                           + ta * (1 - tb) * score[:, a1, b0] + ta * tb * score[:, a1, b1])
    pred = up.argmax(-1)
    keep = test_masks != ignore if ignore is not None else np.ones(test_masks.shape, bool)
    ious = []
    for k in range(c):
        tp = np.sum((pred == k) & (test_masks == k) & keep)
        union = np.sum(((pred == k) | (test_masks == k)) & keep)
        if union:
            ious.append(tp / union)
    return pred, float(np.mean(ious)), float(np.mean(pred[keep] == test_masks[keep]))


def _masks(rng, n, s, g, c, columns=False):
    """Random label maps: blobs of random classes, or classes constant per patch column."""
    if columns:
        per = rng.integers(0, c, (n, 1, g))
        return np.repeat(np.repeat(per, s, axis=1), s // g, axis=2).astype(np.uint8)
    out = np.zeros((n, s, s), np.uint8)
    yy, xx = np.mgrid[:s, :s]
    for k in range(n):
        for _ in range(3):
            cy, cx, r = rng.uniform(0, s, 2).tolist() + [rng.uniform(3, s / 3)]
            out[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, c)
    return out


def test_probe_matches_a_numpy_reference_and_its_extremes():
    rng = np.random.default_rng(0)
    c, g, s, d = 4, 4, 16, 6
    masks = _masks(rng, 14, s, g, c)
    masks[0, :4, :4] = 255  # an ignored patch, and ignored pixels
    masks[1, 5, 5] = 255
    y, _ = seg.patch_targets(np.where(masks == 255, 0, masks), g, c)
    feats = (y @ rng.normal(size=(c, d)) + 0.3 * rng.normal(size=(14, g * g, d))).reshape(
        14, g, g, d)
    out = seg.probe([(feats[:10], masks[:10])], [(feats[10:], masks[10:])], c, ignore=255,
                    l2s=(0.01,), val_fraction=0.0)
    pred, miou, acc = _np_reference(feats[:10], masks[:10], feats[10:], masks[10:], c, 0.01,
                                    ignore=255)
    assert out["num_fit"] == 10 and out["num_test"] == 4
    np.testing.assert_allclose(out["miou"], miou, rtol=1e-9)
    np.testing.assert_allclose(out["pixel_accuracy"], acc, rtol=1e-9)
    assert out["confusion_matrix"].sum() == np.sum(masks[10:] != 255)

    # features that encode each patch's label linearly: every pixel right (masks constant per
    # patch column, so bilinear upsampling is exact)
    cols = _masks(rng, 40, s, g, c, columns=True)
    lin = (seg.patch_targets(cols, g, c)[0] @ rng.normal(size=(c, 8))).reshape(40, g, g, 8)
    out = seg.probe([(lin[:30], cols[:30])], [(lin[30:], cols[30:])], c)
    assert out["miou"] == 1.0 and out["pixel_accuracy"] == 1.0
    # random features: no better than always answering the majority class (+ a margin)
    blobs = _masks(rng, 60, s, g, c)
    noise = rng.normal(size=(60, g, g, 16))
    out = seg.probe([(noise[:40], blobs[:40])], [(noise[40:], blobs[40:])], c)
    counts = np.bincount(blobs[40:].ravel(), minlength=c)
    majority_miou = counts.max() / counts.sum() / c  # IoU of the majority class, 0 elsewhere
    assert out["miou"] < majority_miou + 0.1, (out["miou"], majority_miou)

    with pytest.raises(ValueError, match="label 9, outside the 4 classes"):
        seg.probe([(feats[:2], np.full_like(masks[:2], 9))], [], c)


def _bundle(tmp_path, preset="tiny"):
    cfg = models.get_model_config(preset)
    params = jax.jit(lambda k: nn.unbox(models.CLIP(cfg).init(k, *models.init_inputs(cfg)))[
        "params"])(jax.random.key(0))
    return str(bundle.save_bundle(tmp_path / preset, params, cfg)), cfg


def _run(capsys, *argv):
    code = cli.run(evaluate_main.main, list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def test_cli_on_the_demo_and_a_voc_folder(tmp_path, capsys):
    demo.generate(str(tmp_path / "demo"), train_samples=20, eval_samples=12, image_size=32,
                  samples_per_shard=20, workers=1)
    card = str(tmp_path / "demo" / "zeroshot.json")
    path, cfg = _bundle(tmp_path)
    code, out, err = _run(capsys, "--model", path, "--eval", "segmentation", "--dataset", card,
                          "--out", str(tmp_path / "ev"))
    assert code == 0, err
    line = json.loads(out[-1])
    with open(tmp_path / "ev" / "report.json") as f:
        rep = json.load(f)["evals"]["segmentation"]
    assert rep["num_fit"] == 20 and rep["num_test"] == 12 and rep["grid"] == 4
    assert rep["class_names"] == list(demo.SEGMENTATION_CLASSES)
    assert line["eval/segmentation/miou"] == rep["miou"]
    # the same probe from the patch tokens computed here
    model = inference.load(path)
    held = demo.heldout_pairs(0)
    tokens = seg.token_fn(model)

    def split(name, n):
        pairs = [demo.segmentation_sample(name, i, 0, 32, held) for i in range(n)]
        x = inference.preprocess_images([p[0] for p in pairs], 32)
        m = len(pairs)
        pad = np.concatenate([x, np.repeat(x[-1:], model.batch_size - m, 0)])
        return tokens(pad)[:m].reshape(m, 4, 4, -1), np.stack([p[1] for p in pairs])

    again = seg.probe([split("train", 20)], [split("eval", 12)], len(demo.SEGMENTATION_CLASSES))
    np.testing.assert_allclose(again["miou"], rep["miou"], rtol=1e-6)

    # a fake Pascal VOC 2012 devkit folder through the suite
    root = tmp_path / "data" / "voc2012_seg"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(root / d)
    rng = np.random.default_rng(0)
    for split_name, ids in (("train", ["a1", "a2", "a3"]), ("val", ["b1", "b2"])):
        (root / "ImageSets/Segmentation" / f"{split_name}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(
                root / "JPEGImages" / f"{i}.jpg")
            m = _masks(rng, 1, 48, 4, 21)[0][:40]
            m[10, :] = 255
            png = Image.new("P", (48, 40))
            png.putdata(m.ravel().tolist())
            png.putpalette([0] * 768)
            png.save(root / "SegmentationClass" / f"{i}.png")
    code, out, err = _run(capsys, "--model", path, "--suite", "segmentation", "--data-dir",
                          str(tmp_path / "data"), "--out", str(tmp_path / "suite"))
    assert code == 0, err
    with open(tmp_path / "suite" / "report.json") as f:
        rep = json.load(f)
    got = rep["suite"]["voc2012_seg"]["segmentation"]
    direct = seg.evaluate_set(model, seg.voc_set(str(root)))
    assert rep["details"]["voc2012_seg"]["num_fit"] == 3 == direct["num_fit"]
    np.testing.assert_allclose(got["miou"], direct["miou"], rtol=1e-6)
    assert json.loads(out[-1])["eval/voc2012_seg/miou"] == got["miou"]
    # the suite without the folder names how to prepare it
    os.rename(root, tmp_path / "data" / "elsewhere")
    code, out, err = _run(capsys, "--model", path, "--suite", "segmentation", "--data-dir",
                          str(tmp_path / "data"), "--out", str(tmp_path / "suite2"))
    assert code == 2 and "VOCtrainval_11-May-2012.tar" in err[-1], err

    # bad input: one line, exit 2
    strip = tmp_path / "strip.json"
    strip.write_text(json.dumps({**json.load(open(card)), "variant": "strip"}))
    for argv, words in (
            (["--model", path, "--dataset", str(tmp_path)], "give the demo corpus's"),
            (["--model", path, "--dataset", str(strip)], "'strip' variant has no masks")):
        code, _, err = _run(capsys, "--eval", "segmentation", "--out", str(tmp_path / "x"),
                            *argv)
        assert code == 2 and len(err) == 1 and words in err[0], err
    with pytest.raises(ValueError, match="its image tower is 'resnet', not a ViT"):
        seg.check_model(models.get_model_config("tiny-rn"))
