"""Streaming webdataset reader with deterministic, exactly resumable iteration.

Entry points:

* ``make_train_iterator(data_cfg, tokenizer, image_size, batch_size, seed, process_index,
  process_count)``: infinite, shuffled ``{"image": uint8 (b, s, s, 3), "text": int32 (b, L)}``
  batches (random resized crop; raw 0..255 RGB pixels, CLIP-normalised on the device inside the
  train step), with ``get_state`` / ``set_state`` / ``stats`` / ``close``;
* ``make_eval_iterator(spec, tokenizer, image_size, batch_size)``: one ordered pass, eval
  transform, float32 CLIP-normalised images, last batch zero-padded with a ``mask``;
* ``iterate_samples(spec)``: raw ``(key, PIL image or bytes, caption)`` for tools;
* ``expand_shards(spec)`` / ``parse_sources(spec)``: the shard lists of a spec.

Shard specs
-----------
A *source* is a list of tar shards, written as any of

* a brace pattern: ``"/data/laion/{00000..41407}.tar"`` (numeric ranges keep the zero padding
  of the first bound; ``{a,b,c}`` alternatives; several groups per pattern);
* a list / tuple of such strings (their expansions concatenated);
* an fsspec URL (``gs://bucket/cc12m/{0000..1099}.tar``, ``s3://...``; opened with
  ``fsspec.open``, so the matching fsspec backend must be installed);
* a command whose stdout is the tar: ``"pipe:gsutil cat gs://bucket/{000..999}.tar"`` (braces
  are expanded in the command too).

Several sources are mixed, sample by sample, with weights (default 1 each):

* a string ``"SPEC_A::SPEC_B"``, each part optionally ending in ``@WEIGHT``:
  ``"/data/laion/{00000..41407}.tar@0.8::/data/cc12m/{0000..1099}.tar@0.2"``
  (a trailing ``@`` + number is always read as a weight);
* a list of mappings ``[{"shards": SPEC_A, "weight": 0.8}, {"shards": SPEC_B, "weight": 0.2}]``.

Samples use the img2dataset layout: members ``KEY.jpg|jpeg|png|webp`` (first found in that
order) and ``KEY.txt`` (the caption; else the ``caption`` field of ``KEY.json``), with KEY the
member name up to the first dot of its base name.

Sharding and modes
------------------
Each of the ``process_count`` JAX processes runs ``workers`` loader workers (``0``: one, inside
the calling thread); worker ``w`` of process ``p`` is *consumer* ``c = p * workers + w`` of
``C = process_count * max(workers, 1)``.

* epoch mode (``resampled=False``): in epoch ``e`` each source's shard list is permuted with
  a generator seeded by ``(seed, source, e)`` and consumer ``c`` reads ``perm[c::C]``: every
  epoch, the consumers read disjoint shard sets whose union is every shard exactly once. A
  source with fewer than ``C`` shards is a ``ValueError`` naming the counts. Epochs follow each
  other forever (the train iterator is infinite); with a single source the shuffle below never
  mixes two epochs, so each epoch yields every valid sample exactly once over all consumers.
* resampled mode (``resampled=True``): consumer ``c`` draws its ``k``-th shard uniformly, with
  replacement, from the source's full list with a generator seeded by ``(seed, source, c, k)``.

Within a consumer, the source of its ``i``-th sample is drawn by weight from a hash of
``(seed, c, i)``.

Shuffle
-------
Consumer ``c``'s ``i``-th raw sample gets the priority ``(epoch, i + W * u_i)`` with
``u_i = hash(seed, c, i)`` in [0, 1) and ``W = 2 * shuffle_buffer`` (``epoch`` is 0 in resampled
mode or with several sources); samples leave in priority order. This is computed streaming with
a heap: the smallest priority is final as soon as it is below ``(current epoch, next index)``,
the lower bound of every sample not read yet. Samples move by at most ``W`` places (a uniform
local shuffle) and the heap holds about ``shuffle_buffer`` raw (undecoded) samples.

Decode, augment and tokenise happen after the shuffle; the random crop of sample ``i`` uses a
generator seeded by ``(seed, c, i)``. Each consumer builds whole batches, and the iterator
returns them round robin (batch ``k`` from worker ``k % workers``), so the batch sequence is a
pure function of ``(shards, seed, process_index, process_count, workers, batch_size,
shuffle_buffer, resampled, image_size)``, whatever the timing and whichever of processes or
threads run the workers.

Exact resume
------------
``get_state()`` is a small JSON-able dict: the number of batches returned and, for each worker,
the state after the last batch of it that was *returned* (workers run ahead, the state does
not): its number of batches, its counters and its shuffle state:

* ``next``: how many raw samples it has read; ``last``: ``[epoch, i]`` of the last sample that
  left the heap (every sample read with a smaller priority has left, none with a larger one);
* ``replay``: the read cursor (per source: epoch, position in the epoch's shard list or draw
  number, sample groups already read in that shard) just before the oldest sample still in the
  heap; ``epoch``: the epoch of the last sample read.

``set_state`` restarts each worker at ``replay``: it reopens that shard, skips the recorded
number of groups without reading images (tar headers only, seeking past data on local and fsspec
files), re-reads raw samples up to ``next`` (at most ``W``) and puts back into the heap those
with a priority above ``last``. The heap is then identical, so the next batches are
byte-identical to those the original iterator would have returned. Restoring needs the same
configuration (checked: a ``ValueError`` names what differs).

Bad data
--------
Corrupt or truncated tars (``skipped_bad_tar``: the shard's samples up to the damage are kept;
for ``pipe:`` streams a tar cut inside a header ends the shard without being counted),
groups without an image (``skipped_no_image``), missing or empty captions
(``skipped_empty_caption``) and undecodable images (``skipped_corrupt_image``) are skipped and
counted in ``it.stats`` (also ``samples`` returned and ``shards`` opened). A missing shard is a
``FileNotFoundError`` naming it, raised by ``next(it)``.

Workers
-------
``data_cfg.worker_mode``: ``"process"`` (default; ``spawn``-started processes, so safe with JAX
already running) or ``"thread"`` (same batches either way). Measured (2-core machine,
``benchmarks/data_pipeline.py``, with the former PIL decode + resize; simplejpeg and OpenCV
release the GIL too): decoding and resizing release the GIL, so on an idle
interpreter threads match processes (~440 vs ~370-400 images/s, one worker: no pickling);
but with a busy Python thread beside them (the train loop) thread workers fell to ~140
images/s against ~210 for a process, and tar parsing, tokenisation and the shuffle are Python
code that cannot run in parallel in threads, hence processes by default.
Workers decode (JPEG: libjpeg-turbo via simplejpeg, DCT downscaling) and crop + resize
(OpenCV) to ``uint8`` images, and the iterator returns them as they are: no float work on the
input cores and 4x less data to copy to the device than float32. A collector thread of the
iterator takes the workers' batches in round-robin order ahead of ``next``. With ``workers=0``
everything runs inside ``next``.
Processes re-import nothing of ``__main__`` unless the tokenizer needs it (so ``python -m
clip_jax.train`` does not load JAX in every worker); scripts that define their tokenizer in
``__main__`` need the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import math
import os
import pickle
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clip_jax.data import transforms

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
STATE_VERSION = 1
STAT_KEYS = ("samples", "shards", "skipped_bad_tar", "skipped_no_image", "skipped_empty_caption",
             "skipped_corrupt_image")
_TAG_EPOCH, _TAG_DRAW, _TAG_MIX, _TAG_SHUFFLE, _TAG_CROP = 11, 12, 13, 14, 15
_MAX_CONSECUTIVE_CORRUPT = 10000


def _new_stats() -> dict[str, int]:
    return {k: 0 for k in STAT_KEYS}


def _cfg(cfg, key: str, default):
    """``cfg[key]`` for a ConfigDict / mapping / object, ``default`` when absent or None."""
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


# ---------------------------------------------------------------------------------------------
# Hashing (pure functions of integers, used for per-sample random decisions)

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(*values: int) -> int:
    h = 0x243F6A8885A308D3
    for v in values:
        h = _mix64(h ^ (int(v) & _M64))
    return h


def _unit(*values: int) -> float:
    """A uniform float in [0, 1) from a hash of ``values``."""
    return (_hash(*values) >> 11) * (1.0 / (1 << 53))


def _seed_seq(*values: int) -> list[int]:
    return [int(v) & _M64 for v in values]


# ---------------------------------------------------------------------------------------------
# Shard specs

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WEIGHT = re.compile(r"^(.*)@([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$", re.S)


def expand_braces(pattern: str) -> list[str]:
    """``"a{00..02}b{x,y}"`` -> ``["a00bx", "a00by", "a01bx", ...]`` (left group outermost)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = _RANGE.match(body)
    if r:
        lo, hi = r.group(1), r.group(2)
        a, b = int(lo), int(hi)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        step = 1 if b >= a else -1
        options = [f"{i:0{width}d}" for i in range(a, b + step, step)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end():]
    return [head + opt + rest for opt in options for rest in expand_braces(tail)]


