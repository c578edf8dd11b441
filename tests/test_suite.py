"""The evaluation suite: every registry entry checked against tensorflow-datasets' own feature
definitions (class counts, label names and order, splits, templates); datasets prepared offline
by tfds's real EuroSAT and CLEVR builders (their download replaced by local files in the
archives' layout) read back with VTAB's split sizes, the tfds label order and derived labels;
the metrics against hand computations; and ``python -m clip_jax.evaluate --suite clip_paper``
over a directory holding those two tfds datasets, a folder dataset and missing ones."""

from __future__ import annotations

import difflib
import glob
import hashlib
import io
import json
import os
import re
import types
from unittest import mock

import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle as bundle_lib
from clip_jax import cli, inference, models
from clip_jax.data import demo
from clip_jax.data import tokenizer as tok_lib
from clip_jax.data.transforms import CLIP_MEAN, CLIP_STD, normalize, resize_center_crop
from clip_jax.evaluate import datasets, metrics, registry, suite, suite_data
from clip_jax.evaluate import templates as templates_lib

tfds = pytest.importorskip("tensorflow_datasets")

# VTAB's derived tasks (task_adaptation/data/{clevr,kitti}.py _TASK_DICT num_classes).
DERIVED_CLASSES = {"clevr_count": 8, "clevr_distance": 6, "kitti_distance": 4,
                   "imagenet_a": 200, "imagenet_r": 200}
# Caltech-101 classes the paper renames (tfds folder name -> the paper's name).
CALTECH_RENAMED = {"car_side": "side of a car", "cougar_body": "body of a cougar cat",
                   "crocodile_head": "head of a  crocodile", "faces": "off-center face",
                   "faces_easy": "centered face", "flamingo_head": "head of a flamingo",
                   "snoopy": "snoopy (cartoon beagle)"}
EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]  # the archive's folders
EUROSAT_PAPER = {"AnnualCrop": "annual crop land", "Forest": "forest",
                 "HerbaceousVegetation": "brushland or shrubland", "Highway": "highway or road",
                 "Industrial": "industrial buildings or commercial buildings",
                 "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
                 "Residential": "residential buildings or homes or apartments",
                 "River": "river", "SeaLake": "lake or sea"}


def _builder(entry):  # the builder's code and metadata, no data
    return tfds.builder(entry.tfds, data_dir=os.path.join(os.devnull, "none"))


def _norm(s: str) -> str:
    s = s.split("/", 2)[-1] if s.startswith("/") else s
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def _indices(expr: str, n: int) -> dict[str, set[int]]:
    """{split: example indices} an expression takes with every split of n examples."""
    out: dict[str, set[int]] = {}
    resolved = suite_data.resolve_split(expr, {"train": n, "validation": n, "test": n})
    for part in resolved.split("+"):
        name, _, rng = part.partition("[")
        lo, _, hi = rng.rstrip("]").partition(":")
        out.setdefault(name, set()).update(range(int(lo or 0), int(hi or n)))
    return out


@pytest.mark.parametrize("name", sorted(registry.ENTRIES))
def test_registry_entry_matches_the_tfds_builder(name):
    entry = registry.ENTRIES[name]
    assert entry.metric in registry.METRICS and entry.task in (
        "classification", "retrieval", "segmentation")
    for t in suite_data.templates(entry):
        assert t.count("{}") == 1 and t.format("x") != t
    # Test, train and validation take disjoint examples (with splits of any size).
    # (a segmentation folder's splits are its devkit's list files, disjoint by construction)
    parts = [_indices(e, 1000) for e in (entry.test, entry.train, entry.val)
             if e and entry.task != "segmentation"]
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            for split in parts[a].keys() & parts[b].keys():
                assert not parts[a][split] & parts[b][split], (name, split)
    if entry.task == "retrieval" or entry.tfds is None:
        assert entry.tfds is None or entry.tfds == "coco_captions"  # its code needs TensorFlow
        if entry.task == "classification":  # the demo's names come with its folder
            assert entry.source == "folder" and (suite_data.class_names(entry) or name == "demo")
        return
    features = _builder(entry).info.features
    names = suite_data.class_names(entry)
    if entry.label in DERIVED_CLASSES:
        assert len(names) == DERIVED_CLASSES[entry.label]
        return
    label = features["objects"]["label"] if entry.label == "voc_objects" else features[
        entry.label]
    if names is None:  # the builder's own names
        names = label.names
    assert len(names) == label.num_classes
    if entry.classes != "imagenet":  # ImageNet has two "missile" and two "sunglasses" classes
        assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", [n for n, e in registry.ENTRIES.items()
                                  if e.tfds and e.label in ("label", "voc_objects")
                                  and e.classes not in ("", "imagenet")])
