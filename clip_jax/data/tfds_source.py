"""A prepared tensorflow-datasets image-text dataset as a training source (no TensorFlow).

:func:`open_source` checks a dataset prepared as ``array_record`` under a tfds ``data_dir``
(``tfds build coco_captions --data_dir DIR --file_format array_record`` elsewhere, then copy
``DIR``; nothing is downloaded) and returns a :class:`TfdsSource`: a small picklable
description that the train stream (:mod:`clip_jax.data.stream`) mixes with webdataset sources
and that each data worker opens for itself (:class:`RecordReader`). The dataset is opened
through :mod:`clip_jax.data.tfds_reader`, the one tfds layer evaluation reads through too.

Reading: the split's records are read by random access (``builder.as_data_source`` with raw
bytes) and only the two features a sample needs are parsed, with tfds's own NumPy example
parser: the image feature's encoded bytes (decoded later, like a shard's, by
:func:`clip_jax.data.transforms.decode_array`) and the caption feature, a ``Text`` or a
sequence of texts (``captions/text`` in ``coco_captions``: a ``Sequence({"text", "id"})``).
With several captions one is picked per record and epoch from a hash of ``(seed, source,
epoch, record)``: deterministic, a different caption each epoch.

Order, split and resume (the webdataset pipeline's guarantees):

* epoch ``e`` visits the split's ``n`` records in the order of a pseudo-random permutation of
  ``range(n)`` keyed by ``(seed, source, e)`` (:func:`clip_jax.data.hashing.permuted_index`,
  never materialised), and consumer ``c`` of ``C`` (``process_index * workers + worker``)
  reads its positions ``c, c + C, c + 2C...``: the processes and workers read disjoint
  records that together cover the split, every epoch;
* the read cursor is ``[epoch, position]`` (the shard readers' ``[epoch, position, groups]``
  shape with ``groups`` 0): the stream's shuffle state saves and replays it exactly (random
  access makes the replay cheap);
* records that do not parse are skipped and counted in ``skipped_bad_record``, those without
  an image in ``skipped_no_image``, without a non-empty caption in ``skipped_empty_caption``;
  undecodable images in ``skipped_corrupt_image`` (by the batch maker, as for shards).

Why not ``grain`` (``ArrayRecordDataSource`` + ``IndexSampler``, what MaxText uses; it installs
beside this JAX): its sampler is the same idea (a seeded index permutation per epoch, sharded
by process), but it brings its own worker pool and iterator state, where this source plugs
into the stream's (one shuffle, one mixture with shards, one saved state, one set of
counters); random access and parsing are tfds's / array_record's either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError  # protobuf: a tfds dependency

from clip_jax.data import tfds_reader
from clip_jax.data.hashing import hash_ints, permuted_index
from clip_jax.data.tario import RawSample

_TAG_ORDER, _TAG_CAPTION = 21, 22
BAD_RECORD = "skipped_bad_record"


@dataclass(frozen=True)
class TfdsSource:
    """A tfds split mixed into the train stream with ``weight`` (see :func:`open_source`)."""

    name: str  # builder[/config][:version], as tfds names it
    split: str
    data_dir: str
    image_key: str
    caption_key: str
    num_examples: int
    full_name: str  # builder/config/version actually opened (for the iterator fingerprint)
    weight: float = 1.0

    def describe(self) -> list:
        """What identifies the source's samples (not where it is stored)."""
        return ["tfds", self.full_name, self.split, self.image_key, self.caption_key,
                self.num_examples, self.weight]


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _serialized_specs(builder) -> dict:
    tfds = _tfds()
    return tfds.core.utils.flatten_nest_dict(builder.info.features.get_serialized_info())


def _check_key(specs: dict, key: str, what: str, name: str, shapes) -> None:
    if key not in specs:
        raise ValueError(f"tfds dataset {name!r} has no feature {key!r} for the {what} "
                         f"(its features: {sorted(specs)})")
    info = specs[key]
    if np.dtype(info.np_dtype) != np.dtype(object) or tuple(info.shape) not in shapes:
        need = "one encoded image" if what == "image" else "a text or a sequence of texts"
        raise ValueError(f"tfds dataset {name!r}: feature {key!r} ({info}) cannot be the "
                         f"{what}: it needs {need}")


def open_source(name: str, data_dir: str | None, split: str = "train",
                image_key: str = "image", caption_key: str = "captions/text",
                weight: float = 1.0) -> TfdsSource:
    """Check that ``name`` is prepared under ``data_dir`` as array_record, with ``split`` and
    the two features, and describe it. Errors are one line naming the problem."""
    if not name:
        raise ValueError("a tfds training source needs data.tfds_name (e.g. coco_captions)")
    if not (weight > 0 and np.isfinite(weight)):
        raise ValueError(f"tfds source {name!r}: weight {weight}, need > 0")
    builder = tfds_reader.open_builder(name, data_dir)
    n = tfds_reader.num_examples(builder, split)
    tfds_reader.data_source(builder, split)  # array_record (random access), or a clear error
    if n <= 0:
        raise ValueError(f"tfds dataset {name!r}: split {split!r} is empty")
    specs = _serialized_specs(builder)
    _check_key(specs, image_key, "image", name, {()})
    _check_key(specs, caption_key, "caption", name, {(), (None,)})
    return TfdsSource(name, split, str(data_dir or ""), image_key, caption_key, n,
                      str(builder.info.full_name), float(weight))