@dataclass(frozen=True)
class Source:
    """One shard list mixed into the stream with ``weight``."""

    shards: tuple[str, ...]
    weight: float = 1.0


def _expand_one(spec) -> list[str]:
    if isinstance(spec, str):
        spec = spec.strip()
        return expand_braces(spec) if spec else []
    if isinstance(spec, Iterable):
        return [s for part in spec for s in _expand_one(part)]
    raise TypeError(f"shard spec must be a string or a list of strings, got {type(spec).__name__}")


def parse_sources(spec) -> list[Source]:
    """Parse a shard spec (see the module docstring) into weighted sources."""
    if isinstance(spec, Source):
        return [spec]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split("::")]
        sources = []
        for part in parts:
            weight = 1.0
            m = _WEIGHT.match(part)
            if m:
                part, weight = m.group(1).strip(), float(m.group(2))
            sources.append(Source(tuple(_expand_one(part)), weight))
    elif _is_mapping(spec):
        sources = [_source_from_mapping(spec)]
    elif isinstance(spec, Iterable):
        items = list(spec)
        if items and all(_is_mapping(x) for x in items):
            sources = [_source_from_mapping(x) for x in items]
        elif any(_is_mapping(x) for x in items):
            raise ValueError("a shard spec list mixes sources ({'shards', 'weight'}) and shards")
        else:
            sources = [Source(tuple(_expand_one(items)))]
    else:
        raise TypeError(f"unsupported shard spec {spec!r}")
    for i, s in enumerate(sources):
        if not s.shards:
            raise ValueError(f"shard spec {spec!r}: source {i} has no shards")
        if not (s.weight > 0 and math.isfinite(s.weight)):
            raise ValueError(f"shard spec {spec!r}: source {i} has weight {s.weight}, need > 0")
    if not sources:
        raise ValueError(f"empty shard spec {spec!r}")
    return sources