def test_class_names_follow_the_tfds_label_order(name):
    """Each name is closest (difflib) to tfds's label name at its own index, except the names
    the paper rewords; tfds builders without shipped names (CIFAR, STL-10, ...) are checked
    where their data is (tests/test_tfds.py reads CIFAR-10's from the archive)."""
    entry = registry.ENTRIES[name]
    feat = _builder(entry).info.features
    tfds_names = (feat["labels"] if entry.label == "voc_objects" else feat["label"]).names
    if tfds_names == [str(i) for i in range(len(tfds_names))]:
        pytest.skip(f"{entry.tfds} ships no label names (they come with its download)")
    ours = suite_data.class_names(entry)
    for i, (mine, theirs) in enumerate(zip(ours, tfds_names)):
        if name == "caltech101" and theirs in CALTECH_RENAMED:
            assert mine == CALTECH_RENAMED[theirs]
            continue
        if name == "flowers" and i == 92:  # tfds "ball moss", the paper "air plant"
            continue
        score = [difflib.SequenceMatcher(None, _norm(mine), _norm(t)).ratio()
                 for t in tfds_names]
        assert int(np.argmax(score)) == i, (i, mine, theirs)


def test_imagenet_subsets_and_suites():
    names = templates_lib.get_classnames("imagenet")
    wnids = (tfds.core.tfds_path("datasets/imagenet2012/labels.txt")).read_text().split()
    for sub in ("imagenet_a", "imagenet_r"):
        entry = registry.ENTRIES[sub]
        got = suite_data.class_names(entry)
        idx = suite_data._imagenet_subset(entry)
        assert len(set(idx)) == 200 and idx == sorted(idx) and got == [names[i] for i in idx]
        assert [wnids[i] for i in idx] == sorted(getattr(
            suite_data.classnames, sub.upper() + "_WNIDS"))
    assert len(registry.SUITES["vtab"]) == 19
    for members in registry.SUITES.values():
        assert set(members) <= set(registry.ENTRIES)
    assert suite.resolve("robustness,mnist", ["mnist", "imagenet_a"]) == ["imagenet_a", "mnist"]
    with pytest.raises(ValueError, match="unknown suite or dataset 'nope'"):
        suite.resolve("clip_paper,nope")
    with pytest.raises(ValueError, match=r"not in the suite"):
        suite.resolve("robustness", ["mnist"])


def test_classification_metrics_against_a_confusion_matrix():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 0]])  # rows: true class
    labels = np.repeat(np.arange(3), confusion.sum(1))
    preds = np.concatenate([np.repeat(np.arange(3), row) for row in confusion])
    m = metrics.classification_metrics(np.eye(3)[preds], labels)
    assert m["acc1"] == pytest.approx(5 / 9)
    assert m["mean_per_class_recall"] == pytest.approx((3 / 4 + 2 / 4 + 0 / 1) / 3)
    assert "acc5" not in m  # fewer than 5 classes
    # Six classes: the true class placed at a chosen rank per sample (0 = top).
    ranks = np.array([0, 4, 5, 2, 0, 5, 1])
    labels6 = np.array([0, 1, 2, 3, 4, 5, 5])
    scores = np.zeros((7, 6))
    for i, (y, r) in enumerate(zip(labels6, ranks)):
        order = [c for c in range(6) if c != y]
        order.insert(r, y)
        scores[i, order] = np.arange(6)[::-1]
    m6 = metrics.classification_metrics(scores, labels6)
    assert m6["acc1"] == pytest.approx(2 / 7) and m6["acc5"] == pytest.approx(5 / 7)
    assert m6["mean_per_class_recall"] == pytest.approx((1 + 0 + 0 + 0 + 1 + 0) / 6)