class _Records:
    """The split's records by index, parsed down to (image bytes, [captions])."""

    def __init__(self, src: TfdsSource):
        tfds = _tfds()
        builder = tfds_reader.open_builder(src.name, src.data_dir or None)
        if int(tfds_reader.num_examples(builder, src.split)) != src.num_examples:
            raise ValueError(f"tfds dataset {src.name!r} split {src.split!r} now has "
                             f"{tfds_reader.num_examples(builder, src.split)} examples, "
                             f"{src.num_examples} when the run was configured")
        self.raw = builder.as_data_source(
            src.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        specs = _serialized_specs(builder)
        self.parser = tfds.core.example_parser.ExampleParserNp(
            {k: specs[k] for k in (src.image_key, src.caption_key)})
        self.src = src

    def get(self, i: int, stats: dict) -> tuple[bytes, list[str]] | None:
        """(image bytes, non-empty captions) of record ``i``; None, counted, if unusable."""
        try:
            ex = self.parser.parse_example(self.raw[i])
        except DecodeError:
            stats[BAD_RECORD] = stats.get(BAD_RECORD, 0) + 1
            return None
        image = ex.get(self.src.image_key)
        if not isinstance(image, bytes) or not image:
            stats["skipped_no_image"] += 1
            return None
        value = ex.get(self.src.caption_key)
        values = [value] if isinstance(value, bytes | str) else list(
            value if value is not None else ())
        captions = [c for c in (v.decode("utf-8", errors="replace") if isinstance(v, bytes)
                                else str(v) for v in values) if c.strip()]
        if not captions:
            stats["skipped_empty_caption"] += 1
            return None
        return image, [c.strip() for c in captions]


class RecordReader:
    """Consumer ``c``'s walk over a :class:`TfdsSource`: cursor = ``[epoch, position, 0]``.

    The interface of the shard reader in :mod:`clip_jax.data.stream` (``cursor``,
    ``set_cursor``, ``close``, ``next_valid``)."""

    def __init__(self, spec, index: int):
        self.src, self.index, self.spec = spec.sources[index], index, spec
        n, c, num = self.src.num_examples, spec.consumer, spec.num_consumers
        if n < num:
            raise ValueError(f"tfds source {self.src.name!r} split {self.src.split!r} has {n} "
                             f"examples but process_count x workers = {num} readers each need "
                             "at least one (use fewer workers)")
        self.count = (n - c + num - 1) // num  # positions c, c + C, ... below n
        self.epoch, self.pos = 0, 0
        self._records: _Records | None = None

    def cursor(self) -> list[int]:
        return [self.epoch, self.pos, 0]

    def set_cursor(self, cursor: Sequence[int]) -> None:
        self.epoch, self.pos = int(cursor[0]), int(cursor[1])

    def close(self) -> None:
        self._records = None

    def record(self, epoch: int, pos: int) -> int:
        """The index of the record at this consumer's ``pos`` in ``epoch``."""
        key = hash_ints(self.spec.seed, self.index, epoch, _TAG_ORDER)
        return permuted_index(self.spec.consumer + pos * self.spec.num_consumers,
                              self.src.num_examples, key)

    def next_valid(self, stats: dict, extra_fields: Sequence[str] = ()) -> tuple[int, RawSample]:
        if self._records is None:
            self._records = _Records(self.src)
        for _ in range(self.count + 1):
            if self.pos >= self.count:
                self.epoch, self.pos = self.epoch + 1, 0
            epoch, rec = self.epoch, self.record(self.epoch, self.pos)
            self.pos += 1
            got = self._records.get(rec, stats)
            if got is not None:
                image, captions = got
                pick = hash_ints(self.spec.seed, self.index, epoch, rec, _TAG_CAPTION)
                return epoch, RawSample(f"{self.src.split}/{rec}", image,
                                        captions[pick % len(captions)])
        raise RuntimeError(f"{self.spec.name}: no valid sample in a whole epoch of tfds source "
                           f"{self.src.name!r} split {self.src.split!r} ({self.count} records)")


def first_captions(src: TfdsSource, limit: int) -> list[str]:
    """Every caption of the split's first records, in stored order, up to ``limit`` (to fit a
    tokenizer)."""
    records, stats, out = _Records(src), {"skipped_no_image": 0, "skipped_empty_caption": 0}, []
    for i in range(src.num_examples):
        got = records.get(i, stats)
        if got is not None:
            out.extend(got[1][:limit - len(out)])
        if len(out) >= limit:
            break
    return out