def _is_mapping(x) -> bool:
    return isinstance(x, Mapping) or (hasattr(x, "keys") and hasattr(x, "__getitem__")
                                      and not isinstance(x, str | bytes))


def _source_from_mapping(m) -> Source:
    if "shards" not in m:
        raise ValueError(f"a weighted source needs a 'shards' entry, got keys {list(m.keys())}")
    weight = m["weight"] if "weight" in m else 1.0
    return Source(tuple(_expand_one(m["shards"])), float(weight))


def expand_shards(spec) -> list[str]:
    """Every shard of every source in ``spec``, in order (weights ignored)."""
    return [s for src in parse_sources(spec) for s in src.shards]


# ---------------------------------------------------------------------------------------------
# Reading tar shards


class _Opened:
    """A readable binary file for a shard URL: local path, ``pipe:CMD`` or fsspec URL."""

    def __init__(self, url: str):
        self.url, self.proc, self.size = url, None, None
        if url.startswith("pipe:"):
            self.err = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE,
                                         stderr=self.err)
            self.file = self.proc.stdout
            return
        try:
            if "://" in url and not url.startswith("file://"):
                import fsspec

                self.file = fsspec.open(url, "rb").open()
                self.size = getattr(self.file, "size", None)
            else:
                path = url[7:] if url.startswith("file://") else url
                self.file = open(path, "rb")  # noqa: SIM115
                self.size = os.fstat(self.file.fileno()).st_size
        except FileNotFoundError as e:
            hint = ""
            if any(c in url for c in "*?["):
                hint = (" (shard specs are not glob patterns: '*', '?' and '[...]' are not "
                        "expanded; name the shards with braces, e.g. "
                        "'/data/shards/{00000..00099}.tar')")
            raise FileNotFoundError(f"shard not found: {url}{hint}") from e

    @property
    def seekable(self) -> bool:
        return self.proc is None and self.size is not None

    def close(self, finished: bool) -> None:
        if self.proc is None:
            self.file.close()
            return
        if finished:  # read to the end (tar padding) so the command never gets SIGPIPE
            while self.file.read(1 << 16):
                pass
        else:
            self.proc.kill()
        self.file.close()
        rc = self.proc.wait()
        self.err.seek(0)
        err = self.err.read().decode(errors="replace").strip()
        self.err.close()
        if finished and rc != 0:
                raise OSError(f"shard command failed (exit {rc}): {self.url[5:]}: {err[-500:]}")


def _split_name(name: str) -> tuple[str | None, str | None]:
    """webdataset's key/extension split: ``dir/abc.def.jpg`` -> (``dir/abc``, ``def.jpg``)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None, None
    return name[:dot], name[dot + 1:]


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


def iter_groups(url: str, wanted: frozenset[str], skip: int = 0,
                stats: dict | None = None) -> Iterator[dict]:
    """The sample groups of one shard, from the ``skip``-th on: ``{"__key__": key, ext: bytes}``.

    Only members whose (lower-case) extension is in ``wanted`` are read; skipped groups are
    passed over without reading data. A damaged tar ends the shard (the group being read is
    dropped) and counts ``skipped_bad_tar``; a missing shard raises FileNotFoundError.
    """
    opened = _Opened(url)
    finished = False
    try:
        yield from _tar_groups(opened, wanted, skip, stats)
        finished = True
    finally:
        opened.close(finished)


def _tar_groups(opened: _Opened, wanted, skip, stats) -> Iterator[dict]:
    def bad():
        if stats is not None:
            stats["skipped_bad_tar"] += 1

    try:
        tar = tarfile.open(fileobj=opened.file, mode="r:*" if opened.seekable else "r|*")
    except _TAR_ERRORS:
        bad()
        return
    # size checks only when tar offsets are file offsets (not inside a compressed stream)
    size = opened.size if opened.seekable and tar.fileobj is opened.file else None
    key, group, index = None, None, 0
    while True:
        try:
            member = tar.next()
            if member is None:
                break
            k, ext = _split_name(member.name) if member.isfile() else (None, None)
            if k is not None and k != key and not os.path.basename(k).startswith("__"):
                done = group  # a new key: the previous group is complete
                key, index = k, index + (key is not None)
                group = {"__key__": k} if index >= skip else None
                if done is not None:
                    yield done
            if size is not None and member.offset_data + member.size > size:
                raise tarfile.ReadError("truncated member")
            if k is None or os.path.basename(k).startswith("__"):
                continue
            ext = ext.lower()
            if group is not None and ext in wanted:
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError("truncated member")
                group[ext] = data
        except _TAR_ERRORS:
            bad()
            return
    if size is not None and _has_trailing_garbage(opened, tar.offset):
        # an invalid / truncated header ended the archive early (tarfile stops silently):
        # count it; the group read so far is intact and kept, as a stream reader would
        bad()
    if group is not None:
        yield group


def _has_trailing_garbage(opened: _Opened, offset: int) -> bool:
    try:
        opened.file.seek(offset)
        rest = opened.file.read(1024)
    except _TAR_ERRORS:
        return True
    return bool(rest.strip(b"\0"))


@dataclass
class RawSample:
    key: str
    image: bytes
    caption: str
    extras: dict[str, str] = field(default_factory=dict)


def _wanted(extra_fields: Sequence[str]) -> frozenset[str]:
    return frozenset((*IMAGE_EXTS, "txt", "json", *extra_fields))


def to_raw_sample(group: dict, stats: dict | None,
                  extra_fields: Sequence[str] = ()) -> RawSample | None:
    """A group's image bytes and caption, or None (counted in ``stats``) if either is missing."""
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    if image is None:
        if stats is not None:
            stats["skipped_no_image"] += 1
        return None
    caption = ""
    if "txt" in group:
        caption = group["txt"].decode("utf-8", errors="replace").strip()
    elif "json" in group:
        try:
            value = json.loads(group["json"]).get("caption")
            caption = value.strip() if isinstance(value, str) else ""
        except (ValueError, AttributeError):
            caption = ""
    if not caption:
        if stats is not None:
            stats["skipped_empty_caption"] += 1
        return None
    extras = {f: group[f].decode("utf-8", errors="replace").strip()
              for f in extra_fields if f in group}
    return RawSample(group["__key__"], image, caption, extras)


