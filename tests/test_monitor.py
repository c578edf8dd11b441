"""What a run tells: TensorBoard and W&B mirror metrics.jsonl, the closing summary and
final_metrics.json, the compile line, the training-curve panels (clip_jax/monitor.py, plots.py).

TensorBoard event files are read back here from the record format itself (length, masked
CRC32C, an ``Event`` protobuf, masked CRC32C; every CRC checked), applying TensorBoard's purge
rule (a ``SessionLog.START`` at step S hides points at steps >= S from the files before it), so
the series compared are the ones TensorBoard would show. W&B offline runs are read from
``<workdir>/wandb/offline-run-*/run-*.wandb``: W&B's LevelDB-style log (a 7-byte ``:W&B`` header,
32 KiB blocks of ``crc32 | length | type`` chunks) of ``wandb_internal_pb2.Record`` protobufs,
whose ``history`` records hold each logged step and ``summary`` records the run's summary.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import struct
import sys

import jax
import numpy as np
import pytest

from clip_jax import config as config_lib
from clip_jax import monitor, train
from clip_jax.evaluate import plots
from configs import tiny

_TRAIN = train.train

# -- readers --------------------------------------------------------------------------------


def _tb_events(logdir: str):
    """Every ``Event`` of every event file in ``logdir``, files in name order (TensorBoard's)."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto import event_pb2

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    for name in sorted(os.listdir(logdir)):
        assert name.startswith("events.out.tfevents."), name
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header), name
            body = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == \
                masked(body), name
            pos += 16 + length
            event = event_pb2.Event()
            event.ParseFromString(body)
            yield name, event


