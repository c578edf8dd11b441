"""Tests for the offline demo corpus (clip_jax/data/demo.py)."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter, defaultdict

import ml_collections
import numpy as np
import pytest
from PIL import Image

from clip_jax.data import demo, prepare

N_TRAIN, N_EVAL, PER_SHARD, SIZE, SEED = 300, 60, 100, 64, 3


def _read_split(root: str, split: str) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over the split's shards, in order."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for name in sorted(os.listdir(os.path.join(root, split))):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(root, split, name)) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples[key][ext] = tar.extractfile(m).read()
    return dict(samples)


def _expand(pattern: str) -> list[str]:
    m = re.fullmatch(r"(.*)\{(\d+)\.\.(\d+)\}(.*)", pattern)
    assert m, pattern
    width = len(m.group(2))
    return [f"{m.group(1)}{i:0{width}d}{m.group(4)}"
            for i in range(int(m.group(2)), int(m.group(3)) + 1)]


def _all_files(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "a")
    info = demo.generate(root, train_samples=N_TRAIN, eval_samples=N_EVAL, image_size=SIZE,
                         seed=SEED, samples_per_shard=PER_SHARD, workers=1)
    return root, info


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def test_layout_and_zeroshot_json(corpus):
    root, info = corpus
    with open(os.path.join(root, "zeroshot.json")) as f:
        assert json.load(f) == info
    assert info["num_train"] == N_TRAIN and info["num_eval"] == N_EVAL and info["seed"] == SEED
    assert len(info["templates"]) >= 3 and all("{}" in t for t in info["templates"])
    assert len(info["classes"]) == len(set(info["classes"])) == len(info["heldout"]) == 12
    assert info["chance"] == pytest.approx(1 / 12)
    for split, total in (("train", N_TRAIN), ("eval", N_EVAL)):
        shards = _expand(info[f"{split}_shards"])
        assert shards == [f"{split}/{k:05d}.tar" for k in range(-(-total // PER_SHARD))]
        with open(os.path.join(root, split, "sizes.json")) as f:
            sizes = json.load(f)
        assert sorted(sizes) == [os.path.basename(s) for s in shards]
        assert sum(sizes.values()) == total
        for s in shards:
            with tarfile.open(os.path.join(root, s)) as tar:
                keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
            assert len(keys) == sizes[os.path.basename(s)]
        assert not [n for n in os.listdir(os.path.join(root, split)) if ".tmp" in n]


def test_deterministic_and_independent_of_workers(corpus, tmp_path):
    root, info = corpus
    again = str(tmp_path / "b")
    info2 = demo.generate(again, train_samples=N_TRAIN, eval_samples=N_EVAL, image_size=SIZE,
                          seed=SEED, samples_per_shard=PER_SHARD, workers=2)
    assert info2 == info
    assert _all_files(again) == _all_files(root)  # byte-identical, 1 or 2 processes
    other = str(tmp_path / "c")
    demo.generate(other, train_samples=20, eval_samples=12, image_size=SIZE, seed=SEED + 1,
                  samples_per_shard=PER_SHARD, workers=1)
    a = _read_split(root, "train")["train-00000000"]
    b = _read_split(other, "train")["train-00000000"]
    assert a["png"] != b["png"]


def test_heldout_pairs_never_in_training(corpus):
    root, info = corpus
    held = {(h["colour"], h["shape"]) for h in info["heldout"]}
    train = _read_split(root, "train")
    assert len(train) == N_TRAIN
    seen = set()
    for key, files in train.items():
        assert set(files) == {"png", "txt", "json"}, key
        attrs = json.loads(files["json"])
        pair = (attrs["colour"], attrs["shape"])
        assert pair not in held, (key, pair)
        seen.add(pair)
        text = files["txt"].decode()
        for colour, shape in held:
            both = _mentions(text, colour) and (
                _mentions(text, shape) or _mentions(text, demo.PLURALS[shape]))
            assert not both, (key, text)
    # Training still covers (nearly) every other pair, so every colour and shape is learnable.
    assert len(seen) >= 20


def test_heldout_design_defeats_single_attribute_models(corpus):
    _, info = corpus
    held = [(h["colour"], h["shape"]) for h in info["heldout"]]
    assert len(set(held)) == 12
    assert info["classes"] == [f"{c} {s}" for c, s in held]
    colours, shapes = Counter(c for c, _ in held), Counter(s for _, s in held)
    assert set(colours) == set(demo.COLOURS) and set(colours.values()) == {2}
    assert set(shapes) == set(demo.SHAPES) and set(shapes.values()) == {2}
    assert info["single_attribute_ceiling"] == 0.5
    assert demo.heldout_pairs(info["seed"]) == held
    assert demo.heldout_pairs(info["seed"] + 1) != held  # the seed picks the held-out set


def test_eval_labels(corpus):
    root, info = corpus
    held = {(h["colour"], h["shape"]) for h in info["heldout"]}
    ev = _read_split(root, "eval")
    assert len(ev) == N_EVAL
    labels = Counter()
    by_colour = defaultdict(Counter)
    for key, files in ev.items():
        assert set(files) == {"png", "txt", "json", "cls"}, key
        attrs = json.loads(files["json"])
        label = int(files["cls"].decode())
        assert (attrs["colour"], attrs["shape"]) in held
        assert info["classes"][label] == f"{attrs['colour']} {attrs['shape']}"
        assert files["txt"].decode().strip()
        labels[label] += 1
        by_colour[attrs["colour"]][label] += 1
    assert labels == Counter({k: N_EVAL // 12 for k in range(12)})  # balanced
    # Best colour-only guess (majority label per colour) is right at most half the time.
    best = sum(max(c.values()) for c in by_colour.values())
    assert best <= 0.5 * N_EVAL


def test_captions_varied_and_consistent(corpus):
    root, _ = corpus
    train = _read_split(root, "train")
    texts = [f["txt"].decode() for f in train.values()]
    assert all(t.strip() for t in texts)
    assert len(set(texts)) >= 0.8 * len(texts)
    assert max(len(t.split()) for t in texts) <= 24  # fits a 32-token text tower
    forms = Counter()
    for files in train.values():
        attrs, text = json.loads(files["json"]), files["txt"].decode()
        words = set(re.findall(r"[a-z]+", text))
        assert words & set(demo.COLOURS) <= {attrs["colour"]}, text
        assert words & (set(demo.SHAPES) | set(demo.PLURALS.values())) <= {
            attrs["shape"], demo.PLURALS[attrs["shape"]]}, text
        forms["colour" if attrs["colour"] in words else "no colour"] += 1
        forms["starts with a/an" if re.match(r"an? ", text) else "other start"] += 1
        forms["period"] += text.endswith(".")
    # Some captions omit attributes, word order and phrasing vary.
    assert 0 < forms["no colour"] < 0.3 * len(texts)
    assert 0.1 * len(texts) < forms["other start"] < 0.9 * len(texts)
    assert 0.2 * len(texts) < forms["period"] < 0.8 * len(texts)


def test_images_decode(corpus, tmp_path):
    root, _ = corpus
    for split in ("train", "eval"):
        for files in list(_read_split(root, split).values())[:20]:
            img = Image.open(io.BytesIO(files["png"]))
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (SIZE, SIZE)
            colours = np.unique(np.asarray(img).reshape(-1, 3), axis=0)
            assert len(colours) > 2  # background + object, anti-aliased
    small = str(tmp_path / "small")
    demo.generate(small, train_samples=5, eval_samples=3, image_size=32, seed=0, workers=1)
    for files in _read_split(small, "eval").values():
        assert Image.open(io.BytesIO(files["png"])).size == (32, 32)


def test_load_or_generate_and_stale_shards(tmp_path):
    root = str(tmp_path / "d")
    kw = dict(train_samples=30, eval_samples=12, image_size=32, seed=0, samples_per_shard=10,
              workers=1)
    info = demo.load_or_generate(root, **kw)
    assert len(os.listdir(os.path.join(root, "train"))) == 3 + 1  # shards + sizes.json
    path = os.path.join(root, "train", "00000.tar")
    mtime = os.stat(path).st_mtime_ns
    assert demo.load_or_generate(root, **kw) == info
    assert os.stat(path).st_mtime_ns == mtime  # reused, not regenerated
    info2 = demo.load_or_generate(root, **{**kw, "train_samples": 15})
    assert info2["num_train"] == 15 and info2["train_shards"] == "train/{00000..00001}.tar"
    assert sorted(os.listdir(os.path.join(root, "train"))) == [
        "00000.tar", "00001.tar", "sizes.json"]


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    demo.main(["--out", out, "--train-samples", "4", "--eval-samples", "12", "--image-size",
               "32", "--seed", "5", "--workers", "1"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["chance"] == pytest.approx(1 / 12)
    with open(os.path.join(out, "zeroshot.json")) as f:
        assert json.load(f)["seed"] == 5


def test_webdataset_reads_shards(corpus):
    wds = pytest.importorskip("webdataset")
    root, info = corpus
    urls = [os.path.join(root, s) for s in _expand(info["eval_shards"])]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "txt", "cls")
    rows = list(ds)
    assert len(rows) == N_EVAL
    img, text, cls = rows[0]
    assert img.size == (SIZE, SIZE) and isinstance(text, str) and int(cls) == 0


def test_generation_and_the_tokenizer_fit_say_what_they_do(corpus, tmp_path, capsys):
    """Off a terminal: a progress line per ~10% of the images, then one closing line; the
    tokenizer fit: one line on stdout with its seconds."""
    root = str(tmp_path / "talk")
    demo.generate(root, train_samples=100, eval_samples=12, image_size=32, seed=0,
                  samples_per_shard=10, workers=1, verbose=True)
    err = capsys.readouterr().err.splitlines()
    steps = [line for line in err if re.fullmatch(
        r"demo corpus: [\d,]+/112 images \(\d+%\) \d+ s(, ~\d+ s left)?", line)]
    assert 8 <= len(steps) <= 10 and len(err) == len(steps) + 1, err
    pcts = [int(re.search(r"\((\d+)%\)", line).group(1)) for line in steps]
    assert pcts == sorted(pcts) and len(set(p // 10 for p in pcts)) == len(pcts)
    assert re.fullmatch(r"demo corpus: 100 train / 12 eval samples \(10 \+ 2 shards, 32px\) "
                        rf"in {re.escape(root)} with 1 worker\(s\): [\d.]+ s", err[-1])

    corpus_root, info = corpus
    data = ml_collections.ConfigDict({
        "source": "webdataset", "tokenizer": "train", "tokenizer_vocab_size": 300,
        "train": os.path.join(corpus_root, info["train_shards"])})
    tok = prepare.prepare_tokenizer(data, str(tmp_path / "run"), 1000)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and re.fullmatch(
        rf"tokenizer: fitted a byte-level BPE of {tok.vocab_size} tokens on {N_TRAIN} captions "
        rf"in [\d.]+ s \({re.escape(str(tmp_path / 'run' / 'tokenizer'))}\)", out[0]), out
    prepare.prepare_tokenizer(data, str(tmp_path / "run"), 1000)  # reused: nothing to say
    assert capsys.readouterr().out == ""


def test_the_run_seed_does_not_regenerate_the_demo_corpus(tmp_path):
    """``config.seed`` changes a run's initialisation and data order, not its corpus: runs of
    several seeds (concurrent ones too) read the one corpus of ``data.demo_seed``, and a new
    ``data.demo_seed`` makes another."""
    from clip_jax import config as config_lib
    from clip_jax.data import prepare as prepare_lib

    def prepare(seed, demo_seed, workdir):
        c = config_lib.base_config()
        c.model.name = "tiny"
        c.data.source, c.data.demo = "webdataset", str(tmp_path / "demo")
        c.data.demo_train_samples, c.data.tokenizer = 300, "train"
        c.seed, c.data.demo_seed = seed, demo_seed
        prepare_lib.prepare_run(c, config_lib.resolve_model_config(c.model),
                                str(tmp_path / workdir))
        with open(tmp_path / "demo" / "zeroshot.json") as f:
            return json.load(f)["seed"], os.path.getmtime(tmp_path / "demo" / "zeroshot.json")

    seed, made = prepare(0, 0, "a")
    assert (seed, prepare(5, 0, "b")) == (0, (0, made))  # not rewritten for seed 5
    assert prepare(5, 1, "c")[0] == 1


def test_strip_variant_is_deterministic_and_its_label_is_cut_off_by_a_square_crop(tmp_path):
    """The ``strip`` corpus (NaFlex's demo): the same arguments write the same bytes, and the
    object the label names lies wholly outside the square centre crop (evaluation) and the fixed
    pipeline's training crops, which hold the background alone; the whole strip holds it."""
    from clip_jax.data import demo_strip, transforms
    from clip_jax.data.demo_render import COLOURS

    kw = dict(train_samples=6, eval_samples=12, image_size=32, seed=1, samples_per_shard=4,
              workers=1, variant="strip")
    info = demo.generate(str(tmp_path / "a"), **kw)
    demo.generate(str(tmp_path / "b"), **kw)
    assert _all_files(str(tmp_path / "a")) == _all_files(str(tmp_path / "b"))
    assert info["variant"] == "strip" and "variant" not in demo.generate(
        str(tmp_path / "plain"), train_samples=2, eval_samples=2, image_size=32, workers=1)
    heldout = [(p["colour"], p["shape"]) for p in info["heldout"]]
    ends, rng = Counter(), np.random.default_rng(0)
    for split in ("train", "eval"):
        for files in _read_split(str(tmp_path / "a"), split).values():
            attrs = json.loads(files["json"])
            img = Image.open(io.BytesIO(files["png"]))
            a = np.asarray(img).astype(int)
            assert sorted(img.size) == [32, 128]
            if split == "eval":  # the label is the held-out pair drawn at the end
                assert heldout[int(files["cls"])] == (attrs["colour"], attrs["shape"])
            ends[attrs["end"]] += 1
            bg = a[0, 0] if attrs["end"] not in ("left", "top") else a[-1, -1]
            crops = [transforms.resize_center_crop(img, 32)] + [
                transforms.random_resized_crop(img, 32, rng) for _ in range(3)]
            for crop in crops:  # background alone (within interpolation rounding)
                assert np.abs(crop.astype(int) - bg).max() <= 1
            left, top, right, bottom = demo_strip.tile_box(attrs, 32)
            rest = a.copy()
            rest[top:bottom, left:right] = bg
            assert (rest == bg).all()  # everything but the end tile is background
            tile = a[top:bottom, left:right]
            assert (np.abs(tile - bg).max(-1) > 40).sum() > 50  # the object is in the tile,
            dist = np.abs(tile - np.asarray(COLOURS[attrs["colour"]]))
            assert (dist.max(-1) < 40).sum() >= 5  # in its colour
    assert set(ends) == {"left", "right", "top", "bottom"}
    with pytest.raises(ValueError, match="variant 'wide'"):
        demo.generate(str(tmp_path / "c"), train_samples=1, eval_samples=1, variant="wide")