def iterate_samples(spec, decode: bool = True, extra_fields: Sequence[str] = (),
                    stats: dict | None = None) -> Iterator[tuple]:
    """Every valid sample of ``spec`` in order (no shuffle, single pass, weights ignored).

    Yields ``(key, image, caption)``: image is an RGB PIL image (``decode=True``; undecodable
    images are skipped and counted) or the raw bytes. With ``extra_fields`` (e.g. ``("cls",)``)
    yields ``(key, image, caption, {field: text})``. ``stats``: a dict to fill with counters.
    """
    stats = _new_stats() if stats is None else stats
    for k in STAT_KEYS:
        stats.setdefault(k, 0)
    wanted = _wanted(extra_fields)
    for url in expand_shards(spec):
        stats["shards"] += 1
        for group in iter_groups(url, wanted, 0, stats):
            raw = to_raw_sample(group, stats, extra_fields)
            if raw is None:
                continue
            image = raw.image
            if decode:
                try:
                    image = transforms.decode_image(image)
                except transforms.DECODE_ERRORS:
                    stats["skipped_corrupt_image"] += 1
                    continue
            stats["samples"] += 1
            if extra_fields:
                yield raw.key, image, raw.caption, raw.extras
            else:
                yield raw.key, image, raw.caption


# ---------------------------------------------------------------------------------------------
# One consumer's sample stream


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs (picklable, sent to worker processes)."""

    sources: tuple[Source, ...]
    seed: int
    consumer: int
    num_consumers: int
    resampled: bool
    shuffle_window: int
    batch_size: int
    image_size: int
    context_length: int
    jpeg_draft: bool = True
    name: str = "worker"


class _SourceReader:
    """Consumer ``c``'s walk over one source: cursor = [epoch, position, groups read in shard]."""

    def __init__(self, spec: WorkerSpec, index: int):
        self.src, self.index, self.spec = spec.sources[index], index, spec
        self.epoch, self.pos, self.groups = 0, 0, 0
        self._it = None
        self._mine: tuple[int, list[str]] | None = None
        self._empty_run, self._valid_in_shard = 0, False

    def cursor(self) -> list[int]:
        return [self.epoch, self.pos, self.groups]

    def set_cursor(self, cursor: Sequence[int]) -> None:
        self.close()
        self.epoch, self.pos, self.groups = (int(v) for v in cursor)

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def _epoch_shards(self) -> list[str]:
        if self._mine is None or self._mine[0] != self.epoch:
            n = len(self.src.shards)
            rng = np.random.default_rng(_seed_seq(self.spec.seed, self.index, self.epoch,
                                                  _TAG_EPOCH))
            perm = rng.permutation(n)
            mine = [self.src.shards[j] for j in perm[self.spec.consumer::self.spec.num_consumers]]
            self._mine = (self.epoch, mine)
        return self._mine[1]

    def _url(self) -> str:
        if self.spec.resampled:
            rng = np.random.default_rng(_seed_seq(self.spec.seed, self.index, self.spec.consumer,
                                                  self.pos, _TAG_DRAW))
            return self.src.shards[int(rng.integers(len(self.src.shards)))]
        return self._epoch_shards()[self.pos]

    def _advance_shard(self, url: str) -> None:
        self.close()
        self._empty_run = 0 if self._valid_in_shard else self._empty_run + 1
        limit = (2 * len(self.src.shards) + 16 if self.spec.resampled
                 else 2 * len(self._epoch_shards()))
        if self._empty_run > limit:
            raise RuntimeError(f"{self.spec.name}: no valid sample in {self._empty_run} "
                               f"consecutive shards (last: {url})")
        self._valid_in_shard = False
        self.pos, self.groups = self.pos + 1, 0
        if not self.spec.resampled and self.pos >= len(self._epoch_shards()):
            self.epoch, self.pos = self.epoch + 1, 0

    def next_valid(self, stats: dict, extra_fields: Sequence[str] = ()) -> tuple[int, RawSample]:
        """(epoch, raw sample) of the next valid sample, advancing over shards as needed."""
        while True:
            if self._it is None:
                url = self._url()
                stats["shards"] += 1
                self._it = iter_groups(url, _wanted(extra_fields), self.groups, stats)
            group = next(self._it, None)
            if group is None:
                self._advance_shard(self._url())
                continue
            self.groups += 1
            raw = to_raw_sample(group, stats, extra_fields)
            if raw is not None:
                self._valid_in_shard = True
                return self.epoch, raw


