"""Tests for the webdataset train pipeline (clip_jax/data/: shards, tario, stream, workers,
pipeline) and transforms."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import pipeline, shards, stream, tario, transforms

SIZE, L = 16, 16


class FakeTokenizer:
    """The tokenizer contract (texts, context_length) -> int32; ids are character codes."""

    def __call__(self, texts, context_length=77):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [ord(c) for c in t][:context_length]
            out[i, : len(ids)] = ids
        return out


def captions(batch) -> list[str]:
    return ["".join(chr(c) for c in row if c) for row in batch["text"]]


def png(seed: int, h: int = 20, w: int = 24) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, members) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_shards(root, n_shards: int, per_shard: int, prefix: str = "s") -> str:
    """Shards ``root/00000.tar..`` whose captions are ``{prefix}{shard}-{i}``; returns a spec."""
    os.makedirs(root, exist_ok=True)
    for s in range(n_shards):
        members = []
        for j in range(per_shard):
            key = f"{s:03d}{j:04d}"
            members += [(f"{key}.png", png(s * 1000 + j, 16 + j % 5, 18)),
                        (f"{key}.txt", f"{prefix}{s}-{j}".encode())]
        write_tar(os.path.join(root, f"{s:05d}.tar"), members)
    return os.path.join(str(root), f"{{00000..{n_shards - 1:05d}}}.tar")


def cfg(spec, **kw):
    base = {"train": spec, "shuffle_buffer": 4, "workers": 0, "resampled": False,
            "context_length": L, "worker_mode": "thread"}
    base.update(kw)
    return base


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    return all(x.keys() == y.keys() and all(
        x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x)
        for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def shards8(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("s8"), 8, 6)


# ---------------------------------------------------------------------------------------------
# specs


def test_shard_specs():
    assert shards.expand_braces("a/{08..11}.tar") == ["a/08.tar", "a/09.tar", "a/10.tar",
                                                        "a/11.tar"]
    assert shards.expand_braces("{a,b}{0..1}") == ["a0", "a1", "b0", "b1"]
    assert shards.expand_shards(["x{1..2}", "y"]) == ["x1", "x2", "y"]
    assert shards.expand_shards("pipe:cat /d/{0..1}.tar") == ["pipe:cat /d/0.tar",
                                                                 "pipe:cat /d/1.tar"]
    src = shards.parse_sources("gs://b/{000..001}.tar@0.75::/l/{0..2}.tar")
    assert [s.shards for s in src] == [("gs://b/000.tar", "gs://b/001.tar"),
                                       ("/l/0.tar", "/l/1.tar", "/l/2.tar")]
    assert [s.weight for s in src] == [0.75, 1.0]
    src = shards.parse_sources([{"shards": "a{0..1}", "weight": 2}, {"shards": ["c"]}])
    assert [(s.shards, s.weight) for s in src] == [(("a0", "a1"), 2.0), (("c",), 1.0)]
    with pytest.raises(ValueError, match="weight"):
        shards.parse_sources([{"shards": "a", "weight": 0}])


# ---------------------------------------------------------------------------------------------
# sharding and modes


def test_epoch_split_two_processes_two_workers(shards8):
    """8 shards x 6 samples over 2 processes x 2 workers: every epoch sees each sample once."""
    per_process = []
    for p in range(2):
        it = pipeline.make_train_iterator(cfg(shards8, workers=2), FakeTokenizer(), SIZE, 3,
                                          seed=5, process_index=p, process_count=2)
        # each consumer reads 2 shards = 12 samples = 4 batches per epoch; 2 workers: 8/epoch
        batches = take(it, 16)
        it.close()
        assert batches[0]["image"].shape == (3, SIZE, SIZE, 3)
        # raw uint8 pixels (the train step normalises on the device), int32 token ids
        assert batches[0]["image"].dtype == np.uint8 and batches[0]["text"].dtype == np.int32
        per_process.append([c for b in batches for c in captions(b)])
    everything = {f"s{s}-{j}" for s in range(8) for j in range(6)}
    for epoch in range(2):
        seen = [c for caps in per_process for c in caps[24 * epoch: 24 * (epoch + 1)]]
        assert len(seen) == 48 and set(seen) == everything  # exactly once
        p0 = set(per_process[0][24 * epoch: 24 * (epoch + 1)])
        assert not p0 & set(per_process[1][24 * epoch: 24 * (epoch + 1)])
    # shard order / assignment is reshuffled between epochs
    assert per_process[0][:24] != per_process[0][24:]


def test_worker_modes_agree(shards8):
    """Batches do not depend on threads vs processes (fixed round robin, pure worker streams)."""
    out = {}
    for mode in ("thread", "process"):
        it = pipeline.make_train_iterator(cfg(shards8, workers=2, worker_mode=mode),
                                          FakeTokenizer(), SIZE, 4, seed=1)
        out[mode] = take(it, 6)
        it.close()
    assert same(out["thread"], out["process"])


def test_resampled_mode(shards8):
    def run(seed, n=12):
        it = pipeline.make_train_iterator(cfg(shards8, resampled=True), FakeTokenizer(),
                                          SIZE, 4, seed=seed)
        batches = take(it, n)
        it.close()
        return batches

    a, b, c = run(0), run(0), run(1)
    assert same(a, b)
    assert not same(a, c)
    counts = Counter(cap for batch in a for cap in captions(batch))
    # 48 draws over 48 samples: shards are drawn with replacement, so some repeat, some miss
    assert max(counts.values()) >= 2 and len(counts) < 48
    # resampling needs no shard per reader: 2 shards for 2 x 2 readers is fine
    two = shards8.replace("{00000..00007}", "{00000..00001}")
    it = pipeline.make_train_iterator(cfg(two, resampled=True, workers=2), FakeTokenizer(),
                                      SIZE, 4, seed=0, process_index=1, process_count=2)
    assert len(captions(next(it))) == 4
    it.close()


def test_weighted_sources(tmp_path, shards8):
    rare = make_shards(tmp_path / "rare", 2, 6, prefix="r")
    it = pipeline.make_train_iterator(cfg(f"{shards8}@3::{rare}@1", resampled=True),
                                      FakeTokenizer(), SIZE, 8, seed=0)
    caps = [c for b in take(it, 10) for c in captions(b)]
    it.close()
    frac = sum(c.startswith("r") for c in caps) / len(caps)
    assert 0.1 < frac < 0.4  # weight 1/4


def test_too_few_shards(tmp_path):
    spec = make_shards(tmp_path, 3, 2)
    with pytest.raises(ValueError, match=r"3 shard.*2 x 2 = 4"):
        pipeline.make_train_iterator(cfg(spec, workers=2), FakeTokenizer(), SIZE, 2, seed=0,
                                     process_index=0, process_count=2)


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_missing_shard_names_path(tmp_path, mode):
    make_shards(tmp_path, 1, 2)
    missing = str(tmp_path / "00001.tar")
    spec = [str(tmp_path / "00000.tar"), missing]
    kw = {"workers": 0} if mode == "inline" else {"workers": 2, "worker_mode": "process"}
    it = pipeline.make_train_iterator(cfg(spec, shuffle_buffer=0, **kw), FakeTokenizer(), SIZE,
                                      2, seed=0)
    with pytest.raises(FileNotFoundError, match="00001.tar"):
        take(it, 4)
    it.close()


# ---------------------------------------------------------------------------------------------
# exact resume


def _corrupt_shards(root) -> str:
    """Two good shards plus bad members and a truncated shard (all skipped deterministically)."""
    spec = make_shards(root, 4, 5)
    write_tar(os.path.join(root, "00004.tar"), [
        ("a.jpg", b"this is not a jpeg"), ("a.txt", b"garbage image"),
        ("b.png", png(1)), ("b.txt", b"   "),
        ("c.png", png(2)), ("c.json", json.dumps({"caption": "json caption"}).encode()),
        ("d.txt", b"no image"), ("e.png", png(3)), ("e.txt", b"e ok")])
    return spec.replace("00003", "00004")


@pytest.mark.parametrize("workers,mode,resampled,mixed", [
    (0, "thread", False, False), (2, "thread", False, True), (2, "process", True, False)])
def test_exact_resume(tmp_path, workers, mode, resampled, mixed):
    spec = _corrupt_shards(tmp_path / "a")
    if mixed:
        other = make_shards(tmp_path / "b", 2, 4, prefix="o")
        spec = [{"shards": spec, "weight": 2.0}, {"shards": other, "weight": 1.0}]
    c = cfg(spec, workers=workers, worker_mode=mode, resampled=resampled, shuffle_buffer=6)
    it = pipeline.make_train_iterator(c, FakeTokenizer(), SIZE, 3, seed=3)
    take(it, 5)
    text = json.dumps(it.get_state())
    assert len(text) < 3000
    stats = dict(it.stats)
    expected = take(it, 12)  # crosses epoch boundaries
    expected_stats = dict(it.stats)
    it.close()

    it2 = pipeline.make_train_iterator(c, FakeTokenizer(), SIZE, 3, seed=3)
    it2.set_state(json.loads(text))
    assert it2.stats == stats
    assert same(take(it2, 12), expected)
    assert it2.stats == expected_stats
    it2.close()

    other = pipeline.make_train_iterator(c, FakeTokenizer(), SIZE, 3, seed=4)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(json.loads(text))


def test_corrupt_data_counted_not_fatal(tmp_path):
    root = tmp_path / "c"
    spec = _corrupt_shards(root)
    with tarfile.open(os.path.join(root, "00000.tar")) as tar:
        third = tar.getmembers()[4]  # the 3rd sample's image
    with open(os.path.join(root, "00000.tar"), "rb") as f:
        good = f.read()
    with open(os.path.join(root, "00005.tar"), "wb") as f:  # cut inside its data
        f.write(good[: third.offset_data + 10])
    with open(os.path.join(root, "00006.tar"), "wb") as f:
        f.write(b"\x00\x01 not a tar at all" * 50)
    trunc_png = png(9)[:60]
    write_tar(os.path.join(root, "00007.tar"), [("t.png", trunc_png), ("t.txt", b"cut png")])
    with open(os.path.join(root, "00008.tar"), "wb") as f:  # cut inside its header
        f.write(good[: third.offset + 100])
    spec = spec.replace("00004", "00008")

    stats = tario.new_stats()
    got = list(tario.iterate_samples(spec, stats=stats))
    caps = [c for _, _, c in got]
    assert caps[-6:] == ["json caption", "e ok", "s0-0", "s0-1", "s0-0", "s0-1"]
    assert len(got) == 4 * 5 + 2 + 2 + 2
    assert stats["skipped_corrupt_image"] == 2  # garbage jpg, truncated png
    assert stats["skipped_empty_caption"] == 1
    assert stats["skipped_no_image"] == 1
    assert stats["skipped_bad_tar"] == 3  # truncated data, not a tar, truncated header

    it = pipeline.make_train_iterator(cfg(spec, shuffle_buffer=2), FakeTokenizer(), SIZE, 4,
                                      seed=0)
    take(it, 13)  # two epochs
    s = it.stats
    assert s["skipped_bad_tar"] >= 3 and s["skipped_corrupt_image"] >= 2
    assert s["skipped_empty_caption"] >= 1 and s["samples"] == 52
    it.close()


def test_only_decoder_errors_count_as_corrupt(tmp_path, monkeypatch):
    """A bug in the crop / decode code propagates instead of being counted as a bad image;
    too many undecodable images in a row raise with the last decoder error chained."""
    spec = make_shards(tmp_path / "ok", 2, 3)

    def broken_crop(img, size, params):
        raise TypeError("a programming error")

    with monkeypatch.context() as m:
        m.setattr(transforms, "crop_resize", broken_crop)  # the stream's crop + resize
        it = pipeline.make_train_iterator(cfg(spec), FakeTokenizer(), SIZE, 2, seed=0)
        with pytest.raises(TypeError, match="programming error"):
            next(it)
        it.close()

    def broken_decode(data, *args, **kwargs):
        raise AttributeError("another programming error")

    with monkeypatch.context() as m:
        m.setattr(transforms, "decode_image", broken_decode)
        with pytest.raises(AttributeError):
            list(tario.iterate_samples(spec))
        # (the evaluation path's counterpart: tests/test_datasets.py)

    bad = tmp_path / "bad"
    bad.mkdir()
    write_tar(os.path.join(bad, "00000.tar"),
              [m for i in range(6) for m in ((f"k{i}.jpg", b"\xff\xd8\xff not a jpeg"),
                                             (f"k{i}.txt", b"caption"))])
    monkeypatch.setattr(stream, "_MAX_CONSECUTIVE_CORRUPT", 3)
    it = pipeline.make_train_iterator(cfg(str(bad / "00000.tar")), FakeTokenizer(), SIZE, 2,
                                      seed=0)
    with pytest.raises(RuntimeError, match="4 undecodable images in a row") as info:
        next(it)
    assert isinstance(info.value.__cause__, transforms.DECODE_ERRORS)
    assert "cannot identify image" in str(info.value.__cause__)
    it.close()


# ---------------------------------------------------------------------------------------------
# shard specs (braceexpand), iterate_samples, transforms


def test_brace_zero_padding_keeps_width():
    """braceexpand keeps the width of zero-padded bounds, as the former hand-written parser."""
    assert shards.expand_braces("/d/{000000..000009}.tar") == [
        f"/d/{i:06d}.tar" for i in range(10)]
    assert shards.expand_braces("{0009..0011}") == ["0009", "0010", "0011"]
    assert shards.expand_braces("{10..08}") == ["10", "09", "08"]
    assert shards.expand_braces("{8..11}") == ["8", "9", "10", "11"]  # no padding: none added
    assert shards.expand_shards("a/{00000..41407}.tar")[-1] == "a/41407.tar"
    assert len(shards.expand_shards("a/{00000..41407}.tar")) == 41408


def test_iterate_samples_pipe(tmp_path):
    spec = make_shards(tmp_path, 2, 3)
    local = list(tario.iterate_samples(spec, decode=False))
    piped = list(tario.iterate_samples(f"pipe:cat {spec}", decode=False))
    assert local == piped and len(local) == 6
    key, data, caption = local[0]
    assert (key, caption) == ("0000000", "s0-0") and data == png(0, 16, 18)


def test_transforms():
    rng_img = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    img = Image.fromarray(rng_img)
    a = transforms.train_transform(img, 32, np.random.default_rng(1))
    b = transforms.train_transform(img, 32, np.random.default_rng(1))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    for seed in range(50):
        left, top, w, h = transforms.random_resized_crop_params(80, 50,
                                                                np.random.default_rng(seed))
        assert 0 <= left and left + w <= 80 and 0 <= top and top + h <= 50
        assert 0.9 * 4000 * 0.99 <= w * h <= 4000 or (h == 50 and w == round(50 * 4 / 3))
    white = transforms.normalize(np.full((2, 1, 1, 3), 255, np.uint8))
    expect = (1 - np.array(transforms.CLIP_MEAN)) / np.array(transforms.CLIP_STD)
    np.testing.assert_allclose(white[0, 0, 0], expect, rtol=1e-6)
    # eval: shorter side -> 32 (80x50 -> 51x32), center crop
    ref = np.asarray(img.resize((51, 32), Image.BICUBIC))[:, 10:42]
    np.testing.assert_array_equal(transforms.resize_center_crop(img, 32), ref)
    # JPEG draft decoding keeps both sides >= min_size
    buf = io.BytesIO()
    Image.fromarray(np.zeros((400, 300, 3), np.uint8)).save(buf, format="JPEG")
    small = transforms.decode_image(buf.getvalue(), min_size=70)
    assert small.size == (75, 100) and small.mode == "RGB"


def test_resume_at_every_batch(tmp_path):
    """Restoring the state saved after any number of batches continues the same sequence."""
    spec = [{"shards": _corrupt_shards(tmp_path / "a"), "weight": 1.0},
            {"shards": make_shards(tmp_path / "b", 1, 7, prefix="o"), "weight": 0.5}]
    c = cfg(spec, shuffle_buffer=5)
    it = pipeline.make_train_iterator(c, FakeTokenizer(), SIZE, 2, seed=9)
    states, batches = [], []
    for _ in range(24):
        states.append(json.dumps(it.get_state()))
        batches.append(next(it))
    for k in range(0, 21, 2):
        it2 = pipeline.make_train_iterator(c, FakeTokenizer(), SIZE, 2, seed=9)
        it2.set_state(json.loads(states[k]))
        assert same(take(it2, 3), batches[k: k + 3]), k


def test_stream_core_without_processes(tmp_path):
    """stream.BatchMaker alone (no worker pool): its state restores the same next batches, and
    the iterator's batches are exactly its batches."""
    spec = _corrupt_shards(tmp_path / "a")
    wspec = stream.WorkerSpec(tuple(shards.parse_sources(spec)), seed=2, consumer=0,
                              num_consumers=1, resampled=False, shuffle_window=8, batch_size=3,
                              image_size=SIZE, context_length=L)
    maker = stream.BatchMaker(wspec, FakeTokenizer())
    take_n = [maker.next_batch() for _ in range(4)]
    state = json.loads(json.dumps(maker.state()))
    expected = [maker.next_batch() for _ in range(6)]
    maker.close()
    again = stream.BatchMaker(wspec, FakeTokenizer(), state)
    assert same([again.next_batch() for _ in range(6)], expected)
    again.close()
    it = pipeline.make_train_iterator(cfg(spec, shuffle_buffer=4), FakeTokenizer(), SIZE, 3,
                                      seed=2)
    assert same(take(it, 10), take_n + expected)
    it.close()


