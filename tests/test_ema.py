"""Weight EMA (clip_jax/ema.py): the average after k steps against its closed form, sharded
like the params, resumed exactly after a SIGKILL, evaluated beside the raw weights in training,
and read by ``--weights ema`` (a source without one is a one-line error, exit 2)."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from clip_jax import bundle, checkpoint, cli, ema, export, input_pipeline, params, predict, train
from clip_jax.evaluate import __main__ as evaluate_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402


def _ema_cfg(decay, every_steps=1, start_step=0, warmup_power=0.0):
    return ml_collections.ConfigDict(dict(decay=decay, every_steps=every_steps,
                                          start_step=start_step, warmup_power=warmup_power))


@pytest.mark.parametrize("every,start", [(1, 0), (3, 4)])
def test_the_average_of_a_linear_ramp_equals_its_closed_form(every, start):
    """Params p_s = a + b s (a float32 and a bfloat16 leaf). Started from p_start and updated
    at start + every, start + 2 every, ..., n times, the EMA of the ramp is
    a' + b' (n - d (1 - d^n) / (1 - d)) with a' = a + b start, b' = b every (the geometric
    sums in closed form); the steps in between leave it alone; it stays float32."""
    d, a, b, k = 0.9, 0.5, 0.25, 20
    cfg = _ema_cfg(d, every, start)

    def ramp(s):
        return {"f32": jnp.full((3,), a + b * s, jnp.float32),
                "bf16": jnp.full((2, 2), a + b * s, jnp.bfloat16)}

    update = jax.jit(functools.partial(ema.update, cfg))
    avg = ema.init(ramp(0))
    for s in range(1, k + 1):
        avg = update(avg, ramp(s), jnp.int32(s))
    n = (k - start) // every
    a2, b2 = a + b * start, b * every
    want = a2 + b2 * (n - d * (1 - d ** n) / (1 - d))
    for leaf in jax.tree.leaves(avg):
        assert leaf.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(leaf, np.float64), want, rtol=2e-6)


# -- real steps, a SIGKILL and a resume ------------------------------------------------------

STEPS, EVERY = 80, 20
EMA = {"decay": 0.9, "every_steps": 3, "start_step": 5, "warmup_power": 0.5}
SETTINGS = {"total_steps": STEPS, "checkpoint.every_steps": EVERY, "log_every_steps": 10,
            "mesh.fsdp": 2, "mesh.tensor": 2, "model.vision.layers": 1, "model.text.layers": 1,
            "debug.nonfinite_steps": (11,), "logging.tensorboard": False,
            **{f"ema.{k}": v for k, v in EMA.items()}}


def _config(**more):
    c = tiny.get_config()
    for key, value in {**SETTINGS, **more}.items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def _folder(root):
    """A labelled image folder of two colours (the few-shot evaluation at the end)."""
    rng = np.random.default_rng(0)
    for name, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        os.makedirs(root / name)
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _flat(tree) -> np.ndarray:
    flat = params.flatten_params(jax.device_get(tree))
    return np.concatenate([np.ravel(flat[k]).astype(np.float64) for k in sorted(flat)])


def _weights(work, which):
    setup = train.build(_config(**{"mesh.fsdp": 1, "mesh.tensor": 1}), jax.devices()[:1])
    return params.flatten_params(jax.device_get(checkpoint.load_params(
        str(work), setup.abstract_state.params, setup.state_shardings.params, which)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run driven step by step here (``train.make_train_step`` on 4 devices, fsdp x tensor
    2 x 2, the data ``train.train`` reads), keeping every step's params and average; the same
    run as a process of 4 devices killed (-9) after its first checkpoint, and resumed here by
    ``train.train`` with a few-shot evaluation at the end (evaluations change no weight)."""
    root = tmp_path_factory.mktemp("ema_runs")
    c = _config()
    setup = train.build(c, jax.devices()[:4])
    assert setup.state_shardings.ema == setup.state_shardings.params
    state, step = train.init_state(setup), train.make_train_step(setup)
    data = input_pipeline.make_data(c, setup.model_cfg, c.batch_size)
    steps = [(_flat(state.params), _flat(state.ema), False)]
    for _ in range(STEPS):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        for x, y in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params), strict=True):
            assert x.sharding == y.sharding and x.dtype == jnp.float32 and x.shape == y.shape
        skipped = int(metrics["skipped_steps"]) > int(sum(t[2] for t in steps))
        steps.append((_flat(state.params), _flat(state.ema), skipped))

    run = root / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_jax.train", "--config", "configs/tiny.py", "--workdir",
         str(run), *(f"--config.{k}={v}" for k, v in SETTINGS.items())], cwd=REPO,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                 PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    t0 = time.time()
    while not (run / "checkpoints" / str(EVERY) / "commit_success.txt").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    reached = [json.loads(x) for x in open(run / "metrics.jsonl")][-1]["step"]
    assert EVERY <= reached < STEPS, out[-2000:]
    folder = _folder(root / "folder")
    last = train.train(_config(**{"eval.fewshot": f"folder:{folder}",
                                  "eval.fewshot_shots": (1, 2)}), str(run), jax.devices()[:4])
    return steps, run, last