class _Stream:
    """Mixes the sources of one consumer; the ``index``-th sample's source is hashed."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.readers = [_SourceReader(spec, i) for i in range(len(spec.sources))]
        weights = np.asarray([s.weight for s in spec.sources], np.float64)
        self.cum = np.cumsum(weights / weights.sum())
        self.index = 0
        self.epoch_keyed = not spec.resampled and len(spec.sources) == 1
        self.base = _hash(spec.seed, spec.consumer, _TAG_MIX)

    def cursor(self) -> dict:
        return {"index": self.index, "sources": [r.cursor() for r in self.readers]}

    def set_cursor(self, cursor: Mapping) -> None:
        self.index = int(cursor["index"])
        for r, c in zip(self.readers, cursor["sources"], strict=True):
            r.set_cursor(c)

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def next(self, stats: dict) -> tuple[int, int, RawSample]:
        """(epoch key, index, raw sample)."""
        s = 0
        if len(self.readers) > 1:
            s = min(int(np.searchsorted(self.cum, _unit(self.base, self.index), side="right")),
                    len(self.readers) - 1)
        epoch, raw = self.readers[s].next_valid(stats)
        index = self.index
        self.index += 1
        return (epoch if self.epoch_keyed else 0), index, raw


class _Shuffler:
    """Priority ``(epoch, i + W * u_i)`` local shuffle with a reconstructible heap."""

    def __init__(self, spec: WorkerSpec, stream: _Stream):
        self.stream, self.window = stream, spec.shuffle_window
        self.base = _hash(spec.seed, spec.consumer, _TAG_SHUFFLE)
        self.heap: list[tuple] = []
        self.last: tuple[int, float, int] | None = None
        self.epoch = 0

    def _priority(self, index: int) -> float:
        return index + self.window * _unit(self.base, index) if self.window > 0 else float(index)

    def _read(self, stats: dict) -> tuple:
        cursor = self.stream.cursor()
        epoch, index, raw = self.stream.next(stats)
        self.epoch = epoch
        return epoch, self._priority(index), index, cursor, raw

    def pop(self, stats: dict) -> tuple[int, RawSample]:
        """(index, raw sample) of the next sample in shuffled order."""
        # the heap minimum is final once below (epoch, next index): no later sample can beat it
        while not self.heap or self.heap[0][:2] >= (self.epoch, float(self.stream.index)):
            heapq.heappush(self.heap, self._read(stats))
        entry = heapq.heappop(self.heap)
        self.last = entry[:3]
        return entry[2], entry[4]

    def state(self) -> dict:
        if self.heap:
            replay = min(self.heap, key=lambda e: e[2])[3]
        else:
            replay = self.stream.cursor()
        return {"next": self.stream.index, "epoch": self.epoch, "replay": replay,
                "last": None if self.last is None else [self.last[0], self.last[2]]}

    def set_state(self, state: Mapping) -> None:
        self.heap = []
        self.epoch = int(state["epoch"])
        last = state["last"]
        self.last = None if last is None else (int(last[0]), self._priority(int(last[1])),
                                               int(last[1]))
        self.stream.set_cursor(state["replay"])
        scratch = _new_stats()
        target = int(state["next"])
        while self.stream.index < target:
            entry = self._read(scratch)
            if self.last is None or entry[:3] > self.last:
                heapq.heappush(self.heap, entry)
        if self.stream.index != target:
            raise ValueError(f"inconsistent iterator state: replay reached sample "
                             f"{self.stream.index}, expected {target}")
        self.epoch = int(state["epoch"])


class _Worker:
    """Builds consumer ``c``'s batches: shuffle -> decode -> random crop -> tokenise."""

    def __init__(self, spec: WorkerSpec, tokenizer, state: Mapping | None = None):
        self.spec, self.tokenizer = spec, tokenizer
        self.stream = _Stream(spec)
        self.shuffler = _Shuffler(spec, self.stream)
        self.batches, self.stats = 0, _new_stats()
        self.crop_base = (spec.seed, spec.consumer, _TAG_CROP)
        self.min_size = math.ceil(spec.image_size * 1.25) if spec.jpeg_draft else None
        if state is not None:
            self.batches = int(state["batches"])
            self.stats = {**_new_stats(), **{k: int(v) for k, v in state["stats"].items()}}
            self.shuffler.set_state(state["shuffle"])

    def state(self) -> dict:
        return {"batches": self.batches, "stats": dict(self.stats),
                "shuffle": self.shuffler.state()}

    def next_batch(self) -> dict[str, np.ndarray]:
        spec = self.spec
        images = np.empty((spec.batch_size, spec.image_size, spec.image_size, 3), np.uint8)
        captions: list[str] = []
        failures = 0
        while len(captions) < spec.batch_size:
            index, raw = self.shuffler.pop(self.stats)
            try:  # only the decoder's errors mean a bad image: anything else is a bug, raised
                pixels = transforms.decode_array(raw.image, self.min_size)
            except transforms.DECODE_ERRORS as e:
                self.stats["skipped_corrupt_image"] += 1
                failures += 1
                if failures > _MAX_CONSECUTIVE_CORRUPT:
                    raise RuntimeError(f"{spec.name}: {failures} undecodable images in a row "
                                       f"(last key {raw.key!r})") from e
                continue
            rng = np.random.default_rng(_seed_seq(*self.crop_base, index))
            images[len(captions)] = transforms.random_resized_crop(pixels, spec.image_size, rng)
            failures = 0
            captions.append(raw.caption)
        text = np.asarray(self.tokenizer(captions, spec.context_length), dtype=np.int32)
        if text.shape != (spec.batch_size, spec.context_length):
            raise ValueError(f"tokenizer returned shape {text.shape}, expected "
                             f"{(spec.batch_size, spec.context_length)}")
        self.batches += 1
        self.stats["samples"] += spec.batch_size
        return {"image": images, "text": text}

    def close(self) -> None:
        self.stream.close()


