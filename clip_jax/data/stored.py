"""Per-sample arrays stored beside the shards, joined to the train stream by shard and key.

The format is the one :mod:`clip_jax.embed` writes (it imports the names from here), one output
directory per model::

    DIR/NAME.img.npy     float16 (n, D) image rows
    DIR/NAME.txt.npy     float16 (n, D) caption rows
    DIR/NAME.keys.json   the n sample keys, in shard order (row i of both arrays)
    DIR/NAME.done.json   {"shard": URL, ...}: written last, marks the shard complete
    DIR/embed.json       the report: {"embed_dim": D, "logit_scale": s, ...}

``distill.embeddings=DIR[,DIR2]`` makes the train stream (:mod:`clip_jax.data.stream`) deliver,
with each sample, row ``i`` of every directory's arrays for the sample's shard URL and key:
``stored{k}_image`` / ``stored{k}_text`` (float16, ``(b, D_k)``) beside ``image`` / ``text``,
and the sample ``key``. Nothing here knows what the rows mean (a teacher's embeddings, for
:mod:`clip_jax.distill`). The join happens after the shuffle, in the worker, like decoding: a
sample whose shard or key has no row in some directory is skipped and counted
(``skipped_no_embedding``), which keeps the batch sequence a pure function of the data, so
the iterator state resumes it exactly. Shard URLs match as written in ``NAME.done.json``,
local paths after ``realpath`` (``data/x.tar`` and ``/abs/data/x.tar`` are one shard).

``NAME.done.json`` also records the local shard's identity when it was embedded
(:func:`shard_identity`: size, mtime and a hash of its first and last 64 KiB): a shard
rewritten since (another sample order, other samples under the same keys) is an error naming
it (:func:`changed_since`), never a silent join of one image to another image's row.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPORT = "embed.json"
SUFFIXES = (".img.npy", ".txt.npy", ".keys.json", ".done.json")
SKIPPED = "skipped_no_embedding"
_CACHE = 8  # shards whose key index and (memory-mapped) rows a worker keeps per directory


def field_names(k: int) -> tuple[str, str]:
    """The batch keys of directory ``k``'s image and caption rows."""
    return f"stored{k}_image", f"stored{k}_text"


def parse_dirs(spec) -> tuple[str, ...]:
    """``"DIR[,DIR2]"`` (or a sequence of directories) as a tuple; ``""`` is none."""
    if isinstance(spec, str):
        spec = spec.split(",")
    return tuple(str(d).strip() for d in spec if str(d).strip())


def canonical(url: str) -> str:
    """A shard URL as the join compares it: local paths resolved, others as given."""
    if url.startswith("pipe:") or ("://" in url and not url.startswith("file://")):
        return url
    return os.path.realpath(url.removeprefix("file://"))


_PROBE = 1 << 16  # bytes hashed at each end of a shard


def _local(url: str) -> bool:
    return not (url.startswith("pipe:") or ("://" in url and not url.startswith("file://")))


def _probe(path: str, size: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(_PROBE))
        if size > 2 * _PROBE:
            f.seek(size - _PROBE)
            h.update(f.read(_PROBE))
    return h.hexdigest()


def shard_identity(url: str) -> dict:
    """``{"size", "mtime_ns", "probe"}`` of a local shard; ``{}`` for a pipe or remote URL."""
    if not _local(url):
        return {}
    path = canonical(url)
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "probe": _probe(path, st.st_size)}


def changed_since(info: dict, url: str) -> str | None:
    """Why the shard at ``url`` is not the one the marker ``info`` was written for, or None
    (the same; or no identity recorded: a remote shard, an output of an older clip_jax). The
    hash is read only when the mtime moved (a rewrite of the same bytes is the same shard)."""
    if "size" not in info or not _local(url):
        return None
    path = canonical(url)
    try:
        st = os.stat(path)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if st.st_size != info["size"]:
        return f"it has {st.st_size} bytes, {info['size']} when it was embedded"
    if st.st_mtime_ns != info.get("mtime_ns") and _probe(path, st.st_size) != info.get("probe"):
        return "it was rewritten with other content since it was embedded"
    return None


