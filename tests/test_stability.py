"""Runs that cannot diverge silently: non-finite and spiking updates are skipped bit for bit, a
streak of them stops the run, a NaN state is never saved, a spike rolls back (PaLM), and all of
it resumes exactly (the fire drill ``debug.*`` injects the faults inside the step)."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from clip_jax import checkpoint, cli, input_pipeline, stability, train
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                   strict=True))


def _finite(tree) -> bool:
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree)
               if np.issubdtype(x.dtype, np.inexact))


def _config(**kw):
    c = tiny.get_config()
    c.mesh.data = -1
    for key, value in kw.items():
        node = c
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.mark.parametrize("where", ["1-device", "mesh8-accum2-frozen-text"])
def test_nonfinite_and_spiking_updates_leave_the_state_bit_identical(where):
    """NaN gradients at steps 5-7 (the loss stays finite: the mlx-lm case) and a 1000x loss
    spike at step 9: parameters and AdamW state after step 7 are those after step 4, after step
    9 those after step 8, bit for bit; the counters say so; the other steps learn."""
    c = _config(debug__nonfinite_steps=(5, 6, 7), debug__spike_steps=(9,),
                stability__spike_factor=3.0, stability__spike_warmup_steps=2)
    devices = jax.devices()[:1]
    if where != "1-device":
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
        c.accum_steps, c.optimizer.frozen = 2, ("text",)
        devices = jax.devices()[:8]
    setup = train.build(c, devices)
    state, step = train.init_state(setup), train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 64, 0.5, 0)
    after, logged = {0: jax.device_get((state.params, state.opt_state))}, {}
    for i in range(1, 11):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        after[i] = jax.device_get((state.params, state.opt_state))
        logged[i] = {k: float(v) for k, v in jax.device_get(metrics).items()}
    assert _same(after[7], after[4]) and _same(after[9], after[8])
    for i in (1, 2, 3, 4, 8, 10):
        assert not _same(after[i], after[i - 1]) and _finite(after[i]), i
    assert [logged[i]["skipped_steps"] for i in range(1, 11)] == [0, 0, 0, 0, 1, 2, 3, 3, 4, 4]
    assert [logged[i]["skips_in_a_row"] for i in (7, 8, 9, 10)] == [3, 0, 1, 0]
    assert logged[10]["spike_skips"] == 1 and int(state.step) == 10
    assert np.isnan(logged[6]["grad_norm"]) and np.isfinite(logged[6]["loss"])
    assert logged[9]["loss"] > 100 * logged[8]["loss"]  # the drill's spike, finite
    if where != "1-device":  # the frozen tower never moved, the image tower did
        assert _same(after[10][0]["text"], after[0][0]["text"])
        assert logged[4]["grad_norm/text"] == 0 and logged[4]["grad_norm/image"] > 0
    d = logged[4]  # the diagnostics add up
    np.testing.assert_allclose(d["grad_norm"] ** 2, d["grad_norm/image"] ** 2 + d[
        "grad_norm/text"] ** 2 + d["grad_norm/logit"] ** 2, rtol=1e-5)
    np.testing.assert_allclose(d["update_to_param"], d["update_norm"] / d["param_norm"])


_DRILL = ["--config.debug.nonfinite_steps=(5,6,7,15,16,25,40,55)", "--config.log_every_steps=1",
          "--config.checkpoint.every_steps=6", "--config.total_steps=60"]


def _params(work, c=None):
    setup = train.build(c or tiny.get_config(), jax.devices()[:1])
    return jax.device_get(checkpoint.load_params(str(work), setup.abstract_state.params,
                                                 setup.state_shardings.params))


def _lines(work):
    return [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]


def test_sigkill_and_resume_across_skipped_steps_is_exact(tmp_path):
    """The drill's run killed (-9) after its first checkpoint and resumed ends as the
    uninterrupted run: same per-step losses, norms and skip counters, same final parameters,
    ``skipped_steps`` 8; the progress line shows the skips. All three runs are processes of the
    same environment (one CPU device), so float reassociation cannot differ between them."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)

    def cmd(work):
        return [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
                "--workdir", str(work), *_DRILL]

    ref = tmp_path / "ref"
    done = subprocess.run(cmd(ref), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = _lines(ref)[-1]
    assert last["skipped_steps"] == 8 and last["skips_in_a_row"] == 0
    progress = [x for x in done.stdout.splitlines() if x.startswith("step 7/")]
    assert len(progress) == 1 and "grad_norm nan" in progress[0] and \
        "skipped steps 3" in progress[0], progress

    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(run), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (run / "checkpoints" / "6" / "commit_success.txt").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    reached = _lines(run)[-1]["step"]
    assert 6 <= reached < 60, out[-2000:]

    again = subprocess.run(cmd(run), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    a, b = _lines(ref), _lines(run)
    assert [x["step"] for x in b] == list(range(1, 61)) and b[-1]["skipped_steps"] == 8
    for x, y in zip(a, b):
        for k in ("loss", "grad_norm", "grad_norm/image", "param_norm", "skipped_steps",
                  "skips_in_a_row", "lr"):
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, err_msg=f"{k} at {x['step']}")
    for x, y in zip(jax.tree.leaves(_params(ref)), jax.tree.leaves(_params(run))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_a_streak_of_skips_stops_the_run_in_one_line_keeping_good_checkpoints(tmp_path):
    """Non-finite gradients from step 7 on, ``max_skips_in_a_row=3``: exit 1 at step 9 with one
    line naming steps 7-9 and the last *good* checkpoint, step 2 (confirmed by the 3 clean
    steps after it; step 4's were cut short by step 7, and 6 and 8 were written mid-streak or
    unconfirmed): the later checkpoints are moved aside (kept), so a resume starts from step 2;
    nothing saved at step 9; the set-aside step 8 holds the finite state of step 6."""
    c = _config(debug__nonfinite_steps=tuple(range(7, 21)), stability__max_skips_in_a_row=3,
                log_every_steps=1, checkpoint__every_steps=2, total_steps=20)
    work, err = tmp_path / "run", io.StringIO()
    code = cli.run(lambda _: train.train(c, str(work), devices=jax.devices()[:1]) and 0, [],
                   stderr=err)
    lines = err.getvalue().strip().splitlines()
    assert code == 1 and len(lines) == 1, err.getvalue()
    assert "steps 7-9 were all skipped" in lines[0] and "stopped without saving" in lines[0]
    assert f"last good checkpoint: step 2 ({work}/checkpoints/2)" in lines[0]
    assert "3 later checkpoints were moved aside and kept" in lines[0]
    names = os.listdir(work / "checkpoints")
    assert "2" in names and sorted(n.split(".")[0] for n in names if "diverged" in n) == [
        "4", "6", "8"]
    for n in names:  # a resume restores step 2
        if n != "2":
            os.rename(work / "checkpoints" / n, work / "checkpoints" / n.split(".")[0])
    setup = train.build(c, jax.devices()[:1])
    ck = checkpoint.Checkpointer(str(work), c.checkpoint, setup.state_shardings,
                                 setup.abstract_state)
    (s6, _), (s8, d8) = ck.restore(6), ck.restore(8)
    ck.close()
    assert _finite(jax.device_get(s8.params)) and _same(jax.device_get(
        (s8.params, s8.opt_state)), jax.device_get((s6.params, s6.opt_state)))
    assert int(s8.guard.skipped) == 2 and int(s8.step) == 8 and d8["batch_index"] == 8
    assert max(x["step"] for x in _lines(work)) == 9


def test_a_nonfinite_state_is_never_saved(tmp_path):
    """With the guard off (``skip_nonfinite=False``) a NaN step ruins the parameters: the next
    save is refused in one line naming the leaves and the last good checkpoint, and the run
    stops, so ``keep`` cannot rotate the good checkpoint away."""
    c = _config(stability__skip_nonfinite=False, debug__nonfinite_steps=(3,),
                checkpoint__every_steps=2, checkpoint__keep=1, total_steps=8)
    work = tmp_path / "run"
    with pytest.raises(checkpoint.NonFiniteStateError,
                       match=r"refusing to save checkpoint step 4: non-finite values \(NaN/inf"
                             r"\) in params/.* more; .*last good checkpoint: step 2") as e:
        train.train(c, str(work), devices=jax.devices()[:1])
    assert "\n" not in str(e.value)
    assert os.listdir(work / "checkpoints") == ["2"] and _finite(_params(work))
    assert checkpoint.nonfinite_leaves({"a": np.ones(2), "b": {"c": np.array([1, np.inf])},
                                        "n": np.array([3])}) == ["b/c"]


def test_a_spike_rolls_back_skipping_data_and_resumes_deterministically(tmp_path, capsys):
    """A 1000x drill spike at step 7 with ``rollback``: the loop restores checkpoint 4, skips the
    data of 2 steps and goes on; metrics.jsonl has each step once; the run resumed from the
    checkpoint after the rollback, and from the one before it (the spike recurs, the rollback
    repeats), ends with the same parameters. Spikes that follow each other loop: exit 1."""
    def cfg(**kw):
        return _config(stability__spike_factor=3.0, stability__spike_warmup_steps=2,
                       stability__rollback=True, stability__rollback_skip_steps=2,
                       debug__spike_steps=(7,), log_every_steps=1, checkpoint__every_steps=4,
                       total_steps=12, **kw)

    work = tmp_path / "run"
    last = train.train(cfg(), str(work), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert "loss spike at step 7: rolled back to checkpoint step 4, skipping the data of " \
           "steps 5-6" in out, out
    assert last["rollbacks"] == 1 and last["spike_skips"] == 0 and last["skipped_steps"] == 0
    assert [x["step"] for x in _lines(work)] == list(range(1, 13))
    setup = train.build(cfg(), jax.devices()[:1])
    ck = checkpoint.Checkpointer(str(work), cfg().checkpoint, setup.state_shardings,
                                 setup.abstract_state)
    assert ck.restore(12)[1]["batch_index"] == 14  # two batches skipped
    ck.close()
    final = _params(work)
    for keep in (["4", "8"], ["4"]):
        again = tmp_path / f"resume{len(keep)}"
        shutil.copytree(work, again)
        for s in {"4", "8", "12"} - set(keep):
            shutil.rmtree(again / "checkpoints" / s)
        assert train.train(cfg(), str(again), devices=jax.devices()[:1])["rollbacks"] == 1
        assert _same(_params(again), final), keep

    loop = cfg(stability__max_rollbacks=1)
    loop.debug.spike_steps = (6, 7)
    with pytest.raises(stability.DivergedError, match="loss spike at step 7: checkpoint step 4 "
                       "was restored 1x already.*rollback loop"):
        train.train(loop, str(tmp_path / "loop"), devices=jax.devices()[:1])
