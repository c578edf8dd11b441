"""A prepared tfds image-text dataset as the training source (clip_jax/data/tfds_source.py).

The dataset is tensorflow-datasets' own ``coco_captions`` builder (config 2014, version 1.1.0:
its features, split layout and array_record files as ``tfds build coco_captions
--file_format array_record`` writes them), prepared offline from local examples: only its
``_split_generators`` / ``_generate_examples`` (which download COCO) are replaced, and
``coco.tf.int64`` (its one use of TensorFlow) is NumPy's. Record ``i`` has ``i % 3 + 1``
captions ``"cap {i} {j}"``; record 4 has none, record 2's image does not decode, and one stored
record is overwritten with bytes that are no tf.Example (as a damaged file would be).
"""

from __future__ import annotations

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time
import types
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import hashing, pipeline, tfds_source

tfds = pytest.importorskip("tensorflow_datasets")

from test_pipeline import FakeTokenizer, captions, make_shards  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, NO_CAPTION, BAD_IMAGE, DAMAGED = 40, 4, 2, 7
NAME = "coco_captions/2014"


def _jpeg(i: int) -> bytes:
    arr = np.random.default_rng(i).integers(0, 255, (20 + i % 7, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _prepare(data_dir: str) -> list[int]:
    """Prepare coco_captions/2014 under ``data_dir``; returns the ``image/id`` of each stored
    train record, in file order (tfds shuffles examples as it writes them)."""
    from tensorflow_datasets.object_detection import coco, coco_captions

    class CocoCaptions(coco_captions.CocoCaptions, skip_registration=True):
        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator("train", gen_kwargs={"n": N_TRAIN, "first": 0}),
                    tfds.core.SplitGenerator("val", gen_kwargs={"n": 3, "first": 1000})]

        def _generate_examples(self, n, first):
            for i in range(first, first + n):
                yield i, {"image": b"\xff\xd8\xffnot a jpeg" if i == BAD_IMAGE else _jpeg(i),
                          "image/filename": f"{i:012d}.jpg", "image/id": i, "objects": [],
                          "captions": [{"text": f"cap {i} {j}", "id": 10 * i + j}
                                       for j in range(0 if i == NO_CAPTION else i % 3 + 1)]}

    with mock.patch.object(coco, "tf", types.SimpleNamespace(int64=np.int64)):
        CocoCaptions(data_dir=data_dir, file_format="array_record",
                     config="2014").download_and_prepare()
    from array_record.python import array_record_module

    (path,) = glob.glob(os.path.join(data_dir, "coco_captions", "2014", "1.1.0", "*-train.*"))
    reader = array_record_module.ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    parser = tfds.core.example_parser.ExampleParserNp(
        {"image/id": tfds.features.Tensor(shape=(), dtype=np.int64).get_serialized_info()})
    ids = [int(parser.parse_example(r)["image/id"]) for r in records]
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for i, r in zip(ids, records, strict=True):
        writer.write(b"\x0a\xff\xff\x01" if i == DAMAGED else r)
    writer.close()
    return ids


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, _prepare(data_dir)


VALID = sorted(set(range(N_TRAIN)) - {NO_CAPTION, BAD_IMAGE, DAMAGED})


def _cfg(data_dir, **kw):
    base = {"source": "tfds", "tfds_name": NAME, "tfds_data_dir": data_dir,
            "shuffle_buffer": 4, "workers": 0, "context_length": 16, "worker_mode": "thread"}
    base.update(kw)
    return base


def _record(caption: str) -> int:
    return int(caption.split()[1])


def test_permuted_index_is_a_permutation():
    for n in (1, 2, 3, 5, 17, 64, 100, 1000):
        for key in (0, 12345):
            got = [hashing.permuted_index(i, n, key) for i in range(n)]
            assert sorted(got) == list(range(n))
    a = [hashing.permuted_index(i, 1000, 1) for i in range(1000)]
    assert a != sorted(a) and a != [hashing.permuted_index(i, 1000, 2) for i in range(1000)]
    with pytest.raises(IndexError):
        hashing.permuted_index(5, 5, 0)


def test_two_processes_read_disjoint_records_covering_the_split(coco):
    """Process 0 and 1 (2 thread workers each) in epoch 0: disjoint, together every valid
    record once; their captions are the records' own; the skipped records are counted."""
    coco, _ = coco
    seen, stats = [], {}
    for p in range(2):
        it = pipeline.make_train_iterator(_cfg(coco, workers=2, shuffle_buffer=3), FakeTokenizer(),
                                          16, 1, 7, process_index=p, process_count=2)
        mine, done = [], set()
        while len(done) < 2:
            batch = next(it)
            w = (it.get_state()["batches"] - 1) % 2
            if it.get_state()["workers"][w]["shuffle"]["last"][0] > 0:  # from epoch 1 on
                done.add(w)
            elif w not in done:
                mine.append(captions(batch)[0])
        it.close()
        seen.append(mine)
        for k, v in it.stats.items():
            stats[k] = stats.get(k, 0) + v
    a, b = ({_record(c) for c in s} for s in seen)
    assert len(a) == len(seen[0]) and len(b) == len(seen[1])  # no repeat within an epoch
    assert not a & b and sorted(a | b) == VALID
    for c in seen[0] + seen[1]:
        i, j = _record(c), int(c.split()[2])
        assert c == f"cap {i} {j}" and 0 <= j < i % 3 + 1
    assert stats["skipped_corrupt_image"] >= 1 and stats[tfds_source.BAD_RECORD] >= 1


def test_one_epoch_order_captions_and_skip_counters_match_a_reference(coco):
    """Shuffle window 0, one reader: epoch 0 is the keyed permutation of the records minus the
    unusable ones, each with the caption its hash picks; the three kinds of skip counted."""
    coco, stored = coco
    seed = 3
    it = pipeline.make_train_iterator(_cfg(coco, shuffle_buffer=0), FakeTokenizer(), 16, 1, seed)
    got = [captions(next(it))[0] for _ in range(len(VALID))]
    key = hashing.hash_ints(seed, 0, 0, tfds_source._TAG_ORDER)
    positions = [hashing.permuted_index(i, N_TRAIN, key) for i in range(N_TRAIN)]
    order = [stored[r] for r in positions]  # example ids in the order read
    expected = []
    for r, i in zip(positions, order, strict=True):
        if i in VALID:
            pick = hashing.hash_ints(seed, 0, 0, r, tfds_source._TAG_CAPTION) % (i % 3 + 1)
            expected.append(f"cap {i} {pick}")
    assert got == expected
    # records are read as needed: the unusable ones before the last valid one are counted
    read = order[:max(order.index(r) for r in VALID) + 1]
    assert {k: it.stats.get(k, 0) for k in ("skipped_corrupt_image", "skipped_empty_caption",
                                            tfds_source.BAD_RECORD, "samples")} == {
        "skipped_corrupt_image": int(BAD_IMAGE in read),
        "skipped_empty_caption": int(NO_CAPTION in read),
        tfds_source.BAD_RECORD: int(DAMAGED in read), "samples": len(VALID)}
    second = {_record(captions(next(it))[0]) for _ in range(len(VALID))}
    assert sorted(second) == VALID  # epoch 1: every record again, in another order


def test_resume_mid_epoch_and_mixture_with_shards_are_exact(coco, tmp_path):
    """A tfds + webdataset mixture (2 process workers): restoring the state saved after k
    batches gives the same batches as running on; both sources are drawn about by weight."""
    coco, _ = coco
    spec = make_shards(tmp_path / "shards", 2, 6, prefix="s")
    cfg = _cfg(coco, source="mix", train=spec, tfds_weight=3.0, workers=2,
               worker_mode="process")
    with pipeline.make_train_iterator(cfg, FakeTokenizer(), 16, 4, 1) as it:
        head = [next(it) for _ in range(7)]
        state = it.get_state()
        tail = [next(it) for _ in range(9)]
    with pipeline.make_train_iterator(cfg, FakeTokenizer(), 16, 4, 1) as again:
        again.set_state(json.loads(json.dumps(state)))
        resumed = [next(again) for _ in range(9)]
    for x, y in zip(tail, resumed, strict=True):
        assert x["image"].tobytes() == y["image"].tobytes()
        np.testing.assert_array_equal(x["text"], y["text"])
    texts = [c for b in head + tail for c in captions(b)]
    from_tfds = sum(c.startswith("cap ") for c in texts) / len(texts)
    assert 0.6 < from_tfds < 0.9  # weight 3 : 1
    with pipeline.make_train_iterator(_cfg(coco, tfds_caption_key="image/filename"),
                                      FakeTokenizer(), 16, 4, 1) as other:
        with pytest.raises(ValueError, match="configuration differs"):
            other.set_state(state)


def test_bad_configuration_is_one_line(coco):
    coco, _ = coco
    tok = FakeTokenizer()
    for kw, match in [({"tfds_caption_key": "captions/txt"}, "no feature 'captions/txt'"),
                      ({"tfds_image_key": "image/id"}, "cannot be the image"),
                      ({"tfds_split": "nope"}, "no split"),
                      ({"tfds_name": "coco_captions/2017"}, "not prepared")]:
        with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
            pipeline.make_train_iterator(_cfg(coco, **kw), tok, 16, 4, 0)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="too few records"):
        pipeline.make_train_iterator(_cfg(coco, workers=3), tok, 16, 4, 0, process_count=14)


