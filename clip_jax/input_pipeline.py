"""Device input: host batches from :mod:`clip_jax.data` placed on the mesh as global arrays.

:func:`make_data` builds this process's host-local iterator (synthetic or webdataset shards);
:func:`to_global` turns its NumPy batch into global ``jax.Array``s sharded over the batch axes;
:class:`Prefetcher` does that on a background thread a few steps ahead of the train step;
:func:`device_pixels` finishes raw ``uint8`` images on the device, inside the step.
"""

from __future__ import annotations

import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import config_schema
from clip_jax.data import naflex, pipeline, stored, transforms, views, workers
from clip_jax.data.synthetic import SyntheticSource

BATCH_KEYS = ("image", "text")  # what the train step reads; other fields stay on the host
# + the objective's fields: stored rows (clip_jax.data.stored.field_names), teachers' own ids,
# LocCa's boxes (clip_jax.data.boxes), self-distillation's views (clip_jax.data.views)
DEVICE_PREFIXES = ("stored", "teacher", "box", "view")
_PUT_TIMEOUT_S = 0.1  # how often a blocked producer looks at the stop flag
_JOIN_TIMEOUT_S = 10.0  # how long close() waits for the producer thread


def make_data(config, model_cfg, batch_size: int, tokenizer=None):
    """The host-local iterator of ``batch_size`` rows for this process (``get_state`` /
    ``set_state``), from ``config.data`` and the model's image size, context length and
    vocabulary, and the views of ``silc`` / ``tips`` (:mod:`clip_jax.data.views`)."""
    m, boxes = model_cfg, config_schema.locca_boxes(config, model_cfg)
    extra = views.spec_from_config(config, m.vision.image_size, m.vision.patch_size)
    if config.data.source == "synthetic":
        if boxes:
            raise ValueError("model.decoder.loc_bins: LocCa's tasks read boxes from image "
                             "shards (KEY.json); data.source='synthetic' has none")
        return SyntheticSource(
            batch_size, m.vision.image_size, m.text.context_length, m.text.vocab_size,
            config.data.synthetic_classes, config.data.synthetic_noise, config.seed,
            jax.process_index(), extra)
    return pipeline.make_train_iterator(
        config.data, tokenizer, m.vision.image_size, batch_size, config.seed,
        jax.process_index(), jax.process_count(), context_length=m.text.context_length,
        embeddings=stored.parse_dirs(config.distill.embeddings), naflex=naflex_plan(config, m),
        max_boxes=boxes, views=extra)


def naflex_plan(config, model_cfg) -> naflex.BucketPlan | None:
    """``data.naflex``'s :class:`~clip_jax.data.naflex.BucketPlan` (None when off): each
    bucket's images per step a multiple of ``batch_multiple``, default every device."""
    n = config.data.naflex
    if not n.buckets:
        return None
    return naflex.bucket_plan(tuple(n.buckets), n.tokens, model_cfg.vision.patch_size,
                              config.seed, n.batch_multiple or jax.device_count())


def to_global(batch_sharding: jax.sharding.Sharding, local_batch: dict[str, np.ndarray]):
    """This process's rows of the global batch -> global arrays with ``batch_sharding`` (a
    NaFlex ``image`` is a dict of arrays, each placed so)."""
    return {k: jax.tree.map(lambda a: jax.make_array_from_process_local_data(batch_sharding, a),
                            v)
            for k, v in local_batch.items()
            if k in BATCH_KEYS or k.startswith(DEVICE_PREFIXES)}


def device_pixels(images: jax.Array) -> jax.Array:
    """Batches may carry raw ``uint8`` pixels (4x less host-to-device traffic, no float work on
    the input cores): they are CLIP-normalised here, inside the jitted step. Float images are
    taken as already normalised. NaFlex's dict: its ``patches`` (each (row, column, channel))
    are normalised so."""
    if isinstance(images, dict):
        x = images["patches"]
        if x.dtype == jnp.uint8:
            x = device_pixels(x.reshape(*x.shape[:-1], -1, 3)).reshape(x.shape)
        return {**images, "patches": x}
    if images.dtype != jnp.uint8:
        return images
    mean, inv_std = transforms.pixel_scale()  # the host's normalize, the same arithmetic
    return (images.astype(jnp.float32) - jnp.asarray(mean)) * jnp.asarray(inv_std)


class Prefetcher:
    """Global batches placed on the devices ``depth`` steps ahead, by a background thread, so
    input (host pipeline + host-to-device copy) overlaps compute.

    Each item carries the iterator state *after* its batch, so a checkpoint saves the state of
    what the loop has consumed, not of what was prefetched: resume stays exact. ``depth=0``
    reads in the calling thread.
    """

    def __init__(self, batch_sharding: jax.sharding.Sharding, data, depth: int):
        self.batch_sharding, self.data, self.depth = batch_sharding, data, int(depth)
        self.state, self.stats = data.get_state(), dict(getattr(data, "stats", {}))
        if self.depth > 0:
            self._queue = queue.Queue(self.depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="clip_jax-prefetch")
            self._thread.start()
            workers.stop_at_exit(self)

    def _produce(self):
        batch = to_global(self.batch_sharding, next(self.data))
        return batch, self.data.get_state(), dict(getattr(self.data, "stats", {}))

    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._produce()
            except BaseException as e:  # delivered to the consumer, raised there
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=_PUT_TIMEOUT_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __next__(self):
        item = self._produce() if self.depth == 0 else self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self.state, self.stats = item
        return batch

    def close(self):
        if self.depth > 0:
            self._stop.set()
            self._thread.join(timeout=_JOIN_TIMEOUT_S)