# ---------------------------------------------------------------------------------------------
# Runners: the same worker inline, in a thread or in a process


class _Inline:
    def __init__(self, spec, tokenizer, state):
        self.worker = _Worker(spec, tokenizer, state)

    def get(self):
        return self.worker.next_batch(), self.worker.state()

    def close(self):
        self.worker.close()


def _worker_loop(spec, tokenizer, state, out, stop) -> None:
    """Produce batches into ``out`` until ``stop`` is set; an error is sent as a message."""
    try:
        worker = _Worker(spec, tokenizer, state)
        while not stop.is_set():
            msg = ("batch", worker.next_batch(), worker.state())
            while not stop.is_set():
                try:
                    out.put(msg, timeout=0.2)
                    break
                except queue.Full:
                    continue
        worker.close()
        if hasattr(out, "cancel_join_thread"):
            out.cancel_join_thread()  # stopped: unread batches may be dropped at exit
    except BaseException as e:  # noqa: BLE001 - reported to the consumer
        tb = traceback.format_exc()
        try:
            pickle.dumps(e)
            payload = e
        except Exception:
            payload = None
        try:
            out.put(("error", payload, repr(e), tb), timeout=5)
        except Exception:
            pass


@contextlib.contextmanager
def _main_not_reimported(args):
    """Keep spawned workers from re-importing ``__main__`` when they need nothing from it.

    ``spawn`` runs the parent's main module again in each child (for ``python -m
    clip_jax.train`` that imports JAX: ~0.5 s and ~130 MB per worker). If the worker's
    arguments do not pickle anything defined in ``__main__``, hide it while starting.
    """
    main = sys.modules.get("__main__")
    try:
        needed = main is None or b"__main__" in pickle.dumps(args)
    except Exception:
        needed = True
    if needed:
        yield
        return
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__spec__", "__file__")}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                main.__dict__.pop(k, None)
            else:
                main.__dict__[k] = v


class _Background:
    """A worker in a thread or a process, feeding a bounded queue."""

    def __init__(self, spec, tokenizer, state, mode: str, prefetch: int):
        self.name = spec.name
        if mode == "thread":
            self.queue, self.stop = queue.Queue(prefetch), threading.Event()
            self.task = threading.Thread(target=_worker_loop, name=f"clip_jax-{spec.name}",
                                         args=(spec, tokenizer, state, self.queue, self.stop),
                                         daemon=True)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self.queue, self.stop = ctx.Queue(prefetch), ctx.Event()
            self.task = ctx.Process(target=_worker_loop, name=f"clip_jax-{spec.name}",
                                    args=(spec, tokenizer, state, self.queue, self.stop),
                                    daemon=True)
            with _main_not_reimported((spec, tokenizer, state)):
                self.task.start()
            return
        self.task.start()

    def get(self, stop: threading.Event | None = None):
        """(batch, state) of the worker's next batch; None once ``stop`` is set."""
        while True:
            if stop is not None and stop.is_set():
                return None
            try:
                msg = self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.task.is_alive():
                    code = getattr(self.task, "exitcode", None)
                    raise RuntimeError(f"data {self.name} stopped unexpectedly"
                                       + (f" (exit code {code})" if code is not None else "")
                                       ) from None
                continue
            if msg[0] == "batch":
                return msg[1], msg[2]
            _, exc, text, tb = msg
            if isinstance(exc, BaseException):
                exc.add_note(f"in data {self.name}:\n{tb}")
                raise exc
            raise RuntimeError(f"data {self.name} failed: {text}\n{tb}")

    def close(self):
        self.stop.set()
        if isinstance(self.task, threading.Thread):
            self.task.join(timeout=5)
            return
        try:  # unblock a worker waiting on a full queue
            while True:
                self.queue.get_nowait()
        except Exception:
            pass
        self.task.join(timeout=5)
        if self.task.is_alive():
            self.task.terminate()
            self.task.join(timeout=5)
        self.queue.close()
        self.queue.cancel_join_thread()


class _Collector:
    """A thread taking the workers' batches round robin (uint8 as they come), ahead of use."""

    def __init__(self, runners: list[_Background], first_batch: int, prefetch: int):
        self.runners, self.queue = runners, queue.Queue(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first_batch,), daemon=True,
                                       name="clip_jax-data-collector")
        self.thread.start()

    def _put(self, msg) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self, k: int) -> None:
        try:
            while not self.stop.is_set():
                w = k % len(self.runners)
                got = self.runners[w].get(self.stop)
                if got is None:
                    return
                batch, state = got
                self._put(("batch", batch, w, state))
                k += 1
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
            self._put(("error", e))

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("data collector thread stopped") from None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# Train iterator


