"""The evaluation input path (clip_jax/evaluate/datasets.py) over webdataset shards: one ordered
pass, eval transform, CLIP normalisation and zero-padded batches (formerly the pipeline's
``EvalIterator``, whose collation duplicated ``datasets.batches``)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from test_pipeline import make_shards, png, write_tar

from clip_jax.data import tario, transforms
from clip_jax.evaluate import datasets

SIZE = 16


@pytest.fixture()
def card(tmp_path):
    """2 shards x 5 samples (classes 0..4) plus a shard of one 30x20 sample of class 3."""
    root = tmp_path / "shards"
    spec = make_shards(root, 2, 5)
    for s in range(2):  # add a class member to every sample
        path = os.path.join(root, f"{s:05d}.tar")
        members = []
        for key, image, caption in tario.iterate_samples(path, decode=False):
            members += [(f"{key}.png", image), (f"{key}.txt", caption.encode()),
                        (f"{key}.cls", str(int(key[-1])).encode())]
        write_tar(path, members)
    write_tar(os.path.join(root, "00002.tar"),
              [("k.png", png(7, 30, 20)), ("k.txt", b"last"), ("k.cls", b"3")])
    spec = spec.replace("00001", "00002")
    path = tmp_path / "card.json"
    path.write_text(json.dumps({"shards": spec, "classes": [f"c{i}" for i in range(5)]}))
    return str(path), spec


def test_batches_of_a_card_padded_and_normalised(card):
    path, spec = card
    ds = datasets.labelled(path)
    batches = list(datasets.batches(ds.samples(SIZE), 4))
    assert len(batches) == 3
    images, labels, n = batches[-1]
    assert n == 3 and images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.float32
    assert labels == [3, 4, 3]
    assert not images[3].any()  # zero padding
    img = Image.open(io.BytesIO(png(7, 30, 20))).convert("RGB")
    np.testing.assert_array_equal(images[2], transforms.eval_transform(img, SIZE))
    assert [y for _, ys, _ in batches for y in ys] == [j for _ in range(2) for j in range(5)] + [3]
    # a bundle's own mean / std go through the same transforms.normalize
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    custom = list(datasets.batches(ds.samples(SIZE), 4, mean, std))[-1][0]
    np.testing.assert_allclose(custom[2], (np.asarray(img.resize((SIZE, 24), Image.BICUBIC))
                                           [4:20] / 255 - 0.5) / 0.25, atol=1e-5)
    assert not custom[3].any()

    caps = datasets.captioned(path)
    got = [c for _, cs, _ in datasets.batches(caps.samples(SIZE), 4) for c in cs]
    assert got == [[f"s{s}-{j}"] for s in range(2) for j in range(5)] + [["last"]]
    assert caps.stats["skipped_corrupt_image"] == 0


def test_only_decoder_errors_count_as_corrupt(card, monkeypatch):
    """A bug in decoding propagates instead of being counted as a bad image; bad bytes count."""
    path, spec = card

    def broken_decode(data, *args, **kwargs):
        raise AttributeError("a programming error")

    with monkeypatch.context() as m:
        m.setattr(transforms, "decode_image", broken_decode)
        with pytest.raises(AttributeError):
            list(datasets.captioned(spec).samples(SIZE))
        with pytest.raises(AttributeError):
            list(datasets.labelled(path).samples(SIZE))

    root = os.path.dirname(spec)
    write_tar(os.path.join(root, "00002.tar"),
              [("k.jpg", b"\xff\xd8\xff not a jpeg"), ("k.txt", b"bad"), ("k.cls", b"1")])
    ds = datasets.labelled(path)
    assert len(list(ds.samples(SIZE))) == 10 and ds.stats["skipped_corrupt_image"] == 1


@pytest.mark.parametrize("spec, name", [
    ("tfds:cifar10", "cifar10"), ("tfds:cifar10:train", "cifar10_train"),
    ("tfds:imagenet2012/subset", "imagenet2012_subset"), ("data/demo/zeroshot.json", "demo"),
    ("folder:/x/oxford pets/", "oxford_pets"), ("/d/coco/{000..004}.tar", "coco"),
    ("/d/coco/000.tar", "coco"), ("gs://b/laion/{0..9}.tar::gs://b/cc/{0..3}.tar", "laion"),
    ("", "dataset"),
])
def test_short_name_of_a_spec(spec, name):
    """The names the evaluate CLI gives unnamed --datasets (eval/zeroshot_<name>/...)."""
    assert datasets.short_name(spec) == name
