"""tfds evaluation on a real prepared dataset: tensorflow-datasets' own CIFAR-10 builder prepares
a small CIFAR-10 (the CIFAR binary format, 20 train + 20 test images) into ``data_dir`` as
array_record, offline; ``python -m clip_jax.evaluate --dataset tfds:cifar10 --data-dir DIR`` then
reads it in a fresh process where ``import tensorflow`` fails, exactly as it reads one made by
``tfds build cifar10``. The zero-shot confusion matrix equals one computed from the source
images with ``InferenceModel.zero_shot``.

What stands in for the network and TensorFlow while preparing (reading needs neither):
``DownloadManager.download_and_extract`` returns the local directory of binary batches, the
builder's ``tf.io.gfile.GFile`` is ``open``, and the images are handed to tfds as PNG bytes
(PIL, lossless) where tfds would PNG-encode the arrays with TensorFlow. The builder is
:class:`tensorflow_datasets.image_classification.cifar.Cifar10` (its label file, splits,
features, version 3.0.2) re-declared only to skip its registration and to encode those PNGs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from unittest import mock

import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle as bundle_lib
from clip_jax import inference, models
from clip_jax.data import tokenizer as tok_lib
from clip_jax.data.transforms import normalize, resize_center_crop
from clip_jax.evaluate import datasets
from clip_jax.evaluate import templates as templates_lib

tfds = pytest.importorskip("tensorflow_datasets")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]  # batches.meta.txt of the real archive
PER_BATCH = {"data_batch_1.bin": 4, "data_batch_2.bin": 4, "data_batch_3.bin": 4,
             "data_batch_4.bin": 4, "data_batch_5.bin": 4, "test_batch.bin": 20}


def _write_cifar_binary(root: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The layout of cifar-10-binary.tar.gz, extracted: per record 1 label byte + 3072 bytes of
    planar RGB 32x32. Returns {file: (images (N, 32, 32, 3) uint8, labels (N,))}."""
    d = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(d)
    with open(os.path.join(d, "batches.meta.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n\n")
    rng = np.random.default_rng(0)
    out, start = {}, 0
    for name, n in PER_BATCH.items():
        labels = np.arange(start, start + n) % len(CLASSES)  # the train batches: 2 per class
        start += n
        base = rng.integers(0, 256, (len(CLASSES), 1, 1, 3))  # a colour per class, plus noise
        images = np.clip(base[labels] + rng.integers(-40, 40, (n, 32, 32, 3)), 0, 255)
        images = images.astype(np.uint8)
        with open(os.path.join(d, name), "wb") as f:
            for y, img in zip(labels, images):
                f.write(bytes([y]) + img.transpose(2, 0, 1).tobytes())
        out[name] = (images, labels)
    return out


def _prepare_cifar10(data_dir: str, source: str) -> None:
    from tensorflow_datasets.image_classification import cifar

    class Cifar10(cifar.Cifar10, skip_registration=True):
        def _generate_examples(self, split_prefix, filepaths):
            for key, record in super()._generate_examples(split_prefix, filepaths):
                buf = io.BytesIO()
                Image.fromarray(record["image"]).save(buf, format="PNG")
                yield key, dict(record, image=buf.getvalue())

    gfile = types.SimpleNamespace(io=types.SimpleNamespace(
        gfile=types.SimpleNamespace(GFile=open)))
    with mock.patch.object(cifar, "tf", gfile), mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", lambda self, url: source):
        Cifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """(data_dir, {batch file: (images, labels)})."""
    root = tmp_path_factory.mktemp("cifar10")
    batches = _write_cifar_binary(str(root / "download"))
    _prepare_cifar10(str(root / "tensorflow_datasets"), str(root / "download"))
    return str(root / "tensorflow_datasets"), batches


def test_cli_on_a_tfds_prepared_cifar10(tmp_path, cifar10):
    data_dir, batches = cifar10
    prepared = os.path.join(data_dir, "cifar10", "3.0.2")
    assert sorted(f for f in os.listdir(prepared) if "array_record" in f) == [
        "cifar10-test.array_record-00000-of-00001", "cifar10-train.array_record-00000-of-00001"]

    names = templates_lib.get_classnames("cifar10")
    prompts = [t.format(c) for t in templates_lib.get_templates("cifar10") for c in names]
    tok = tok_lib.train_tokenizer(prompts * 2, 300, str(tmp_path / "tok"))
    cfg = models.get_model_config("tiny").replace(text={"vocab_size": tok.vocab_size})
    params = models.CLIP(cfg).init(jax.random.key(3), *models.init_inputs(cfg))["params"]
    bundle = str(tmp_path / "bundle")
    bundle_lib.save_bundle(bundle, jax.device_get(params), cfg, tok)

    out = str(tmp_path / "report")
    blocker = tmp_path / "no_tf" / "tensorflow"  # the CLI must read without TensorFlow
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is blocked here')\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(blocker.parent), REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, "-m", "clip_jax.evaluate", "--model", bundle, "--eval",
         "zeroshot,fewshot", "--dataset", "tfds:cifar10", "--data-dir", data_dir,
         "--shots", "1,2", "--batch-size", "8", "--out", out],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    zs, fs = report["evals"]["zeroshot"], report["evals"]["fewshot"]
    assert report["datasets"] == {"cifar10": "tfds:cifar10"}
    assert zs["dataset"] == "cifar10:test" and zs["class_names"] == names  # CLIP's names
    assert zs["num_templates"] == 18 and zs["num_samples"] == 20
    assert fs["num_train"] == 20 and fs["num_test"] == 20 and "2shot" in fs
    assert printed["eval/zeroshot/acc1"] == pytest.approx(zs["acc1"])
    assert os.path.isfile(os.path.join(out, "zeroshot_confusion.png"))

    # The same numbers from the source bytes, read another way (no tfds, no dataset code).
    images, labels = batches["test_batch.bin"]
    pixels = normalize(np.stack([resize_center_crop(Image.fromarray(x), cfg.vision.image_size)
                                 for x in images]))
    probs = inference.load(bundle, batch_size=8).zero_shot(
        pixels, names, templates_lib.get_templates("cifar10"))
    expected = np.zeros((len(names), len(names)), np.int64)
    np.add.at(expected, (labels, probs.argmax(1)), 1)
    np.testing.assert_array_equal(np.array(zs["confusion_matrix"]), expected)
    assert zs["acc1"] == pytest.approx(np.trace(expected) / len(labels))


def test_tfds_dataset_reads_back_the_source_images_and_labels(cifar10):
    """The prepared test split holds exactly the binary batch's (image, label) pairs."""
    data_dir, batches = cifar10
    ds = datasets.labelled("tfds:cifar10", data_dir)
    got = sorted((int(y), img.tobytes()) for img, y in ds.samples(32))
    images, labels = batches["test_batch.bin"]
    assert got == sorted((int(y), img.tobytes()) for img, y in zip(images, labels))
    assert len(list(datasets.labelled("tfds:cifar10:train", data_dir).samples(32))) == 20
