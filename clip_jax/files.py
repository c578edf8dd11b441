"""Files written whole or not at all: a temporary file beside the target, then a rename, so a
reader (or a run killed mid-write and restarted) sees the old file or the new one, never a
part. Every JSON clip_jax writes goes through :func:`write_json`."""

from __future__ import annotations

import json
import os


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """``data`` at ``path`` via ``<path>.<pid>.tmp`` + ``os.replace``."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(
            data, bytes) else "utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj, indent: int = 1, sort_keys: bool = False) -> None:
    """``obj`` as JSON (one trailing newline) at ``path``, atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
