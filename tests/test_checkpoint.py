"""Preemption-proof checkpoints: SIGKILL + restart == uninterrupted; SIGTERM saves; new mesh."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from clip_jax import checkpoint, input_pipeline, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

STEPS, EVERY = 400, 100
ARGS = [f"--config.total_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
        "--config.log_every_steps=20", "--config.mesh.fsdp=2"]


def _cmd(workdir):
    return [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
            "--workdir", str(workdir), *ARGS]


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                PYTHONUNBUFFERED="1")


def _start(workdir):
    return subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.01)


def _metrics(workdir):
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    keys = ("step", "loss", "lr", "logit_scale", "grad_norm", "param_norm")
    return [{k: x[k] for k in keys} for x in lines]


def _params(workdir, devices):
    c = tiny.get_config()
    c.mesh.data = -1
    setup = train.build(c, devices)
    return checkpoint.load_params(str(workdir), setup.abstract_state.params,
                                  setup.state_shardings.params)


def test_sigkill_restart_equals_uninterrupted_run(tmp_path):
    ref = subprocess.run(_cmd(tmp_path / "ref"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    proc = _start(run)
    # Kill hard as soon as the first checkpoint is complete (orbax renames it into place).
    _wait_for(run / "checkpoints" / str(EVERY) / "commit_success.txt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps_done = _metrics(run)[-1]["step"]
    assert EVERY <= steps_done < STEPS  # it really died part-way

    again = subprocess.run(_cmd(run), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    assert "taking over the lock of a run that is no longer running" in again.stdout

    m_ref, m_run = _metrics(tmp_path / "ref"), _metrics(run)
    assert [m["step"] for m in m_run] == [m["step"] for m in m_ref]
    for a, b in zip(m_ref, m_run):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    # Same final parameters, restored onto a different mesh (saved on 4 devices, read on 1).
    p_ref = _params(tmp_path / "ref", jax.devices()[:1])
    p_run = _params(run, jax.devices()[:2])
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_run)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_sigterm_saves_at_step_boundary_and_exits_cleanly(tmp_path):
    run = tmp_path / "term"
    proc = _start(run)
    _wait_for(run / "checkpoints" / str(EVERY) / "commit_success.txt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    saved = sorted(int(p) for p in os.listdir(run / "checkpoints") if p.isdigit())
    if saved[-1] != STEPS:  # (unless the run happened to finish first)
        assert "SIGTERM: saved step" in out
        assert saved[-1] > EVERY


def test_full_state_restores_onto_a_different_mesh(tmp_path):
    """Params and AdamW state saved from a (fsdp=2, tensor=2) mesh restore exactly onto
    (data=2) and onto one device, each leaf with the new mesh's sharding; the tokenizer is
    saved with the checkpoint."""
    def setup_on(devices, **mesh):
        c = tiny.get_config()
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (mesh.get(a, 1) for a in (
            "data", "fsdp", "tensor"))
        return train.build(c, devices)

    src = setup_on(jax.devices()[:4], fsdp=2, tensor=2)
    state = train.init_state(src)
    step = train.make_train_step(src)
    from clip_jax.data.synthetic import SyntheticSource

    m = src.model_cfg
    data = SyntheticSource(32, m.vision.image_size, m.text.context_length, m.text.vocab_size)
    # a step, so the optimizer state is non-trivial
    state, _ = step(state, input_pipeline.to_global(src.batch_sharding, next(data)))
    from clip_jax.data.tokenizer import train_tokenizer

    captions = ["a red star on a white background", "two blue circles", "one green cross"]
    tok = train_tokenizer(captions * 10, 300, str(tmp_path / "tok"))
    saver = checkpoint.Checkpointer(str(tmp_path), src.config.checkpoint, src.state_shardings,
                                    src.abstract_state, tok)
    saver.save(1, state, data.get_state(), force=True)
    saver.close()
    # the tokenizer travels inside the checkpoint
    np.testing.assert_array_equal(checkpoint.load_tokenizer(str(tmp_path))(captions, 16),
                                  tok(captions, 16))
    want = jax.device_get(state)
    for devices, mesh in ((jax.devices()[:2], {"data": 2}), (jax.devices()[:1], {})):
        dst = setup_on(devices, **mesh)
        reader = checkpoint.Checkpointer(str(tmp_path), dst.config.checkpoint,
                                         dst.state_shardings, dst.abstract_state)
        got, data_state = reader.restore_latest()
        reader.close()
        assert data_state == data.get_state()
        for a, b, s in zip(jax.tree.leaves(want), jax.tree.leaves(got),
                           jax.tree.leaves(dst.state_shardings)):
            np.testing.assert_array_equal(a, np.asarray(b))
            assert b.sharding == s
