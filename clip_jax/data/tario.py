"""Reading tar shards: open a shard URL, group its members into samples, pick image + caption.

Samples use the img2dataset / webdataset layout: members ``KEY.jpg|jpeg|png|webp`` (first found
in the order of :data:`IMAGE_EXTS`) and ``KEY.txt`` (the caption; else the ``caption`` field of
``KEY.json``), with KEY the member name up to the first dot of its base name (webdataset's
split). Members whose base name starts with ``__`` are ignored, as webdataset does.

* :func:`iter_groups` ``(url, wanted, skip, stats)``: the sample groups ``{"__key__": key, ext:
  bytes}`` of one shard from the ``skip``-th on; skipped groups are passed over from the tar
  headers alone (seeking past their data on local and fsspec files), which is what makes an
  exact resume at a sample offset cheap;
* :func:`to_raw_sample`: a group's :class:`RawSample` (image bytes, caption, extra fields);
* :func:`iterate_samples` ``(spec)``: every valid ``(key, PIL image or bytes, caption)`` of a
  shard spec, in order, for tools and evaluation.

Shard URLs: a local path (or ``file://``), ``pipe:CMD`` (the command's stdout; its exit status
and the tail of its stderr are reported when it fails) or an fsspec URL (``gs://``, ``s3://``,
``https://``...; the backend must be installed, imported only then).

Bad data
--------
Corrupt or truncated tars (``skipped_bad_tar``: the shard's samples up to the damage are kept;
on seekable files a member running past the end of the file or garbage after the last header
counts too; for ``pipe:`` streams a tar cut inside a header ends the shard without being
counted), groups without an image (``skipped_no_image``) and missing or empty captions
(``skipped_empty_caption``) are skipped and counted in a ``stats`` dict (keys
:data:`STAT_KEYS`; ``skipped_corrupt_image`` is counted by whoever decodes). A missing shard is a
``FileNotFoundError`` naming it.

Why not webdataset's own reader (``wds.gopen`` + ``tar_file_iterator`` + ``group_by_keys``):
it reads in stream mode only (every skipped sample's data is read: no cheap resume at a sample
offset, no size check of a truncated member, no count of a tar ended by a bad header), reports
errors through a handler rather than counters, its ``pipe:`` keeps no stderr for the error
message, it opens ``gs://`` with ``gsutil`` and has no ``s3://`` (we use fsspec), and importing
``webdataset`` imports torch when installed (~1 s and ~190 MB in every spawned loader worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from clip_jax.data import transforms
from clip_jax.data.shards import expand_shards

# Image members of a sample, in order of preference.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Image files accepted from plain folders (evaluation image folders, write_shards' folder
# input): the shard formats plus BMP, which PIL decodes (write_shards re-encodes it as PNG).
FOLDER_IMAGE_EXTS = (*IMAGE_EXTS, "bmp")
STAT_KEYS = ("samples", "shards", "skipped_bad_tar", "skipped_no_image", "skipped_empty_caption",
             "skipped_corrupt_image")


def new_stats() -> dict[str, int]:
    """Zeroed counters for every :data:`STAT_KEYS` entry."""
    return {k: 0 for k in STAT_KEYS}


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
    """One valid sample, undecoded: key, image bytes, caption, ``{extra field: text}`` and the
    URL of the shard it came from (set by the train stream's reader)."""

    key: str
    image: bytes
    caption: str
    extras: dict[str, str] = field(default_factory=dict)
    url: str = ""
    meta: bytes = b""  # the KEY.json member, if any (its boxes: clip_jax.data.boxes)


def wanted_exts(extra_fields: Sequence[str] = ()) -> frozenset[str]:
    """The member extensions a sample needs: images, caption (txt / json) and ``extra_fields``."""
    return frozenset((*IMAGE_EXTS, "txt", "json", *extra_fields))


def image_of(group: dict) -> bytes | None:
    """The group's image bytes (first of :data:`IMAGE_EXTS` present), or None."""
    return next((group[e] for e in IMAGE_EXTS if e in group), None)


def to_raw_sample(group: dict, stats: dict | None,
                  extra_fields: Sequence[str] = ()) -> RawSample | None:
    """A group's image bytes and caption, or None (counted in ``stats``) if either is missing."""
    image = image_of(group)
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
    return RawSample(group["__key__"], image, caption, extras, meta=group.get("json", b""))


def iterate_samples(spec, decode: bool = True, extra_fields: Sequence[str] = (),
                    stats: dict | None = None) -> Iterator[tuple]:
    """Every valid sample of ``spec`` in order (no shuffle, single pass, weights ignored).

    Yields ``(key, image, caption)``: image is an RGB PIL image (``decode=True``; undecodable
    images are skipped and counted) or the raw bytes. With ``extra_fields`` (e.g. ``("cls",)``)
    yields ``(key, image, caption, {field: text})``. ``stats``: a dict to fill with counters.
    """
    stats = new_stats() if stats is None else stats
    for k in STAT_KEYS:
        stats.setdefault(k, 0)
    wanted = wanted_exts(extra_fields)
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