# -- training: SIGKILL + restart == uninterrupted ------------------------------------------------

STEPS, EVERY = 100, 10


def _train_cmd(work, data_dir):
    return [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
            "--workdir", str(work), f"--config.total_steps={STEPS}",
            f"--config.checkpoint.every_steps={EVERY}", "--config.log_every_steps=5",
            "--config.batch_size=8", "--config.data.source=tfds",
            f"--config.data.tfds_name={NAME}", f"--config.data.tfds_data_dir={data_dir}",
            "--config.data.shuffle_buffer=8", "--config.data.tokenizer_vocab_size=300",
            "--config.logging.tensorboard=False"]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _losses(work):
    with open(os.path.join(work, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    return [(r["step"], r["loss"], r["grad_norm"], r["param_norm"]) for r in rows if "loss" in r]


def test_training_from_tfds_resumes_exactly_after_sigkill(coco, tmp_path):
    coco, _ = coco
    ref = subprocess.run(_train_cmd(tmp_path / "ref", coco), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, coco), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = run / "checkpoints" / str(EVERY) / "commit_success.txt"
    t0 = time.time()
    while not done.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 400
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert EVERY <= _losses(run)[-1][0] < STEPS  # it died part-way
    again = subprocess.run(_train_cmd(run, coco), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    a, b = _losses(tmp_path / "ref"), _losses(run)
    assert [s for s, *_ in a] == [s for s, *_ in b] == list(range(5, STEPS + 1, 5))
    np.testing.assert_allclose(np.array(b)[:, 1:], np.array(a)[:, 1:], rtol=1e-5)
    counters = []
    for work in (tmp_path / "ref", run):
        with open(os.path.join(work, "metrics.jsonl")) as f:
            last = [json.loads(x) for x in f if '"loss"' in x][-1]
        counters.append({k: v for k, v in last.items() if k.startswith("data/")})
    assert counters[0] == counters[1]  # the data counters resume with the iterator state
    assert counters[0]["data/samples"] == 8 * STEPS
    assert counters[0]["data/skipped_corrupt_image"] > 0 and counters[0][
        "data/" + tfds_source.BAD_RECORD] > 0
