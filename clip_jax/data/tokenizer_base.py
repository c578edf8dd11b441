"""What both tokenizers share: captions in, fixed-length int32 rows out.

``[sot] tokens... [eot] 0 0 ...``, with the end token kept last when a caption is too long.
Subclasses (:mod:`clip_jax.data.clip_bpe`, :mod:`clip_jax.data.hf_tokenizer`) provide
``_encode_batch``; :mod:`clip_jax.data.tokenizer` loads either from a spec.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    sot_id: int
    eot_id: int

    def _encode_batch(self, texts: list[str], limit: int | None) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        return self._encode_batch([text], None)[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return self._encode_batch(as_list(texts), None)

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
        """int32 ``(len(texts), context_length)``: ``[sot] tokens [eot]`` then zeros.

        Too long texts keep their first ``context_length - 2`` tokens and end with ``eot``.
        """
        texts = as_list(texts)
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start + end token), got "
                             f"{context_length}")
        body = context_length - 2
        out = np.zeros((len(texts), context_length), np.int32)
        for row, ids in zip(out, self._encode_batch(texts, body), strict=True):
            n = min(len(ids), body)
            row[0] = self.sot_id
            row[1:n + 1] = ids[:n]
            row[n + 1] = self.eot_id
        return out

    tokenize = __call__

    def _strip_specials(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        return ids

    def _write_config(self, directory: Path, **extra: Any) -> None:
        config = {"kind": self.kind, "vocab_size": self.vocab_size, "sot_id": self.sot_id,
                  "eot_id": self.eot_id, **extra}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