def read_report(d: str) -> dict:
    """``DIR/embed.json``, with one-line errors when the directory is not an embed output."""
    if not os.path.isdir(d):
        raise ValueError(f"stored embeddings: {d} is not a directory (write it with "
                         "python -m clip_jax.embed --model TEACHER --data SHARDS --out DIR)")
    path = os.path.join(d, REPORT)
    try:
        with open(path) as f:
            report = json.load(f)
        width = int(report["embed_dim"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"stored embeddings: {path} is missing or unreadable ({e}): not a "
                         "clip_jax.embed output directory") from None
    if width < 1:
        raise ValueError(f"stored embeddings: {path} has embed_dim={width}")
    return report


@dataclass(frozen=True)
class StoredDir:
    """One directory, as the workers need it (picklable): its width and, for the training
    shards it covers, ``{canonical URL: NAME}``."""

    path: str
    width: int
    names: dict


def open_dirs(dirs: Sequence[str], urls: Sequence[str]) -> tuple[StoredDir, ...]:
    """Index ``dirs`` for the training shards ``urls``; a directory holding none of them, or
    none finished, is a one-line ValueError (the wrong directory, or embed never ran)."""
    wanted = {canonical(u) for u in urls}
    out = []
    for d in dirs:
        width = int(read_report(d)["embed_dim"])
        names = {}
        for marker in glob.glob(os.path.join(glob.escape(d), "*.done.json")):
            name = os.path.basename(marker)[:-len(".done.json")]
            try:
                with open(marker) as f:
                    info = json.load(f)
                url = canonical(str(info["shard"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a broken marker: that shard counts as not embedded
            if url in wanted and all(os.path.isfile(os.path.join(d, name + s))
                                     for s in SUFFIXES):
                why = changed_since(info, url)
                if why:
                    raise ValueError(f"stored embeddings: {marker} was written for the shard "
                                     f"{url}, but {why}: embed it again (python -m "
                                     f"clip_jax.embed --data <the shards> --out {d})")
                names[url] = name
        if not names:
            first = sorted(wanted)[0] if wanted else "none"
            raise ValueError(f"stored embeddings: {d} holds no finished shard of the "
                             f"{len(wanted)} training shards (first: {first}); embed them "
                             "with python -m clip_jax.embed --data <the same shards>")
        out.append(StoredDir(str(d), width, names))
    return tuple(out)


class Lookup:
    """The rows of a sample in every directory (in a worker): shards loaded on first use,
    arrays memory-mapped, a few shards cached."""

    def __init__(self, dirs: Sequence[StoredDir]):
        self.dirs = tuple(dirs)
        self._cache: list[OrderedDict] = [OrderedDict() for _ in self.dirs]

    def _shard(self, k: int, url: str):
        cache, d = self._cache[k], self.dirs[k]
        if url in cache:
            cache.move_to_end(url)
            return cache[url]
        name = d.names.get(url)
        entry = None
        if name is not None:
            base = os.path.join(d.path, name)
            with open(base + ".keys.json") as f:
                keys = json.load(f)
            img = np.load(base + ".img.npy", mmap_mode="r")
            txt = np.load(base + ".txt.npy", mmap_mode="r")
            for what, a in (("img", img), ("txt", txt)):
                if a.ndim != 2 or a.shape != (len(keys), d.width):
                    raise ValueError(f"stored embeddings: {base}.{what}.npy has shape "
                                     f"{a.shape}, expected ({len(keys)}, {d.width}) (its "
                                     f"keys and {REPORT}'s embed_dim)")
            entry = ({key: i for i, key in reversed(list(enumerate(keys)))}, img, txt)
        cache[url] = entry
        if len(cache) > _CACHE:
            cache.popitem(last=False)
        return entry

    def rows(self, url: str, key: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """``[(image row, caption row)]`` per directory, or None if any lacks the sample."""
        url = canonical(url)
        out = []
        for k in range(len(self.dirs)):
            entry = self._shard(k, url)
            i = None if entry is None else entry[0].get(key)
            if i is None:
                return None
            out.append((entry[1][i], entry[2][i]))
        return out
