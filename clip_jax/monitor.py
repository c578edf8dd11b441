"""What a run tells: the opening line, metrics (one JSON object per line in
``<workdir>/metrics.jsonl``), a progress line per log step and the closing summary.

On resume the file is cut back to the restored step, so a run that was killed and restarted
leaves the same file as one that never stopped. Only process 0 writes and prints.

Experiment tracking (``config.logging``) mirrors every record written to ``metrics.jsonl``,
which stays the source of truth: TensorBoard event files in ``<workdir>/tensorboard/``
(tensorboardX, no TensorFlow: every numeric metric as a scalar under its metrics.jsonl name, the
resolved config as text, zero-shot confusion matrices as images) and Weights & Biases (optional
``wandb`` package; ``offline`` mode needs no network). Each start of a run opens a new event
file; a resume from step S marks it with TensorBoard's purge step S + 1, so points a killed run
logged after its last checkpoint are hidden, and writes only steps > S.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import secrets
import sys
import time

import jax
from PIL import Image

from clip_jax import files, sharding
from clip_jax.evaluate import plots

TENSORBOARD_DIR = "tensorboard"  # under the workdir
FINAL_METRICS = "final_metrics.json"  # the last logged metrics of a finished run
WANDB_ID_FILE = "wandb_run_id"  # the run's W&B id, kept so that a resume continues it
_TB_FLUSH_SECONDS = 30


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _TensorBoard:
    """One new event file per start of a run, written by tensorboardX's ``FileWriter``
    (imported here: with torch installed its import loads torch, which a run without
    TensorBoard does not need). Summaries are built here so that tags keep their metrics.jsonl
    names (tensorboardX's ``add_scalar`` would rewrite ``recall@1`` as ``recall_1``)."""

    def __init__(self, logdir: str, purge_step: int | None):
        import tensorboardX
        from tensorboardX import summary
        from tensorboardX.proto import event_pb2, summary_pb2

        self._summary_pb2, self._text = summary_pb2, summary.text
        # a unique name: tensorboardX names files by the second, and a resume may follow
        # within the same second
        self._w = tensorboardX.FileWriter(logdir, flush_secs=_TB_FLUSH_SECONDS,
                                          filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        self._event_pb2 = event_pb2
        if purge_step is not None:
            self.purge(purge_step)

    def purge(self, step: int) -> None:
        """TensorBoard drops the points logged so far at steps >= ``step`` (a restart)."""
        pb = self._event_pb2
        self._w.add_event(pb.Event(step=step, session_log=pb.SessionLog(
            status=pb.SessionLog.START)))

    def log(self, step: int, scalars: dict, text: dict, images: dict) -> None:
        pb = self._summary_pb2
        values = [pb.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        for tag, value in text.items():  # shown as <tag>/text_summary
            values.extend(self._text(tag, value).value)
        for tag, path in images.items():  # the PNG as the evaluator wrote it
            with open(path, "rb") as f:
                png = f.read()
            with Image.open(io.BytesIO(png)) as img:
                width, height = img.size
                channels = len(img.getbands())
            values.append(pb.Summary.Value(tag=tag, image=pb.Summary.Image(
                height=height, width=width, colorspace=channels, encoded_image_string=png)))
        self._w.add_summary(pb.Summary(value=values), step)

    def close(self) -> None:
        self._w.close()


class _WandB:
    """A Weights & Biases run in ``<workdir>/wandb/`` (``mode`` offline: no network, upload
    later with ``wandb sync``). Its id is kept in ``<workdir>/wandb_run_id`` so that a resumed
    run continues the same W&B run."""

    def __init__(self, workdir: str, logging_cfg, config: dict):
        try:
            import wandb
        except ImportError as e:
            raise ValueError("config logging.wandb=True needs the wandb package: "
                             "pip install 'clip_jax[wandb]' (or wandb)") from e
        id_path = os.path.join(workdir, WANDB_ID_FILE)
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = secrets.token_hex(6)  # W&B ids: letters and digits
            with open(id_path, "w") as f:
                f.write(run_id + "\n")
        name = logging_cfg.wandb_name or os.path.basename(os.path.abspath(workdir))
        self._wandb = wandb
        self._run = wandb.init(
            project=logging_cfg.wandb_project, name=name, id=run_id, resume="allow",
            mode=logging_cfg.wandb_mode, dir=workdir, config=config,
            settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, scalars: dict, text: dict, images: dict) -> None:
        del text  # the config went to wandb.init
        data = dict(scalars)
        data.update({tag: self._wandb.Image(path) for tag, path in images.items()})
        self._run.log(data, step=step)

    def close(self) -> None:
        self._run.finish()


class MetricsWriter:
    """``metrics.jsonl``, the progress lines and the trackers of one run (process 0 only:
    ``enabled=False`` elsewhere). ``tensorboard``/``wandb`` (the ``config.logging`` block, or
    None) mirror every :meth:`write`; :meth:`from_config` reads them from a run's config."""

    def __init__(self, workdir: str, total_steps: int, enabled: bool = True,
                 stream=None, tensorboard: bool = False, wandb=None,
                 config: dict | None = None):
        self.workdir = workdir
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps, self.enabled, self._stream = total_steps, enabled, stream
        self.start = time.time()
        self._tensorboard, self._wandb_cfg, self._config = tensorboard, wandb, config or {}
        self._trackers: list | None = None  # opened by truncate_after, else the first write
        self._resumed_at: int | None = None
        self._config_logged = False

    @classmethod
    def from_config(cls, config, workdir: str, enabled: bool = True, stream=None):
        logging_cfg = config.logging
        return cls(workdir, config.total_steps, enabled, stream,
                   tensorboard=logging_cfg.tensorboard,
                   wandb=logging_cfg if logging_cfg.wandb else None,
                   config=json.loads(config.to_json_best_effort()))

    @property
    def stream(self):
        """Where lines go: the ``stream`` given, else ``sys.stdout`` as it is when printing."""
        return sys.stdout if self._stream is None else self._stream

    def _open_trackers(self) -> list:
        if self._trackers is None:
            purge = None if self._resumed_at is None else self._resumed_at + 1
            self._trackers = []
            if self._tensorboard:
                self._trackers.append(
                    _TensorBoard(os.path.join(self.workdir, TENSORBOARD_DIR), purge))
            if self._wandb_cfg is not None:
                self._trackers.append(_WandB(self.workdir, self._wandb_cfg, self._config))
        return self._trackers

    def _track(self, step: int, record: dict) -> None:
        if not (self._tensorboard or self._wandb_cfg is not None):
            return
        if self._resumed_at is not None and step <= self._resumed_at:
            return  # already in the event files of the run that logged it
        scalars = {k: v for k, v in record.items() if k != "step" and not isinstance(v, str)}
        text = {} if self._config_logged else {
            "config": _markdown_code(json.dumps(self._config, indent=2))}
        self._config_logged = True
        images = {}
        if any(k.startswith("eval/") for k in record):  # the evaluator's confusion matrices
            prefix = f"step_{step}_"
            for png in sorted(glob.glob(os.path.join(self.workdir, "eval",
                                                     f"{prefix}*confusion*.png"))):
                images["eval/" + os.path.basename(png)[len(prefix):-len(".png")]] = png
        for tracker in self._open_trackers():
            tracker.log(step, scalars, text, images)

    def close(self) -> None:
        """Flush and close the trackers (TensorBoard files, the W&B run); safe to repeat."""
        trackers, self._trackers = self._trackers or [], None
        for tracker in trackers:
            tracker.close()

    def finish(self, last: dict) -> dict:
        """The end of a run: ``<workdir>/final_metrics.json`` (``last``, the metrics of the last
        logged step) and ``training_curves.png``; returns ``last``."""
        if self.enabled:
            path = os.path.join(self.workdir, FINAL_METRICS)
            files.write_json(path, last, sort_keys=True)
            if os.path.exists(self.path):
                plots.plot_training_curves(self.path,
                                           os.path.join(self.workdir, "training_curves.png"))
        return last

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they belong to work a restart will redo) and open
        the trackers, which log only steps after it: a resume (``step > 0``) in a new event file
        that hides the old files' points from ``step + 1`` on. The train loop calls this before
        its first step, so opening them (tensorboardX's import loads torch when it is installed:
        seconds) does not fall into a measured step rate."""
        if step > 0:
            self._resumed_at = step
        if not self.enabled:
            return
        if self._tensorboard or self._wandb_cfg is not None:
            self._open_trackers()
        self._cut(step)

    def rewind(self, step: int) -> None:
        """A rollback to ``step``: its later lines go, and TensorBoard hides their points
        (W&B cannot rewind a run: it ignores steps already logged)."""
        if not self.enabled:
            return
        self._cut(step)
        for tracker in self._trackers or []:
            if hasattr(tracker, "purge"):
                tracker.purge(step + 1)

    def _cut(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
        files.write_atomic(self.path, "".join(keep))

    def last_record(self, step: int | None = None) -> dict:
        """The metrics logged at the last step (``<= step``), all lines of that step merged."""
        records = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        records = [r for r in records if step is None or r.get("step", 0) <= step]
        if not records:
            return {}
        last = max(r.get("step", 0) for r in records)
        out: dict = {}
        for r in records:
            if r.get("step", 0) == last:
                out.update(r)
        out.pop("step", None)
        return out

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            record[k] = v if isinstance(v, str | int) else float(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._track(int(step), record)

    def progress(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        parts = [f"step {step}/{self.total_steps}"]
        for key, fmt in (("loss", "{:.4f}"), ("logit_scale", "{:.2f}"), ("lr", "{:.2e}"),
                         ("grad_norm", "{:.3f}"), ("samples_per_sec", "{:.1f}")):
            if key in metrics:
                parts.append(f"{key} " + fmt.format(float(metrics[key])))
        for key in sorted(metrics):
            if key.startswith("eval/"):
                parts.append(f"{key} {float(metrics[key]):.4f}")
        for key in sorted(metrics):  # skipped shards/images: shown once there are any
            if key.startswith("data/skipped") and metrics[key]:
                parts.append(f"{key[5:]} {int(metrics[key])}")
        for key, label in (("skipped_steps", "skipped steps"), ("rollbacks", "rollbacks")):
            if metrics.get(key):  # the stability guard's, likewise
                parts.append(f"{label} {int(metrics[key])}")
        rate = metrics.get("steps_per_sec")
        if rate:
            parts.append(f"eta {_fmt_seconds((self.total_steps - step) / rate)}")
        parts.append(f"elapsed {_fmt_seconds(elapsed)}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)


def welcome(config, mesh, num_params: int) -> str:
    """The opening line: processes, the mesh's devices, the batch split, the model, and what
    changes the training recipe (frozen parameters, lr multipliers, patch dropout)."""
    devices = list(mesh.devices.flat)
    local = sum(d.process_index == jax.process_index() for d in devices)
    line = (f"clip_jax | process {jax.process_index()}/{jax.process_count()} | "
            f"{local} local of {len(devices)} {devices[0].platform} devices | "
            f"mesh {sharding.describe(mesh)} | batch {config.batch_size} global = "
            f"{config.batch_size // jax.process_count()}/process = "
            f"{config.batch_size // len(devices)}/device | "
            f"model {config.model.open_clip_config or config.model.name} ({num_params:,} params)")
    if config.optimizer.frozen:
        line += f" | frozen {', '.join(config.optimizer.frozen)}"
    if config.optimizer.lr_multipliers:
        line += " | lr x " + ", ".join(f"{f:g} on {r}" for r, f in config.optimizer.lr_multipliers)
    if config.model.vision.patch_dropout:
        line += f" | patch dropout {config.model.vision.patch_dropout:g}"
    return line


def _markdown_code(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def summary(last: dict, workdir: str) -> str:
    """The closing lines a person reads: the final loss, each evaluation's top-1 accuracy and
    where the run's files are (the full last record is in ``final_metrics.json``; one written
    before metrics were renamed says ``top1`` for ``acc1``)."""
    lines = [f"done: final loss {last.get('loss', float('nan')):.4f}"]
    last = {plots.canonical_name(k): v for k, v in last.items()}
    for key in sorted(k for k in last if k.startswith("eval/") and k.endswith("/acc1")):
        name = key[len("eval/"):-len("/acc1")]
        label = "zero-shot top-1" if name == "zeroshot" else f"{name} top-1"
        lines.append(f"{label}: {last[key]:.1%}")
    files = [("metrics", "metrics.jsonl"), ("last metrics", FINAL_METRICS),
             ("eval reports", "eval"), ("plots", "training_curves.png"),
             ("tensorboard", TENSORBOARD_DIR)]
    for label, name in files:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            lines.append(f"  {label + ':':14s}{path}" + (
                f"  (tensorboard --logdir {path})" if name == TENSORBOARD_DIR else ""))
    return "\n".join(lines)
