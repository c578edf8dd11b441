"""What every tokenizer shares: captions in, fixed-length int32 rows out.

``[sot] tokens... [eot] pad pad ...``, with the end token kept last when a caption is too long;
tokenizers without a start token (SigLIP's) give ``tokens... [eot] pad ...``. ``pad_id`` is 0
for CLIP and the trained BPE, the source's own for SentencePiece models (SigLIP pads with its end
token: the text tower pools at the last position, so the padding is part of the model).
Subclasses (:mod:`clip_jax.data.clip_bpe`, :mod:`clip_jax.data.hf_tokenizer`,
:mod:`clip_jax.data.sentencepiece_tokenizer`) provide ``_encode_batch``;
:mod:`clip_jax.data.tokenizer` loads any of them from a spec.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax import files

CONFIG_FILE = "tokenizer_config.json"


def as_list(texts: str | Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"tokenizer input must be str or a list of str, got {type(t).__name__}")
    return texts


class TokenizerBase:
    """Shared batching, padding and truncation. Subclasses provide ``_encode_batch``."""

    kind: str
    vocab_size: int
    sot_id: int | None  # None: no start token
    eot_id: int
    pad_id: int = 0
    context_length: int = 77  # the default row length of __call__

    def _encode_batch(self, texts: list[str], limit: int | None) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        return self._encode_batch([text], None)[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return self._encode_batch(as_list(texts), None)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int32 ``(len(texts), context_length)``: ``[sot] tokens [eot]`` then ``pad_id``.

        Too long texts keep their first ``context_length - 2`` tokens (``- 1`` without a start
        token) and end with ``eot``. ``context_length`` defaults to ``self.context_length``.
        """
        texts = as_list(texts)
        if context_length is None:
            context_length = self.context_length
        start = 0 if self.sot_id is None else 1
        if context_length < start + 1:
            raise ValueError(f"context_length must be >= {start + 1} "
                             f"({'start + end token' if start else 'end token'}), got "
                             f"{context_length}")
        body = context_length - start - 1
        out = np.full((len(texts), context_length), self.pad_id, np.int32)
        for row, ids in zip(out, self._encode_batch(texts, body), strict=True):
            n = min(len(ids), body)
            if start:
                row[0] = self.sot_id
            row[start:start + n] = ids[:n]
            row[start + n] = self.eot_id
        return out

    tokenize = __call__

    def _strip_specials(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and self.sot_id is not None and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        return ids

    def _write_config(self, directory: Path, **extra: Any) -> None:
        config = {"kind": self.kind, "vocab_size": self.vocab_size, "sot_id": self.sot_id,
                  "eot_id": self.eot_id, "pad_id": self.pad_id, **extra}
        files.write_json(directory / CONFIG_FILE, config, indent=2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

