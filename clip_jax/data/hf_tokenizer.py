"""A trainable byte-level BPE (``hf``) on Hugging Face ``tokenizers``: the wrapper and training
one on a caption corpus. ``tokenizers`` is imported only where used (an optional dependency).

    tok = train_tokenizer(captions, vocab_size=8192, out_dir="run/tokenizer")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clip_jax.data.tokenizer_base import TokenizerBase

HF_FILE = "tokenizer.json"

# Trained (hf) tokenizers: special tokens named as in open_clip, given the two largest ids.
HF_SOT, HF_EOT = "<start_of_text>", "<end_of_text>"


class HFTokenizer(TokenizerBase):
    """A Hugging Face ``tokenizers`` byte-level BPE whose two largest ids are
    ``<start_of_text>`` (``vocab_size - 2``) and ``<end_of_text>`` (``vocab_size - 1``)."""

    kind = "hf"

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.sot_id = tokenizer.token_to_id(HF_SOT)
        self.eot_id = tokenizer.token_to_id(HF_EOT)
        if self.eot_id != self.vocab_size - 1 or self.sot_id != self.vocab_size - 2:
            raise ValueError(
                f"tokenizer needs {HF_SOT} and {HF_EOT} as its two largest ids "
                f"({self.vocab_size - 2}, {self.vocab_size - 1}), got {self.sot_id} and "
                f"{self.eot_id}: the text tower pools at argmax(token ids). Train one with "
                f"clip_jax.data.tokenizer.train_tokenizer().")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HFTokenizer:
        """Load ``tokenizer.json`` (or a directory containing it)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / HF_FILE
        if not path.is_file():
            raise FileNotFoundError(f"HF tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a valid tokenizers JSON file: {e}") from e
        return cls(tok)

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def _encode_batch(self, texts: list[str], limit: int | None) -> list[list[int]]:
        encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encodings = encode_batch(texts, add_special_tokens=False)
        if limit is None:
            return [e.ids for e in encodings]
        return [e.ids[:limit] for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(self._strip_specials(ids), skip_special_tokens=True).strip()

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / HF_FILE))
        self._write_config(directory, tokenizer_file=HF_FILE)
        return directory


def _caption_text(caption: str | bytes) -> str:
    if isinstance(caption, bytes):
        return caption.decode("utf-8", errors="replace")
    if not isinstance(caption, str):
        raise TypeError(f"captions must be str (or UTF-8 bytes), got {type(caption).__name__}")
    return caption


def train_tokenizer(captions: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                    *, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE on ``captions``, save it to ``out_dir`` and return it loaded.

    NFC + lower case + whitespace runs collapsed; GPT-2 pre-tokenization with a prefix space.
    The vocabulary is exactly ``vocab_size``: 256 byte symbols, merges, unreachable filler entries
    if the corpus cannot supply enough merges, then ``<start_of_text>`` and ``<end_of_text>``.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if vocab_size < 256 + 2 + 1:
        raise ValueError(f"vocab_size must be > 258 (256 byte symbols + 2 special tokens), "
                         f"got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2, min_frequency=min_frequency, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(map(_caption_text, captions), trainer=trainer)

    # Fill up to vocab_size - 2 with entries BPE can never produce (byte-level symbols contain no
    # plain space), so that the special tokens land on the two largest ids of the requested size.
    n = tok.get_vocab_size(with_added_tokens=True)
    if n < vocab_size - 2:
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for i in range(n, vocab_size - 2):
            vocab[f"<unused {i}>"] = i
        tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (HF_SOT, HF_EOT)])
    sot, eot = tok.token_to_id(HF_SOT), tok.token_to_id(HF_EOT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{HF_SOT} $A {HF_EOT}", special_tokens=[(HF_SOT, sot), (HF_EOT, eot)])
    HFTokenizer(tok).save(out_dir)  # validates the special ids
    return HFTokenizer.from_file(out_dir)

