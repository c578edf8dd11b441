"""The deterministic core of the train stream: shard assignment, source mixing, shuffle, batches.

Everything here is a pure function of the configuration and runs in one thread: the worker
pool (:mod:`clip_jax.data.workers`) only runs :class:`BatchMaker` objects somewhere else, so
this module is tested without processes.

Sharding and modes
------------------
Each of the ``process_count`` JAX processes runs ``workers`` loader workers (``0``: one, inside
the calling thread); worker ``w`` of process ``p`` is *consumer* ``c = p * workers + w`` of
``C = process_count * max(workers, 1)``.

* epoch mode (``resampled=False``): in epoch ``e`` each source's shard list is permuted with
  a generator seeded by ``(seed, source, e)`` and consumer ``c`` reads ``perm[c::C]``: every
  epoch, the consumers read disjoint shard sets whose union is every shard exactly once.
  Epochs follow each other forever; with a single source the shuffle below never mixes two
  epochs, so each epoch yields every valid sample exactly once over all consumers.
* resampled mode (``resampled=True``): consumer ``c`` draws its ``k``-th shard uniformly, with
  replacement, from the source's full list with a generator seeded by ``(seed, source, c, k)``.
* a tfds source (:mod:`clip_jax.data.tfds_source`) is read by record, not by shard, in either
  mode: epoch ``e`` permutes its records by ``(seed, source, e)`` and consumer ``c`` reads
  positions ``c::C`` of that order (disjoint consumers covering the split every epoch).

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
(webdataset's shuffle buffer cannot be rebuilt after a restart; this one can, see below.)

Decode, augment and tokenise happen after the shuffle; the random crop of sample ``i`` uses a
generator seeded by ``(seed, c, i)``. NaFlex (``spec.naflex``, :class:`clip_jax.data.naflex.
BucketPlan`): consumer ``c``'s ``j``-th batch is global step ``j * workers + (c mod workers)``,
whose bucket fixes how many images this consumer puts in it and how many patches each gets;
images are decoded at their own size and resized once to fit (no crop). Workers decode (JPEG:
libjpeg-turbo via simplejpeg, DCT downscaling) and crop + resize (OpenCV) to ``uint8`` images.

Exact resume
------------
:meth:`BatchMaker.state` is a small JSON-able dict: its number of batches, its counters and its
shuffle state:

* ``next``: how many raw samples it has read; ``last``: ``[epoch, i]`` of the last sample that
  left the heap (every sample read with a smaller priority has left, none with a larger one);
* ``replay``: the read cursor (per source: epoch, position in the epoch's shard list or draw
  number, sample groups already read in that shard) just before the oldest sample still in the
  heap; ``epoch``: the epoch of the last sample read.

Restoring restarts at ``replay``: it reopens that shard, skips the recorded number of groups
without reading images (:func:`clip_jax.data.tario.iter_groups`), re-reads raw samples up to
``next`` (at most ``W``) and puts back into the heap those with a priority above ``last``. The
heap is then identical, so the next batches are byte-identical to those the original would have
made.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clip_jax.cli import UserError
from clip_jax.data import boxes as boxes_lib
from clip_jax.data import naflex as naflex_lib
from clip_jax.data import stored as stored_lib
from clip_jax.data import transforms
from clip_jax.data import views as views_lib
from clip_jax.data.hashing import hash_ints as _hash
from clip_jax.data.hashing import seed_seq as _seed_seq
from clip_jax.data.hashing import unit as _unit
from clip_jax.data.shards import Source
from clip_jax.data.tario import RawSample, iter_groups, new_stats, to_raw_sample, wanted_exts
from clip_jax.data.tfds_source import RecordReader, TfdsSource

_TAG_EPOCH, _TAG_DRAW, _TAG_MIX, _TAG_SHUFFLE, _TAG_CROP = 11, 12, 13, 14, 15
_MAX_CONSECUTIVE_CORRUPT = 10000
_MAX_CONSECUTIVE_MISSING = 1_000_000  # samples in a row without stored rows: a wrong directory

@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs (picklable, sent to worker processes)."""

    sources: tuple[Source | TfdsSource, ...]
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
    stored: tuple = ()  # stored per-sample rows to join (clip_jax.data.stored.StoredDir)
    naflex: naflex_lib.BucketPlan | None = None  # NaFlex batches: a bucket per step
    workers: int = 1  # consumers per process (NaFlex: which steps this one makes)
    max_boxes: int = 0  # > 0: each sample's boxes as batch fields (clip_jax.data.boxes)
    views: views_lib.ViewSpec | None = None  # self-distillation's extra views (data/views.py)

    def naflex_shape(self, batch: int) -> tuple[int, int]:
        """(images, patches per image) of this consumer's ``batch``-th NaFlex batch: its step's
        global images split over the processes."""
        total, bucket = self.naflex.shape(batch * self.workers + self.consumer % self.workers)
        return total // (self.num_consumers // self.workers), bucket


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
            raise UserError(f"{self.spec.name}: no valid sample in {self._empty_run} "
                            f"consecutive shards (last: {url}): are they webdataset tars of "
                            "images and captions?")
        self._valid_in_shard = False
        self.pos, self.groups = self.pos + 1, 0
        if not self.spec.resampled and self.pos >= len(self._epoch_shards()):
            self.epoch, self.pos = self.epoch + 1, 0

    def next_valid(self, stats: dict, extra_fields: Sequence[str] = ()) -> tuple[int, RawSample]:
        """(epoch, raw sample) of the next valid sample, advancing over shards as needed."""
        while True:
            if self._it is None:
                url = self._shard_url = self._url()
                stats["shards"] += 1
                self._it = iter_groups(url, wanted_exts(extra_fields), self.groups, stats)
            group = next(self._it, None)
            if group is None:
                self._advance_shard(self._url())
                continue
            self.groups += 1
            raw = to_raw_sample(group, stats, extra_fields)
            if raw is not None:
                self._valid_in_shard = True
                raw.url = self._shard_url
                return self.epoch, raw