def test_derived_labels_follow_vtab():
    img = Image.new("RGB", (40, 20))

    def kitti(types_, z):
        loc = np.zeros((len(z), 3), np.float32)
        loc[:, 2] = z
        return suite_data.kitti_distance({"objects": {"type": np.array(types_, np.int64),
                                                      "location": loc}}, img)[0][1]

    # type: 0 Car, 1 Van, 2 Truck, 3 Pedestrian; bins < 8 m, 8-20 m, > 20 m, no vehicle
    assert [kitti([3, 0], [5, 30]), kitti([1], [10]), kitti([2, 0], [7.9, 50]),
            kitti([3], [3]), kitti([], [])] == [2, 1, 0, 3, 3]
    coords = np.array([[0, 0, 9.7], [0, 0, 8.2], [0, 0, 12.0]], np.float32)
    ex = {"objects": {"pixel_coords": coords, "size": np.zeros(3)}}
    assert suite_data.clevr_distance(ex, img)[0][1] == 1  # closest 8.2: in (8, 8.5]
    assert suite_data.clevr_count(ex, img)[0][1] == 0  # 3 objects -> label 0 ("3")
    boxes = np.array([[0.0, 0.0, 0.5, 0.25], [0.5, 0.5, 1.0, 1.0]], np.float32)
    crops = suite_data.voc_objects({"objects": {"bbox": boxes, "label": np.array([4, 11])}},
                                   img)
    assert [(c.size, y) for c, y in crops] == [((10, 10), 4), ((20, 10), 11)]


# ---------------------------------------------------------------------------------------------
# Datasets prepared by tfds's own builders, offline


_GFILE = types.SimpleNamespace(io=types.SimpleNamespace(gfile=types.SimpleNamespace(
    glob=glob.glob, listdir=os.listdir, exists=os.path.exists, GFile=open)))


def _grey(v: int) -> Image.Image:
    return Image.fromarray(np.full((24, 24, 3), v, np.uint8))


def _prepare_eurosat(src: str, data_dir: str, per_class: int) -> None:
    """EuroSAT's archive layout (2750/<Class>/<Class>_<n>.jpg), grey level 20 * class."""
    from tensorflow_datasets.image_classification import eurosat

    for c, folder in enumerate(EUROSAT):
        os.makedirs(os.path.join(src, "2750", folder))
        for i in range(per_class):
            _grey(20 * c).save(os.path.join(src, "2750", folder, f"{folder}_{i}.png"))

    class Eurosat(eurosat.Eurosat, skip_registration=True):
        name = "eurosat"

    with mock.patch.object(eurosat, "tf", _GFILE), mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", lambda self, url: src):
        Eurosat(config="rgb", data_dir=data_dir, file_format="array_record"
                ).download_and_prepare()


def _prepare_clevr(src: str, data_dir: str, counts: dict[str, list[int]]) -> None:
    """CLEVR_v1.0/{images,scenes,questions}; an image's grey level is 20 * its object count."""
    from tensorflow_datasets.datasets.clevr import clevr_dataset_builder as clevr

    root = os.path.join(src, "CLEVR_v1.0")
    for split, ns in counts.items():
        os.makedirs(os.path.join(root, "images", split))
        for d in ("scenes", "questions"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        scenes = []
        for i, n in enumerate(ns):
            _grey(20 * n).save(os.path.join(root, "images", split, f"CLEVR_{split}_{i:06d}.png"))
            scenes.append({"objects": [{
                "color": "red", "material": "rubber", "shape": "cube", "size": "large",
                "rotation": 0.0, "pixel_coords": [1.0, 2.0, 9.0 + j],
                "3d_coords": [0.0, 0.0, 0.0]} for j in range(n)]})
        with open(os.path.join(root, "scenes", f"CLEVR_{split}_scenes.json"), "w") as f:
            json.dump({"scenes": scenes}, f)
        with open(os.path.join(root, "questions", f"CLEVR_{split}_questions.json"), "w") as f:
            json.dump({"questions": []}, f)

    class Clevr(clevr.Builder, skip_registration=True):
        name = "clevr"

        @classmethod
        def _get_pkg_dir_path(cls):
            return clevr.Builder._get_pkg_dir_path()

    with mock.patch.object(clevr, "tf", _GFILE), mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", lambda self, url: src):
        Clevr(data_dir=data_dir, file_format="array_record").download_and_prepare()


def _write_folder(root: str, classes: list[str], per_split: dict[str, int]) -> None:
    for split, n in per_split.items():
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name))
            for i in range(n):
                _grey(60 + 120 * c).save(os.path.join(root, split, name, f"{i}.png"))


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    data = str(root / "data")
    _prepare_eurosat(str(root / "eurosat_src"), data, per_class=10)  # 100: VTAB 60 / 20 / 20
    _prepare_clevr(str(root / "clevr_src"), data, {
        "train": list(range(3, 11)) * 3, "val": list(range(3, 11)), "test": [3, 3]})
    # A folder dataset: class folders by name, no val/ (carved from train).
    _write_folder(os.path.join(data, "rendered_sst2"), ["negative", "positive"],
                  {"train": 6, "test": 3})
    return data


