"""Where clip_jax writes: output directories and files written whole or not at all.

A file goes to a temporary file beside the target, then a rename, so a reader (or a run killed
mid-write and restarted) sees the old file or the new one, never a part. It is an ordinary file
of the user's (``open``'s mode and umask, as any tool writes). Every directory, JSON and weight
file clip_jax writes goes through here, and an OS error on the way (an existing file where a
directory goes, a read-only directory, a full disk) is one :class:`OutputError` naming the path
and the cause; the temporary file is removed and the old target is left as it was."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from clip_jax.cli import UserError


class OutputError(UserError):
    """A path clip_jax was asked to write cannot be written (the message names it and why)."""


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def make_dir(path: str | os.PathLike) -> str:
    """``path`` and its parents as directories (existing ones are fine); returns ``path``."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"cannot write into {path}: it is an existing file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create directory {path}: {_why(e)}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` for a writer to fill; renamed onto ``path`` when the
    block ends, removed if it raises. A writer's OS error (or a library's, re-raised as
    ``OSError``) becomes an :class:`OutputError` naming ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is an existing directory")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        open(tmp, "wb").close()  # the directory is writable: say so before a long write
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_why(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """``data`` at ``path`` via ``<path>.<pid>.tmp`` + ``os.replace``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(
                data, bytes) else "utf-8") as f:
            f.write(data)


def write_json(path: str | os.PathLike, obj, indent: int = 1, sort_keys: bool = False) -> None:
    """``obj`` as JSON (one trailing newline) at ``path``, atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
