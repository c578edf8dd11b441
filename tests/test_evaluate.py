"""Evaluators end to end: datasets (tfds built offline, demo card, image folder), the encoder
plumbing checked with an oracle encoder, the sharded MeshEncoder against the single-device
InferenceModel, several named eval sets (``config.evals``) beside the single-dataset keys, the
CLI report over one and over several datasets, and evaluation inside a training run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle as bundle_lib
from clip_jax import cli, inference, models, train
from clip_jax import config as config_lib
from clip_jax.config import base_config
from clip_jax.data import demo, tario
from clip_jax.data import tokenizer as tok_lib
from clip_jax.data.transforms import CLIP_MEAN, CLIP_STD, normalize
from clip_jax.evaluate import datasets, evaluators

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PALETTE = np.array([[230, 20, 20], [20, 200, 40], [30, 60, 230], [240, 220, 20]], np.uint8)
COLOURS = ["red", "green", "blue", "yellow"]
ENV_2_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _png(rgb, size=20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size + 4, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tfds_builder_class():
    import tensorflow_datasets as tfds

    class TinyColours(tfds.core.GeneratorBasedBuilder):
        """Solid-colour images, one class per colour (built offline, array_record)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=COLOURS)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(24, 0), "test": self._generate_examples(12, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                c = i % len(COLOURS)
                jitter = rng.integers(-10, 10, 3)
                yield i, {"image": _png(np.clip(PALETTE[c] + jitter, 0, 255)), "label": c}

    return TinyColours


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    d = str(tmp_path_factory.mktemp("tfds"))
    _tfds_builder_class()(data_dir=d, file_format="array_record").download_and_prepare()
    return d


class OracleEncoder:
    """Embeds an image as the one-hot of its nearest palette colour and a text as the one-hot of
    the colour word it contains: every evaluation must then be perfect, whatever the batching."""

    image_size, batch_size = 16, 8

    def encode_image(self, images):
        rgb = (np.asarray(images).mean((1, 2)) * np.array(CLIP_STD) + np.array(CLIP_MEAN)) * 255
        nearest = np.argmin(((rgb[:, None] - PALETTE[None]) ** 2).sum(-1), axis=1)
        return np.eye(len(COLOURS), dtype=np.float32)[nearest]

    def encode_text(self, texts):
        out = np.zeros((len(texts), len(COLOURS)), np.float32)
        for i, t in enumerate(texts):
            out[i, next(j for j, c in enumerate(COLOURS) if c in t)] = 1
        return out


def test_tfds_oracle_zeroshot_and_probes_are_perfect(tfds_dir):
    ds = datasets.labelled("tfds:tiny_colours", tfds_dir)
    assert ds.class_names == COLOURS and ds.name == "tiny_colours:test"
    specs = [evaluators.EvalSpec(kind, "tfds:tiny_colours", data_dir=tfds_dir, shots=(1, 2, 4),
                                 batch_size=5) for kind in ("zeroshot", "fewshot")]
    rep = evaluators.run(OracleEncoder(), specs)
    zs = rep["zeroshot"]
    assert zs["acc1"] == 1.0 and zs["num_samples"] == 12  # 12 test images, batches of 5 padded
    assert np.trace(np.array(zs["confusion_matrix"])) == 12
    assert rep["fewshot"]["4shot"] == 1.0 and rep["fewshot"]["num_train"] == 24
    assert evaluators.scalars(rep)["eval/zeroshot/acc1"] == 1.0


def test_tfds_unprepared_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        datasets.labelled("tfds:tiny_colours", str(tmp_path))


def test_folder_set_skips_corrupt_images_and_splits_per_class(tmp_path):
    for c, rgb in zip(COLOURS, PALETTE):
        os.makedirs(tmp_path / c)
        for i in range(6):
            (tmp_path / c / f"{i}.png").write_bytes(_png(rgb))
    (tmp_path / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = datasets.labelled(f"folder:{tmp_path}")
    items = list(ds.samples(16))
    assert len(items) == 24 and ds.stats["skipped_corrupt_image"] == 1
    assert items[0][0].shape == (16, 16, 3) and items[0][0].dtype == np.uint8
    labels = np.array([y for _, y in items])
    tr, te = datasets.split_per_class(labels)
    assert not set(tr) & set(te) and len(tr) + len(te) == 24
    assert np.bincount(labels[te]).tolist() == [3, 3, 3, 3]
    tr2, _ = datasets.split_per_class(labels)
    np.testing.assert_array_equal(tr, tr2)
    rep = evaluators.run(OracleEncoder(), [evaluators.EvalSpec(
        "linear_probe", f"folder:{tmp_path}", shots=(1, 2))])["linear_probe"]
    assert rep["acc1"] == 1.0 and rep["fewshot"]["2shot"] == 1.0


def test_fewshot_without_a_dataset_split_says_why_a_k_did_not_run(tmp_path):
    """``--eval fewshot --dataset`` is the same logistic-regression probe as the suite's, and a
    k larger than the smallest class is said, never an empty result: no k at all is an error
    naming the class and its count, some k are listed in the report."""
    for c, rgb in zip(COLOURS, PALETTE):
        os.makedirs(tmp_path / c)
        for i in range(6 if c != "blue" else 4):
            (tmp_path / c / f"{i}.png").write_bytes(_png(rgb))
    spec = evaluators.EvalSpec("fewshot", f"folder:{tmp_path}", shots=(1, 2, 4), seeds=(0, 1))
    rep = evaluators.run(OracleEncoder(), [spec])["fewshot"]  # half of each class trains
    assert rep["1shot"] == rep["2shot"] == 1.0 and rep["shots"] == [1, 2]
    assert rep["method"].startswith("logistic regression") and rep["seeds"] == 2
    assert rep["shots_not_run"] == "k=[4]: a class has only 2 training images"
    with pytest.raises(ValueError, match=r"smallest class has 2 training images \('blue'\), "
                       r"fewer than the smallest k in \[4, 8\]"):
        evaluators.run(OracleEncoder(), [evaluators.EvalSpec(
            "fewshot", f"folder:{tmp_path}", shots=(4, 8))])
    rep = evaluators.run(OracleEncoder(), [evaluators.EvalSpec(
        "linear_probe", f"folder:{tmp_path}", shots=(4,))])["linear_probe"]
    assert rep["acc1"] == 1.0 and "fewshot" not in rep
    assert "smallest class has 2 training images" in rep["fewshot_not_run"]
    with pytest.raises(ValueError, match="no test split and each class has one image "
                       r"\(--max-per-class / probe_max_per_class 1\)"):
        evaluators.run(OracleEncoder(), [evaluators.EvalSpec(
            "fewshot", f"folder:{tmp_path}", shots=(1,), max_per_class=1)])


@pytest.fixture(scope="module")
def demo_card(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo.generate(root, train_samples=200, eval_samples=48, image_size=32, seed=0,
                  samples_per_shard=100, workers=1)
    return os.path.join(root, "zeroshot.json")


def test_demo_card_retrieval_groups_captions_per_image(demo_card):
    with open(demo_card) as f:
        card = json.load(f)
    ds = datasets.labelled(demo_card)
    assert ds.class_names == card["classes"] and ds.templates == card["templates"]
    assert len(list(ds.samples(32))) == 48
    cap = datasets.captioned(demo_card)
    items = list(cap.samples(32))
    assert len(items) == 48 and all(len(c) == 1 and c[0] for _, c in items)
    with pytest.raises(ValueError, match="needs captions"):
        datasets.captioned("tfds:cifar10")


def _tiny_bundle(tmp_path, demo_card):
    shards = datasets.read_card(demo_card)["shards"]
    captions = [c for _, _, c in tario.iterate_samples(shards, decode=False)]
    tok = tok_lib.train_tokenizer(captions * 4, 300, str(tmp_path / "tok"))
    cfg = models.get_model_config("tiny").replace(text={"vocab_size": tok.vocab_size})
    params = models.CLIP(cfg).init(jax.random.key(1), *models.init_inputs(cfg))["params"]
    return cfg, jax.device_get(nn.unbox(params)), tok


def _folder_of(demo_card, image_size, root) -> str:
    """The card's images, eval-transformed, as an image folder ``root/<class>/<i>.png``: the same
    pixels and labels read another way."""
    ds = datasets.labelled(demo_card)
    for i, (img, label) in enumerate(ds.samples(image_size)):
        d = os.path.join(root, ds.class_names[label].replace(" ", "_"))
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img).save(os.path.join(d, f"{i}.png"))
    return f"folder:{root}"


def test_mesh_encoder_matches_inference_model_and_cli_report(tmp_path, demo_card):
    """The sharded train-time encoder (8 devices, 2x2x2 mesh, params sharded by the rules) and
    the bundle's single-process InferenceModel give the same embeddings and the same report;
    the CLI's top-1 equals an accuracy computed directly from InferenceModel.zero_shot. An
    old-style config (``eval.zeroshot``...) logs exactly the kinds' names; ``config.evals`` with
    two zero-shot sets (the card, and its images as a folder) logs both under their names, with
    the old-style numbers; the CLI over the same two datasets writes one report with both."""
    cfg, params, tok = _tiny_bundle(tmp_path, demo_card)
    bundle = str(tmp_path / "bundle")
    bundle_lib.save_bundle(bundle, params, cfg, tok)
    folder = _folder_of(demo_card, cfg.vision.image_size, str(tmp_path / "folder"))

    c = base_config()
    c.model.name = "tiny"
    c.model.text.vocab_size = tok.vocab_size
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.eval.zeroshot = c.eval.retrieval = demo_card
    c.eval.batch_size = 20
    c.total_steps = 7
    setup = train.build(c)
    sharded = bundle_lib.load_params(bundle, setup.abstract_state.params,
                                        setup.state_shardings.params)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    evaluate = evaluators.make_train_evaluator(setup, tok, str(tmp_path / "run"))
    assert evaluate.due(6) == [] and evaluate(sharded, 6) == {}  # eval.every_steps=0: at end
    train_scalars = evaluate(sharded, 7)
    assert {k.rsplit("/", 1)[0] for k in train_scalars} == {"eval/zeroshot", "eval/retrieval"}
    assert os.path.isfile(tmp_path / "run" / "eval" / "step_7_report.json")
    assert os.path.isfile(tmp_path / "run" / "eval" / "step_7_zeroshot_confusion.png")

    model = inference.load(bundle, batch_size=16)
    mesh_enc = evaluators.MeshEncoder(setup.model, setup.mesh, setup.state_shardings.params,
                                      tok, cfg.text.context_length, cfg.vision.image_size, 20)
    mesh_enc.bind(sharded)
    ds = datasets.labelled(demo_card)
    images = normalize(np.stack([img for img, _ in ds.samples(cfg.vision.image_size)][:21]))
    np.testing.assert_allclose(mesh_enc.encode_image(images), model.encode_image(images),
                               atol=2e-5)
    texts = ["a red star", "two green circles on black"] * 11
    np.testing.assert_allclose(mesh_enc.encode_text(texts), model.encode_text(texts), atol=2e-5)

    c2 = base_config()
    c2.evals.demo = {"kind": "zeroshot", "dataset": demo_card}
    c2.evals.colours = {"kind": "zeroshot", "dataset": folder, "templates": demo_card}
    two = evaluators.TrainEvaluator(evaluators.specs_from_config(c2), mesh_enc,
                                    str(tmp_path / "run2"), total_steps=7, at_end=True)
    named = two(sharded, 7)
    assert {k.rsplit("/", 1)[0] for k in named} == {"eval/demo", "eval/colours"}
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        old = train_scalars[f"eval/zeroshot/{metric}"]
        assert named[f"eval/demo/{metric}"] == pytest.approx(old, abs=1e-9), metric
        assert named[f"eval/colours/{metric}"] == pytest.approx(old, abs=1e-9), metric
    with open(tmp_path / "run2" / "eval" / "step_7_report.json") as f:
        assert sorted(json.load(f)["evals"]) == ["colours", "demo"]
    for name in ("demo", "colours"):
        assert os.path.isfile(tmp_path / "run2" / "eval" / f"step_7_{name}_confusion.png")

    out = str(tmp_path / "report")
    proc = subprocess.run(
        [sys.executable, "-m", "clip_jax.evaluate", "--model", bundle, "--eval",
         "zeroshot,retrieval", "--dataset", demo_card, "--batch-size", "16", "--out", out],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=ENV_2_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert os.path.isfile(os.path.join(out, "zeroshot_confusion.png"))
    for key, value in train_scalars.items():
        assert printed[key] == pytest.approx(value, abs=1e-6), key

    imgs, labels = zip(*ds.samples(cfg.vision.image_size))
    probs = model.zero_shot(normalize(np.stack(imgs)), ds.class_names, ds.templates)
    direct = float(np.mean(np.argmax(probs, 1) == np.array(labels)))
    assert report["evals"]["zeroshot"]["acc1"] == pytest.approx(direct)
    assert report["evals"]["zeroshot"]["num_samples"] == 48

    out2 = str(tmp_path / "report2")
    proc = subprocess.run(
        [sys.executable, "-m", "clip_jax.evaluate", "--model", bundle, "--eval", "zeroshot",
         "--dataset", demo_card, "--dataset", f"colours={folder}", "--templates", demo_card,
         "--batch-size", "16", "--out", out2],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV_2_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(out2, "report.json")) as f:
        report = json.load(f)
    dname = datasets.short_name(demo_card)  # the card's directory: demo0 here
    assert report["datasets"] == {dname: demo_card, "colours": folder}
    assert list(report["evals"]) == [f"zeroshot_{dname}", "zeroshot_colours"]
    for name in report["evals"]:
        assert report["evals"][name]["acc1"] == pytest.approx(direct)
        assert printed[f"eval/{name}/acc1"] == pytest.approx(direct)
        assert os.path.isfile(os.path.join(out2, f"{name}_confusion.png"))


def test_cli_rejects_unknown_eval(tmp_path):
    from clip_jax.evaluate.__main__ import main

    assert main(["--model", str(tmp_path), "--eval", "zeroshoot", "--dataset", "x.json"]) == 2


def test_cli_names_evals_per_dataset_and_rejects_two_datasets_of_one_name(tmp_path):
    from clip_jax.evaluate.__main__ import eval_specs, main

    kinds = ["zeroshot", "fewshot"]
    named, specs = eval_specs(kinds, ["data/demo/zeroshot.json"])
    assert named == {"demo": "data/demo/zeroshot.json"} and [s.name for s in specs] == kinds
    named, specs = eval_specs(kinds, ["tfds:cifar10", "pets=folder:/x/p", "/d/a=1/{0..3}.tar"])
    assert named == {"cifar10": "tfds:cifar10", "pets": "folder:/x/p",  # '/d/a' is no name
                     "a_1": "/d/a=1/{0..3}.tar"}
    assert [s.name for s in specs] == ["zeroshot_cifar10", "fewshot_cifar10", "zeroshot_pets",
                                       "fewshot_pets", "zeroshot_a_1", "fewshot_a_1"]
    assert eval_specs(["zeroshot"], ["c=tfds:cifar10"])[1][0].name == "zeroshot_c"
    with pytest.raises(cli.UserError, match="two datasets are named 'demo'"):
        main(["--model", str(tmp_path), "--eval", "zeroshot", "--dataset", "a/demo/x.json",
              "--dataset", "b/demo/y.json"])


@pytest.mark.parametrize("entry, message", [
    ({"kind": "zeroshoot", "dataset": "a.json"}, r"evals\.bad\.kind='zeroshoot': choose one"),
    ({"kind": "zeroshot"}, r"evals\.bad\.dataset is missing"),
    ({"kind": "zeroshot", "dataset": " "}, r"evals\.bad\.dataset is missing"),
    ({"kind": "zeroshot", "dataset": "a.json", "every_steps": -5}, r"evals\.bad\.every_steps=-5"),
    ({"kind": "zeroshot", "dataset": "a.json", "every_steps": 2.5}, r"evals\.bad\.every_steps"),
    ({"kind": "zeroshot", "dataset": "a.json", "evry_steps": 5},
     r"evals\.bad: unknown key\(s\) \['evry_steps'\]"),
    ({"kind": "fewshot", "dataset": "a.json", "shots": [1, 0]}, r"evals\.bad\.shots"),
    ({"kind": "fewshot", "dataset": "a.json", "max_per_class": -1}, r"evals\.bad\.max_per_cl"),
    ("tfds:cifar10", r"evals\.bad='tfds:cifar10': expected a dict"),
])
def test_bad_eval_entries_fail_naming_them(entry, message):
    c = base_config()
    c.evals.bad = entry
    with pytest.raises(ValueError, match=message):
        config_lib.validate(c)


def test_eval_sets_map_the_single_dataset_keys_and_check_names():
    c = base_config()
    c.eval.zeroshot, c.eval.fewshot, c.eval.every_steps = "a.json", "folder:x", 50
    c.evals.cifar = {"kind": "zeroshot", "dataset": "tfds:cifar10", "every_steps": 10}
    sets = config_lib.eval_sets(c)
    assert list(sets) == ["zeroshot", "fewshot", "cifar"]
    assert sets["zeroshot"]["kind"] == "zeroshot" and sets["fewshot"]["dataset"] == "folder:x"
    assert sets["fewshot"]["every_steps"] == 50 and sets["cifar"]["every_steps"] == 10
    assert [s.name for s in evaluators.specs_from_config(c)] == list(sets)
    c.evals.zeroshot = {"kind": "zeroshot", "dataset": "b.json"}
    with pytest.raises(ValueError, match="evals.zeroshot and eval.zeroshot both define"):
        config_lib.eval_sets(c)
    c = base_config()
    c.evals["a b"] = {"kind": "zeroshot", "dataset": "b.json"}
    with pytest.raises(ValueError, match="evals.a b: an evaluation's name is letters"):
        config_lib.eval_sets(c)


def test_each_eval_is_due_at_its_own_every_steps():
    specs = [evaluators.EvalSpec("zeroshot", "a.json", name="a", every_steps=2),
             evaluators.EvalSpec("fewshot", "b.json", name="b", every_steps=3),
             evaluators.EvalSpec("retrieval", "c.json", name="c")]
    ev = evaluators.TrainEvaluator(specs, None, None, total_steps=7, at_end=True)
    assert {s: [x.name for x in ev.due(s)] for s in range(1, 8)} == {
        1: [], 2: ["a"], 3: ["b"], 4: ["a"], 5: [], 6: ["a", "b"], 7: ["a", "b", "c"]}
    assert ev(None, 5) == {}  # nothing due: no encoder call
    assert evaluators.TrainEvaluator(specs, None, None, 7, at_end=False).due(7) == []


def test_training_run_with_demo_corpus_logs_evals(tmp_path):
    """configs/demo.py's path at toy scale: demo corpus generated, tokenizer fitted, webdataset
    training, evaluation logged to metrics.jsonl and reported; the demo's evals keep their old
    names (eval/zeroshot/...), at eval.every_steps, beside a named eval of ``config.evals`` run
    at its own every_steps."""
    work, corpus = tmp_path / "run", tmp_path / "corpus"
    config = tmp_path / "demo_plus.py"
    config.write_text(
        "from configs.demo import get_config as demo_config\n\n\n"
        "def get_config():\n"
        "    c = demo_config()\n"
        f"    c.evals.early = dict(kind='zeroshot', dataset={str(corpus / 'zeroshot.json')!r},\n"
        "                         every_steps=2)\n"
        "    return c\n")
    cmd = [sys.executable, "-m", "clip_jax.train", "--config", str(config),
           "--workdir", str(work), "--config.model.name=tiny", "--config.batch_size=16",
           "--config.total_steps=4", "--config.log_every_steps=2", "--config.eval.every_steps=4",
           f"--config.data.demo={corpus}", "--config.data.demo_train_samples=300",
           "--config.data.tokenizer_vocab_size=300", "--config.eval.batch_size=40",
           "--config.checkpoint.every_steps=0", "--config.eval.fewshot_shots=(1,2)",
           "--config.data.workers=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=ENV_2_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert [k for k in lines[0] if k.startswith("eval/")] == [
        "eval/early/acc1", "eval/early/acc5", "eval/early/mean_per_class_recall"]
    last = lines[-1]
    assert last["eval/early/acc1"] == last["eval/zeroshot/acc1"]  # same set, same params
    for key in ("eval/zeroshot/acc1", "eval/retrieval/text_to_image_recall@1",
                "eval/fewshot/2shot", "data/samples"):
        assert key in last, key
    assert 0.0 <= last["eval/zeroshot/acc1"] <= 1.0
    assert (work / "eval" / "step_4_report.json").is_file()
    assert (work / "tokenizer" / "tokenizer_config.json").is_file()