# A program that never closes its iterator: its atexit check (registered first, so run last)
# lists our threads still alive once the library's own exit handlers ran.
_UNCLOSED = """
import atexit, os, sys, threading
def check():
    alive = [t.name for t in threading.enumerate() if t.name.startswith("clip_jax")]
    print("alive:", alive, flush=True)
    if alive:
        os._exit(3)
atexit.register(check)
import jax, numpy as np
from clip_jax import input_pipeline
from clip_jax.data import pipeline
class Tok:
    def __call__(self, texts, context_length=77):
        return np.ones((len(list(texts)), context_length), np.int32)
it = pipeline.make_train_iterator({"train": sys.argv[1], "shuffle_buffer": 4, "workers": 2,
    "resampled": True, "context_length": 8, "worker_mode": "thread"}, Tok(), 16, 3, seed=1)
sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
pre = input_pipeline.Prefetcher(sharding, it, depth=2)
next(pre)
print("threads:", sorted(t.name for t in threading.enumerate() if t.name.startswith("clip_jax")))
"""


def test_threads_of_an_unclosed_iterator_stop_before_the_interpreter_finalizes(shards8):
    """CPython kills daemon threads that wake during finalization with pthread_exit, which
    aborts the process (exit 134) when their stack holds C++ frames (seen in CI): the library
    stops the prefetcher, collector and thread workers at exit when the program did not."""
    run = subprocess.run([sys.executable, "-c", _UNCLOSED, shards8], capture_output=True,
                         text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    started = run.stdout.split("threads:")[1].splitlines()[0]
    for name in ("clip_jax-prefetch", "clip_jax-data-collector"):
        assert name in started  # the check saw them running, then stopped
    assert "alive: []" in run.stdout
