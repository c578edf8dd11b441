"""Evaluators end to end: datasets (tfds built offline, demo card, image folder), the encoder
plumbing checked with an oracle encoder, the sharded MeshEncoder against the single-device
InferenceModel, the CLI report, and evaluation inside a training run."""

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
from clip_jax import inference, models, train
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
    spec = evaluators.EvalSpec(zeroshot="tfds:tiny_colours", fewshot="tfds:tiny_colours",
                               data_dir=tfds_dir, shots=(1, 2, 4), batch_size=5)
    rep = evaluators.run(OracleEncoder(), spec)
    zs = rep["zeroshot"]
    assert zs["top1"] == 1.0 and zs["num_samples"] == 12  # 12 test images, batches of 5 padded
    assert np.trace(np.array(zs["confusion_matrix"])) == 12
    assert rep["fewshot"]["4shot"] == 1.0 and rep["fewshot"]["num_train"] == 24
    assert evaluators.scalars(rep)["eval/zeroshot/top1"] == 1.0


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
    rep = evaluators.run(OracleEncoder(), evaluators.EvalSpec(
        linear_probe=f"folder:{tmp_path}", shots=(1, 2)), ["linear_probe"])["linear_probe"]
    assert rep["top1"] == 1.0 and rep["fewshot"]["2shot"] == 1.0


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


def test_mesh_encoder_matches_inference_model_and_cli_report(tmp_path, demo_card):
    """The sharded train-time encoder (8 devices, 2x2x2 mesh, params sharded by the rules) and
    the bundle's single-process InferenceModel give the same embeddings and the same report;
    the CLI's top-1 equals an accuracy computed directly from InferenceModel.zero_shot."""
    cfg, params, tok = _tiny_bundle(tmp_path, demo_card)
    bundle = str(tmp_path / "bundle")
    bundle_lib.save_bundle(bundle, params, cfg, tok)

    c = base_config()
    c.model.name = "tiny"
    c.model.text.vocab_size = tok.vocab_size
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.eval.zeroshot = c.eval.retrieval = demo_card
    c.eval.batch_size = 20
    setup = train.build(c)
    sharded = bundle_lib.load_params(bundle, setup.abstract_state.params,
                                        setup.state_shardings.params)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    evaluate = evaluators.make_train_evaluator(setup, tok, str(tmp_path / "run"))
    train_scalars = evaluate(sharded, 7)
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
    assert report["evals"]["zeroshot"]["top1"] == pytest.approx(direct)
    assert report["evals"]["zeroshot"]["num_samples"] == 48


def test_cli_rejects_unknown_eval(tmp_path):
    from clip_jax.evaluate.__main__ import main

    assert main(["--model", str(tmp_path), "--eval", "zeroshoot", "--dataset", "x.json"]) == 2


def test_training_run_with_demo_corpus_logs_evals(tmp_path):
    """configs/demo.py's path at toy scale: demo corpus generated, tokenizer fitted, webdataset
    training, evaluation logged to metrics.jsonl and reported."""
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "clip_jax.train", "--config", "configs/demo.py",
           "--workdir", str(work), "--config.model.name=tiny", "--config.batch_size=16",
           "--config.total_steps=4", "--config.log_every_steps=2", "--config.eval.every_steps=4",
           f"--config.data.demo={tmp_path / 'corpus'}", "--config.data.demo_train_samples=300",
           "--config.data.tokenizer_vocab_size=300", "--config.eval.batch_size=40",
           "--config.checkpoint.every_steps=0", "--config.eval.fewshot_shots=(1,2)",
           "--config.data.workers=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=ENV_2_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    last = lines[-1]
    for key in ("eval/zeroshot/top1", "eval/retrieval/text_to_image_recall@1",
                "eval/fewshot/2shot", "data/samples"):
        assert key in last, key
    assert 0.0 <= last["eval/zeroshot/top1"] <= 1.0
    assert (work / "eval" / "step_4_report.json").is_file()
    assert (work / "tokenizer" / "tokenizer_config.json").is_file()
