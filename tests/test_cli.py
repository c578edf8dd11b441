"""Every command line turns a user's mistake into one or two lines and exit code 2 (no
traceback unless --verbose), creates nothing before its inputs are valid; bundles' metadata is
checked field by field; write_shards refuses inputs with nothing to write."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle as bundle_lib
from clip_jax import inference, models
from clip_jax import params as params_lib
from clip_jax.data import write_shards
from clip_jax.evaluate import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _assert_user_error(out, *words):
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert 1 <= len(err) <= 3, out.stderr
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


@pytest.mark.parametrize("args,words", [
    (["--config.optimzer.lr=1e-3"], ["optimzer", 'did you mean "optimizer"'.lower()]),
    (["--config.batch_size=abc"], ["batch_size", "abc"]),
    (["--config.mesh.data=3"], ["needs 3 devices"]),
    (["--config.model.name=nope"], ["unknown model preset 'nope'"]),
])
def test_train_bad_config_is_one_line_and_creates_nothing(tmp_path, args, words):
    work = tmp_path / "run"
    out = _cli("clip_jax.train", "--config", "configs/tiny.py", "--workdir", str(work), *args)
    _assert_user_error(out)
    for w in words:
        assert w in out.stderr.lower(), out.stderr
    assert not work.exists()


def test_train_missing_config_file_and_verbose_traceback(tmp_path):
    work = tmp_path / "run"
    out = _cli("clip_jax.train", "--config", "configs/nope.py", "--workdir", str(work))
    _assert_user_error(out, "configs/nope.py: no such file")
    assert not work.exists()
    verbose = _cli("clip_jax.train", "--config", "configs/tiny.py", "--workdir", str(work),
                   "--config.mesh.data=3", "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert not work.exists()


def test_evaluate_export_predict_write_shards_missing_inputs(tmp_path):
    missing = str(tmp_path / "missing")
    _assert_user_error(_cli("clip_jax.evaluate", "--model", missing, "--eval", "zeroshot",
                            "--dataset", "x.json"), missing)
    _assert_user_error(_cli("clip_jax.export", "bundle", "--checkpoint", missing,
                            "--out", str(tmp_path / "out")), missing)
    assert not (tmp_path / "out").exists()
    _assert_user_error(_cli("clip_jax.export", "bundel", "--checkpoint", missing,
                            "--out", str(tmp_path / "out")), "bundel")
    _assert_user_error(_cli("clip_jax.predict", "--model", missing, "--image",
                            str(tmp_path / "a.jpg"), "--labels", "cat,dog"), "a.jpg")
    _assert_user_error(_cli("clip_jax.data.write_shards", "--input", missing, "--out",
                            str(tmp_path / "shards")), missing)
    _assert_user_error(_cli("clip_jax.predict", "--model", missing, "--image", "a.jpg",
                            "--labels", "a,b", "--top-kk", "3"), "unrecognized", "--top-kk")


# -- write_shards: nothing to write is an error; images are decoded before they are stored -----

def test_write_shards_refuses_empty_input_and_skips_undecodable_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = _cli("clip_jax.data.write_shards", "--input", str(empty), "--out",
               str(tmp_path / "o1"))
    _assert_user_error(out, "no images found")
    assert not (tmp_path / "o1").exists()

    root = tmp_path / "imgs"
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (9, 8, 7)).save(buf, format="PNG")
    (root / "good.png").write_bytes(buf.getvalue())
    (root / "good.txt").write_text("a good image")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "bad.txt").write_text("a broken image")
    (root / "cut.png").write_bytes(buf.getvalue()[:40])  # a truncated PNG
    (root / "cut.txt").write_text("a truncated image")
    summary = write_shards.main(["--input", str(root), "--out", str(tmp_path / "o2"),
                                 "--quiet"])
    assert summary["samples"] == 1 and summary["skipped_undecodable_image"] == 2
    sizes, _ = write_shards.read_metadata(str(tmp_path / "o2"))
    assert sizes == {"00000.tar": 1}
    again = write_shards.main(["--input", str(root), "--out", str(tmp_path / "o2"),
                               "--quiet"])  # a re-run keeps the shard
    assert again["kept"] == 1 and again["written"] == 0

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"garbage")
    (only_bad / "x.txt").write_text("caption")
    out = _cli("clip_jax.data.write_shards", "--input", str(only_bad), "--out",
               str(tmp_path / "o3"))
    _assert_user_error(out, "no usable sample", "undecodable_image: 1")


# -- bundle metadata ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    cfg = models.get_model_config("tiny")
    params = params_lib.unflatten_params({k: np.zeros(v.shape, v.dtype) for k, v in
                                      params_lib.flatten_params(models.abstract_params(cfg)).items()})
    return bundle_lib.save_bundle(tmp_path_factory.mktemp("b") / "bundle", params, cfg)


def _edited(bundle, tmp_path, edit):
    import shutil

    out = tmp_path / "edited"
    shutil.copytree(bundle, out)
    d = json.loads((out / "config.json").read_text())
    edit(d)
    (out / "config.json").write_text(json.dumps(d))
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["preprocess"].update(std=[0, 0, 0]), "preprocess.std=[0, 0, 0]: must be > 0"),
    (lambda d: d["preprocess"].update(mean=[0.5, 0.5]), "preprocess.mean=[0.5, 0.5]"),
    (lambda d: d["model"].update(act="relu"), "model.act='relu': must be one of"),
    (lambda d: d["model"]["vision"].update(width="64"), "model.vision.width='64'"),
    (lambda d: d["model"]["vision"].update(heads=3), "not divisible by heads=3"),
])
def test_bad_bundle_metadata_is_refused_field_by_field(bundle, tmp_path, edit, message):
    bad = _edited(bundle, tmp_path, edit)
    with pytest.raises(ValueError) as e:
        bundle_lib.read_bundle(bad)
    assert message in str(e.value)
    bundle_lib.read_bundle(bundle)  # the original is fine


def test_bundle_with_invalid_json_reports_the_parse_error(bundle, tmp_path):
    bad = _edited(bundle, tmp_path, lambda d: None)
    (bad / "config.json").write_text('{"format": "clip_jax.bundle", ')
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        inference.load(bad)
    out = _cli("clip_jax.predict", "--model", str(bad), "--image", str(bad / "x.png"),
               "--labels", "a,b")
    assert out.returncode == 2  # (the image is missing too: either is one line)


# -- smaller checks ----------------------------------------------------------------------------

def test_eval_card_may_not_run_shell_commands(tmp_path):
    card = tmp_path / "card.json"
    for shards in ("pipe:curl http://x/{0..3}.tar", ["a.tar", "pipe:cat b.tar"]):
        card.write_text(json.dumps({"shards": shards, "classes": ["a"]}))
        with pytest.raises(ValueError, match="may name files and URLs only"):
            datasets.read_card(str(card))


def test_glob_shard_spec_says_globs_are_not_expanded(tmp_path):
    from clip_jax.data import tario

    with pytest.raises(FileNotFoundError, match=r"not glob patterns.*\{00000\.\.00099\}"):
        list(tario.iterate_samples(str(tmp_path / "*.tar")))


def test_init_from_a_folder_without_weights_names_what_it_looked_for(tmp_path):
    from clip_jax import sources

    (tmp_path / "config.json").write_text("{}")
    cfg = models.get_model_config("tiny")
    with pytest.raises(FileNotFoundError, match="looked for .*pytorch_model.bin"):
        sources.load_params(str(tmp_path), models.abstract_params(cfg))
