"""Tests for the shard writer (clip_jax/data/write_shards.py), read back with our tar reader
(clip_jax/data/tario.py)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import tario, write_shards


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (12 + seed % 4, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def read_back(out_dir: str, n_shards: int) -> list[tuple[str, bytes, str]]:
    spec = os.path.join(out_dir, f"{{00000..{n_shards - 1:05d}}}.tar")
    return list(tario.iterate_samples(spec, decode=False))


def check_metadata(out_dir: str, expected_sizes: dict) -> None:
    sizes, sums = write_shards.read_metadata(out_dir)
    assert sizes == expected_sizes
    assert set(sums) == set(sizes)
    for name, digest in sums.items():
        with open(os.path.join(out_dir, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    assert not [f for f in os.listdir(out_dir) if f.endswith(".tmp")]


@pytest.fixture()
def csv_input(tmp_path):
    """11 images (PNG, JPEG) listed in a CSV, plus a missing file and an empty caption."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows, expected = [], []
    for i in range(11):
        ext, fmt = ("jpg", "JPEG") if i % 3 == 0 else ("png", "PNG")
        data = image_bytes(i, fmt)
        (img_dir / f"im{i}.{ext}").write_bytes(data)
        path = f"imgs/im{i}.{ext}" if i % 2 else str(img_dir / f"im{i}.{ext}")
        rows.append({"filepath": path, "caption": f"caption number {i}, with comma"})
        expected.append((data, f"caption number {i}, with comma"))
    rows.insert(4, {"filepath": "imgs/missing.png", "caption": "gone"})
    rows.insert(7, {"filepath": "imgs/im1.png", "caption": "  "})
    path = tmp_path / "list.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["filepath", "caption"])
        w.writeheader()
        w.writerows(rows)
    return str(path), expected


def test_csv_round_trip(tmp_path, csv_input, capsys):
    path, expected = csv_input
    out = str(tmp_path / "shards")
    summary = write_shards.main(["--input", path, "--out", out, "--samples-per-shard", "4",
                                 "--quiet"])
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["samples"] == 11 and summary["shards"] == 3 and summary["written"] == 3
    assert summary["skipped_missing_image"] == 1 and summary["skipped_empty_caption"] == 1
    assert summary["pattern"] == os.path.join(out, "{00000..00002}.tar")
    check_metadata(out, {"00000.tar": 4, "00001.tar": 4, "00002.tar": 3})
    got = read_back(out, 3)
    assert [k for k, _, _ in got] == [f"{i:09d}" for i in range(11)]
    assert [(d, c) for _, d, c in got] == expected
    decoded = list(tario.iterate_samples(summary["pattern"]))
    assert decoded[3][1].size == (10, 12 + 3 % 4)


def test_interrupted_cli_run_resumes(tmp_path, csv_input):
    path, expected = csv_input
    out = str(tmp_path / "shards")
    args = ["--input", path, "--out", out, "--samples-per-shard", "4", "--quiet"]
    write_shards.main(args)
    original = {n: (tmp_path / "shards" / n).read_bytes() for n in ("00001.tar", "00002.tar")}
    keep = os.stat(os.path.join(out, "00000.tar")).st_mtime_ns
    # an interrupted run: a half-written shard 1 in place, shard 2 never written (and not
    # recorded), a temporary file left by a dead writer
    with open(os.path.join(out, "00001.tar"), "r+b") as f:
        f.truncate(1000)
    os.remove(os.path.join(out, "00002.tar"))
    sizes, sums = write_shards.read_metadata(out)
    del sizes["00002.tar"], sums["00002.tar"]
    write_shards._write_json(os.path.join(out, "sizes.json"), sizes)
    write_shards._write_json(os.path.join(out, "checksums.json"), sums)
    (tmp_path / "shards" / ".00002.tar.999999999.tmp").write_bytes(b"partial")

    summary = write_shards.main(args)
    assert (summary["kept"], summary["written"]) == (1, 2)
    assert os.stat(os.path.join(out, "00000.tar")).st_mtime_ns == keep  # not rewritten
    for name, data in original.items():  # deterministic: byte-identical rewrite
        assert (tmp_path / "shards" / name).read_bytes() == data
    check_metadata(out, {"00000.tar": 4, "00001.tar": 4, "00002.tar": 3})
    assert [(d, c) for _, d, c in read_back(out, 3)] == expected