def _tb_scalars(logdir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} as TensorBoard shows it; fails on a step written twice for a tag
    (after purging)."""
    from tensorboardX.proto import event_pb2

    series: dict[str, dict[int, float]] = {}
    for name, event in _tb_events(logdir):
        if event.HasField("session_log") and \
                event.session_log.status == event_pb2.SessionLog.START:
            for points in series.values():
                for step in [s for s in points if s >= event.step]:
                    del points[step]
        for value in event.summary.value:
            if value.HasField("simple_value"):
                points = series.setdefault(value.tag, {})
                assert event.step not in points, f"{value.tag} step {event.step} twice ({name})"
                points[event.step] = value.simple_value
    return series


def _jsonl_series(path) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            for key, value in record.items():
                if key != "step" and not isinstance(value, str):
                    points = series.setdefault(key, {})
                    assert record["step"] not in points, (key, record["step"])
                    points[record["step"]] = value
    return series


def _assert_same_series(tb: dict, jsonl: dict) -> None:
    assert set(tb) == set(jsonl), set(tb) ^ set(jsonl)
    for key, points in jsonl.items():
        assert sorted(tb[key]) == sorted(points), key
        for step, value in points.items():  # event files hold float32
            got = tb[key][step]
            assert (math.isnan(got) and math.isnan(value)) or got == np.float32(value), \
                (key, step, got, value)


def _wandb_records(path: str):
    from wandb.proto import wandb_internal_pb2

    block = 32 * 1024
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in items}


# -- a tiny run, its resume ----------------------------------------------------------------


def _main(monkeypatch, argv: list[str]) -> int:
    """``python -m clip_jax.train ARGV`` in this process, on one device (a small, quick run)."""
    # ml_collections' config flag reads its --config.KEY overrides from sys.argv
    monkeypatch.setattr(sys, "argv", ["clip_jax.train", *argv])
    monkeypatch.setattr(train, "train", functools.partial(_TRAIN, devices=jax.devices()[:1]))
    return train.main(argv)


def _argv(workdir, total: int, *extra: str) -> list[str]:
    return [f"--config={os.path.join(os.path.dirname(tiny.__file__), 'tiny.py')}",
            f"--workdir={workdir}", f"--config.total_steps={total}",
            "--config.log_every_steps=2", "--config.checkpoint.every_steps=2",
            "--config.batch_size=8", *extra]


def test_a_tiny_run_and_its_resume_talk_and_mirror_metrics_jsonl_to_tensorboard(
        tmp_path, capsys, monkeypatch):
    work = tmp_path / "run"
    assert _main(monkeypatch, _argv(work, 4)) == 0
    out = capsys.readouterr().out
    assert "first step (XLA compile + run): " in out
    assert "done: final loss " in out and '{"final"' not in out
    assert "metrics.jsonl" in out and str(work / "training_curves.png") in out
    final = json.loads((work / monitor.FINAL_METRICS).read_text())
    assert final == monitor.MetricsWriter(str(work), 4).last_record()
    assert f"done: final loss {final['loss']:.4f}" in out
    _assert_same_series(_tb_scalars(str(work / "tensorboard")),
                        _jsonl_series(work / "metrics.jsonl"))

    c = tiny.get_config()  # the same run, longer: resumed from step 4, a new event file
    c.total_steps, c.log_every_steps, c.checkpoint.every_steps, c.batch_size = 8, 2, 2, 8
    _TRAIN(c, str(work), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert "resumed from step 4" in out and "first step (XLA compile + run): " in out
    files = sorted(os.listdir(work / "tensorboard"))
    assert len(files) == 2
    steps = [e.step for name, e in _tb_events(str(work / "tensorboard"))
             if name == files[1] and e.summary.value]
    assert steps and min(steps) > 4
    tb = _tb_scalars(str(work / "tensorboard"))
    _assert_same_series(tb, _jsonl_series(work / "metrics.jsonl"))
    assert sorted(tb["loss"]) == [2, 4, 6, 8]
    texts = [v for _, e in _tb_events(str(work / "tensorboard")) for v in e.summary.value
             if v.tag == "config/text_summary"]
    assert len(texts) == 2 and '"total_steps": 8' in texts[1].tensor.string_val[0].decode()
    final = json.loads((work / monitor.FINAL_METRICS).read_text())
    assert final == monitor.MetricsWriter(str(work), 8).last_record()


def test_a_resume_after_a_kill_hides_the_points_logged_past_the_checkpoint(tmp_path):
    """The dead run logged steps 10..30 with its last checkpoint at 20; the restart resumes at
    20: TensorBoard shows 10, 20, then the new 30 and 40, once each."""
    first = monitor.MetricsWriter(str(tmp_path), 40, tensorboard=True)
    for step in (10, 20, 30):
        first.write(step, {"loss": 1.0 / step})
    first.close()
    again = monitor.MetricsWriter(str(tmp_path), 40, tensorboard=True)
    again.truncate_after(20)
    for step in (30, 40):
        again.write(step, {"loss": 2.0 / step})
    again.close()
    tb = _tb_scalars(str(tmp_path / "tensorboard"))
    assert tb["loss"] == {10: np.float32(0.1), 20: np.float32(0.05),
                          30: np.float32(2 / 30), 40: np.float32(0.05)}
    _assert_same_series(tb, _jsonl_series(tmp_path / "metrics.jsonl"))


def test_eval_names_are_kept_and_the_confusion_matrix_is_an_image(tmp_path):
    png = plots.plot_confusion_matrix(np.eye(3) * 5 + 1, ["a", "b", "c"],
                                      str(tmp_path / "eval" / "step_10_zeroshot_confusion.png"))
    writer = monitor.MetricsWriter(str(tmp_path), 10, tensorboard=True,
                                   config={"total_steps": 10})
    writer.write(5, {"loss": 2.0})
    writer.write(10, {"eval/zeroshot/acc1": 0.5, "eval/retrieval/image_to_text_recall@1": 0.25})
    writer.close()
    images = [(e.step, v) for _, e in _tb_events(str(tmp_path / "tensorboard"))
              for v in e.summary.value if v.HasField("image")]
    assert len(images) == 1 and images[0][0] == 10
    step, value = images[0]
    assert value.tag == "eval/zeroshot_confusion"
    with open(png, "rb") as f:
        assert value.image.encoded_image_string == f.read()
    tb = _tb_scalars(str(tmp_path / "tensorboard"))
    assert tb["eval/retrieval/image_to_text_recall@1"] == {10: 0.25}  # "@" kept
    _assert_same_series(tb, _jsonl_series(tmp_path / "metrics.jsonl"))


def test_no_tensorboard_when_off_and_only_the_writing_process_writes(tmp_path):
    (tmp_path / "a").mkdir()
    monitor.MetricsWriter(str(tmp_path / "a"), 5, tensorboard=False).write(1, {"loss": 1.0})
    assert not (tmp_path / "a" / "tensorboard").exists()
    other = monitor.MetricsWriter(str(tmp_path / "b"), 5, enabled=False, tensorboard=True)
    other.write(1, {"loss": 1.0})
    other.finish({"loss": 1.0})
    other.close()
    assert not (tmp_path / "b").exists()


# -- W&B -----------------------------------------------------------------------------------


def test_wandb_offline_run_holds_the_logged_history_and_the_final_loss(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: never the network
    c = tiny.get_config()
    c.total_steps, c.log_every_steps, c.batch_size, c.mesh.data = 4, 2, 8, 1
    c.logging.tensorboard = False
    c.logging.wandb, c.logging.wandb_mode, c.logging.wandb_name = True, "offline", "tiny-test"
    work = tmp_path / "run"
    last = train.train(c, str(work), devices=jax.devices()[:1])
    runs = glob.glob(str(work / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1, runs
    run_id = (work / monitor.WANDB_ID_FILE).read_text().strip()
    assert runs[0].endswith(f"run-{run_id}.wandb")
    history, summary, config = {}, {}, {}
    for record in _wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = _wandb_items(record.history.item)
            history[items["_step"]] = items
        elif kind == "summary":
            summary.update(_wandb_items(record.summary.update))
        elif kind == "run":
            config = {item.key: json.loads(item.value_json)
                      for item in record.run.config.update}
            assert record.run.display_name == "tiny-test"
    jsonl = _jsonl_series(work / "metrics.jsonl")
    assert sorted(history) == [2, 4]
    for key, points in jsonl.items():
        for step, value in points.items():
            assert history[step][key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert summary["loss"] == pytest.approx(last["loss"], rel=1e-12)
    assert config["total_steps"] == 4


def test_wandb_enabled_but_missing_or_a_bad_mode_is_a_clear_error(monkeypatch):
    c = tiny.get_config()
    c.logging.wandb_mode = "onlin"
    with pytest.raises(ValueError, match="logging.wandb_mode='onlin'"):
        config_lib.validate(c)
    c.logging.wandb_mode, c.logging.wandb = "offline", True
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ValueError, match=r"logging.wandb=True needs the wandb package"):
        config_lib.validate(c)


# -- what a person reads -------------------------------------------------------------------


def test_summary_names_the_headline_numbers_and_the_files(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    last = {"loss": 0.25, "eval/zeroshot/acc1": 0.656, "eval/retrieval/mean_recall": 0.3,
            "eval/cifar10/top1": 0.5}  # (a final_metrics.json of an earlier release: top1)
    text = monitor.summary(last, str(tmp_path))
    lines = text.splitlines()
    assert lines[0] == "done: final loss 0.2500"
    assert "zero-shot top-1: 65.6%" in lines and "cifar10 top-1: 50.0%" in lines
    assert any(line.split() == ["metrics:", str(tmp_path / "metrics.jsonl")] for line in lines)
    assert any(line.split() == ["eval", "reports:", str(tmp_path / "eval")] for line in lines)
    assert "plots" not in text and "{" not in text  # no file that is not there, no JSON


def test_training_curves_draw_one_panel_per_eval_kind():
    records = []
    for step in range(1, 31):
        rec = {"step": step, "loss": 5.0 / step, "lr": 1e-3, "logit_scale": 14.0}
        if step % 10 == 0:
            rec.update({"eval/zeroshot/acc1": 0.1, "eval/zeroshot/acc5": 0.3,
                        "eval/retrieval/mean_recall": 0.2,
                        "eval/retrieval/text_to_image_recall@1": 0.1,
                        "eval/fewshot/16shot": 0.4, "eval/fewshot/2shot": 0.3,
                        "eval/fewshot/1shot": 0.2,
                        "eval/val_loss": 1.0})
        records.append(rec)
    fig = plots.training_curves_figure(records)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train loss", "logit scale", "learning rate", "eval (loss)",
                      "eval: fewshot", "eval: retrieval", "eval: zeroshot"]
    lines = {ax.get_title(): sorted(line.get_label() for line in ax.get_lines())
             for ax in fig.axes}
    assert lines["eval: zeroshot"] == ["acc1", "acc5"]
    assert lines["eval: retrieval"] == ["mean_recall", "text_to_image_recall@1"]
    fewshot = next(ax for ax in fig.axes if ax.get_title() == "eval: fewshot")
    assert [line.get_label() for line in fewshot.get_lines()] == ["1shot", "2shot", "16shot"]
    with pytest.raises(ValueError, match="no numeric metrics"):
        plots.training_curves_figure([{"step": 1, "note": "x"}])


def test_welcome_counts_the_mesh_devices_and_names_recipe_changes():
    from clip_jax import sharding

    c = config_lib.base_config()  # batch 64
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:2])  # 2 of the 8 simulated devices
    line = monitor.welcome(c, mesh, 1234)
    assert "2 local of 2 cpu devices" in line and "64 global" in line and "32/device" in line
    assert "frozen" not in line and "patch dropout" not in line
    c.optimizer.frozen = ("image",)
    c.optimizer.lr_multipliers = (("^text/", 0.1),)
    c.model.vision.patch_dropout = 0.5
    line = monitor.welcome(c, mesh, 1234)
    assert line.endswith("| frozen image | lr x 0.1 on ^text/ | patch dropout 0.5"), line
