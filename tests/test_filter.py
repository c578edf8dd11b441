"""clip_jax.filter: the kept samples are exactly those whose cosine (computed here from
InferenceModel) passes the thresholds, copied byte for byte with all their members; the report,
histogram and resume; thresholds combine as documented; bad input is one line."""

from __future__ import annotations

import io
import math
import os
import tarfile

import numpy as np
import pytest
from PIL import Image
from test_embed import make_shards, tiny_bundle

from clip_jax import cli, embed, inference
from clip_jax import filter as filter_lib
from clip_jax.data import tario

F16 = 4e-3  # how far a cosine of float16 embeddings may be from the float32 one


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    spec, members = make_shards(str(root / "shards"), seed=1)
    model_dir = tiny_bundle(str(root), seed=1)
    model = inference.load(model_dir, batch_size=8)
    keys, images, captions = zip(*tario.iterate_samples(spec), strict=True)
    ref = np.sum(model.encode_image(list(images)) * model.encode_text(list(captions)), 1)
    return spec, members, model_dir, model, dict(zip(keys, ref.tolist(), strict=True))


def _read_tars(out, names=("00000.tar", "00001.tar")):
    """[(key, {ext: bytes})] of the output shards, in order."""
    samples = []
    for name in names:
        with tarfile.open(os.path.join(out, name)) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = tar.extractfile(m).read()
    return samples


def _cut_in_a_gap(scores, lo, hi):
    s = np.sort(scores)
    i = lo + int(np.argmax(np.diff(s[lo:hi + 1])))
    assert s[i + 1] - s[i] > 2 * F16, "no clear gap: pick another seed"
    return float((s[i] + s[i + 1]) / 2)


def test_kept_samples_are_those_above_min_score_with_every_member_byte_for_byte(setup,
                                                                                tmp_path):
    spec, members, model_dir, _, ref = setup
    cut = _cut_in_a_gap(np.array(list(ref.values())), 3, 8)
    out = str(tmp_path / "out")
    assert cli.run(filter_lib.main, ["--model", model_dir, "--data", spec, "--out", out,
                                     "--min-score", str(cut), "--batch-size", "4"]) == 0
    want = [k for k in ref if ref[k] >= cut]  # ref is in shard order
    got = _read_tars(out)
    assert [k for k, _ in got] == want and 0 < len(want) < len(ref)
    for key, files in got:
        assert files == members[key], key  # image, caption, .json and .cls, unchanged
    report = embed.read_json(os.path.join(out, filter_lib.REPORT))
    assert (report["kept"], report["total"], report["threshold"]) == (len(want), 11, cut)
    assert report["skipped"] == {"skipped_bad_tar": 0, "skipped_no_image": 1,
                                 "skipped_empty_caption": 1, "skipped_corrupt_image": 1}
    q = report["score_quantiles"]
    assert abs(q["0.5"] - np.median(list(ref.values()))) < F16
    assert abs(q["1.0"] - max(ref.values())) < F16
    sizes = embed.read_json(os.path.join(out, filter_lib.SIZES))
    assert sizes == {n: report["shards"][n]["kept"] for n in ("00000.tar", "00001.tar")}
    with Image.open(report["histogram"]) as png:
        assert png.format == "PNG"
    # the output reads back as shards: every kept sample is valid
    assert [k for k, _, _ in tario.iterate_samples(os.path.join(out, "{00000..00001}.tar"))] \
        == want


def test_top_fraction_keeps_the_best_and_a_rerun_rewrites_only_for_new_thresholds(setup,
                                                                                  tmp_path):
    spec, _, _, model, ref = setup
    urls, out = embed.list_shards(spec), str(tmp_path / "out")
    order = sorted(ref, key=ref.get, reverse=True)
    scores = np.sort(list(ref.values()))[::-1]
    for fraction in (0.3, 0.5):
        k = math.ceil(fraction * len(ref))
        assert scores[k - 1] - scores[k] > 2 * F16, "no clear gap: pick another seed"
        report = filter_lib.filter_shards(model, urls, out, "m", top_fraction=fraction,
                                          log=lambda s: None)
        assert {key for key, _ in _read_tars(out)} == set(order[:k])
        assert report["kept"] == k and report["threshold"] == report["top_fraction_threshold"]
        stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in report["shards"]}
        again = filter_lib.filter_shards(model, urls, out, "m", top_fraction=fraction,
                                         log=lambda s: None)
        assert again["kept"] == k
        assert stamps == {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in stamps}


def test_thresholds_combine_both_must_hold():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4, 0.0], np.float32)
    t, t_f = filter_lib.threshold(scores, None, 0.3)  # the 3 best: 0.9, 0.8, 0.7
    assert t == t_f == pytest.approx(0.7)
    assert filter_lib.threshold(scores, 0.75, 0.3)[0] == 0.75  # the minimum is stricter
    assert filter_lib.threshold(scores, 0.2, 0.3)[0] == pytest.approx(0.7)  # the fraction is
    assert filter_lib.threshold(scores, 0.2, None) == (0.2, None)
    assert filter_lib.threshold(scores, None, 1.0)[0] == pytest.approx(0.0)  # keep all
    assert np.sum(scores >= filter_lib.threshold(scores, None, 0.25)[0]) == 3  # ceil(2.5)


@pytest.mark.parametrize("args, message", [
    (["--min-score", "1.5"], "--min-score must be a cosine in [-1, 1], got 1.5"),
    (["--min-score", "nan"], "--min-score must be a cosine in [-1, 1]"),
    (["--top-fraction", "0"], "--top-fraction must be in (0, 1], got 0.0"),
    (["--top-fraction", "1.2"], "--top-fraction must be in (0, 1], got 1.2"),
    ([], "give --min-score, --top-fraction or both"),
    (["--min-score", "0.3", "--data", ""], "no shards in --data"),
    (["--min-score", "0.3", "--out", "SHARDS"], "holds the input shard"),
])
def test_bad_input_is_one_line_naming_the_problem(setup, args, message, tmp_path):
    spec = setup[0]
    out = os.path.dirname(spec) if "SHARDS" in args else str(tmp_path / "o")
    args = [a.replace("SHARDS", out) for a in args]
    err = io.StringIO()
    code = cli.run(filter_lib.main, ["--model", str(tmp_path), "--data", spec, "--out", out,
                                     *args], stderr=err)
    assert code == 2 and message in err.getvalue(), err.getvalue()
    assert not os.path.exists(str(tmp_path / "o"))
