"""Tests for clip_jax.evaluate: metrics (zero-shot, retrieval), templates and plots.

The linear / few-shot probes are tested in test_eval_probes.py."""

import json
import zlib

import numpy as np
import pytest

from clip_jax import inference
from clip_jax.evaluate import metrics as M
from clip_jax.evaluate import plots, templates


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------
# zero-shot
# ------------------------------------------------------------------------------------------


def test_zeroshot_hand_computed_with_tie():
    cls = np.eye(3, dtype=np.float32)
    img = np.array([[3, 2, 1], [3, 2, 1], [1, 2, 3], [0, 1, 0], [1, 1, 0], [0, 0, 1]],
                   np.float32)
    labels = np.array([0, 1, 0, 1, 0, 2])
    # true-class ranks (pessimistic): 0, 1, 2, 0, 1 (tie 0/1 counts against), 0
    r = M.zeroshot_metrics(img, cls, labels, topk=(1, 2, 3))
    assert r["acc1"] == pytest.approx(3 / 6)
    assert r["acc2"] == pytest.approx(5 / 6)
    assert r["acc3"] == pytest.approx(1.0)
    assert r["per_class_recall"] == pytest.approx([1 / 3, 1 / 2, 1.0])
    assert r["mean_per_class_recall"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert r["num_samples"] == 6
    # argmax, lowest index wins the tie of sample 4
    np.testing.assert_array_equal(r["predictions"], [0, 0, 2, 1, 0, 2])
    np.testing.assert_array_equal(r["confusion_matrix"], [[2, 0, 1], [1, 1, 0], [0, 0, 1]])
    json.dumps(M.jsonable(r))  # JSON-serialisable after conversion


def test_zeroshot_top5_boundary_and_absent_class():
    cls = np.eye(10, dtype=np.float32)
    scores = np.arange(10, 0, -1, dtype=np.float32)  # class i has rank i
    img = np.stack([scores, scores, scores])
    r = M.zeroshot_metrics(img, cls, np.array([4, 5, 0]))
    assert r["acc1"] == pytest.approx(1 / 3)
    assert r["acc5"] == pytest.approx(2 / 3)  # rank 4 is in the top 5, rank 5 is not
    assert r["per_class_recall"][1] is None  # no samples of class 1
    assert r["per_class_recall"][0] == 1.0 and r["per_class_recall"][4] == 0.0
    assert r["mean_per_class_recall"] == pytest.approx(1 / 3)


def test_zeroshot_ties_are_order_independent():
    rng = np.random.default_rng(0)
    # collapsed classifier: every class scores the same -> 0 at every k < C, whatever labels
    img = _unit(rng.normal(size=(50, 8)))
    cls = np.tile(_unit(rng.normal(size=(1, 8))), (5, 1))
    labels = rng.integers(0, 5, 50)
    r = M.zeroshot_metrics(img, cls, labels, topk=(1, 4, 5))
    assert r["acc1"] == 0.0 and r["acc4"] == 0.0 and r["acc5"] == 1.0
    # permuting the classes (and labels consistently) leaves every metric unchanged
    # coarse integer embeddings (many exact ties); no zero rows
    cls = rng.integers(-1, 2, size=(6, 4)).astype(np.float32)
    img = rng.integers(-1, 2, size=(200, 4)).astype(np.float32)
    cls[np.all(cls == 0, axis=1)] = 1.0
    img[np.all(img == 0, axis=1)] = 1.0
    labels = rng.integers(0, 6, 200)
    perm = rng.permutation(6)
    inv = np.argsort(perm)
    a = M.zeroshot_metrics(img, cls, labels, topk=(1, 2, 5))
    b = M.zeroshot_metrics(img, cls[perm], inv[labels], topk=(1, 2, 5))
    for k in ("acc1", "acc2", "acc5", "mean_per_class_recall"):
        assert a[k] == pytest.approx(b[k])


def test_zeroshot_perfect_and_random():
    rng = np.random.default_rng(1)
    cls = _unit(rng.normal(size=(100, 64)))
    labels = rng.integers(0, 100, 2000)
    img = _unit(cls[labels] + 0.01 * rng.normal(size=(2000, 64)))
    r = M.zeroshot_metrics(img, cls, labels)
    assert r["acc1"] == 1.0 and r["acc5"] == 1.0 and r["mean_per_class_recall"] == 1.0
    assert np.trace(r["confusion_matrix"]) == 2000
    # random embeddings: chance level (10 classes: 0.1 top-1, 0.5 top-5)
    cls = _unit(rng.normal(size=(10, 32)))
    img = _unit(rng.normal(size=(20000, 32)))
    labels = rng.integers(0, 10, 20000)
    r = M.zeroshot_metrics(img, cls, labels)
    assert abs(r["acc1"] - 0.1) < 0.015
    assert abs(r["acc5"] - 0.5) < 0.03


def test_zeroshot_chunking_matches(monkeypatch):
    rng = np.random.default_rng(2)
    cls = _unit(rng.normal(size=(7, 16)))
    img = _unit(rng.normal(size=(101, 16)))
    labels = rng.integers(0, 7, 101)
    full = M.zeroshot_metrics(img, cls, labels, topk=(1, 3))
    monkeypatch.setattr(M, "_CHUNK_ELEMS", 20)  # 2 rows per chunk
    chunked = M.zeroshot_metrics(img, cls, labels, topk=(1, 3))
    assert full["acc1"] == chunked["acc1"] and full["acc3"] == chunked["acc3"]
    np.testing.assert_array_equal(full["confusion_matrix"], chunked["confusion_matrix"])


def _fake_encoder(dim=16, calls=None):
    def encode(texts):
        if calls is not None:
            calls.append(list(texts))
        out = []
        for t in texts:
            rng = np.random.default_rng(zlib.crc32(t.encode()))
            out.append(rng.normal(size=dim))
        return _unit(np.stack(out))
    return encode


def test_zeroshot_classifier_ensembling_matches_numpy():
    classes = ["cat", "dog", "sea otter"]
    tmpls = ["a photo of a {}.", "a {} in a video game.", "itap of the {c}.",
             lambda c: f"art of {c}!"]
    calls = []
    clf = inference.build_zeroshot_classifier(_fake_encoder(calls=calls), classes, tmpls,
                                              batch_size=5)
    enc = _fake_encoder()
    manual = []
    for c in classes:
        texts = [f"a photo of a {c}.", f"a {c} in a video game.", f"itap of the {c}.",
                 f"art of {c}!"]
        e = enc(texts)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        manual.append(m / np.linalg.norm(m))
    np.testing.assert_allclose(clf, np.stack(manual), atol=1e-6)
    assert clf.shape == (3, 16) and clf.dtype == np.float32
    # 12 prompts in batches of 5: the last one padded to a full batch
    assert [len(c) for c in calls] == [5, 5, 5]
    assert calls[0][0] == "a photo of a cat." and calls[2][1] == "art of sea otter!"
    # the classifier then classifies the class-name prompts' neighbourhood correctly
    r = M.zeroshot_metrics(clf, clf, np.arange(3), topk=(1,))
    assert r["acc1"] == 1.0


# ------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------


def test_retrieval_hand_computed_multi_caption():
    # score matrix (images x captions) = img @ I; caption -> image: [0, 0, 1, 2, 2]
    S = np.array([[0.1, 0.5, 0.9, 0.2, 0.3],
                  [0.8, 0.1, 0.7, 0.6, 0.9],
                  [0.3, 0.2, 0.1, 0.95, 0.4]], np.float32)
    t2i = np.array([0, 0, 1, 2, 2])
    r = M.retrieval_metrics(S, np.eye(5, dtype=np.float32), t2i, ks=(1, 2, 3), normalize=False)
    # image -> text: best own caption vs other images' captions: ranks 1, 2, 0
    assert r["image_to_text_recall@1"] == pytest.approx(1 / 3)
    assert r["image_to_text_recall@2"] == pytest.approx(2 / 3)
    assert r["image_to_text_recall@3"] == pytest.approx(1.0)
    # text -> image: ranks 2, 0, 1, 0, 1
    assert r["text_to_image_recall@1"] == pytest.approx(2 / 5)
    assert r["text_to_image_recall@2"] == pytest.approx(4 / 5)
    assert r["text_to_image_recall@3"] == pytest.approx(1.0)
    assert r["image_to_text_median_rank"] == 2.0 and r["text_to_image_median_rank"] == 2.0
    assert r["mean_recall"] == pytest.approx(np.mean([1 / 3, 2 / 3, 1, 2 / 5, 4 / 5, 1]))
    assert r["num_images"] == 3 and r["num_texts"] == 5


def test_retrieval_ties_and_image_without_caption():
    e = np.array([[1, 0], [1, 0], [0, 1]], np.float32)  # images 0, 1 identical; 2 has no caption
    txt = np.array([[1, 0], [1, 0]], np.float32)
    r = M.retrieval_metrics(e, txt, np.array([0, 1]), ks=(1, 2))
    assert r["text_to_image_recall@1"] == 0.0 and r["text_to_image_recall@2"] == 1.0
    assert r["image_to_text_recall@1"] == 0.0 and r["image_to_text_recall@2"] == 1.0
    assert r["num_images_with_captions"] == 2


def _reference_retrieval(S, t2i, k):
    """Brute force: explicit per-query loops with the pessimistic tie rule."""
    n_img, n_txt = S.shape
    i2t = []
    for i in range(n_img):
        pos = [c for c in range(n_txt) if t2i[c] == i]
        if not pos:
            continue
        best = max(S[i, c] for c in pos)
        i2t.append(sum(1 for c in range(n_txt) if t2i[c] != i and S[i, c] >= best) < k)
    t2i_hits = [sum(1 for i in range(n_img) if i != t2i[c] and S[i, c] >= S[t2i[c], c]) < k
                for c in range(n_txt)]
    return np.mean(i2t), np.mean(t2i_hits)


def test_retrieval_matches_bruteforce_and_chunking(monkeypatch):
    rng = np.random.default_rng(3)
    # coarse integer-valued embeddings -> many exact ties
    img = rng.integers(-1, 2, size=(12, 3)).astype(np.float32)
    txt = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)
    t2i = rng.integers(0, 12, 30)
    S = img @ txt.T
    for chunk in (None, 7):
        if chunk is not None:
            monkeypatch.setattr(M, "_CHUNK_ELEMS", chunk)
        r = M.retrieval_metrics(img, txt, t2i, ks=(1, 3, 5), normalize=False)
        for k in (1, 3, 5):
            i2t, t2i_ref = _reference_retrieval(S, t2i, k)
            assert r[f"image_to_text_recall@{k}"] == pytest.approx(i2t)
            assert r[f"text_to_image_recall@{k}"] == pytest.approx(t2i_ref)