def _grey_level(img: np.ndarray) -> int:
    return int(round(float(img.mean()) / 20.0))


def test_tfds_builders_read_with_vtab_splits_and_label_order(suite_dir):
    eurosat = registry.ENTRIES["eurosat"]
    sizes = {}
    for which in ("train", "val", "test"):
        ds = suite_data.labelled_split(eurosat, suite_dir, which)
        items = list(ds.samples(16))
        sizes[which] = len(items)
        for img, y in items:  # the image's folder, by its grey level, names its class
            assert ds.class_names[y] == EUROSAT_PAPER[EUROSAT[_grey_level(img)]]
    assert sizes == {"train": 60, "val": 20, "test": 20}  # train[:60%], [60%:80%], [80%:]
    clevr = registry.ENTRIES["clevr_count"]
    ds = suite_data.labelled_split(clevr, suite_dir, "test")  # VTAB: CLEVR's validation
    items = list(ds.samples(16))
    assert len(items) == 8 and ds.name == "clevr_count:validation"
    assert sorted(ds.class_names[y] for _, y in items) == sorted(map(str, range(3, 11)))
    assert all(ds.class_names[y] == str(_grey_level(img)) for img, y in items)
    train = list(suite_data.labelled_split(clevr, suite_dir, "train").samples(16))
    assert len(train) == 21 and len(list(suite_data.labelled_split(
        clevr, suite_dir, "val").samples(16))) == 3  # train[:90%] of 24, then the rest


def test_folder_classes_by_index_by_name_or_sorted(tmp_path):
    _write_folder(str(tmp_path / "idx"), ["1", "0"], {"test": 1})
    names, label_of = suite_data._folder_classes(str(tmp_path / "idx" / "test"), ["a", "b"])
    assert label_of == {"0": 0, "1": 1}
    _write_folder(str(tmp_path / "nm"), ["Lake_or_sea", "river"], {"test": 1})
    _, label_of = suite_data._folder_classes(str(tmp_path / "nm" / "test"),
                                             ["river", "x", "lake or sea"])
    assert label_of == {"Lake_or_sea": 2, "river": 0}
    _, label_of = suite_data._folder_classes(str(tmp_path / "nm" / "test"), ["p", "q"])
    assert label_of == {"Lake_or_sea": 0, "river": 1}  # ImageFolder's sorted order
    with pytest.raises(ValueError, match="neither label indices nor class names"):
        suite_data._folder_classes(str(tmp_path / "nm" / "test"), ["p", "q", "r"])


class GreyEncoder:
    """Embeds an image as the one-hot of its grey level's bin (levels 60 and 180: the folder
    set's two classes) and a prompt as the one-hot of its class: probes must then be perfect."""

    image_size, batch_size = 16, 8

    def encode_image(self, images):
        grey = (np.asarray(images).mean((1, 2, 3)) * np.mean(CLIP_STD) + np.mean(CLIP_MEAN))
        return np.eye(2, dtype=np.float32)[(grey * 255 > 120).astype(int)]

    def encode_text(self, texts):
        return np.eye(2, dtype=np.float32)[[int("positiv" in t) for t in texts]]  # (+ German)