def samples(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise KeyboardInterrupt("simulated crash")
        yield f"k{i:04d}", image_bytes(i), "png", f"sample {i}"


def test_write_samples_api_and_resume(tmp_path):
    out = str(tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        write_shards.write_samples(samples(10, fail_at=6), out, 4, start_index=3)
    # shard 3 is complete and recorded; the interrupted shard 4 left nothing behind
    assert sorted(f for f in os.listdir(out) if f.endswith(".tar")) == ["00003.tar"]
    check_metadata(out, {"00003.tar": 4})
    keep = os.stat(os.path.join(out, "00003.tar")).st_mtime_ns

    result = write_shards.write_samples(samples(10), out, 4, start_index=3)
    assert result == {"00003.tar": 4, "00004.tar": 4, "00005.tar": 2}
    assert os.stat(os.path.join(out, "00003.tar")).st_mtime_ns == keep
    check_metadata(out, result)
    spec = os.path.join(out, "{00003..00005}.tar")
    got = list(tario.iterate_samples(spec, decode=False))
    assert got == [(f"k{i:04d}", image_bytes(i), f"sample {i}") for i in range(10)]
    # exactly one full shard: no empty shard after it
    assert write_shards.write_samples(samples(4), str(tmp_path / "x"), 4) == {"00000.tar": 4}
    with pytest.raises(ValueError, match="extension"):
        write_shards.write_samples([("a", b"x", "gif", "c")], str(tmp_path / "y"), 4)


def test_folder_and_tsv_inputs(tmp_path, capsys):
    root = tmp_path / "folder"
    (root / "b").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(0))
    (root / "a.txt").write_text("first\n")
    (root / "b" / "c.jpeg").write_bytes(image_bytes(1, "JPEG"))
    (root / "b" / "c.txt").write_text("second")
    (root / "b" / "nocaption.png").write_bytes(image_bytes(2))
    out = str(tmp_path / "o1")
    summary = write_shards.main(["--input", str(root), "--out", out, "--samples-per-shard",
                                 "10", "--quiet"])
    assert summary["samples"] == 2 and summary["skipped_empty_caption"] == 1
    got = read_back(out, 1)
    assert [(d, c) for _, d, c in got] == [(image_bytes(0), "first"),
                                          (image_bytes(1, "JPEG"), "second")]

    bmp = tmp_path / "x.bmp"
    Image.new("RGB", (5, 4), (1, 2, 3)).save(bmp)
    tsv = tmp_path / "t.tsv"
    tsv.write_text(f"img\tcap\n{bmp}\ta bmp, re-encoded\n{root / 'a.png'}\tpng\n")
    out = str(tmp_path / "o2")
    write_shards.main(["--input", str(tsv), "--out", out, "--samples-per-shard", "10",
                       "--image-column", "img", "--caption-column", "cap", "--quiet"])
    got = list(tario.iterate_samples(os.path.join(out, "00000.tar")))
    assert [c for _, _, c in got] == ["a bmp, re-encoded", "png"]
    assert got[0][1].getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ValueError, match="no image column"):
        write_shards.main(["--input", str(tsv), "--out", out, "--quiet"])
    capsys.readouterr()


def test_tarwriter_output_read_back_by_our_reader(tmp_path):
    """Shards come from webdataset's TarWriter: members sorted by extension (a .webp image
    after its .txt), long keys (pax headers), fixed metadata (same bytes every time)."""
    webp = image_bytes(3, "WEBP")
    long_key = "d/" + "x" * 150
    rows = [("k0", image_bytes(0), "png", "a png"), ("k1", webp, "webp", "a webp"),
            (long_key, image_bytes(1, "JPEG"), "jpg", "a long key")]
    for out in ("a", "b"):
        write_shards.write_samples(rows, str(tmp_path / out), 10)
    data = (tmp_path / "a" / "00000.tar").read_bytes()
    assert data == (tmp_path / "b" / "00000.tar").read_bytes()
    got = list(tario.iterate_samples(str(tmp_path / "a" / "00000.tar"), decode=False))
    assert got == [(k, d, c) for k, d, _, c in rows]
    stats = tario.new_stats()
    assert len(list(tario.iterate_samples(str(tmp_path / "a" / "00000.tar"), stats=stats))) == 3
    assert stats["skipped_bad_tar"] == stats["skipped_corrupt_image"] == 0


def test_folder_input_takes_bmp(tmp_path):
    """Folders accept FOLDER_IMAGE_EXTS (the shard formats plus BMP, re-encoded as PNG)."""
    assert set(tario.IMAGE_EXTS) < set(tario.FOLDER_IMAGE_EXTS)
    root = tmp_path / "f"
    root.mkdir()
    Image.new("RGB", (5, 4), (9, 8, 7)).save(root / "x.bmp")
    (root / "x.txt").write_text("bmp file")
    summary = write_shards.main(["--input", str(root), "--out", str(tmp_path / "o"), "--quiet"])
    assert summary["samples"] == 1
    (key, img, caption), = tario.iterate_samples(str(tmp_path / "o" / "00000.tar"))
    assert caption == "bmp file" and img.getpixel((0, 0)) == (9, 8, 7)
