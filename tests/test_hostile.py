"""Hostile inputs (issue 37): each kind of user mistake is one line naming its cause, exit 2, no
traceback, nothing already written lost, and no rc 0 with a wrong result."""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from absl import flags

from clip_jax import bundle, cli, config_schema, export, models, train
from clip_jax import config as config_lib
from clip_jax.interop import keymap, weights_io

TINY = models.get_model_config("tiny")


def _run(main, argv) -> tuple[int, str]:
    err = io.StringIO()
    rc = cli.run(main, [str(a) for a in argv], stderr=err)
    return rc, err.getvalue()


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)


def _ones(tree):
    return jax.tree.map(lambda s: np.ones(s.shape, s.dtype), tree)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    bundle.save_bundle(out, _ones(models.abstract_params(TINY)), TINY)
    return out


def test_outputs_that_cannot_be_written_are_one_line_and_keep_what_is_there(tiny_bundle,
                                                                          tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("the user's file\n")
    for cmd in ("hf", "bundle", "open_clip"):
        _one_line_error(*_run(export.main, [cmd, "--checkpoint", tiny_bundle, "--out", taken]),
                        str(taken), "existing file")
    assert taken.read_text() == "the user's file\n"
    # /sys refuses new entries even to root: a directory that cannot be created or written into
    _one_line_error(*_run(export.main, ["hf", "--checkpoint", tiny_bundle, "--out",
                                        "/sys/clip_jax_out"]), "/sys/clip_jax_out")
    _one_line_error(*_run(export.main, ["bundle", "--checkpoint", tiny_bundle, "--out", "/sys"]),
                    "cannot write /sys/model.safetensors")
    # a weights file where a directory is expected is refused before anything is written
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").mkdir()
    _one_line_error(*_run(export.main, ["bundle", "--checkpoint", tiny_bundle, "--out",
                                        tmp_path / "d"]), "existing directory")
    assert not list((tmp_path / "d").glob("*.tmp"))


def _open_clip_hub(path, cfg, poison):
    sd = _ones(keymap.external_shapes(cfg, "open_clip"))
    poison(sd)
    path.mkdir()
    weights_io.save_safetensors(sd, path / "open_clip_model.safetensors")
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": models.to_open_clip_config(cfg)}))
    return path


def test_imported_weights_that_cannot_be_right_are_refused_naming_the_tensor(tiny_bundle,
                                                                            tmp_path):
    def nan(sd):
        sd["visual.proj"][1, 2] = np.nan

    def negative_var(sd):
        sd["visual.bn1.running_var"][3] = -0.5

    hub = _open_clip_hub(tmp_path / "oc", TINY, nan)
    _one_line_error(*_run(export.main, ["import", "--from", "open_clip", "--src", hub, "--out",
                                        tmp_path / "x"]), "visual.proj", "non-finite", "(1, 2)")
    assert _run(export.main, ["import", "--from", "open_clip", "--src", hub, "--out",
                              tmp_path / "y", "--allow-damaged-weights"])[0] == 0  # asked for
    hub = _open_clip_hub(tmp_path / "rn", models.get_model_config("tiny-rn"), negative_var)
    _one_line_error(*_run(export.main, ["import", "--from", "open_clip", "--src", hub, "--out",
                                        tmp_path / "x"]), "visual.bn1.running_var",
                    "negative variance")
    hf_dir = tmp_path / "hf"
    assert _run(export.main, ["hf", "--checkpoint", tiny_bundle, "--out", hf_dir])[0] == 0
    taken = tmp_path / "taken"
    taken.write_text("kept")
    _one_line_error(*_run(export.main, ["import", "--from", "hf", "--src", hf_dir, "--out",
                                        taken]), "existing file")
    conf = json.loads((hf_dir / "config.json").read_text())
    for where, key, value in (("vision_config", "hidden_size", "64"),
                              ("text_config", "layer_norm_eps", float("nan")),
                              ("text_config", "num_attention_heads", 0)):
        bad = json.loads(json.dumps(conf))
        bad[where][key] = value
        (hf_dir / "config.json").write_text(json.dumps(bad))
        _one_line_error(*_run(export.main, ["import", "--from", "hf", "--src", hf_dir, "--out",
                                            tmp_path / "x"]), "config.json", f"{where}.{key}")
    (hf_dir / "config.json").write_text(json.dumps(conf))
    sd = weights_io.read_state_dict(hf_dir / "model.safetensors")
    sd["text_model.embeddings.token_embedding.weight"][0, 0] = np.inf
    weights_io.save_safetensors(sd, hf_dir / "model.safetensors")
    _one_line_error(*_run(export.main, ["import", "--from", "hf", "--src", hf_dir, "--out",
                                        tmp_path / "x"]), "token_embedding", "non-finite")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Config values: every numeric key declared (clip_jax/config_schema.py), fuzzed on the CLI

TINY_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
# where 0 or a negative number means something (off, "fill", a seed, a logit bias): accepted
ZERO_OK = {"seed", "loss_block_size", "model.init_logit_scale", "model.init_logit_bias",
           "model.ls_init_value", "model.lock_image_unlocked_groups", "model.text.eot_id",
           "optimizer.warmup_steps", "optimizer.end_lr_ratio", "optimizer.weight_decay",
           "optimizer.b1", "optimizer.b2", "optimizer.grad_clip_norm", "data.demo_seed",
           "data.tokenizer_vocab_size", "data.shuffle_buffer", "data.workers",
           "data.synthetic_noise", "data.prefetch", "data.naflex.tokens",
           "data.naflex.batch_multiple", "checkpoint.every_steps", "checkpoint.keep",
           "checkpoint.keep_period", "eval.every_steps", "eval.probe_max_per_class",
           "stability.max_skips_in_a_row", "stability.spike_factor",
           "stability.spike_warmup_steps", "stability.rollback_skip_steps",
           "stability.max_rollbacks", "distill.clip_weight", "distill.kd_weight",
           "distill.feature_weight", "distill.teacher_logit_scale", "model.vision.patch_dropout",
           "caption.weight", "caption.masked_pred_prob", "ema.decay", "ema.start_step",
           "model.decoder.pad_id", "model.decoder.loc_bins",
           "ema.warmup_power", "silc.weight", "tips.weight", "silc.start_fraction",
           "tips.start_fraction", "silc.local_size"}
NEGATIVE_OK = {"seed", "data.demo_seed", "model.init_logit_scale", "model.init_logit_bias",
               "model.ls_init_value"}


def _numeric_keys(c, prefix=""):
    for key in c:
        value = c[key]
        if isinstance(value, config_lib.ml_collections.ConfigDict):
            yield from _numeric_keys(value, f"{prefix}{key}.")
        elif c.get_ref(key).get_type() in (int, float):
            yield f"{prefix}{key}"


def _check_only(argv):
    """The train CLI up to its last check before anything is written, as in a fresh process:
    absl defines the ``--config.KEY`` override flags once, from ``sys.argv``."""
    for name in list(flags.FLAGS):
        if name.split(".")[0] in ("config", "workdir", "verbose"):
            delattr(flags.FLAGS, name)
    saved, sys.argv = sys.argv, ["clip_jax.train", *argv]
    try:
        config, _ = config_lib.parse_flags(sys.argv)
    finally:
        sys.argv = saved
    train.check_config(config)


def test_every_numeric_config_key_has_a_declared_type_and_range():
    assert set(_numeric_keys(config_lib.base_config())) == set(config_schema.RANGES)


def test_fuzz_config_keys_and_open_clip_json_give_one_line_errors(tmp_path):
    base = ["--config", TINY_CONFIG, "--workdir", str(tmp_path / "w")]
    assert _run(_check_only, base) == (0, "")
    for key in sorted(_numeric_keys(config_lib.base_config())):
        for value in ("abc", "nan", "inf", "-3", "0"):
            rc, err = _run(_check_only, [*base, f"--config.{key}={value}"])
            if (value == "0" and key in ZERO_OK) or (value == "-3" and key in NEGATIVE_OK):
                assert rc in (0, 2) and "Traceback" not in err, (key, value, err)
            else:
                _one_line_error(rc, err, key)
    good = models.to_open_clip_config(TINY)
    path = tmp_path / "oc.json"
    for where in ("", "vision_cfg", "text_cfg"):
        sub = good[where] if where else good
        for key in [k for k, v in sub.items() if isinstance(v, int | float)]:
            for value in ("64", float("nan"), 0, -3, True):
                changed = json.loads(json.dumps(good))
                (changed[where] if where else changed)[key] = value
                path.write_text(json.dumps(changed))
                _one_line_error(*_run(_check_only, [
                    *base, f"--config.model.open_clip_config={path}"]), str(path), key)
    for text in ("[1, 2]", '{"model_cfg": null}', '{"embed_dim": 32, "vision_cfg": 3}', "{"):
        path.write_text(text)
        _one_line_error(*_run(_check_only, [*base, f"--config.model.open_clip_config={path}"]),
                        str(path))


# ---------------------------------------------------------------------------------------------
# Evaluation inputs: one rule for templates, unreadable files counted, empty results explained


def _suite_folder(data, per_class):
    from PIL import Image

    for split, n in (("train", per_class), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (data / "demo" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 60 + 120 * c, np.uint8)).save(
                    data / "demo" / split / name / f"{i}.png")


class _Encoder:
    image_size, batch_size = 16, 8

    def encode_image(self, images):
        return np.eye(2, dtype=np.float32)[(np.asarray(images).mean((1, 2, 3)) > 0).astype(int)]

    def encode_text(self, texts):
        return np.eye(2, dtype=np.float32)[[int("dog" in t) for t in texts]]


def test_evaluation_inputs_follow_one_rule_and_an_empty_result_says_why(tmp_path, tiny_bundle,
                                                                       monkeypatch):
    from clip_jax.evaluate import __main__ as eval_main
    from clip_jax.evaluate import datasets, suite, templates

    data = tmp_path / "data"
    _suite_folder(data, per_class=2)
    tfile = data / "demo" / "templates.txt"
    for text, why in (("a {} with {color}\n", "no other field"), ("a photo\n", "class name"),
                      ("\n", "no entries"), ("a {\n", "not a format string")):
        tfile.write_text(text)
        for how in (lambda: suite.run_suite(_Encoder(), ["demo"], str(data), log=print),
                    lambda: templates.get_templates(str(tfile))):  # the --templates FILE path
            with pytest.raises(ValueError, match=why) as e:
                how()
            assert str(tfile) in str(e.value)
    tfile.write_text("a photo of a {}.\n")
    (data / "demo" / "test" / "dog" / "2.png").mkdir()  # a file that cannot be read
    r = suite.run_suite(_Encoder(), ["demo"], str(data), log=print)
    assert r["suite"]["demo"]["zeroshot"]["acc1"] == 1.0
    assert r["details"]["demo"]["skipped"]["skipped_unreadable_image"] == 1
    real = os.listdir
    monkeypatch.setattr(datasets.os, "listdir", lambda p: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")) if str(p).endswith("cat") else real(p))
    with pytest.raises(ValueError, match=r"cannot read the folder .*cat: Permission denied"):
        suite.run_suite(_Encoder(), ["demo"], str(data), log=print)
    monkeypatch.undo()
    rc, err = _run(eval_main.main, ["--model", tiny_bundle, "--suite", "demo", "--data-dir", data,
                                    "--eval", "fewshot", "--shots", "1000", "--out",
                                    tmp_path / "out"])
    _one_line_error(rc, err, "nothing was evaluated", "demo: a class has", "smallest k in [1000]")
    assert "Not evaluated:" in (tmp_path / "out" / "suite.md").read_text()


# ---------------------------------------------------------------------------------------------
# Training data and the artifacts made from it


def test_shards_that_are_not_tars_and_a_tokenizer_of_no_captions_are_one_line(tmp_path):
    from clip_jax.data import pipeline, prepare
    from clip_jax.data.tokenizer import train_tokenizer

    for i in range(2):
        (tmp_path / f"{i}.tar").write_text("not a tar\n")
    c = config_lib.base_config()
    c.data.source, c.data.train, c.data.workers = "webdataset", f"{tmp_path}/{{0..1}}.tar", 0
    work = tmp_path / "w"
    with pytest.raises(ValueError, match="found 0 captions") as e:
        prepare.prepare_tokenizer(c.data, str(work), 512)
    assert c.data.train in str(e.value)
    assert not (work / prepare.TOKENIZER_DIR).exists()  # nothing saved for a resume to reuse
    tok = train_tokenizer([f"a photo of thing {i}" for i in range(50)], 300, tmp_path / "tok")
    it = pipeline.make_train_iterator(c.data, tok, 16, 4, 0, 0, 1, context_length=16)
    _one_line_error(*_run(lambda argv: next(it), []), "no valid sample", "1.tar",
                    "webdataset tars")
    it.close()


def test_stored_embeddings_know_their_shards_a_rewritten_one_is_named_and_re_embedded(tmp_path):
    import test_embed

    from clip_jax import embed, inference
    from clip_jax.data import stored

    spec, _ = test_embed.make_shards(str(tmp_path / "shards"))
    model = inference.load(test_embed.tiny_bundle(str(tmp_path)), batch_size=8)
    urls, out = embed.list_shards(spec), str(tmp_path / "emb")
    embed.embed_shards(model, urls, out, "m", batch_size=8, log=print)
    assert stored.open_dirs([out], urls)[0].names  # as embedded: joined
    shard = pathlib.Path(urls[0])
    data = shard.read_bytes()
    shard.write_bytes(data)  # the same bytes again (a new mtime): the same shard
    assert len(stored.open_dirs([out], urls)[0].names) == 2
    test_embed.make_shards(str(tmp_path / "shards"), seed=1)  # rewritten in place
    with pytest.raises(ValueError, match=r"00000\.done\.json was written for the shard .*"
                                         r"00000\.tar, but it .*embed it again"):
        stored.open_dirs([out], urls)
    report = embed.embed_shards(model, urls, out, "m", batch_size=8, log=print)
    assert (report["embedded_now"], report["resumed"]) == (2, 0)  # both shards were rewritten
    assert len(stored.open_dirs([out], urls)[0].names) == 2


def test_a_resume_that_changes_the_state_or_distils_from_itself_is_refused_naming_why(tmp_path):
    import types

    from clip_jax import checkpoint

    def tree(extra):
        params = {"tower": {"kernel": np.ones((2, 3), np.float32)}, **extra}
        return {"step": np.int32(1), "params": params}

    def checkpointer(state):
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
        on_cpu = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                              state)
        cfg = types.SimpleNamespace(every_steps=1, keep=2, keep_period=0, async_save=False)
        return checkpoint.Checkpointer(str(tmp_path), cfg, on_cpu, abstract)

    saved = tree({"proj": np.ones((4, 8), np.float32)})
    ck = checkpointer(saved)
    ck.save(1, jax.device_put(saved), {}, "{}", force=True)
    ck.close()
    changed = tree({"proj": np.ones((4, 16), np.float32), "teacher0": np.ones(3, np.float32)})
    ck = checkpointer(changed)
    rc, err = _run(lambda argv: ck.restore_latest(), [])
    _one_line_error(rc, err, "step 1", "missing params/teacher0",
                    "params/proj has shape (4, 8), expected (4, 16)", "checkpoints are untouched")
    assert "can be read" not in err and "Move the step" not in err
    assert sorted(os.listdir(ck.directory)) == ["1"]  # nothing moved aside
    state, _ = checkpointer(saved).restore_latest()
    assert int(state["step"]) == 1  # the same config resumes

    c = config_lib.base_config()
    c.distill.teachers = (str(tmp_path / "checkpoints"),)
    with pytest.raises(config_lib.ResumeConfigError, match="student's own workdir"):
        config_lib.check_resume(c.to_dict(), c, str(tmp_path))
    c.distill.teachers = (str(tmp_path.parent / "teacher"),)
    assert config_lib.check_resume(c.to_dict(), c, str(tmp_path)) == []


def _train(workdir, *flags):
    import subprocess

    cmd = [sys.executable, "-m", "clip_jax.train", "--config", TINY_CONFIG, "--workdir",
           str(workdir), "--config.log_every_steps=1", "--config.checkpoint.every_steps=5",
           "--config.checkpoint.keep=2", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_divergence_names_the_last_good_checkpoint_and_a_lower_lr_resumes_from_it(tmp_path):
    ok = _train(tmp_path, "--config.total_steps=10")
    assert ok.returncode == 0, ok.stderr[-2000:]
    # lr 1e6: the weights reach ~1e13 with finite losses before the losses turn NaN; the
    # checkpoints taken then (steps 15, 20) are finite but not good
    bad = _train(tmp_path, "--config.total_steps=60", "--config.optimizer.lr=1e6")
    err = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "last good checkpoint: step 10" in err and "moved aside and kept" in err, err
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "10" in ckpts and not any(c.isdigit() and int(c) > 10 for c in ckpts), ckpts
    assert any(c.startswith("15.diverged-") for c in ckpts), ckpts  # kept, renamed
    good = _train(tmp_path, "--config.total_steps=20", "--config.optimizer.lr=1e-3")
    assert good.returncode == 0, good.stderr[-2000:]
    assert "resumed from step 10" in good.stdout + good.stderr
    losses = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            losses[r["step"]] = r["loss"]
    assert all(np.isfinite(losses[s]) for s in range(11, 21)), losses