def test_run_suite_probes_on_a_folder_set_carve_val_from_train(suite_dir):
    result = suite.run_suite(GreyEncoder(), ["rendered_sst2", "svhn"], suite_dir,
                             ("zeroshot", "linear_probe", "fewshot"), batch_size=8,
                             shots=(1, 2, 4, 8), seeds=(0, 1), log=lambda m: None)
    r, d = result["suite"]["rendered_sst2"], result["details"]["rendered_sst2"]
    assert result["missing"] == {"svhn": suite_data.missing_message(registry.ENTRIES["svhn"])}
    assert (d["num_train"], d["num_val"], d["num_test"]) == (10, 2, 6)  # 20% per class carved
    assert r["zeroshot"] == r["linear_probe"] == {"acc1": 1.0, "mean_per_class_recall": 1.0,
                                                  "headline": 1.0}
    assert r["fewshot"]["k"] == 4 and sorted(r["fewshot"]["shots"]) == ["1", "2", "4"]  # 5 a class
    assert r["fewshot"]["acc1"] == 1.0 and r["fewshot"]["seeds"] == 2
    assert d["linear_probe"]["best_l2"] > 0 and d["num_templates"] == 1
    assert suite.suite_scalars(result)["eval/rendered_sst2/linear_probe_acc1"] == 1.0


def test_demo_card_as_a_folder_dataset_round_trips(tmp_path):
    card = os.path.join(str(tmp_path / "demo"), "zeroshot.json")
    demo.generate(str(tmp_path / "demo"), train_samples=10, eval_samples=48, workers=1)
    assert suite_data.card_to_folder(card, str(tmp_path / "data" / "demo")) == {
        "train": 24, "test": 24}
    source = datasets.labelled(card)
    entry = registry.ENTRIES["demo"]
    got = []
    for which in ("train", "test"):
        ds = suite_data.labelled_split(entry, str(tmp_path / "data"), which)
        assert ds.class_names == source.class_names and ds.templates == source.templates
        got += [(y, img.tobytes()) for img, y in ds.samples(64)]
    assert sorted(got) == sorted((y, img.tobytes()) for img, y in source.samples(64))
    assert suite_data.labelled_split(entry, str(tmp_path / "data"), "val") is None


PALETTE = np.array([[230, 20, 20], [20, 200, 40], [30, 60, 230], [240, 220, 20]])
COLOURS = ["red", "green", "blue", "yellow"]


class ColourEncoder:
    """An image is the one-hot of its nearest palette colour, a text of its colour word."""

    image_size, batch_size = 16, 8

    def encode_image(self, images):
        rgb = (np.asarray(images).mean((1, 2)) * np.array(CLIP_STD) + np.array(CLIP_MEAN)) * 255
        nearest = np.argmin(((rgb[:, None] - PALETTE[None]) ** 2).sum(-1), axis=1)
        return np.eye(4, dtype=np.float32)[nearest]

    def encode_text(self, texts):
        return np.eye(4, dtype=np.float32)[[next(j for j, c in enumerate(COLOURS) if c in t)
                                            for t in texts]]


