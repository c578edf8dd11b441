"""Text tokenizers: CLIP's byte-level BPE (``clip_bpe``) and a trainable byte-level BPE (``hf``).

Both turn captions into fixed-length int32 rows, ``[sot] tokens... [eot] 0 0 ...``, with the end
token kept last when a caption is too long, and both put the end token at the largest id
(``eot_id == vocab_size - 1``): the text tower pools at ``argmax(token ids)``, as CLIP does.

    tok = load_tokenizer("clip_bpe:/path/bpe_simple_vocab_16e6.txt.gz")  # or "hf:PATH", or a dir
    ids = tok(["a photo of a cat", "a dog"], context_length=77)  # np.int32 (2, 77)
    tok.save("run/tokenizer")                                    # self-contained directory
    tok = train_tokenizer(captions, vocab_size=8192, out_dir="run/tokenizer")

``clip_bpe`` lives in :mod:`clip_jax.data.clip_bpe` (parity with OpenAI's ``simple_tokenizer.py``,
and why it is faster), ``hf`` and ``train_tokenizer`` in :mod:`clip_jax.data.hf_tokenizer`, the
shared padding and truncation in :mod:`clip_jax.data.tokenizer_base`. This module resolves a
spec into one of them and re-exports the names callers use.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from clip_jax.data.clip_bpe import (
    CLIP_EOT,
    CLIP_NUM_MERGES,
    CLIP_PATTERN,
    CLIP_SOT,
    CLIP_VOCAB_FILE,
    CLIP_VOCAB_SIZE,
    ClipBPETokenizer,
    basic_clean,
    bytes_to_unicode,
    clip_clean,
    whitespace_clean,
)
from clip_jax.data.hf_tokenizer import HF_EOT, HF_FILE, HF_SOT, HFTokenizer, train_tokenizer
from clip_jax.data.tokenizer_base import CONFIG_FILE

__all__ = [
    "CLIP_EOT", "CLIP_NUM_MERGES", "CLIP_PATTERN", "CLIP_SOT", "CLIP_VOCAB_FILE", "CLIP_VOCAB_SIZE",
    "CONFIG_FILE", "HF_EOT", "HF_FILE", "HF_SOT", "ClipBPETokenizer", "HFTokenizer",
    "TextTokenizer", "basic_clean", "bytes_to_unicode", "clip_clean", "load_tokenizer",
    "train_tokenizer", "whitespace_clean",
]

TextTokenizer = ClipBPETokenizer | HFTokenizer

_SPEC_HELP = ("expected 'clip_bpe:PATH_TO_bpe_simple_vocab_16e6.txt.gz', 'hf:PATH' (tokenizer.json "
              "or a directory containing it) or a directory written by tok.save()")


def _load_dir(directory: Path) -> TextTokenizer:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        if (directory / HF_FILE).is_file():
            return HFTokenizer.from_file(directory / HF_FILE)
        raise FileNotFoundError(f"tokenizer directory {directory} has no {CONFIG_FILE} "
                                f"(nor {HF_FILE}); {_SPEC_HELP}")
    try:
        config = json.loads(config_path.read_text())
        kind = config["kind"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path} is not a valid tokenizer config (needs a JSON object "
                         f"with a 'kind'): {e}") from e
    if kind == ClipBPETokenizer.kind:
        tok: TextTokenizer = ClipBPETokenizer(directory / config.get("vocab_file", CLIP_VOCAB_FILE))
    elif kind == HFTokenizer.kind:
        tok = HFTokenizer.from_file(directory / config.get("tokenizer_file", HF_FILE))
    else:
        raise ValueError(f"{config_path}: unknown tokenizer kind {kind!r} "
                         f"(expected 'clip_bpe' or 'hf')")
    for key in ("vocab_size", "sot_id", "eot_id"):
        if key in config and config[key] != getattr(tok, key):
            raise ValueError(f"{config_path} records {key}={config[key]} but the loaded "
                             f"tokenizer has {getattr(tok, key)}")
    return tok


def load_tokenizer(spec: str | os.PathLike | TextTokenizer) -> TextTokenizer:
    """``"clip_bpe:PATH"``, ``"hf:PATH"``, a directory saved by ``tok.save()``, or a path to a
    ``*.txt.gz`` CLIP vocabulary / ``tokenizer.json`` file. A tokenizer is returned as is."""
    if isinstance(spec, ClipBPETokenizer | HFTokenizer):
        return spec
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"tokenizer spec must be a string or path, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if not text:
        raise ValueError(f"empty tokenizer spec; {_SPEC_HELP}")
    kind, sep, rest = text.partition(":")
    if sep and kind in (ClipBPETokenizer.kind, HFTokenizer.kind):
        if not rest:
            raise ValueError(f"tokenizer spec {text!r} has no path after '{kind}:'; {_SPEC_HELP}")
        if kind == ClipBPETokenizer.kind:
            path = Path(rest).expanduser()
            return ClipBPETokenizer(path / CLIP_VOCAB_FILE if path.is_dir() else path)
        return HFTokenizer.from_file(Path(rest).expanduser())
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_dir(path)
    if path.is_file():
        if path.name.endswith(".gz"):
            return ClipBPETokenizer(path)
        if path.suffix == ".json":
            return HFTokenizer.from_file(path)
        raise ValueError(f"cannot tell the tokenizer kind of file {path}; {_SPEC_HELP}")
    if sep and re.fullmatch(r"[A-Za-z_]\w*", kind) and len(kind) > 1:
        raise ValueError(f"unknown tokenizer kind {kind!r} in spec {text!r}; {_SPEC_HELP}")
    raise FileNotFoundError(f"tokenizer spec {text!r}: no such file or directory; {_SPEC_HELP}")
