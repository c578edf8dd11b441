"""Multi-process runs (jax.distributed on 127.0.0.1, gloo): same trajectory, no hangs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")
TRAIN = [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py",
         "--config.total_steps=15", "--config.mesh.fsdp=2", "--config.checkpoint.every_steps=0"]


def _losses(workdir):
    return np.array([json.loads(x)["loss"] for x in open(os.path.join(workdir, "metrics.jsonl"))])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    env = dict(os.environ, LOG_DIR=str(tmp_path / "logs"))
    env.pop("XLA_FLAGS", None)
    two = subprocess.run([LAUNCH, "2", "4", *TRAIN, "--workdir", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-3000:]
    assert "process 0/2" in (tmp_path / "logs" / "process_0.log").read_text()
    one = subprocess.run([*TRAIN, "--workdir", str(tmp_path / "one")], cwd=REPO,
                         env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-4)


def test_a_failed_process_stops_the_others(tmp_path):
    script = ("import os, sys\n"
              "if os.environ['CLIP_JAX_PROCESS_ID'] == '1':\n"
              "    sys.exit(3)\n"
              "from clip_jax import distributed\n"
              "distributed.initialize()\n"
              "import jax\n"
              "print(jax.device_count())\n")
    env = dict(os.environ, LOG_DIR=str(tmp_path / "logs"))
    t0 = time.time()
    out = subprocess.run([LAUNCH, "2", "2", sys.executable, "-c", script], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3
    assert "process 1 exited with status 3" in out.stderr
    assert time.time() - t0 < 120


def test_sigterm_to_one_process_saves_on_every_process_at_the_same_step(tmp_path):
    """A preemption notice reaching one host only: all hosts agree on a step, save there
    together (a save is a collective) and exit cleanly, instead of one saving and the other
    hanging."""
    work = tmp_path / "run"
    procs, logs = [], []
    for i in range(2):
        env = dict(os.environ, CLIP_JAX_COORDINATOR=f"127.0.0.1:{23000 + os.getpid() % 5000}",
                   CLIP_JAX_NUM_PROCESSES="2", CLIP_JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        log = open(tmp_path / f"p{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [*TRAIN, "--config.total_steps=100000", "--config.log_every_steps=1",
             "--workdir", str(work)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.time() + 300
        while not (work / "metrics.jsonl").exists() or len(
                (work / "metrics.jsonl").read_text().splitlines()) < 3:
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                (tmp_path / "p0.log").read_text()[-3000:]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    out = (tmp_path / "p0.log").read_text()
    assert rcs == [0, 0], out[-3000:] + (tmp_path / "p1.log").read_text()[-3000:]
    saved = [int(x) for x in os.listdir(work / "checkpoints") if x.isdigit()]
    assert len(saved) == 1 and f"SIGTERM: saved step {saved[0]}, exiting" in out
    assert saved[0] < 100000
