"""clip_jax.embed: the .npy embeddings equal InferenceModel's of the same samples, keys follow
the shard, corrupt samples are skipped and counted, and a re-run redoes only missing shards."""

from __future__ import annotations

import io
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle, cli, embed, inference, models
from clip_jax.data import tario
from clip_jax.data.tokenizer import train_tokenizer
from clip_jax.data.write_shards import open_tar_writer

WORDS = ("red", "blue", "green", "star", "circle", "square", "small", "large", "two", "dots")


def _png(rng, fmt="PNG") -> bytes:
    h, w = rng.integers(24, 48, size=2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_shards(root, n_shards=2, per_shard=7, seed=0) -> tuple[str, dict]:
    """Small shards of random pictures and captions, each sample with a ``.json`` and ``.cls``
    beside its image and caption, plus one corrupt image (shard 0), one empty caption and one
    sample without an image (shard 1). Returns (brace spec, {key: {member ext: bytes}})."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    members = {}
    for s in range(n_shards):
        with open_tar_writer(os.path.join(root, f"{s:05d}.tar")) as sink:
            for i in range(per_shard):
                key = f"s{s}-{i:03d}"
                caption = " ".join(rng.choice(WORDS, size=rng.integers(2, 6)))
                sample = {"jpg" if i % 3 == 2 else "png": _png(rng, "JPEG" if i % 3 == 2
                                                                else "PNG"),
                          "txt": caption.encode(), "cls": str(i % 4).encode(),
                          "json": json.dumps({"caption": caption, "i": i}).encode()}
                if s == 0 and i == 3:
                    sample["png"] = b"\x89PNG\r\n\x1a\n not really a picture"
                if s == 1 and i == 2:
                    sample["txt"] = b"  "
                    sample["json"] = b"{}"
                if s == 1 and i == 5:
                    sample = {"txt": caption.encode()}
                sink.write({"__key__": key, **sample})
                members[key] = sample
    return os.path.join(root, f"{{00000..{n_shards - 1:05d}}}.tar"), members


def tiny_bundle(path, seed=0) -> str:
    """The ``tiny`` preset with random normal weights (no init to compile) and a BPE fitted on
    WORDS."""
    tok = train_tokenizer([" ".join(WORDS)] * 20, 512, os.path.join(path, "tok"))
    cfg = models.get_model_config("tiny")
    assert cfg.text.vocab_size == tok.vocab_size
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape).astype(x.dtype),
                          models.abstract_params(cfg))
    return str(bundle.save_bundle(os.path.join(path, "bundle"), params, cfg, tok))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    spec, members = make_shards(str(root / "shards"))
    model_dir = tiny_bundle(str(root))
    return spec, members, model_dir, inference.load(model_dir, batch_size=8)


def _mtimes(out):
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
            if not f.startswith(embed.REPORT)}


def test_embeddings_equal_the_models_and_a_rerun_redoes_only_a_missing_shard(setup, tmp_path):
    spec, _, model_dir, model = setup
    out = str(tmp_path / "emb")
    assert cli.run(embed.main, ["--model", model_dir, "--data", spec, "--out", out,
                                "--batch-size", "4"]) == 0
    report = embed.read_json(os.path.join(out, embed.REPORT))
    assert report["totals"] == {"samples": 11, "shards": 2, "skipped_bad_tar": 0,
                                "skipped_no_image": 1, "skipped_empty_caption": 1,
                                "skipped_corrupt_image": 1}
    assert report["embed_dim"] == model.cfg.embed_dim and report["embedded_now"] == 2
    for url, name in zip(embed.list_shards(spec), ("00000", "00001"), strict=True):
        got = embed.load_shard(out, name)
        ref = list(tario.iterate_samples(url))  # the reader's own order and choice of samples
        assert got.keys == [k for k, _, _ in ref]
        assert got.image.dtype == got.text.dtype == np.float16
        want_img = model.encode_image([img for _, img, _ in ref])
        want_txt = model.encode_text([c for _, _, c in ref])
        np.testing.assert_allclose(got.image, want_img, atol=2e-3, rtol=0)
        np.testing.assert_allclose(got.text, want_txt, atol=2e-3, rtol=0)
        np.testing.assert_allclose(got.scores(), np.sum(want_img * want_txt, 1), atol=4e-3)

    before = _mtimes(out)
    os.remove(os.path.join(out, "00001.img.npy"))
    report = embed.embed_shards(model, embed.list_shards(spec), out, os.path.abspath(model_dir),
                                batch_size=4, log=lambda s: None)
    assert (report["embedded_now"], report["resumed"]) == (1, 1)
    assert report["totals"]["samples"] == 11
    after = _mtimes(out)
    for f, t in after.items():
        assert (t == before.get(f)) == f.startswith("00000"), f


def test_a_half_written_shard_is_redone_and_another_model_is_refused(setup, tmp_path):
    spec, _, model_dir, model = setup
    out = str(tmp_path / "emb")
    urls = embed.list_shards(spec)
    embed.embed_shards(model, urls[:1], out, "model-a", log=lambda s: None)
    os.remove(os.path.join(out, "00000.done.json"))  # killed before the marker: not done
    assert not embed.is_done(out, "00000")
    report = embed.embed_shards(model, urls, out, "model-a", log=lambda s: None)
    assert (report["embedded_now"], report["resumed"]) == (2, 0)
    with pytest.raises(cli.UserError, match="holds embeddings of model 'model-a'"):
        embed.embed_shards(model, urls, out, "model-b")
    other = tmp_path / "other" / "00000.tar"  # same name, another shard
    other.parent.mkdir()
    shutil.copy(urls[1], other)
    with pytest.raises(cli.UserError, match=f"holds the embeddings of {urls[0]}, not of "):
        embed.embed_shards(model, [str(other)], out, "model-a")


def test_shard_names_are_file_names_unless_two_collide():
    assert embed.shard_names(["/a/00000.tar", "gs://b/x-1.tar.gz", "pipe:cat /c/y.tar",
                              "pipe:gsutil cat gs://d/z.tar -"]) == ["00000", "x-1", "y", "z"]
    assert embed.shard_names(["/a/00000.tar", "/b/00000.tar"]) == ["00000_00000", "00001_00000"]


@pytest.mark.parametrize("args, message", [
    (["--data", ""], "no shards in --data"),
    (["--data", "/nonexistent/{0..1}.tar"], "shard not found: /nonexistent/0.tar (and 1 more)"),
    (["--data", "x.tar", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_problem(args, message, tmp_path):
    err = io.StringIO()
    code = cli.run(embed.main, ["--model", str(tmp_path), "--out", str(tmp_path / "o"), *args],
                   stderr=err)
    assert code == 2 and message in err.getvalue(), err.getvalue()
