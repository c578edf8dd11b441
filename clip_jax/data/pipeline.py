"""The training data iterator: webdataset shards and/or a prepared tfds split in, deterministic,
exactly resumable batches out.

``make_train_iterator(data_cfg, tokenizer, image_size, batch_size, seed, process_index,
process_count)``: infinite, shuffled ``{"image": uint8 (b, s, s, 3), "text": int32 (b, L)}``
batches (random resized crop; raw 0..255 RGB pixels, CLIP-normalised on the device inside the
train step), with ``get_state`` / ``set_state`` / ``stats`` / ``close``. With ``embeddings``
(:mod:`clip_jax.data.stored`) each batch also carries each sample's ``key`` and its rows stored
by ``clip_jax.embed`` (``stored{k}_image`` / ``stored{k}_text``), joined by shard and key.

The layers below it, each usable on its own:

* :mod:`clip_jax.data.shards`: shard specs (brace patterns, lists, ``@weight`` mixtures,
  fsspec URLs, ``pipe:`` commands) -> weighted shard lists;
* :mod:`clip_jax.data.tario`: opening a shard, grouping tar members into samples, bad-data
  counters, ``iterate_samples`` (one ordered pass, for tools and evaluation);
* :mod:`clip_jax.data.stream`: the pure core, per consumer: shard assignment (epoch or
  resampled mode), source mixing, the reconstructible shuffle, decode + crop + tokenise into
  batches, and the state that resumes it exactly;
* :mod:`clip_jax.data.workers`: running the consumers inline, in threads or in processes;
* :mod:`clip_jax.data.tfds_source`: a prepared tfds image-text split (``data.source="tfds"``,
  or ``"mix"`` beside the shards) read by record through the same stream, shuffle and state.

The iterator returns the workers' batches round robin (batch ``k`` from worker ``k % workers``),
so the batch sequence is a pure function of ``(shards, seed, process_index, process_count,
workers, batch_size, shuffle_buffer, resampled, image_size)``, whatever the timing and whichever
of processes or threads run the workers. A source with fewer shards than the ``process_count x
workers`` readers is a ``ValueError`` naming the counts (in epoch mode).

``get_state()`` is a small JSON-able dict: the number of batches returned and, for each worker,
the state after the last batch of it that was *returned* (workers run ahead, the state does
not; see :mod:`clip_jax.data.stream`). ``set_state`` restarts every worker there; restoring
needs the same configuration (checked: a ``ValueError`` names what differs). ``it.stats`` sums
the workers' counters (``samples`` returned, ``shards`` opened and the ``skipped_*`` counts of
:mod:`clip_jax.data.tario`). A missing shard is a ``FileNotFoundError`` naming it, raised by
``next(it)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

from clip_jax.data import stored as stored_lib
from clip_jax.data.shards import Source, parse_sources
from clip_jax.data.stream import WorkerSpec
from clip_jax.data.tario import new_stats
from clip_jax.data.tfds_source import TfdsSource, open_source
from clip_jax.data.workers import Background, Collector, Inline

STATE_VERSION = 1


def _cfg(cfg, key: str, default):
    """``cfg[key]`` for a ConfigDict / mapping / object, ``default`` when absent or None."""
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _sources(spec) -> list:
    """A shard spec, or a list of already-built sources (:class:`Source`, :class:`TfdsSource`)."""
    if isinstance(spec, list | tuple) and spec and all(
            isinstance(s, Source | TfdsSource) for s in spec):
        return list(spec)
    return parse_sources(spec)


def tfds_source(data_cfg) -> TfdsSource:
    """The ``data.tfds_*`` keys as a checked :class:`TfdsSource`."""
    return open_source(str(_cfg(data_cfg, "tfds_name", "")),
                       str(_cfg(data_cfg, "tfds_data_dir", "")) or None,
                       str(_cfg(data_cfg, "tfds_split", "train")),
                       str(_cfg(data_cfg, "tfds_image_key", "image")),
                       str(_cfg(data_cfg, "tfds_caption_key", "captions/text")),
                       float(_cfg(data_cfg, "tfds_weight", 1.0)))


def train_sources(data_cfg) -> list:
    """The run's sources by ``data.source``: ``webdataset`` the shards of ``data.train``,
    ``tfds`` the tfds split of the ``data.tfds_*`` keys, ``mix`` both (the shards with their
    ``@weight``s, the tfds split with ``data.tfds_weight``), mixed sample by sample."""
    kind = str(_cfg(data_cfg, "source", "webdataset"))
    if kind not in ("webdataset", "tfds", "mix"):
        raise ValueError(f"data.source={kind!r}: the train iterator reads 'webdataset', 'tfds' "
                         "or 'mix'")
    out = []
    if kind in ("webdataset", "mix"):
        spec = _cfg(data_cfg, "train", None)
        if not spec:
            raise ValueError(f"data.source={kind!r} needs data.train (a shard spec)")
        out += parse_sources(spec)
    if kind in ("tfds", "mix"):
        out.append(tfds_source(data_cfg))
    return out


class TrainIterator:
    """Infinite iterator of ``{"image": uint8 (b, s, s, 3), "text": int32 (b, L)}`` batches.

    Images are raw RGB pixels (0..255, random resized crop): the train step normalises them on
    the device with ``transforms.CLIP_MEAN`` / ``CLIP_STD``.

    See the module docstring for sharding, shuffling and the resume design.
    """

    def __init__(self, spec, tokenizer, image_size: int, batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, workers: int = 0,
                 shuffle_buffer: int = 1000, resampled: bool = False, context_length: int = 77,
                 worker_mode: str = "process", prefetch: int = 2, jpeg_draft: bool = True,
                 embeddings: Sequence[str] = (), naflex=None, max_boxes: int = 0,
                 views=None):
        if worker_mode not in ("process", "thread"):
            raise ValueError(f"worker_mode must be 'process' or 'thread', got {worker_mode!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if batch_size < 1 or image_size < 1 or workers < 0 or shuffle_buffer < 0:
            raise ValueError(f"invalid batch_size={batch_size}, image_size={image_size}, "
                             f"workers={workers} or shuffle_buffer={shuffle_buffer}")
        self.sources = tuple(_sources(spec))
        self.tokenizer = tokenizer
        self.num_workers = max(int(workers), 1)
        self.inline = int(workers) == 0
        num_consumers = process_count * self.num_workers
        for i, src in enumerate(self.sources):
            if isinstance(src, TfdsSource):
                if src.num_examples < num_consumers:
                    raise ValueError(
                        f"too few records: tfds source {i} ({src.name} {src.split}) has "
                        f"{src.num_examples} but process_count x workers = {process_count} x "
                        f"{self.num_workers} = {num_consumers} readers each need one")
            elif not resampled:
                if len(src.shards) < num_consumers:
                    raise ValueError(
                        f"too few shards: source {i} has {len(src.shards)} shard(s) but "
                        f"process_count x workers = {process_count} x {self.num_workers} = "
                        f"{num_consumers} readers each need at least one (use fewer workers, "
                        f"more shards, or resampled=True)")
        self.worker_mode, self.prefetch = worker_mode, max(int(prefetch), 1)
        embeddings = stored_lib.parse_dirs(embeddings)
        stored = ()
        if embeddings:
            if any(isinstance(s, TfdsSource) for s in self.sources):
                raise ValueError("stored embeddings (distill.embeddings) join webdataset shards "
                                 "by shard and key: a tfds source has none (data.source="
                                 "'webdataset')")
            stored = stored_lib.open_dirs(embeddings, [u for s in self.sources
                                                       for u in s.shards])
        self.specs = [
            WorkerSpec(self.sources, int(seed), process_index * self.num_workers + w,
                       num_consumers, bool(resampled), 2 * int(shuffle_buffer), int(batch_size),
                       int(image_size), int(context_length), bool(jpeg_draft),
                       name=f"worker {w} of process {process_index}", stored=stored,
                       naflex=naflex, workers=self.num_workers, max_boxes=int(max_boxes),
                       views=views)
            for w in range(self.num_workers)]
        digest = hashlib.sha256(json.dumps([
            s.describe() if isinstance(s, TfdsSource) else [s.shards, s.weight]
            for s in self.sources]).encode()).hexdigest()[:16]
        self.fingerprint = {
            "shards": digest, "seed": int(seed), "process_index": process_index,
            "process_count": process_count, "workers": self.num_workers,
            "batch_size": int(batch_size), "shuffle_buffer": int(shuffle_buffer),
            "resampled": bool(resampled), "image_size": int(image_size),
            "context_length": int(context_length), "jpeg_draft": bool(jpeg_draft)}
        if max_boxes:  # the batches' box fields (clip_jax.data.boxes)
            self.fingerprint["max_boxes"] = int(max_boxes)
        if embeddings:  # which samples are skipped depends on them
            self.fingerprint["embeddings"] = list(embeddings)
        if naflex is not None:  # the buckets, their batch sizes, the patch and the draw
            self.fingerprint["naflex"] = naflex.describe()
            bad = [n for n in naflex.batch_sizes if n % process_count]
            if bad:
                raise ValueError(f"data.naflex: a step of {bad[0]} images does not split over "
                                 f"{process_count} processes")
        self._batches = 0
        self._wstates: list[dict | None] = [None] * self.num_workers
        self._runners: list | None = None
        self._collector: Collector | None = None
        self._error: BaseException | None = None

    def __iter__(self):
        return self

    def _start(self) -> None:
        if self._error is not None:
            raise self._error
        if self.inline:
            self._runners = [Inline(self.specs[0], self.tokenizer, self._wstates[0])]
            return
        self._runners = []
        try:
            for spec, state in zip(self.specs, self._wstates, strict=True):
                self._runners.append(Background(spec, self.tokenizer, state,
                                                 self.worker_mode, self.prefetch))
            self._collector = Collector(self._runners, self._batches, self.prefetch)
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
        total = new_stats()
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
                        context_length: int | None = None,
                        embeddings: Sequence[str] = (), naflex=None,
                        max_boxes: int = 0, views=None) -> TrainIterator:
    """The training iterator for this process from ``data_cfg`` (ConfigDict or mapping).

    Keys: ``source`` ("webdataset", "tfds" or "mix", see :func:`train_sources`; default
    webdataset), ``train`` (shard spec), ``tfds_name``, ``tfds_data_dir``, ``tfds_split``
    (train), ``tfds_image_key`` (image), ``tfds_caption_key`` (captions/text), ``tfds_weight``
    (1.0), ``shuffle_buffer`` (int, default 1000), ``workers`` (int,
    0 = in the calling thread), ``resampled`` (bool), ``context_length`` (77; the
    ``context_length`` argument, e.g. the model's, overrides it); optional ``worker_mode``
    ("process" | "thread"), ``worker_prefetch`` (batches queued per worker, 2), ``jpeg_draft``
    (let the JPEG decoder downscale large images, True). ``embeddings``: directories of stored
    per-sample rows to deliver with each sample (:mod:`clip_jax.data.stored`). ``naflex``: a
    :class:`clip_jax.data.naflex.BucketPlan`: batches of ``{"image": {"patches": uint8 (b, n,
    p*p*3), "mask": bool (b, n), "shapes": int32 (b, 2)}, "text": ...}`` whose ``b`` and ``n``
    follow each step's bucket (``batch_size`` unused). ``max_boxes`` K > 0: each batch also
    has ``boxes`` (b, K, 4), ``box_valid`` (b, K) and ``box_text`` (b, K, L), the samples'
    ``KEY.json`` boxes moved with the crop (:mod:`clip_jax.data.boxes`). ``views``: a
    :class:`clip_jax.data.views.ViewSpec`, the extra views of self-distillation.
    """
    return TrainIterator(
        train_sources(data_cfg), tokenizer, int(image_size), int(batch_size), int(seed),
        int(process_index), int(process_count), workers=int(_cfg(data_cfg, "workers", 0)),
        shuffle_buffer=int(_cfg(data_cfg, "shuffle_buffer", 1000)),
        resampled=bool(_cfg(data_cfg, "resampled", False)),
        context_length=int(context_length or _cfg(data_cfg, "context_length", 77)),
        worker_mode=str(_cfg(data_cfg, "worker_mode", "process")),
        prefetch=int(_cfg(data_cfg, "worker_prefetch", 2)),
        jpeg_draft=bool(_cfg(data_cfg, "jpeg_draft", True)), embeddings=embeddings,
        naflex=naflex, max_boxes=max_boxes, views=views)