def _coco_like(data_dir: str) -> None:
    """coco_captions' image and captions features (its builder code needs TensorFlow to
    import, so the reader opens it from its files), Karpathy-style test split."""

    class CocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "coco_captions"
        VERSION = tfds.core.Version("1.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image/id": np.int64,
                "captions": tfds.features.Sequence({"id": np.int64,
                                                    "text": tfds.features.Text()})}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples(), "train": self._generate_examples()}

        def _generate_examples(self):
            for i, colour in enumerate(COLOURS):
                buf = io.BytesIO()
                Image.fromarray(np.full((20, 24, 3), PALETTE[i], np.uint8)).save(buf, "PNG")
                yield i, {"image": buf.getvalue(), "image/id": i, "captions": [
                    {"id": 2 * i, "text": f"a {colour} thing"},
                    {"id": 2 * i + 1, "text": f"something {colour}"}]}

    CocoCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_retrieval_sets_from_a_folder_and_tfds(tmp_path):
    data = str(tmp_path)
    os.makedirs(os.path.join(data, "flickr30k", "images"))
    lines = ["image,caption"]  # CLIP_benchmark's CSV, captions grouped per image
    for i, colour in enumerate(COLOURS):
        Image.fromarray(np.full((20, 20, 3), PALETTE[i], np.uint8)).save(
            os.path.join(data, "flickr30k", "images", f"{i}.jpg"), quality=95)
        lines += [f"{i}.jpg,a {colour}, bright thing", f"{i}.jpg,{colour} again"]
    with open(os.path.join(data, "flickr30k", "captions.txt"), "w") as f:
        f.write("\n".join(lines[:3] + lines[5:] + lines[3:5]) + "\n")  # image 1 last
    _coco_like(data)
    result = suite.run_suite(ColourEncoder(), suite.resolve("retrieval"), data, ("zeroshot",),
                             batch_size=3, log=lambda m: None)
    for name in ("flickr30k", "mscoco", "mscoco_1k"):  # (1k: the first 1000 of 4 images)
        r = result["suite"][name]["retrieval"]
        assert r["num_images"] == 4 and r["num_texts"] == 8, name
        for k in (1, 5, 10):
            assert r[f"image_to_text_recall@{k}"] == r[f"text_to_image_recall@{k}"] == 1.0
        assert r["headline"] == r["mean_recall"] == 1.0
    assert "eval/mscoco/mean_recall" in suite.suite_scalars(result)
    with open(os.path.join(data, "flickr30k", "captions.txt"), "w") as f:
        f.write("0.jpg a red thing\n")
    with pytest.raises(ValueError, match="expected 'FILE<TAB>caption'"):
        suite.run_suite(ColourEncoder(), ["flickr30k"], data, log=lambda m: None)