def test_retrieval_perfect_and_random():
    rng = np.random.default_rng(4)
    img = _unit(rng.normal(size=(200, 64)))
    t2i = np.repeat(np.arange(200), 5)
    txt = _unit(img[t2i] + 0.05 * rng.normal(size=(1000, 64)))
    r = M.retrieval_metrics(img, txt, t2i)
    assert all(r[f"{d}_recall@{k}"] == 1.0 for d in ("image_to_text", "text_to_image")
               for k in (1, 5, 10))
    # "any caption" semantics: only the 3rd caption of each image matches
    txt2 = _unit(rng.normal(size=(1000, 64)))
    txt2[2::5] = img
    r = M.retrieval_metrics(img, txt2, t2i, ks=(1,))
    assert r["image_to_text_recall@1"] == 1.0
    # random: text -> image R@100 of 1000 images = 0.1; image -> text: P(one of the 5 captions
    # among the first 100 of 5000) = 1 - C(4995, 100) / C(5000, 100) ~ 0.0962
    img = _unit(rng.normal(size=(1000, 32)))
    t2i = np.repeat(np.arange(1000), 5)
    txt = _unit(rng.normal(size=(5000, 32)))
    r = M.retrieval_metrics(img, txt, t2i, ks=(1, 100))
    expected_i2t = 1 - np.prod([(4900 - j) / (5000 - j) for j in range(5)])
    assert abs(r["text_to_image_recall@100"] - 0.1) < 0.02
    assert abs(r["image_to_text_recall@100"] - expected_i2t) < 0.03
    assert r["text_to_image_recall@1"] < 0.01


