"""Orbax checkpoints: sharded train state + data-iterator state + the resolved config.

Layout: ``<workdir>/checkpoints/<step>/{state, data, config, tokenizer}``: the tokenizer's files
travel inside every checkpoint (:func:`load_tokenizer`), so a step directory copied on its own
still decodes its text. Orbax writes each step into a
temporary directory and renames it only when complete, so a run killed mid-save never resumes
from a half-written checkpoint. The data-iterator state of *every* process is saved (gathered to
process 0), so a restart continues with exactly the batch that would have come next.

Restoring takes the target shardings of the current mesh, so a checkpoint written on 8 devices
restores on 4 or 1. This module never calls back into training.

Faults: a save that fails (synchronously, or later in orbax's background thread) raises
:class:`CheckpointSaveError` at the next :meth:`Checkpointer.check` / ``save`` / ``wait``, naming
the step directory and the OS error; orbax only deletes old steps after a save is complete, so the
last good checkpoint stays. :meth:`Checkpointer.restore_latest` reads the newest step that can be
read: unreadable newer steps are moved aside to ``<step>.corrupt-<time>`` (never deleted), and
only if no step can be read does it raise :class:`CheckpointRestoreError` (moving nothing).
A state holding a non-finite value (NaN, inf) is never saved (:class:`NonFiniteStateError`, one
reduction over the state per save), so ``keep`` cannot rotate the good checkpoints away.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

from clip_jax import params as params_lib
from clip_jax import stability
from clip_jax.cli import RunError, UserError
from clip_jax.data import tokenizer as tokenizer_lib


def _abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree,
        shardings)


def _allgather_json(obj) -> list:
    """Every process's JSON-able object, in process order (a no-op on one process)."""
    if jax.process_count() == 1:
        return [obj]
    raw = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    n = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
    padded = np.zeros(n, np.uint8)
    padded[: raw.size] = raw
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in np.asarray(rows)]


CHECKPOINTS_SUBDIR = "checkpoints"  # where a training workdir keeps its orbax steps
ITEMS = ("state", "data", "config", "tokenizer")
REBUILT = ("ema",)  # state fields a step may lack that the caller rebuilds (a new average)


class CheckpointSaveError(RunError):
    """A checkpoint could not be written: training must stop (later steps would be unsaved).
    The command line exits at once: orbax's threads wait on the failed commit."""

    exit_now = True


class CheckpointRestoreError(RunError):
    """No checkpoint step in the directory can be read."""


class _Protected(cm.CustomSteps):  # the steps of a set the caller updates
    def __init__(self, steps: set[int]):
        self._steps_set = steps


class StateStructureError(UserError):
    """The checkpoints hold another state than this config builds: a config change, not damage
    (the steps are left where they are)."""


class NonFiniteStateError(RunError):
    """The state to save holds NaN or inf: the save is refused and the run stops."""


nonfinite_leaves = stability.nonfinite_leaves  # (the guard's: a save is one more check)


class ProcessCountError(UserError):
    """The checkpoint was written by a different number of processes."""


_MAX_MESSAGE = 300  # characters of an error cause in a one-line report


def root_cause(e: BaseException) -> str:
    """The innermost OS error in ``e``'s chain (what a person can act on), else ``e`` itself,
    as one line."""
    seen, cur, found = set(), e, None
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError):
            found = cur
        cur = cur.__cause__ or cur.__context__
    msg = " ".join((str(found or e) or type(e).__name__).split())
    msg = msg.split(" See full TensorStore details")[0]  # a page of spec JSON follows
    return msg if len(msg) <= _MAX_MESSAGE else msg[:_MAX_MESSAGE - 3] + "..."


def _tokenizer_files(tokenizer) -> dict | None:
    """A tokenizer as a JSON-able ``{file name: base64 content}`` (what ``tok.save`` writes)."""
    if tokenizer is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        return {p.name: base64.b64encode(p.read_bytes()).decode()
                for p in sorted(Path(d).iterdir())}


def save_policy(every_steps: int):
    """When orbax saves unforced: every ``every_steps`` steps (0 = never) and at a preemption
    sync point. Orbax's default policy also saves the first step of a fresh run
    (``InitialSavePolicy``), which ours never did, so the policy is spelled out."""
    policies = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
    if every_steps > 0:  # what ``CheckpointManagerOptions(save_interval_steps=...)`` builds
        policies.insert(0, ocp.checkpoint_managers.FixedIntervalPolicy(every_steps))
    return ocp.checkpoint_managers.AnySavePolicy(policies)


