"""Hostile inputs (issue 37): each kind of user mistake is one line naming its cause, exit 2, no
traceback, nothing already written lost, and no rc 0 with a wrong result."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

from clip_jax import bundle, cli, export, models
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
    sd = weights_io.read_state_dict(hf_dir / "model.safetensors")
    sd["text_model.embeddings.token_embedding.weight"][0, 0] = np.inf
    weights_io.save_safetensors(sd, hf_dir / "model.safetensors")
    _one_line_error(*_run(export.main, ["import", "--from", "hf", "--src", hf_dir, "--out",
                                        tmp_path / "x"]), "token_embedding", "non-finite")
    assert not (tmp_path / "x").exists()