# ------------------------------------------------------------------------------------------
# templates
# ------------------------------------------------------------------------------------------


def test_template_and_class_counts():
    assert len(templates.get_templates("imagenet")) == 80
    assert len(templates.get_templates("imagenet_simple")) == 7
    assert len(templates.get_classnames("imagenet")) == 1000
    assert len(templates.get_classnames("ImageNet-1k")) == 1000
    assert templates.get_classnames("cifar10")[:3] == ["airplane", "automobile", "bird"]
    assert len(templates.get_classnames("cifar10")) == 10
    assert len(templates.get_classnames("cifar100")) == 100
    assert len(set(templates.get_classnames("cifar100"))) == 100
    assert len(templates.get_templates("cifar10")) == len(templates.get_templates("cifar100"))
    assert len(templates.get_templates("cifar10")) == 18
    names = templates.get_classnames("imagenet")
    assert names[0] == "tench" and names[-1] == "toilet paper"
    assert templates.get_templates("imagenet")[0] == "a bad photo of a {}."
    for t in templates.get_templates("imagenet") + templates.get_templates("cifar100"):
        assert t.count("{}") == 1
    lower = templates.get_classnames("imagenet", lowercase=True)
    assert "american robin" in lower and all(n == n.lower() for n in lower)


def test_templates_from_user_lists_and_files(tmp_path):
    assert templates.get_classnames(["A", "b"], lowercase=True) == ["a", "b"]
    txt = tmp_path / "classes.txt"
    txt.write_text("# my classes\nRed Car\n\nblue bike\n")
    assert templates.get_classnames(str(txt)) == ["Red Car", "blue bike"]
    js = tmp_path / "prompts.json"
    js.write_text(json.dumps({"templates": ["a photo of {}.", "a {c}!"]}))
    assert templates.get_templates(str(js)) == ["a photo of {}.", "a {c}!"]
    js2 = tmp_path / "names.json"
    js2.write_text(json.dumps(["x", "y"]))
    assert templates.get_classnames(str(js2)) == ["x", "y"]
    with pytest.raises(ValueError):
        templates.get_classnames("no_such_dataset")
    with pytest.raises(ValueError):
        templates.get_templates(["no placeholder"])


