"""Boxes in the data (LocCa, clip_jax/data/boxes.py): write_shards -> train pipeline with the
random crop, checked against the box of the pixels drawn there; bad box fields; exact resume;
the demo corpus's boxes against its pictures."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clip_jax.cli import UserError
from clip_jax.data import boxes, demo, pipeline, write_shards
from clip_jax.data.tario import iterate_samples

SIZE, L, K = 32, 24, 2


class CharTokenizer:
    """ids are character codes, 0 is padding."""

    def __call__(self, texts, context_length=77):
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [ord(c) for c in t][:context_length]
            out[i, :len(ids)] = ids
        return out


def picture(box, h=60, w=80) -> bytes:
    """A black picture with a white rectangle on the normalised ``box``."""
    arr = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (w, h, w, h), strict=True))
    arr[y0:y1, x0:x1] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def rows(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x0, y0 = rng.uniform(0.05, 0.5, 2)
        box = [float(x0), float(y0), float(x0 + rng.uniform(0.2, 0.4)),
               float(y0 + rng.uniform(0.2, 0.4))]
        box = [round(v * s) / s for v, s in zip(box, (80, 60, 80, 60), strict=True)]
        meta = {"boxes": [box], "box_captions": [f"white box {i}"]} if i % 4 else None
        out.append((f"{i:05d}", picture(box), "png", f"caption {i}", meta))
    return out


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("locca_shards"))
    write_shards.write_samples(rows(24), out, samples_per_shard=12)
    return os.path.join(out, "{00000..00001}.tar")


def iterator(spec, **kw):
    cfg = {"train": spec, "shuffle_buffer": 4, "workers": 0, "context_length": L,
           "worker_mode": "thread"}
    return pipeline.make_train_iterator(cfg, CharTokenizer(), SIZE, 4, seed=3, max_boxes=K, **kw)


def test_boxes_follow_the_crop_through_write_shards_and_the_pipeline(shard_dir):
    it = iterator(shard_dir)
    seen = without = 0
    for _ in range(6):
        b = next(it)
        assert b["boxes"].shape == (4, K, 4) and b["boxes"].dtype == np.float32
        assert b["box_valid"].shape == (4, K) and b["box_text"].shape == (4, K, L)
        for img, bx, ok, txt, cap in zip(b["image"], b["boxes"], b["box_valid"], b["box_text"],
                                         b["text"], strict=True):
            i = int("".join(chr(c) for c in cap if c).split()[-1])
            assert not ok[1]  # one box per sample at most
            if i % 4 == 0:  # no KEY.json: no box, the decoder captions
                assert not ok.any() and not bx.any() and not txt.any()
                without += 1
                continue
            # the white pixels of the cropped picture, found another way
            ys, xs = np.nonzero(img.mean(-1) > 127)
            ref = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / SIZE
            assert ok[0], (i, ref)
            np.testing.assert_allclose(bx[0], ref, atol=1.6 / SIZE)
            assert "".join(chr(c) for c in txt[0] if c) == f"white box {i}"
            seen += 1
    assert seen > 10 and without > 2
    it.close()


def test_resume_is_exact_with_boxes(shard_dir):
    a = iterator(shard_dir)
    for _ in range(3):
        next(a)
    state = a.get_state()
    want = [next(a) for _ in range(3)]
    b = iterator(shard_dir)
    b.set_state(state)
    got = [next(b) for _ in range(3)]
    for x, y in zip(want, got, strict=True):
        assert x.keys() == y.keys()
        assert all(x[k].tobytes() == y[k].tobytes() for k in x)
    c = pipeline.make_train_iterator({"train": shard_dir, "shuffle_buffer": 4, "workers": 0,
                                      "context_length": L}, CharTokenizer(), SIZE, 4, seed=3)
    next(c)
    with pytest.raises(ValueError, match="max_boxes"):  # a state of other batch fields
        b.set_state(c.get_state())
    a.close(), b.close(), c.close()


def test_crop_moves_clips_and_drops():
    bx = np.array([[0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 0.2, 0.2], [0.8, 0.8, 1.0, 1.0]])
    # a 100 x 100 image cropped to (left 10, top 10, 50 x 50)
    moved, keep = boxes.crop(bx, 100, 100, 10, 10, 50, 50)
    np.testing.assert_allclose(moved[0], [0, 0, 0.4, 0.4])
    np.testing.assert_allclose(moved[1], [0, 0, 0.2, 0.2])  # 1/4 of it left: dropped
    assert keep.tolist() == [True, False, False]  # the last one is outside the crop
    out, valid, caps = boxes.pad(moved, ["a", "b", "c"], keep, 2)
    assert valid.tolist() == [True, False] and caps == ["a", ""] and not out[1].any()


@pytest.mark.parametrize("meta, what", [
    ({"boxes": [[0.1, 0.2, 0.3]], "box_captions": ["x"]}, "list of"),
    ({"boxes": [[0.1, 0.2, 1.3, 0.4]], "box_captions": ["x"]}, "outside"),
    ({"boxes": [[0.5, 0.2, 0.3, 0.4]], "box_captions": ["x"]}, "x1 <= x0"),
    ({"boxes": [[0.1, 0.2, 0.3, 0.4]], "box_captions": []}, "box_captions"),
])
def test_bad_boxes_are_one_line_naming_shard_and_key(tmp_path, meta, what):
    img = picture([0.1, 0.1, 0.5, 0.5])
    with pytest.raises(UserError, match=what) as e:  # refused when written
        write_shards.write_samples([("00007", img, "png", "c", meta)], str(tmp_path / "w"), 4)
    assert "00000.tar" in str(e.value) and "'00007'" in str(e.value)
    assert "\n" not in str(e.value)
    # and when read from a shard written by another tool
    path = str(tmp_path / "00000.tar")
    with write_shards.open_tar_writer(path) as sink:
        for i in range(3):
            sink.write({"__key__": f"k{i}", "png": img, "txt": b"c",
                        "json": json.dumps(meta).encode()})
    it = pipeline.make_train_iterator({"train": path, "workers": 0, "context_length": L},
                                      CharTokenizer(), SIZE, 2, seed=0, max_boxes=K)
    with pytest.raises(UserError, match=what) as e:
        next(it)
    assert path in str(e.value) and "'k" in str(e.value) and "\n" not in str(e.value)


def test_demo_boxes_are_where_the_shapes_are(tmp_path):
    info = demo.generate(str(tmp_path), train_samples=24, eval_samples=12, image_size=32,
                         samples_per_shard=12, workers=1)
    n = 0
    spec = os.path.join(str(tmp_path), info["train_shards"])
    for _key, img, _cap, extras in iterate_samples(spec, extra_fields=("json",)):
        meta = json.loads(extras["json"])
        bx, caps = boxes.check(meta, "demo")
        assert len(bx) == meta["count"] and all(meta["shape"] in c for c in caps)
        assert all(meta["colour"] in c for c in caps) and len(set(caps)) == len(caps)
        bg = np.asarray(img).astype(int)
        corner = bg[0, 0]  # the background (never covered: objects keep off the border)
        differs = np.abs(bg - corner).max(-1) > 40
        for x0, y0, x1, y1 in np.rint(bx * 32).astype(int):
            assert differs[y0:y1, x0:x1].any()
        union = np.zeros_like(differs)
        for x0, y0, x1, y1 in np.rint(bx * 32).astype(int):
            union[y0:y1, x0:x1] = True
        assert not (differs & ~union).any()  # every drawn pixel lies in a box
        n += 1
    assert n == 24


def test_write_shards_cli_takes_a_json_column_of_boxes(tmp_path, capsys):
    import csv

    from clip_jax import cli
    box = [0.25, 0.25, 0.75, 0.5]
    (tmp_path / "a.png").write_bytes(picture(box))
    (tmp_path / "b.png").write_bytes(picture([0.1, 0.1, 0.3, 0.3]))

    def table(cells):
        with open(tmp_path / "t.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "meta"])
            for name, cell in zip(("a.png", "b.png"), cells, strict=True):
                w.writerow([name, f"a picture {name}", cell])

    good = json.dumps({"boxes": [box], "box_captions": ["white box"]})
    table([good, ""])  # the second row has no boxes
    argv = ["--input", str(tmp_path / "t.csv"), "--out", str(tmp_path / "s"), "--quiet",
            "--json-column", "meta"]
    run = lambda a: cli.run(lambda v: write_shards.main(v) and 0, a)  # as its __main__
    assert run(argv) == 0
    got = {k: ex.get("json") for k, _i, _c, ex in iterate_samples(
        str(tmp_path / "s" / "00000.tar"), decode=False, extra_fields=("json",))}
    assert json.loads(got["000000000"]) == json.loads(good) and got["000000001"] is None
    capsys.readouterr()
    for cell, what in (("{not json", "not JSON"), (json.dumps({"boxes": [[0.5, 0, 0.2, 1]],
                                                             "box_captions": ["x"]}), "x1 <= x0")):
        table([cell, ""])
        assert run([*argv[:3], str(tmp_path / "s2"), *argv[4:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], err