def _saved_tree(ckpt_dir: str, step: int) -> dict | None:
    """The metadata tree of ``step``'s state (None when it cannot be read)."""
    try:
        md = ocp.PyTreeCheckpointHandler().metadata(epath.Path(ckpt_dir) / str(step) / "state")
        md = getattr(md, "item_metadata", md)
        saved = getattr(md, "tree", md)
    except Exception:  # noqa: BLE001 - a damaged step: restore_latest reports it
        return None
    return saved if isinstance(saved, dict) else None


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg, state_shardings, abstract_state, tokenizer=None):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS_SUBDIR))
        self.every = int(ckpt_cfg.every_steps)  # 0 = only at the end (and on preemption)
        self.state_shardings, self.abstract_state = state_shardings, abstract_state
        self.tokenizer_files = _tokenizer_files(tokenizer)
        self.protected: set[int] = set()  # see protect()
        self.good, self.judged = None, False
        keep = [cm.LatestN(ckpt_cfg.keep), _Protected(self.protected)] + (
            [cm.EveryNSteps(ckpt_cfg.keep_period)] if ckpt_cfg.keep_period else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(keep) if ckpt_cfg.keep else None,
            enable_async_checkpointing=bool(ckpt_cfg.async_save),
            create=True,
            save_decision_policy=save_policy(self.every),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._pending: int | None = None  # step of a save not yet known to be complete
        self.failed, self.dropped = False, []  # dropped: see restore()

    def should_save(self, step: int) -> bool:
        """Orbax's decision (:func:`save_policy`): a multiple of ``every_steps``, or the step
        all processes agreed on after a preemption notice; never a step already saved."""
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """Whether ``step`` is the agreed save-and-exit step after a preemption notice to any
        process (orbax over JAX's preemption sync manager: only with ``jax.distributed``)."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, state, data_state: dict, config_json: str | None = None,
             force: bool = False) -> None:
        bad = nonfinite_leaves(state)
        if bad:
            self.wait()  # an earlier save in flight is on disk, and named below
            good = self._last_good(exclude=None)
            raise NonFiniteStateError(
                f"refusing to save checkpoint step {step}: non-finite values (NaN/inf) in "
                f"{', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                + f"; training stopped so that no good checkpoint is rotated away; last good "
                f"checkpoint: {'none' if good is None else f'step {good}'} in {self.directory}")
        states = _allgather_json(data_state)
        args = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave({"process_count": len(states), "processes": states}),
            "config": ocp.args.JsonSave(json.loads(config_json) if config_json else {}),
        }
        if self.tokenizer_files is not None:
            args["tokenizer"] = ocp.args.JsonSave(self.tokenizer_files)
        self.wait()  # a failed earlier save is reported as that step's failure
        self._guard(step, lambda: self.manager.save(step, args=ocp.args.Composite(**args),
                                                    force=force))
        self._pending = step

    def _guard(self, step: int | None, fn):
        try:
            return fn()
        except Exception as e:
            self.failed = True
            step = self._pending if step is None else step
            where = os.path.join(self.directory, str(step)) if step is not None \
                else self.directory
            good = self._last_good(exclude=step)
            raise CheckpointSaveError(
                f"checkpoint save of step {step} to {where} failed: {root_cause(e)}; "
                f"training stopped (later steps would be unprotected); last good checkpoint: "
                f"{'none' if good is None else f'step {good}'}") from e

    def protect(self, good: int | None, pending=()) -> None:
        """The guard's good checkpoint and those awaiting its confirmation: never rotated."""
        self.good, self.judged = good, True
        self.protected.clear()
        self.protected.update({good, *pending} - {None})

    def set_aside_after(self, step: int | None, tag: str) -> list[str]:
        """The steps after ``step`` (all if None) moved aside: a resume restores ``step``."""
        self.wait()
        return self._move_aside(sorted(s for s in self.manager.all_steps()
                                       if step is None or s > step), tag)

    def _move_aside(self, steps: list[int], tag: str) -> list[str]:
        """Steps renamed to ``<step>.<tag>-<time>`` (never deleted); their new names."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        names = [f"{s}.{tag}-{stamp}" for s in steps]
        if steps and jax.process_index() == 0:
            for s, name in zip(steps, names, strict=True):
                os.rename(os.path.join(self.directory, str(s)),
                          os.path.join(self.directory, name))
        if steps and jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"clip_jax: checkpoints moved ({tag})")
        if steps:
            self.manager.reload()
        return names

    def _last_good(self, exclude: int | None) -> int | None:
        if self.judged:  # the newest taken while healthy (stability.HostGuard)
            return max(self.protected, default=None)
        try:
            steps = [int(p) for p in os.listdir(self.directory) if p.isdigit()
                     and int(p) != exclude]
        except OSError:
            return None
        return max(steps, default=None)

    def check(self) -> None:
        """Raise :class:`CheckpointSaveError` if a background save has failed; never blocks
        on a save still in progress (call it at every step boundary)."""
        if self._pending is None or self.manager.is_saving_in_progress():
            return
        self._guard(None, self.manager.wait_until_finished)
        self._pending = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int):
        """``(state, this process's data state)`` of ``step``. A field of the state that the
        step lacks (saved before it existed, or with ``ema`` off) comes back as this config's
        when that is empty (``batch_stats`` of a ViT), as None when it is in :data:`REBUILT`
        (the caller rebuilds it), else the step cannot be read; a field the step holds and
        this config's state has not (``ema`` turned off) is not read (:attr:`dropped`)."""
        target = _abstract_with_shardings(self.abstract_state, self.state_shardings)
        if dataclasses.is_dataclass(target):
            fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
        else:  # a plain tree (a custom loop's state): read as a whole
            fields = {}
        tree = _saved_tree(self.directory, step) if fields else None
        full = {k for k, v in fields.items() if jax.tree.leaves(v)}  # fields with arrays
        saved = full if tree is None else {k for k, v in tree.items() if v != {}}
        bad = sorted(full - saved - set(REBUILT))
        if bad:
            raise ValueError(f"checkpoint step {step} has no {', '.join(bad)}")
        self.dropped = sorted(saved - full)
        if saved == full and (tree is None or set(tree) == set(fields)):
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
            state = out["state"]
        else:  # the fields both have, read apart (the manager's "state" handler saves)
            out = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
            have = {k: fields[k] for k in full & saved}
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
                part = reader.restore(os.path.join(self.directory, str(step), "state"),
                                      args=ocp.args.PyTreeRestore(
                    item=have, partial_restore=True, restore_args=jax.tree.map(
                        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), have)))
            state = target.replace(**{k: None if k in full else v for k, v in fields.items()
                                      if k not in have}, **part)
        data = out["data"]
        if data["process_count"] != jax.process_count():
            raise ProcessCountError(
                f"checkpoint step {step} in {self.directory} was written by "
                f"{data['process_count']} processes but {jax.process_count()} are running: "
                "the data-iterator state cannot be split differently; resume with the same "
                "process count (the mesh may differ)")
        return state, data["processes"][jax.process_index()]

    def _check_structure(self, step: int) -> None:
        """Refuse up front, naming the keys, a resume whose config builds another state than
        the newest step holds (unreadable metadata: left to the restore's own checks)."""
        saved = _saved_tree(self.directory, step)
        diff = params_lib.structure_diff(saved, self.abstract_state) if saved else []
        if diff:
            raise StateStructureError(
                f"checkpoint step {step} in {self.directory} holds another state than this "
                f"config builds ({'; '.join(diff[:6])}{' ...' * (len(diff) > 6)}): the config "
                "changed what is trained (the model, distill.teachers or feature_weight...); "
                "resume with the workdir's config.json, or use a new workdir; the checkpoints "
                "are untouched")

    def restore_latest(self, log=print):
        """``(state, data state)`` of the newest step that can be read, or None if there is no
        step at all. Unreadable newer steps (truncated or missing files, an empty step
        directory) are reported in one line each and moved aside to
        ``<step>.corrupt-<time>``, only once a readable step has been found."""
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if steps:
            self._check_structure(steps[0])
        bad: list[tuple[int, str]] = []
        for step in steps:
            try:
                out = self.restore(step)
                error = None
            except ProcessCountError:
                raise
            except Exception as e:  # orbax/tensorstore raise many types for unreadable files
                out, error = None, root_cause(e)
            errors = _allgather_json(error)  # every process must agree on the step
            if all(x is None for x in errors):
                break
            bad.append((step, next(x for x in errors if x is not None)))
        else:
            if not bad:
                return None
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} can be read (" + "; ".join(
                    f"step {s}: {err}" for s, err in bad) + "); nothing was moved. Move the "
                "step directories away to start afresh, or use a new workdir")
        names = self._move_aside([s for s, _ in bad], "corrupt")
        for (s, err), name in zip(bad, names, strict=True):
            log(f"checkpoint step {s} cannot be read ({err}); moved it to "
                f"{os.path.join(self.directory, name)}, resuming from step {step}")
        if self.dropped:
            log(f"checkpoint step {step} holds {', '.join(self.dropped)}, which this config's "
                "state has not (ema.decay=0): not restored (the step directory keeps it)")
        return out

    def wait(self) -> None:
        self._guard(None, self.manager.wait_until_finished)
        self._pending = None

    def close(self) -> None:
        """Wait for the last save and release orbax's resources. After a failed save orbax is
        not asked to close (its threads would wait on the failed commit): the run is ending."""
        if self.failed:
            return
        self.wait()
        self.manager.close()