def test_cli_suite_writes_report_table_and_plot(tmp_path, suite_dir, capsys):
    from clip_jax.evaluate.__main__ import main

    wanted = ["eurosat", "clevr_count", "rendered_sst2", "mnist", "fgvc_aircraft"]
    prompts = [t.format(c) for n in wanted[:3] for e in [registry.ENTRIES[n]]
               for t in suite_data.templates(e) for c in suite_data.class_names(e)]
    tok = tok_lib.train_tokenizer(prompts * 2, 300, str(tmp_path / "tok"))
    cfg = models.get_model_config("tiny").replace(text={"vocab_size": tok.vocab_size})
    params = models.CLIP(cfg).init(jax.random.key(0), *models.init_inputs(cfg))["params"]
    bundle = str(tmp_path / "bundle")
    bundle_lib.save_bundle(bundle, jax.device_get(params), cfg, tok)
    out = str(tmp_path / "out")
    assert main(["--model", bundle, "--suite", "clip_paper", "--data-dir", suite_dir,
                 "--datasets", ",".join(wanted), "--batch-size", "8", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "mnist: not in the data dir; prepare it with: tfds build mnist" in err
    assert "fgvc_aircraft: not in the data dir" in err
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    res = report["suite"]
    assert list(res) == ["eurosat", "rendered_sst2", "clevr_count"]  # the suite's order
    assert sorted(report["missing"]) == ["fgvc_aircraft", "mnist"]
    for name, kinds in res.items():
        assert list(kinds) == ["zeroshot"]
        m = kinds["zeroshot"]
        assert ("acc5" in m) == (name != "rendered_sst2")  # 2 classes: no acc5
        assert m["headline"] == m["acc1"] and 0 <= m["mean_per_class_recall"] <= 1
    d = report["details"]
    assert [d[n]["num_test"] for n in res] == [20, 6, 8]
    assert d["rendered_sst2"]["source"] == "folder" and d["eurosat"]["source"] == "tfds"
    assert d["eurosat"]["num_templates"] == 3 and d["eurosat"]["classifier_seconds"] > 0
    table = open(os.path.join(out, "suite.md")).read()
    mean = np.mean([r["zeroshot"]["headline"] for r in res.values()])
    assert f"**{100 * mean:.1f}** (3)" in table and "| eurosat | acc1 |" in table
    assert "tfds build mnist" in table
    assert os.path.getsize(os.path.join(out, "suite.png")) > 1000

    # The folder set's zero-shot numbers, computed another way from its files.
    names = suite_data.class_names(registry.ENTRIES["rendered_sst2"])
    images, labels = [], []
    for c, name in enumerate(names):
        for f in sorted(os.listdir(os.path.join(suite_dir, "rendered_sst2", "test", name))):
            img = Image.open(os.path.join(suite_dir, "rendered_sst2", "test", name, f))
            images.append(resize_center_crop(img.convert("RGB"), cfg.vision.image_size))
            labels.append(c)
    probs = inference.load(bundle, batch_size=8).zero_shot(
        normalize(np.stack(images)), names,
        suite_data.templates(registry.ENTRIES["rendered_sst2"]))
    expected = metrics.classification_metrics(probs, np.array(labels))
    assert res["rendered_sst2"]["zeroshot"]["acc1"] == pytest.approx(expected["acc1"])
    assert res["rendered_sst2"]["zeroshot"]["mean_per_class_recall"] == pytest.approx(
        expected["mean_per_class_recall"])


def _suite_cli(argv, load=None):
    """``python -m clip_jax.evaluate`` in-process with ``inference.load`` giving ``load`` (a
    GreyEncoder with a tokenizer; None: loading a model fails the test): (exit code, stderr)."""
    from clip_jax.evaluate.__main__ import main

    def fake_load(*_, **__):
        assert load is not None, "the model was loaded before the flags were checked"
        return load

    err = io.StringIO()
    with mock.patch.object(inference, "load", fake_load):
        code = cli.run(main, argv, stderr=err)
    return code, err.getvalue()


def test_suite_prompts_are_the_users_in_any_language_and_the_report_names_them(tmp_path,
                                                                               suite_dir):
    """--templates / --classnames under --suite (for every dataset, DATASET=, a directory per
    language) change the zero-shot figure as the prompts say, and report.json and suite.md
    name them; an option the suite cannot honour is one line, exit 2, before a model loads."""
    enc = GreyEncoder()
    enc.tokenizer = object()
    base = ["--model", "m", "--suite", "clip_paper", "--data-dir", suite_dir, "--datasets",
            "rendered_sst2,eurosat", "--batch-size", "8"]

    def run(name, *flags):
        out = str(tmp_path / name)
        code, err = _suite_cli([*base, *flags, "--out", out], enc)
        assert code == 0, err
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        return (report["suite"]["rendered_sst2"]["zeroshot"]["acc1"],
                report["details"]["rendered_sst2"]["prompts"], report,
                open(os.path.join(out, "suite.md")).read())

    acc, used, report, table = run("default")
    entry = registry.ENTRIES["rendered_sst2"]
    assert acc == 1.0 and used["templates"] == suite_data.templates(entry)
    assert used["templates_from"] == "registry rendered_sst2"
    assert used["class_names_from"] == "registry rendered_sst2"
    assert (f"- rendered_sst2: {len(used['templates'])} templates from registry rendered_sst2; "
            "class names from registry rendered_sst2") in table

    # A template that names the positive class in every prompt: every class the same
    # classifier, a tie, which counts against the truth: 0.
    same = tmp_path / "same.txt"
    same.write_text("# every prompt says positive\na positive {} review\n")
    acc, used, report, table = run("same", "--templates", str(same))
    assert acc == 0.0 and used["templates"] == ["a positive {} review"]
    digest = hashlib.sha256(same.read_bytes()).hexdigest()
    assert used["templates_from"] == f"{same} (sha256 {digest})"
    assert report["details"]["eurosat"]["prompts"]["templates_from"] == used["templates_from"]
    assert f"1 templates from {same} (sha256 {digest})" in table

    # Per dataset: only rendered_sst2's class names change (swapped: every image misnamed).
    swapped = tmp_path / "swapped.txt"
    swapped.write_text("positive\nnegative\n")
    acc, used, report, _ = run("swapped", "--classnames", f"rendered_sst2={swapped}")
    assert acc == 0.0 and used["class_names"] == ["positive", "negative"]
    assert report["details"]["eurosat"]["prompts"]["class_names_from"] == "registry eurosat"

    # Another language: a directory of class names per dataset and a template file.
    de = tmp_path / "de"
    de.mkdir()
    (de / "templates.txt").write_text("eine {} Filmkritik.\n")
    (de / "rendered_sst2.txt").write_text("negative\npositive\n".replace("ve", "v"))
    (de / "eurosat.txt").write_text("".join(f"Klasse {i}\n" for i in range(10)))
    acc, used, report, _ = run("de", "--templates", str(de / "templates.txt"),
                               "--classnames", str(de))
    assert acc == 1.0 and used["templates"] == ["eine {} Filmkritik."]
    assert used["class_names"] == ["negativ", "positiv"]
    assert report["details"]["eurosat"]["prompts"]["class_names"][3] == "Klasse 3"

    def refused(*flags, match):
        code, err = _suite_cli([*base, *flags, "--out", str(tmp_path / "x")])
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err

    refused("--templates", str(same), "--eval", "linear_probe", match="add --eval zeroshot")
    refused("--classnames", f"rendered_sst2={same}", match="1 names for rendered_sst2's 2")
    refused("--classnames", str(tmp_path), match="no eurosat.txt there")
    refused("--templates", f"svhn={same}", match="'svhn' is not a classification dataset")
    refused("--templates", "nonesuch", match="not a file, a directory nor a template set")
    refused("--templates", str(same), "--templates", str(de / "templates.txt"),
            match="given twice for every dataset")
    refused("--shots", "1,2", match="add --eval fewshot")
    refused("--seeds", "2", "--eval", "zeroshot,linear_probe", match="add --eval fewshot")
    refused("--dataset", "x.json", match="--suite and --dataset do not go together")
    bad = tmp_path / "bad.txt"
    bad.write_text("a {} and {other}\n")
    refused("--templates", str(bad), match="must hold the class name")


def test_xm3600_languages_are_retrieval_sets_read_from_one_folder(tmp_path):
    """Crossmodal-3600 laid out as its downloads unpack (images/KEY.jpg, captions.jsonl with
    a caption list per language): each xm3600_<lang> entry retrieves with that language's
    captions only; a language a line lacks is one error naming the file and line."""
    data = str(tmp_path)
    os.makedirs(os.path.join(data, "xm3600", "images"))
    with open(os.path.join(data, "xm3600", "captions.jsonl"), "w", encoding="utf-8") as f:
        for i, colour in enumerate(COLOURS):
            Image.fromarray(np.full((20, 20, 3), PALETTE[i], np.uint8)).save(
                os.path.join(data, "xm3600", "images", f"k{i:04x}.jpg"), quality=95)
            f.write(json.dumps({"image/key": f"k{i:04x}", "image/locale": "en",
                                "en": {"caption": [f"a {colour} thing", f"{colour} again"]},
                                "de": {"caption": [f"ein Ding, {colour}"]}},
                               ensure_ascii=False) + "\n")
    assert suite.resolve("xm3600") == [f"xm3600_{lang}" for lang in registry.XM3600_LANGUAGES]
    assert len(registry.XM3600_LANGUAGES) == 36
    result = suite.run_suite(ColourEncoder(), ["xm3600_en", "xm3600_de"], data,
                             batch_size=3, log=lambda m: None)
    for lang, per_image in (("en", 2), ("de", 1)):
        r = result["suite"][f"xm3600_{lang}"]["retrieval"]
        assert (r["num_images"], r["num_texts"]) == (4, 4 * per_image), lang
        assert r["headline"] == r["mean_recall"] == 1.0
    assert "eval/xm3600_de/mean_recall" in suite.suite_scalars(result)
    with pytest.raises(ValueError, match=r"captions.jsonl:1: expected a JSON object with "
                       r"'image/key' and 'fr'"):
        suite.run_suite(ColourEncoder(), ["xm3600_fr"], data, log=lambda m: None)
    os.makedirs(tmp_path / "empty")
    missing = suite.run_suite(ColourEncoder(), ["xm3600_en"], str(tmp_path / "empty"),
                              log=lambda m: None)
    assert "crossmodal-3600/images.tgz" in missing["missing"]["xm3600_en"]
