"""Runs that cannot lose work: failed saves, corrupt checkpoints, concurrent runs, config changes
on resume, finished runs re-run (the command line, as a user runs it)."""

import hashlib
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

from clip_jax import checkpoint, train, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

EVERY, TOTAL = 5, 20


def _cmd(work, *extra, total=TOTAL):
    return [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
            "--workdir", str(work), f"--config.checkpoint.every_steps={EVERY}",
            f"--config.total_steps={total}", *extra]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device: the fastest start
    return env


def _run(work, *extra, total=TOTAL, prefix=(), timeout=300):
    return subprocess.run([*prefix, *_cmd(work, *extra, total=total)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _params(work):
    c = tiny.get_config()
    setup = train.build(c, jax.devices()[:1])
    return jax.device_get(checkpoint.load_params(str(work), setup.abstract_state.params,
                                                 setup.state_shardings.params))


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete run of TOTAL steps, checkpoints every EVERY (keeps 10, 15, 20)."""
    work = tmp_path_factory.mktemp("finished") / "run"
    out = _run(work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A complete run of EVERY steps: one checkpoint, at step EVERY."""
    work = tmp_path_factory.mktemp("short") / "run"
    out = _run(work, total=EVERY)
    assert out.returncode == 0, out.stderr[-3000:]
    return work


# -- 1. a failed save stops the run ------------------------------------------------------------

def _read_only_prefix():
    """How to make a directory unwritable for the training process, even as root: chmod 555
    and, for root (whose CAP_DAC_OVERRIDE ignores modes), run the process without
    CAP_DAC_OVERRIDE/CAP_FOWNER via ``setpriv`` (util-linux): a real EACCES from the kernel
    at orbax's write, not a mock."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only")
    return (setpriv, "--inh-caps=-all",
            "--bounding-set=-dac_override,-fowner,-dac_read_search")


@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_stops_the_run_at_once_and_keeps_the_last_good_checkpoint(
        short_run, tmp_path, async_save):
    """The checkpoints directory is read-only (chmod 555 + no CAP_DAC_OVERRIDE, see
    :func:`_read_only_prefix`): the resumed run's save at step 10 fails. The run must end
    non-zero within seconds (not go on unprotected, not hang on orbax's 300 s timeout), name the
    path and the OS error in its last line, and leave step 5 intact and restorable."""
    work = tmp_path / "run"
    shutil.copytree(short_run, work)
    ckpts = work / "checkpoints"
    before = _tree_digest(ckpts / str(EVERY))
    os.chmod(ckpts, 0o555)
    try:
        t0 = time.time()
        out = _run(work, f"--config.checkpoint.async_save={async_save}",
                   prefix=_read_only_prefix(), timeout=120)
        elapsed = time.time() - t0
    finally:
        os.chmod(ckpts, 0o755)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert f"{ckpts}/{2 * EVERY}" in last and "Permission denied" in last, last
    assert f"last good checkpoint: step {EVERY}" in last
    assert elapsed < 60, elapsed  # JAX start + compile + 10 steps; orbax alone would wait 300
    metrics = [json.loads(x)["step"] for x in open(work / "metrics.jsonl")]
    assert max(metrics) < TOTAL  # it stopped, it did not train on unprotected
    assert sorted(os.listdir(ckpts)) == [str(EVERY)]
    assert _tree_digest(ckpts / str(EVERY)) == before
    jax.tree.map(np.testing.assert_array_equal, _params(work), _params(short_run))


# -- 2. a corrupt latest checkpoint ------------------------------------------------------------

def _truncate_array_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs
             if os.sep + "d" + os.sep in os.path.join(r, f)]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)


def _delete_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")


def _empty_step_dir(step_dir):
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


@pytest.mark.parametrize("corrupt", [_truncate_array_file, _delete_metadata, _empty_step_dir],
                         ids=["truncated-array", "no-_METADATA", "empty-step-dir"])
def test_corrupt_latest_checkpoint_is_moved_aside_and_the_run_resumes(finished_run, tmp_path,
                                                                       corrupt):
    """Step 20 (the latest) is damaged: the re-run says so in one line, moves it to
    ``20.corrupt-<time>`` (kept, not deleted), resumes from step 15 and ends with exactly the
    parameters of the uninterrupted run."""
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    latest = work / "checkpoints" / str(TOTAL)
    corrupt(latest)
    damaged = _tree_digest(latest)
    out = _run(work)
    assert out.returncode == 0, out.stderr[-3000:]
    notes = [x for x in out.stdout.splitlines() if "cannot be read" in x]
    assert len(notes) == 1 and f"resuming from step {TOTAL - EVERY}" in notes[0], out.stdout
    assert f"resumed from step {TOTAL - EVERY}" in out.stdout
    aside = [p for p in os.listdir(work / "checkpoints") if p.startswith(f"{TOTAL}.corrupt-")]
    assert len(aside) == 1
    assert _tree_digest(work / "checkpoints" / aside[0]) == damaged  # kept as it was
    jax.tree.map(np.testing.assert_array_equal, _params(work), _params(finished_run))


def test_no_readable_checkpoint_stops_with_a_clear_error_and_moves_nothing(finished_run,
                                                                           tmp_path):
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    steps = sorted(os.listdir(work / "checkpoints"))
    for s in steps:
        _delete_metadata(work / "checkpoints" / s)
    out = _run(work)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("error: no checkpoint in") and "nothing was moved" in err[-1]
    assert sorted(os.listdir(work / "checkpoints")) == steps


# -- 3. one run per workdir --------------------------------------------------------------------

def test_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    first = workdir.WorkdirLock(str(tmp_path), log=lambda _: None)
    first.acquire()
    with pytest.raises(workdir.WorkdirInUse, match=f"pid {os.getpid()} on host"):
        workdir.WorkdirLock(str(tmp_path)).acquire()
    first.release()
    # a holder killed without releasing: the file still names it, but nobody holds the flock
    (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(
        {"host": "h", "pid": 999999, "start": 0}))
    notes = []
    second = workdir.WorkdirLock(str(tmp_path), log=notes.append)
    second.acquire()
    assert second.took_over and "pid 999999 on host h" in notes[0]
    assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()


def test_a_second_run_on_a_busy_workdir_exits_at_once_naming_the_first(tmp_path):
    work = tmp_path / "run"
    first = subprocess.Popen(_cmd(work, "--config.log_every_steps=1", total=300), cwd=REPO,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        t0 = time.time()
        while not (work / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() - t0 < 240, first.stdout.read()
            time.sleep(0.05)
        second = _run(work, "--config.log_every_steps=1", total=300, timeout=120)
        assert first.poll() is None, "the first run must still be running"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)  # saves and exits cleanly
        out, _ = first.communicate(timeout=240)
    assert second.returncode == 2, second.stderr[-3000:]
    err = second.stderr.strip().splitlines()
    assert len(err) <= 3 and f"in use by another run (pid {first.pid} on host" in err[-1]
    assert "resumed" not in second.stdout and "step 1/" not in second.stdout
    assert first.returncode == 0, out[-3000:]
    steps = [json.loads(x)["step"] for x in open(work / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # no line written twice, none by the second


# -- 4/5. config changes on resume; a finished run re-run -------------------------------------

def test_resume_refuses_a_model_change_accepts_safe_changes_and_a_done_run_says_so(
        short_run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(short_run, work)
    saved = (work / "config.json").read_bytes()
    out = _run(work, "--config.model.name=small-demo", total=EVERY)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) <= 3 and "model.name: tiny -> small-demo" in err[0], out.stderr
    assert (work / "config.json").read_bytes() == saved  # untouched, byte for byte

    out = _run(work, "--config.log_every_steps=1", total=EVERY + 2)  # safe: allowed, recorded
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"total_steps: {EVERY} -> {EVERY + 2}" in out.stdout
    assert json.loads((work / "config.json").read_text())["total_steps"] == EVERY + 2

    again = _run(work, "--config.log_every_steps=1", total=EVERY + 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already complete at step {EVERY + 2}" in again.stdout
    last = json.loads((work / "final_metrics.json").read_text())
    assert np.isfinite(last["loss"]) and "loss nan" not in again.stdout
    steps = [json.loads(x)["step"] for x in open(work / "metrics.jsonl")]
    assert steps[-1] == EVERY + 2 and len(steps) == len(set(steps))
