"""Captioning with a model's decoder (``model.decoder``): generate captions, score them, and
the ``captioning`` evaluation.

    cap = Captioner(clip_jax.load(path))           # a model without a decoder: ValueError
    cap.captions(images, beams=1)                  # greedy (beams=1) or beam search, batched
    cap.nll(images, token_ids)                     # teacher-forced summed NLL and target count

:func:`captioning` (``python -m clip_jax.evaluate --eval captioning --dataset SHARDS``) reports,
on a held-out captioned set: the decoder's ``perplexity`` (``exp`` of the mean NLL per target
token over every caption of every image, the targets the training loss counts), retrieval by
caption likelihood among the first ``MAX_RETRIEVAL`` images and their first captions
(``text_to_image_recall@1``: for each caption, is its own image the one under which the decoder
finds it most likely; ``image_to_text_recall@1``: for each image, is its own caption the most
likely; chance ``1 / n``) and a few greedy ``examples`` beside their references.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax import models
from clip_jax.evaluate import datasets, encode
from clip_jax.models import decoder as decoder_lib
from clip_jax.models import locca

MAX_RETRIEVAL = 100  # images (and captions) in the likelihood retrieval: n^2 decoder passes
EXAMPLES = 8


class Captioner:
    """A model's decoder on the model's local devices (``model``: an
    :class:`clip_jax.inference.InferenceModel`); inputs in fixed-size chunks (one compiled
    shape per call kind)."""

    def __init__(self, model):
        cfg = model.cfg
        if cfg.decoder is None:
            raise ValueError("this model has no captioning decoder (model.decoder): captions "
                             "need one, trained with it (configs/coca_demo.py)")
        self.model, self.cfg, self.tokenizer = model, cfg, model.tokenizer
        self.pad_id = cfg.decoder.pad_id
        n = len(model.devices)
        self.batch_size = model.batch_size
        mesh = jax.sharding.Mesh(np.asarray(model.devices), ("batch",))
        self._rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
        self._all = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._n = n
        module = models.CLIP(cfg)
        self._apply = lambda p, *a, **kw: module.apply(models.variables(p), *a, **kw)
        self._jits = {}

    # -- the jitted pieces ------------------------------------------------------------------

    def _jit(self, key, fn):
        if key not in self._jits:
            self._jits[key] = jax.jit(fn, out_shardings=self._all)
        return self._jits[key]

    def _logits_fn(self, params, tokens, text_only: bool = False):
        """``ids -> logits``; ``text_only``: the text ids' logits only (a LocCa decoder's task
        and coordinate tokens are never generated in a caption)."""
        fn = lambda ids: self._apply(params, tokens, ids, method=models.CLIP.decode)
        return (lambda ids: fn(ids)[..., :self.cfg.text.vocab_size]) if text_only else fn

    def _task_prefixed(self, ids):
        """A LocCa decoder's captions start with its captioning task token (as it trained)."""
        if not self.cfg.decoder.loc_bins:
            return ids
        task = jnp.full((ids.shape[0], 1), self.cfg.text.vocab_size + locca.CAP, ids.dtype)
        return jnp.concatenate([task, ids[:, :-1]], axis=1)

    def _refer(self):
        def run(params, pixels, prompt, prompt_len):
            _, tokens = self._apply(params, pixels, method=models.CLIP.encode_image_tokens)
            return locca.decode_boxes(self._logits_fn(params, tokens), prompt, prompt_len,
                                      self.cfg.text.vocab_size, self.cfg.decoder.loc_bins)

        return self._jit(("refer",), run)

    def _generate(self, beams: int, length: int, eot: int):
        def run(params, pixels, prompt):
            _, tokens = self._apply(params, pixels, method=models.CLIP.encode_image_tokens)
            text_only = bool(self.cfg.decoder.loc_bins)
            if beams == 1:
                return decoder_lib.greedy(self._logits_fn(params, tokens, text_only), prompt,
                                          length, eot, self.pad_id)
            tokens = jnp.repeat(tokens, beams, axis=0)
            return decoder_lib.beam_search(self._logits_fn(params, tokens, text_only), prompt,
                                           length, eot, self.pad_id, beams)[0]

        return self._jit(("generate", beams, length, eot), run)

    def _score(self):
        def run(params, tokens, ids):
            inputs, labels, w = decoder_lib.caption_targets(self._task_prefixed(ids),
                                                            self.pad_id)
            nll = decoder_lib.token_nll(self._logits_fn(params, tokens)(inputs), labels)
            return jnp.sum(nll * w, axis=1), jnp.sum(w, axis=1)

        return self._jit(("score",), run)

    def _tokens(self):
        return self._jit(("tokens",), lambda p, x: self._apply(
            p, x, method=models.CLIP.encode_image_tokens)[1])

    # -- batching ----------------------------------------------------------------------------

    def _chunks(self, n: int):
        """``(start, stop, padded size)`` chunks of ``n`` rows; a short one is padded to a
        multiple of the devices (at most two sizes are compiled)."""
        for s in range(0, n, self.batch_size):
            m = min(self.batch_size, n - s)
            yield s, s + m, self.batch_size if m == self.batch_size else -(-m // self._n) * self._n

    def _put(self, x, size: int):
        x = np.asarray(x)
        if len(x) < size:
            x = np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
        return jax.device_put(x, self._rows)

    def _pixels(self, images) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
            return np.asarray(images, np.float32)
        return self.model.preprocess(images)

    # -- the public calls --------------------------------------------------------------------

    def prompt(self) -> np.ndarray:
        tok = self.tokenizer
        if tok is None or tok.sot_id is None:
            raise ValueError("captions start from the tokenizer's start token: this model's "
                             f"tokenizer {tok!r} has none")
        if self.cfg.decoder.loc_bins:  # LocCa: the captioning task token first
            return np.asarray([[self.cfg.text.vocab_size + locca.CAP, tok.sot_id]], np.int32)
        return np.asarray([[tok.sot_id]], np.int32)

    def caption_ids(self, images, beams: int = 1, length: int | None = None) -> np.ndarray:
        """(N, length) int32 token ids (prompt, caption, end token, padding); ``images`` as
        :meth:`clip_jax.inference.InferenceModel.preprocess` takes them, or float pixels."""
        if beams < 1:
            raise ValueError(f"beams={beams}: must be >= 1")
        length = int(length or self.cfg.text.context_length)
        pixels = self._pixels(images)
        fn = self._generate(beams, length, int(self.tokenizer.eot_id))
        out = []
        for s, e, size in self._chunks(len(pixels)):
            prompt = np.repeat(self.prompt(), size, axis=0)
            out.append(np.asarray(fn(self.model.params, self._put(pixels[s:e], size),
                                     self._put(prompt, size)))[:e - s])
        return np.concatenate(out) if out else np.zeros((0, length), np.int32)

    def captions(self, images, beams: int = 1) -> list[str]:
        """Generated captions, as text (a LocCa decoder's task token left out)."""
        skip = 1 if self.cfg.decoder.loc_bins else 0
        return [self.tokenizer.decode(row[skip:]) for row in self.caption_ids(images, beams)]

    def refer(self, images, expressions: np.ndarray) -> np.ndarray:
        """LocCa's referring-expression task: (N, 4) normalised boxes [x0, y0, x1, y1] decoded
        greedily (:func:`clip_jax.models.locca.decode_boxes`) for the token ids
        ``expressions`` (N, L) on ``images``."""
        if not self.cfg.decoder.loc_bins:
            raise ValueError("this model's decoder has no coordinate tokens (model.decoder."
                             "loc_bins): referring expressions need a LocCa-trained decoder")
        pixels, fn = self._pixels(images), self._refer()
        prompt, plen = (np.asarray(x) for x in locca.aref_prompts(
            expressions, self.pad_id, self.cfg.text.vocab_size))
        out = [np.asarray(fn(self.model.params, self._put(pixels[s:e], size),
                             self._put(prompt[s:e], size), self._put(plen[s:e], size)))[:e - s]
               for s, e, size in self._chunks(len(pixels))]
        return np.concatenate(out) if out else np.zeros((0, 4), np.float32)

    def image_tokens(self, images) -> np.ndarray:
        """(N, T, width) float32 un-pooled image tokens."""
        pixels = self._pixels(images)
        fn = self._tokens()
        return np.concatenate([np.asarray(fn(self.model.params, self._put(pixels[s:e], size)))[
            :e - s] for s, e, size in self._chunks(len(pixels))])

    def nll(self, tokens: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher-forced ``(summed NLL (N,), target count (N,))`` of the captions ``ids`` (N,
        L) given ``tokens`` (N, T, width) from :meth:`image_tokens`, row by row."""
        fn, nll, count = self._score(), [], []
        for s, e, size in self._chunks(len(ids)):
            a, b = fn(self.model.params, self._put(tokens[s:e], size),
                      self._put(np.asarray(ids[s:e], np.int32), size))
            nll.append(np.asarray(a)[:e - s])
            count.append(np.asarray(b)[:e - s])
        return np.concatenate(nll), np.concatenate(count)


def _recall_at_1(scores: np.ndarray) -> tuple[float, float]:
    """(text -> image, image -> text) recall@1 of ``scores`` [image i, caption j] (higher: more
    likely), caption j belonging to image j; ties count against."""
    n = len(scores)
    diag = scores[np.arange(n), np.arange(n)]
    t2i = float(np.mean(np.sum(scores > diag[None, :], axis=0) == 0))
    i2t = float(np.mean(np.sum(scores > diag[:, None], axis=1) == 0))
    return t2i, i2t


def captioning(model, spec) -> dict:
    """The ``captioning`` evaluation of ``model`` (an InferenceModel) on ``spec.dataset``, a
    captioned set (see the module docstring)."""
    t0 = time.perf_counter()
    cap = Captioner(model)
    ds = datasets.captioned(spec.dataset)
    ctx = model.cfg.text.context_length
    total, count, pixels, refs = 0.0, 0.0, [], []
    for images, caps, n in datasets.batches(ds.samples(model.image_size), spec.batch_size,
                                            *encode.mean_std(model)):
        images = images[:n]
        tokens = cap.image_tokens(images)
        owner = np.repeat(np.arange(n), [len(c) for c in caps[:n]])
        ids = model.tokenize([c for cs in caps[:n] for c in cs])
        a, b = cap.nll(tokens[owner], ids)
        total, count = total + float(a.sum()), count + float(b.sum())
        if len(pixels) < MAX_RETRIEVAL:
            k = MAX_RETRIEVAL - len(pixels)
            pixels.extend(images[:k])
            refs.extend(cs[0] for cs in caps[:n][:k])
    if not count:
        raise ValueError(f"captioning set {ds.name} yielded no captioned images ({ds.stats})")
    pixels = np.stack(pixels)
    m = len(pixels)
    tokens = cap.image_tokens(pixels)
    ids = model.tokenize(refs)
    rows, cols = np.repeat(np.arange(m), m), np.tile(np.arange(m), m)
    nll, _ = cap.nll(tokens[rows], ids[cols])
    t2i, i2t = _recall_at_1(-nll.reshape(m, m))
    generated = cap.captions(pixels[:EXAMPLES])
    return {"dataset": ds.name, "perplexity": float(np.exp(total / count)),
            "nll_per_token": total / count, "tokens": int(count),
            "text_to_image_recall@1": t2i, "image_to_text_recall@1": i2t,
            "retrieval_images": m, "chance": 1.0 / m, "context_length": ctx,
            "examples": [{"reference": r, "generated": g}
                         for r, g in zip(refs[:EXAMPLES], generated, strict=True)],
            "skipped": dict(ds.stats), "seconds": time.perf_counter() - t0}
