"""One run per workdir: an exclusive lock, and the run's saved config.

``<workdir>/.lock`` holds the owner (host, pid, start time) and an ``fcntl.flock`` on it while the
run lives; the kernel drops the lock when the process dies however it dies, so a lock left by a
killed run is simply taken over (the file's old owner is reported). The file is emptied, never
removed, on a clean exit: removing it would let a second run lock a new file while a third still
holds the old one. On several processes only process 0 holds the lock; the others learn the
outcome from it, so all of them stop together.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from clip_jax import files
from clip_jax.cli import UserError

_MAX_HOLDER_BYTES = 4096  # a lock file's holder line (host, pid, time) is far shorter

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"


class WorkdirInUse(UserError):
    """Another live run holds the workdir."""


def _owner(text: str) -> str:
    try:
        d = json.loads(text)
        return (f"pid {d['pid']} on host {d['host']}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['start']))}")
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


class WorkdirLock:
    """``with WorkdirLock(workdir, log=print): ...`` (creates the workdir)."""

    def __init__(self, workdir: str, enabled: bool = True, log=print):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.enabled, self.log, self._fd = enabled, log, None
        self.took_over: str | None = None

    def acquire(self) -> None:
        files.make_dir(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, _MAX_HOLDER_BYTES, 0).decode(errors="replace")
            os.close(fd)
            raise WorkdirInUse(
                f"workdir {os.path.dirname(self.path)} is in use by another run "
                f"({_owner(holder)}; lock file {self.path}); wait for it, stop it, or use "
                f"another workdir") from None
        old = os.pread(fd, _MAX_HOLDER_BYTES, 0).decode(errors="replace").strip()
        if old:
            self.took_over = _owner(old)
            self.log(f"taking over the lock of a run that is no longer running "
                     f"({self.took_over})")
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "start": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # empty = nobody holds it (see the module docstring)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        error = None
        if self.enabled:
            try:
                self.acquire()
            except WorkdirInUse as e:
                error = e
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.array([error is not None]))
            if error is None and bool(np.any(flags)):
                self.release()
                error = WorkdirInUse(f"workdir {os.path.dirname(self.path)} is in use by "
                                     "another run (process 0 reports the holder)")
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc):
        self.release()


def saved_config(workdir: str) -> dict | None:
    """The config a run in ``workdir`` was last started with, or None (a new run)."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run's config cannot be checked "
                        "against it: restore it, or remove it to accept the new config") from e


def write_config(workdir: str, config_json: str) -> None:
    """``config.json``, replaced atomically."""
    files.write_atomic(os.path.join(workdir, CONFIG_FILE), config_json)