def checkpoints_dir(path: str | os.PathLike) -> str:
    """The orbax directory of ``path``: ``path/checkpoints`` for a training workdir, else
    ``path`` itself (the user named the checkpoints directory)."""
    path = os.path.abspath(path)
    sub = os.path.join(path, CHECKPOINTS_SUBDIR)
    return sub if os.path.isdir(sub) else path


def _read_only(ckpt_dir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(ckpt_dir, item_names=ITEMS,
                                 options=ocp.CheckpointManagerOptions(read_only=True))


def load_params(path: str, abstract_params, shardings=None, weights: str = "raw"):
    """Parameters only, from a training workdir or its checkpoints directory (latest step),
    restored straight into ``shardings``; the source run's optimizer state is never read.
    ``weights="ema"``: the run's weight average (:mod:`clip_jax.ema`) instead, in the dtypes
    of ``abstract_params``. A ``batch_stats`` key of ``abstract_params`` (a BatchNorm tower's
    statistics, as ``models.merge_variables`` puts them) comes from the state's."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory (expected a training workdir or "
                                f"its {CHECKPOINTS_SUBDIR}/ directory)")
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, abstract_params)
    ckpt_dir = checkpoints_dir(path)
    manager = _read_only(ckpt_dir)
    step = manager.latest_step()
    if step is None:
        manager.close()
        raise FileNotFoundError(f"{path}: no complete orbax checkpoint step under {ckpt_dir}")
    key = {"raw": "params", "ema": "ema"}[weights]
    if key == "ema" and not (_saved_tree(ckpt_dir, step) or {}).get("ema"):
        manager.close()
        raise ValueError(f"{path}: checkpoint step {step} holds no EMA weights (its run had "
                         "ema.decay=0): ask for the raw weights")
    tree = dict(_abstract_with_shardings(abstract_params, shardings))
    stats = tree.pop("batch_stats", None)  # a BatchNorm tower's: TrainState.batch_stats
    target = {key: tree} if stats is None else {key: tree, "batch_stats": stats}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding,
                                                               dtype=x.dtype), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    out = dict(restored["state"][key])
    if stats is not None:
        out["batch_stats"] = restored["state"]["batch_stats"]
    return out


def _latest_json_item(path: str, item: str):
    """``(step, checkpoints dir, the JSON item)`` of the latest step under ``path``; the item is
    None when there is no step or the step does not carry that item."""
    ckpt_dir = checkpoints_dir(path)
    if not os.path.isdir(ckpt_dir):
        return None, ckpt_dir, None
    manager = _read_only(ckpt_dir)
    try:
        step = manager.latest_step()
        if step is None or not os.path.isdir(os.path.join(ckpt_dir, str(step), item)):
            return step, ckpt_dir, None
        return step, ckpt_dir, manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]
    finally:
        manager.close()


def saved_config(path: str) -> dict | None:
    """The run config saved with the latest step under ``path`` (workdir or checkpoints dir),
    or None when there is no step or it carries no config with a model."""
    d = _latest_json_item(path, "config")[2]
    return d if isinstance(d, dict) and d.get("model") else None


def load_tokenizer(path: str):
    """The tokenizer saved with the latest checkpoint under ``path`` (a workdir or its
    ``checkpoints`` directory), or None if that checkpoint carries none."""
    step, ckpt_dir, files = _latest_json_item(path, "tokenizer")
    if files is None:
        return None
    out = tempfile.mkdtemp(prefix="clip_jax_tokenizer_")
    for name, content in files.items():
        if os.path.basename(name) != name:
            raise ValueError(f"checkpoint step {step} in {ckpt_dir}: bad tokenizer file name "
                             f"{name!r}")
        with open(os.path.join(out, name), "wb") as f:
            f.write(base64.b64decode(content))
    return tokenizer_lib.load_tokenizer(out)