class TrainIterator:
    """Infinite iterator of ``{"image": uint8 (b, s, s, 3), "text": int32 (b, L)}`` batches.

    Images are raw RGB pixels (0..255, random resized crop): the train step normalises them on
    the device with ``transforms.CLIP_MEAN`` / ``CLIP_STD``.

    See the module docstring for sharding, shuffling and the resume design.
    """

    def __init__(self, spec, tokenizer, image_size: int, batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, workers: int = 0,
                 shuffle_buffer: int = 1000, resampled: bool = False, context_length: int = 77,
                 worker_mode: str = "process", prefetch: int = 2, jpeg_draft: bool = True):
        if worker_mode not in ("process", "thread"):
            raise ValueError(f"worker_mode must be 'process' or 'thread', got {worker_mode!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if batch_size < 1 or image_size < 1 or workers < 0 or shuffle_buffer < 0:
            raise ValueError(f"invalid batch_size={batch_size}, image_size={image_size}, "
                             f"workers={workers} or shuffle_buffer={shuffle_buffer}")
        self.sources = tuple(parse_sources(spec))
        self.tokenizer = tokenizer
        self.num_workers = max(int(workers), 1)
        self.inline = int(workers) == 0
        num_consumers = process_count * self.num_workers
        if not resampled:
            for i, src in enumerate(self.sources):
                if len(src.shards) < num_consumers:
                    raise ValueError(
                        f"too few shards: source {i} has {len(src.shards)} shard(s) but "
                        f"process_count x workers = {process_count} x {self.num_workers} = "
                        f"{num_consumers} readers each need at least one (use fewer workers, "
                        f"more shards, or resampled=True)")
        self.worker_mode, self.prefetch = worker_mode, max(int(prefetch), 1)
        self.specs = [
            WorkerSpec(self.sources, int(seed), process_index * self.num_workers + w,
                       num_consumers, bool(resampled), 2 * int(shuffle_buffer), int(batch_size),
                       int(image_size), int(context_length), bool(jpeg_draft),
                       name=f"worker {w} of process {process_index}")
            for w in range(self.num_workers)]
        digest = hashlib.sha256(json.dumps([[s.shards, s.weight] for s in self.sources])
                                .encode()).hexdigest()[:16]
        self.fingerprint = {
            "shards": digest, "seed": int(seed), "process_index": process_index,
            "process_count": process_count, "workers": self.num_workers,
            "batch_size": int(batch_size), "shuffle_buffer": int(shuffle_buffer),
            "resampled": bool(resampled), "image_size": int(image_size),
            "context_length": int(context_length), "jpeg_draft": bool(jpeg_draft)}
        self._batches = 0
        self._wstates: list[dict | None] = [None] * self.num_workers
        self._runners: list | None = None
        self._collector: _Collector | None = None
        self._error: BaseException | None = None

    def __iter__(self):
        return self

    def _start(self) -> None:
        if self._error is not None:
            raise self._error
        if self.inline:
            self._runners = [_Inline(self.specs[0], self.tokenizer, self._wstates[0])]
            return
        self._runners = []
        try:
            for spec, state in zip(self.specs, self._wstates, strict=True):
                self._runners.append(_Background(spec, self.tokenizer, state,
                                                 self.worker_mode, self.prefetch))
            self._collector = _Collector(self._runners, self._batches, self.prefetch)
        except BaseException:
            self.close()
            raise

    def __next__(self) -> dict[str, np.ndarray]:
        if self._runners is None:
            self._start()
        if self._collector is None:  # inline
            w = 0
            try:
                batch, state = self._runners[0].get()
            except BaseException as e:
                self._error = e
                self.close()
                raise
        else:
            msg = self._collector.get()
            if msg[0] == "error":
                self._error = msg[1]
                self.close()
                raise msg[1]
            _, batch, w, state = msg
        if w != self._batches % self.num_workers:
            raise RuntimeError("data iterator out of order")  # cannot happen
        self._wstates[w] = state
        self._batches += 1
        return batch

    @property
    def stats(self) -> dict[str, int]:
        total = _new_stats()
        for state in self._wstates:
            if state is not None:
                for k, v in state["stats"].items():
                    total[k] = total.get(k, 0) + v
        return total

    def get_state(self) -> dict:
        return json.loads(json.dumps({
            "version": STATE_VERSION, "config": self.fingerprint, "batches": self._batches,
            "workers": self._wstates}))

    def set_state(self, state: Mapping) -> None:
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r}, "
                             f"expected {STATE_VERSION}")
        saved = state["config"]
        diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
        if diff:
            raise ValueError("cannot restore the data iterator: configuration differs "
                             "(saved, now): " + ", ".join(f"{k}={a!r}->{b!r}"
                                                          for k, (a, b) in diff.items()))
        workers = list(state["workers"])
        if len(workers) != self.num_workers:
            raise ValueError(f"state has {len(workers)} workers, iterator {self.num_workers}")
        self.close()
        self._error = None
        self._batches = int(state["batches"])
        self._wstates = json.loads(json.dumps(workers))

    def close(self) -> None:
        """Stop the workers (``next`` restarts them from the current state)."""
        collector, self._collector = self._collector, None
        runners, self._runners = self._runners, None
        if collector is not None:
            collector.stop.set()
        for r in runners or ():
            r.close()
        if collector is not None:
            collector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def make_train_iterator(data_cfg, tokenizer, image_size: int, batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        context_length: int | None = None) -> TrainIterator:
    """The training iterator for this process from ``data_cfg`` (ConfigDict or mapping).

    Keys: ``train`` (shard spec), ``shuffle_buffer`` (int, default 1000), ``workers`` (int,
    0 = in the calling thread), ``resampled`` (bool), ``context_length`` (77; the
    ``context_length`` argument, e.g. the model's, overrides it); optional ``worker_mode``
    ("process" | "thread"), ``worker_prefetch`` (batches queued per worker, 2), ``jpeg_draft``
    (let the JPEG decoder downscale large images, True).
    """
    spec = _cfg(data_cfg, "train", None)
    if not spec:
        raise ValueError("data config has no 'train' shard spec")
    return TrainIterator(
        spec, tokenizer, int(image_size), int(batch_size), int(seed), int(process_index),
        int(process_count), workers=int(_cfg(data_cfg, "workers", 0)),
        shuffle_buffer=int(_cfg(data_cfg, "shuffle_buffer", 1000)),
        resampled=bool(_cfg(data_cfg, "resampled", False)),
        context_length=int(context_length or _cfg(data_cfg, "context_length", 77)),
        worker_mode=str(_cfg(data_cfg, "worker_mode", "process")),
        prefetch=int(_cfg(data_cfg, "worker_prefetch", 2)),
        jpeg_draft=bool(_cfg(data_cfg, "jpeg_draft", True)))