class _Stream:
    """Mixes the sources of one consumer; the ``index``-th sample's source is hashed."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.readers = [RecordReader(spec, i) if isinstance(src, TfdsSource)
                        else _SourceReader(spec, i) for i, src in enumerate(spec.sources)]
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
        scratch = new_stats()
        target = int(state["next"])
        while self.stream.index < target:
            entry = self._read(scratch)
            if self.last is None or entry[:3] > self.last:
                heapq.heappush(self.heap, entry)
        if self.stream.index != target:
            raise ValueError(f"inconsistent iterator state: replay reached sample "
                             f"{self.stream.index}, expected {target}")
        self.epoch = int(state["epoch"])


class BatchMaker:
    """Builds consumer ``c``'s batches: shuffle -> [join stored rows] -> decode -> random crop
    -> tokenise. With ``spec.stored`` (:mod:`clip_jax.data.stored`) each batch also holds the
    samples' ``key`` and their stored rows; a sample without rows is skipped and counted."""

    def __init__(self, spec: WorkerSpec, tokenizer, state: Mapping | None = None):
        self.spec, self.tokenizer = spec, tokenizer
        self.stream = _Stream(spec)
        self.shuffler = _Shuffler(spec, self.stream)
        self.lookup = stored_lib.Lookup(spec.stored) if spec.stored else None
        self.batches, self.stats = 0, new_stats()
        if self.lookup is not None:
            self.stats[stored_lib.SKIPPED] = 0
        self.crop_base = (spec.seed, spec.consumer, _TAG_CROP)
        self.min_size = math.ceil(spec.image_size * 1.25) if spec.jpeg_draft else None
        if state is not None:
            self.batches = int(state["batches"])
            self.stats = {**self.stats, **{k: int(v) for k, v in state["stats"].items()}}
            self.shuffler.set_state(state["shuffle"])

    def state(self) -> dict:
        return {"batches": self.batches, "stats": dict(self.stats),
                "shuffle": self.shuffler.state()}

    def next_batch(self) -> dict[str, np.ndarray]:
        spec, plan = self.spec, self.spec.naflex
        if plan is None:
            n, min_size = spec.batch_size, self.min_size
            images = np.empty((n, spec.image_size, spec.image_size, 3), np.uint8)
        else:
            (n, bucket), min_size, p = spec.naflex_shape(self.batches), None, plan.patch_size
            images = {"patches": np.zeros((n, bucket, p * p * 3), np.uint8),
                      "mask": np.zeros((n, bucket), bool), "shapes": np.zeros((n, 2), np.int32)}
        step = self.batches * spec.workers + spec.consumer % spec.workers  # the global step
        extra = spec.views.allocate(step, n, np.uint8) if spec.views is not None else {}
        captions: list[str] = []
        keys, rows, box_rows = [], [], []
        failures = missing = 0
        while len(captions) < n:
            index, raw = self.shuffler.pop(self.stats)
            if self.lookup is not None:
                found = self.lookup.rows(raw.url, raw.key)
                if found is None:
                    self.stats[stored_lib.SKIPPED] += 1
                    missing += 1
                    if missing > _MAX_CONSECUTIVE_MISSING:
                        raise RuntimeError(f"{spec.name}: {missing} samples in a row without "
                                           f"stored embeddings (last: {raw.url} {raw.key!r})")
                    continue
                missing = 0
            try:  # only the decoder's errors mean a bad image: anything else is a bug, raised
                pixels = transforms.decode_array(raw.image, min_size)
            except transforms.DECODE_ERRORS as e:
                self.stats["skipped_corrupt_image"] += 1
                failures += 1
                if failures > _MAX_CONSECUTIVE_CORRUPT:
                    raise RuntimeError(f"{spec.name}: {failures} undecodable images in a row "
                                       f"(last key {raw.key!r})") from e
                continue
            i = len(captions)
            if plan is None:
                rng = np.random.default_rng(_seed_seq(*self.crop_base, index))
                height, width = pixels.shape[:2]
                crop = transforms.random_resized_crop_params(width, height, rng)
                images[i] = transforms.crop_resize(pixels, spec.image_size, crop)
            else:  # at its own aspect ratio, resized once to fit the bucket (boxes unmoved)
                x, images["shapes"][i] = naflex_lib.patches_uint8(pixels, p, bucket)
                images["patches"][i, :len(x)], images["mask"][i, :len(x)] = x, True
                height, width = pixels.shape[:2]
                crop = (0, 0, width, height)
            if spec.max_boxes:
                found_boxes, caps = boxes_lib.parse(raw.meta, f"{raw.url} key {raw.key!r}")
                moved, keep = boxes_lib.crop(found_boxes, width, height, *crop)
                box_rows.append(boxes_lib.pad(moved, caps, keep, spec.max_boxes))
            if extra:  # from the sample's own generator: the main crop is unchanged
                views_lib.make(pixels, spec.views, np.random.default_rng(_seed_seq(
                    spec.seed, spec.consumer, views_lib.TAG, index)), extra, i)
            failures = 0
            captions.append(raw.caption)
            if self.lookup is not None:
                keys.append(raw.key)
                rows.append(found)
        ids = self.tokenizer(captions, spec.context_length)  # or {"text": ..., more fields}
        fields = dict(ids) if isinstance(ids, Mapping) else {"text": ids}
        text = np.asarray(fields.pop("text"), dtype=np.int32)
        if text.shape != (n, spec.context_length):
            raise ValueError(f"tokenizer returned shape {text.shape}, expected "
                             f"{(n, spec.context_length)}")
        self.batches += 1
        self.stats["samples"] += n
        batch = {"image": images, "text": text,  # + e.g. a distillation teacher's own ids
                 **{k: np.asarray(v, np.int32) for k, v in fields.items()}, **extra}
        if spec.max_boxes:
            k = spec.max_boxes
            batch["boxes"] = np.stack([r[0] for r in box_rows])
            batch["box_valid"] = np.stack([r[1] for r in box_rows])
            box_text = self.tokenizer([c for r in box_rows for c in r[2]], spec.context_length)
            box_text = box_text["text"] if isinstance(box_text, Mapping) else box_text
            batch["box_text"] = np.asarray(box_text, np.int32).reshape(n, k, -1)
        if self.lookup is not None:
            batch["key"] = np.asarray(keys)
            for k in range(len(spec.stored)):
                img_key, txt_key = stored_lib.field_names(k)
                batch[img_key] = np.stack([r[k][0] for r in rows])
                batch[txt_key] = np.stack([r[k][1] for r in rows])
        return batch

    def close(self) -> None:
        self.stream.close()
