"""Orbax checkpoints: sharded train state + data-iterator state + the resolved config.

Layout: ``<workdir>/checkpoints/<step>/{state, data, config, tokenizer}``: the tokenizer's files
travel inside every checkpoint (:func:`load_tokenizer`), so a step directory copied on its own
still decodes its text. Orbax writes each step into a
temporary directory and renames it only when complete, so a run killed mid-save never resumes
from a half-written checkpoint. The data-iterator state of *every* process is saved (gathered to
process 0), so a restart continues with exactly the batch that would have come next.

Restoring takes the target shardings of the current mesh, so a checkpoint written on 8 devices
restores on 4 or 1. This module never calls back into training.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


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


ITEMS = ("state", "data", "config", "tokenizer")


def _tokenizer_files(tokenizer) -> dict | None:
    """A tokenizer as a JSON-able ``{file name: base64 content}`` (what ``tok.save`` writes)."""
    if tokenizer is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        return {p.name: base64.b64encode(p.read_bytes()).decode()
                for p in sorted(Path(d).iterdir())}


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg, state_shardings, abstract_state, tokenizer=None):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.every = int(ckpt_cfg.every_steps)
        self.state_shardings, self.abstract_state = state_shardings, abstract_state
        self.tokenizer_files = _tokenizer_files(tokenizer)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_cfg.keep or None,
            keep_period=ckpt_cfg.keep_period or None,
            enable_async_checkpointing=bool(ckpt_cfg.async_save),
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, data_state: dict, config_json: str | None = None,
             force: bool = False) -> None:
        states = _allgather_json(data_state)
        args = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave({"process_count": len(states), "processes": states}),
            "config": ocp.args.JsonSave(json.loads(config_json) if config_json else {}),
        }
        if self.tokenizer_files is not None:
            args["tokenizer"] = ocp.args.JsonSave(self.tokenizer_files)
        self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int):
        target = _abstract_with_shardings(self.abstract_state, self.state_shardings)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        data = out["data"]
        if data["process_count"] != jax.process_count():
            raise ValueError(
                f"checkpoint step {step} in {self.directory} was written by "
                f"{data['process_count']} processes but {jax.process_count()} are running: "
                "the data-iterator state cannot be split differently; resume with the same "
                "process count (the mesh may differ)")
        return out["state"], data["processes"][jax.process_index()]

    def restore_latest(self):
        step = self.latest_step()
        return None if step is None else self.restore(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path: str, abstract_params, shardings=None):
    """Parameters only, from a training workdir/checkpoint dir (latest step) or a bundle."""
    path = os.path.abspath(path)
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: one, abstract_params)
    if os.path.exists(os.path.join(path, "model.safetensors")):
        from clip_jax import export

        return export.load_bundle_params(path, abstract_params, shardings)
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    manager = ocp.CheckpointManager(ckpt_dir, item_names=ITEMS,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint found under {ckpt_dir}")
    # Restore the params subtree only; the source run's optimizer state is never read.
    target = {"params": _abstract_with_shardings(abstract_params, shardings)}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    return restored["state"]["params"]


def load_tokenizer(path: str):
    """The tokenizer saved with the latest checkpoint under ``path`` (a workdir or its
    ``checkpoints`` directory), or None if that checkpoint carries none."""
    path = os.path.abspath(path)
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    manager = ocp.CheckpointManager(ckpt_dir, item_names=ITEMS,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = manager.latest_step()
        if step is None or not os.path.isdir(os.path.join(ckpt_dir, str(step), "tokenizer")):
            return None
        files = manager.restore(step, args=ocp.args.Composite(
            tokenizer=ocp.args.JsonRestore()))["tokenizer"]
    finally:
        manager.close()
    from clip_jax.data.tokenizer import load_tokenizer as load

    out = tempfile.mkdtemp(prefix="clip_jax_tokenizer_")
    for name, content in files.items():
        if os.path.basename(name) != name:
            raise ValueError(f"checkpoint step {step} in {ckpt_dir}: bad tokenizer file name "
                             f"{name!r}")
        with open(os.path.join(out, name), "wb") as f:
            f.write(base64.b64decode(content))
    return load(out)