# ---------------------------------------------------------------------------------------------
# Eval iterator


class EvalIterator:
    """One ordered pass over ``spec`` in padded batches (see :func:`make_eval_iterator`)."""

    def __init__(self, spec, tokenizer, image_size: int, batch_size: int,
                 context_length: int = 77, extra_fields: Sequence[str] = (), workers: int = 0):
        self.spec, self.tokenizer = spec, tokenizer
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.context_length, self.extra_fields = int(context_length), tuple(extra_fields)
        self.workers = int(workers)
        self.stats = _new_stats()
        expand_shards(spec)  # validate now
        self._gen = self._batches()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._gen)

    def _prepare(self, raw: RawSample):
        try:
            img = transforms.decode_image(raw.image)
        except transforms.DECODE_ERRORS:
            return None
        return transforms.resize_center_crop(img, self.image_size)

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        raws = self._raw()
        pool = None
        if self.workers > 0:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(self.workers)
        try:
            while True:
                chunk: list[tuple[RawSample, np.ndarray]] = []
                while len(chunk) < self.batch_size:
                    want = self.batch_size - len(chunk)
                    raw_list = [r for _, r in zip(range(want), raws, strict=False)]
                    if not raw_list:
                        break
                    arrays = (pool.map(self._prepare, raw_list) if pool
                              else map(self._prepare, raw_list))
                    for raw, arr in zip(raw_list, arrays, strict=True):
                        if arr is None:
                            self.stats["skipped_corrupt_image"] += 1
                        else:
                            chunk.append((raw, arr))
                if not chunk:
                    return
                yield self._collate(chunk)
                if len(chunk) < self.batch_size:
                    return
        finally:
            if pool is not None:
                pool.shutdown()

    def _raw(self) -> Iterator[RawSample]:
        for url in expand_shards(self.spec):
            self.stats["shards"] += 1
            for group in iter_groups(url, _wanted(self.extra_fields), 0, self.stats):
                raw = to_raw_sample(group, self.stats, self.extra_fields)
                if raw is not None:
                    yield raw

    def _collate(self, chunk) -> dict[str, np.ndarray]:
        b, n, s = self.batch_size, len(chunk), self.image_size
        images = np.zeros((b, s, s, 3), np.uint8)
        for i, (_, arr) in enumerate(chunk):
            images[i] = arr
        batch = {"image": transforms.normalize(images)}
        batch["image"][n:] = 0
        if self.tokenizer is not None:
            text = np.zeros((b, self.context_length), np.int32)
            text[:n] = self.tokenizer([r.caption for r, _ in chunk], self.context_length)
            batch["text"] = text
        mask = np.zeros(b, bool)
        mask[:n] = True
        batch["mask"] = mask
        batch["key"] = np.array([r.key for r, _ in chunk] + [""] * (b - n))
        batch["caption"] = np.array([r.caption for r, _ in chunk] + [""] * (b - n))
        for f in self.extra_fields:
            batch[f] = np.array([r.extras.get(f, "") for r, _ in chunk] + [""] * (b - n))
        self.stats["samples"] += n
        return batch


def make_eval_iterator(spec, tokenizer, image_size: int, batch_size: int,
                       context_length: int = 77, extra_fields: Sequence[str] = (),
                       workers: int = 0) -> EvalIterator:
    """Single ordered pass over ``spec`` (no shuffle, eval transform) for evaluators.

    Batches: ``image`` float32 (b, s, s, 3), ``text`` int32 (b, L) (if ``tokenizer`` is not
    None), ``mask`` bool (b,) (False on the zero padding of the last batch), ``key`` and
    ``caption`` (str arrays) and one str array per ``extra_fields`` member (e.g. ``"cls"``, ""
    where absent). ``workers``: threads decoding in parallel (order is kept).
    """
    return EvalIterator(spec, tokenizer, image_size, batch_size, context_length, extra_fields,
                        workers)