def test_the_average_of_real_steps_is_the_rule_applied_to_their_params(runs):
    """The average after each of 80 real steps (``decay=0.9, every_steps=3, start_step=5,
    warmup_power=0.5``, step 11's update skipped: a NaN gradient) against the documented rule
    applied here, in float64, to the params those steps produced: a copy up to step 5, then
    at every third step d_t avg + (1 - d_t) p with d_t = min(0.9, 1 - (1 + t)^-0.5), t the
    update's number, unchanged in between and at the skipped step (bit for bit)."""
    steps = runs[0]
    assert [s for s, (_, _, skipped) in enumerate(steps) if skipped] == [11]
    avg = steps[0][0]
    for s, (p, got, skipped) in enumerate(steps[1:], start=1):
        k = s - EMA["start_step"]
        if skipped or (k > 0 and k % EMA["every_steps"]):
            np.testing.assert_array_equal(got, steps[s - 1][1], err_msg=f"step {s}")
            continue
        if k <= 0:
            avg = p
            np.testing.assert_array_equal(got, p, err_msg=f"step {s}")
        else:
            d = min(EMA["decay"], 1 - (1 + k // EMA["every_steps"]) ** -EMA["warmup_power"])
            avg = d * avg + (1 - d) * p
        np.testing.assert_allclose(got, avg, rtol=1e-5, atol=1e-7, err_msg=f"step {s}")
    assert np.abs(steps[-1][1] - steps[-1][0]).max() > 1e-4  # an average, not the params


def test_sigkill_and_resume_give_the_uninterrupted_runs_average(runs):
    steps, run, _ = runs
    for which, want in (("ema", steps[-1][1]), ("raw", steps[-1][0])):
        got = _weights(run, which)
        np.testing.assert_allclose(np.concatenate([np.ravel(got[k]).astype(np.float64)
                                                   for k in sorted(got)]), want, rtol=1e-5,
                                   atol=1e-7, err_msg=which)


def test_training_evaluates_the_average_beside_the_raw_weights(runs):
    _, run, last = runs
    for k in ("eval/fewshot/1shot", "eval_ema/fewshot/1shot", "eval_ema/fewshot/2shot"):
        assert 0 <= last[k] <= 1, (k, sorted(last))
    reports = sorted(os.listdir(run / "eval"))
    assert f"step_{STEPS}_report.json" in reports and f"step_{STEPS}_ema_report.json" in reports
    line = [json.loads(x) for x in open(run / "metrics.jsonl")][-1]
    assert line["eval_ema/fewshot/1shot"] == last["eval_ema/fewshot/1shot"]


def test_weights_ema_reads_the_average_and_a_source_without_one_is_one_line(runs, tmp_path,
                                                                           capsys):
    run = runs[1]
    out = tmp_path / "ema_bundle"
    assert cli.run(export.main, ["bundle", "--checkpoint", str(run), "--out", str(out),
                                 "--weights", "ema"]) == 0
    got = bundle.read_bundle(out)[1]
    want = _weights(run, "ema")
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)
    # a checkpoint saved with ema off, and a bundle: no average to read
    c = _config(**{"ema.decay": 0.0, "mesh.fsdp": 1, "mesh.tensor": 1})
    setup = train.build(c, jax.devices()[:1])
    saver = checkpoint.Checkpointer(str(tmp_path / "plain"), c.checkpoint, setup.state_shardings,
                                    setup.abstract_state)
    saver.save(0, train.init_state(setup), {}, c.to_json_best_effort(), force=True)
    saver.close()
    capsys.readouterr()
    imgs = _folder(tmp_path / "imgs")
    image = str(imgs / "red" / "0.png")
    for main, argv in (
            (export.main, ["bundle", "--checkpoint", str(tmp_path / "plain"), "--out",
                           str(tmp_path / "x"), "--weights", "ema"]),
            (predict.main, ["--model", str(out), "--image", image, "--labels", "a,b",
                            "--weights", "ema"]),
            (evaluate_main.main, ["--model", str(out), "--eval", "fewshot", "--dataset",
                                  f"folder:{imgs}", "--weights", "ema"])):
        assert cli.run(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 2 and "EMA" in err[0], err  # the error line (and a hint)
    assert not (tmp_path / "x").exists()


def test_a_resume_may_turn_the_average_on_or_off_and_old_checkpoints_restore(tmp_path):
    """A step saved before ``TrainState.ema`` existed restores with EMA off as it did; with
    EMA on its average is None, which the train loop starts from the params (one line); a
    step holding an average restores with EMA off, its average left unread (``dropped``)."""
    def setup_for(decay):
        c = _config(**{"ema.decay": decay, "mesh.fsdp": 1, "mesh.tensor": 1})
        return train.build(c, jax.devices()[:1])

    off, on = setup_for(0.0), setup_for(0.9)
    state = train.init_state(off)
    old = {f: getattr(state, f) for f in ("step", "params", "opt_state", "guard", "batch_stats")}

    def save(setup, step, tree):
        saver = checkpoint.Checkpointer(str(tmp_path), setup.config.checkpoint,
                                        setup.state_shardings, setup.abstract_state)
        saver.save(step, tree, {}, force=True)
        saver.close()

    def restore(setup, step):
        reader = checkpoint.Checkpointer(str(tmp_path), setup.config.checkpoint,
                                         setup.state_shardings, setup.abstract_state)
        out = reader.restore(step)[0], reader.dropped
        reader.close()
        return out

    save(off, 1, old)  # the layout of a checkpoint from before the average
    got, dropped = restore(off, 1)
    assert got.ema == {} and dropped == []
    np.testing.assert_array_equal(_flat(got.params), _flat(state.params))
    got, _ = restore(on, 1)
    assert got.ema is None
    lines = []
    got = train._fresh_ema(on, got, lines.append)
    assert lines == ["checkpoint step 0 has no EMA: the average starts from its params"]
    np.testing.assert_array_equal(_flat(got.ema), _flat(got.params))
    bumped = jax.tree.map(lambda x: x + 1, got.ema)  # an average that is not the params
    save(on, 2, got.replace(ema=bumped))
    back, dropped = restore(off, 2)
    assert back.ema == {} and dropped == ["ema"]
    np.testing.assert_array_equal(_flat(back.params), _flat(state.params))
    np.testing.assert_array_equal(_flat(restore(on, 2)[0].ema), _flat(bumped))
