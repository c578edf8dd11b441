"""A synthetic (image, text) source so the train loop runs without any dataset.

``classes`` latent concepts each have a fixed low-frequency colour pattern (the image side) and a
fixed short token sequence (the text side). A sample draws a concept, renders its pattern with
Gaussian noise and emits its tokens. Matching pairs are learnable, so the contrastive loss falls
well below its chance value ln(batch). Sample ``i`` of global batch ``k`` is a pure function of
(seed, k, i), whatever the number of processes (process ``p`` makes rows ``p*b .. (p+1)*b-1``),
so a run on 2 hosts sees the same global batches as on 1, and the iterator state is just the
batch counter: resume is exact. With ``views`` (:mod:`clip_jax.data.views`) the batches of the
steps it names also carry self-distillation's extra views, from each sample's own generator.
"""

from __future__ import annotations

import numpy as np

from clip_jax.data import views as views_lib


class SyntheticSource:
    def __init__(self, batch_size: int, image_size: int, context_length: int, vocab_size: int,
                 classes: int = 256, noise: float = 0.5, seed: int = 0, process_index: int = 0,
                 views: views_lib.ViewSpec | None = None):
        if vocab_size < 4:
            raise ValueError(f"synthetic data needs vocab_size >= 4, got {vocab_size}")
        self.batch_size, self.image_size = batch_size, image_size
        self.context_length, self.vocab_size = context_length, vocab_size
        self.noise, self.seed, self.process_index = noise, seed, process_index
        self.views = views
        rng = np.random.default_rng([seed, 7919])
        grid = rng.normal(size=(classes, 4, 4, 3)).astype(np.float32)
        reps = -(-image_size // 4)
        self.patterns = np.repeat(np.repeat(grid, reps, 1), reps, 2)[:, :image_size, :image_size]
        max_len = max(1, min(8, context_length - 2))
        lengths = rng.integers(1, max_len + 1, size=classes)
        self.tokens = np.zeros((classes, context_length), np.int32)
        self.tokens[:, 0] = vocab_size - 2  # start of text
        for c, n in enumerate(lengths):
            self.tokens[c, 1 : 1 + n] = rng.integers(1, vocab_size - 2, size=n)
            self.tokens[c, 1 + n] = vocab_size - 1  # end of text: the largest id
        self.batch_index = 0
        self.stats = {"samples": 0}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        first = self.process_index * self.batch_size
        image = np.empty((self.batch_size, self.image_size, self.image_size, 3), np.float32)
        labels = np.empty(self.batch_size, np.int64)
        extra = self.views.allocate(self.batch_index, self.batch_size, np.float32) \
            if self.views is not None else {}
        for j in range(self.batch_size):
            rng = np.random.default_rng([self.seed, self.batch_index, first + j])
            labels[j] = rng.integers(0, len(self.patterns))
            noise = rng.standard_normal(image.shape[1:], dtype=np.float32)
            image[j] = self.patterns[labels[j]] + self.noise * noise
            if extra:
                views_lib.make(image[j], self.views, np.random.default_rng(
                    [self.seed, self.batch_index, first + j, views_lib.TAG]), extra, j)
        self.batch_index += 1
        self.stats["samples"] += self.batch_size
        return {"image": image, "text": self.tokens[labels], **extra}

    def get_state(self) -> dict:
        return {"batch_index": self.batch_index, "stats": dict(self.stats)}

    def set_state(self, state: dict) -> None:
        self.batch_index = int(state["batch_index"])
        self.stats = dict(state.get("stats", {"samples": 0}))