# ------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_training_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(1, 41):
        rec = {"step": step, "loss": 5.0 / step, "lr": 1e-3 * min(1, step / 10),
               "logit_scale": 14.3 + step * 0.1, "samples_per_sec": 1000.0}
        if step % 10 == 0:
            rec["eval/cifar10/top1"] = step / 50
            rec["eval/retrieval/text_to_image_recall@1"] = step / 80
            rec["eval/val_loss"] = 3.0 - step / 40
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"step": 40, "loss": 0.1}))  # resumed run re-logs a step
    lines.append('{"step": 41, "loss"')  # truncated by a crash
    path.write_text("\n".join(lines) + "\n")
    recs = plots.read_metrics_jsonl(str(path))
    assert len(recs) == 40 and recs[-1]["loss"] == 0.1
    # a name of an earlier release (top1) is read as today's (acc1): one curve per metric
    assert recs[-1]["eval/cifar10/acc1"] == 0.8 and "eval/cifar10/top1" not in recs[-1]
    assert recs[-1]["eval/retrieval/text_to_image_recall@1"] == 0.5
    out = tmp_path / "sub" / "curves.png"
    assert plots.plot_training_curves(str(path), str(out)) == str(out)
    assert _is_png(out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError):
        plots.plot_training_curves(str(empty), str(tmp_path / "x.png"))


def test_plot_confusion_matrix(tmp_path):
    cm = np.array([[5, 1, 0], [0, 3, 2], [0, 0, 0]])
    out = tmp_path / "cm.png"
    plots.plot_confusion_matrix(cm, ["cat", "dog", "bird"], str(out))
    assert _is_png(out)
    big = np.random.default_rng(0).integers(0, 5, size=(120, 120))
    out2 = tmp_path / "cm_big.png"
    plots.plot_confusion_matrix(big, None, str(out2), normalize=False)
    assert _is_png(out2)
