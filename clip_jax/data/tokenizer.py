"""Text tokenizers: CLIP's byte-level BPE (``clip_bpe``), a trainable byte-level BPE (``hf``),
and SigLIP's SentencePiece models (``sentencepiece``: ``spiece.model`` / ``tokenizer.model``;
``json``: SigLIP 2's Gemma ``tokenizer.json``) with their text recipe.

All turn captions into fixed-length int32 rows, ``[sot] tokens... [eot] pad ...``, with the end
token kept last when a caption is too long. ``clip_bpe`` and ``hf`` put the end token at the
largest id and pad with 0 (CLIP pools at the end token); SigLIP's have no start token and pad with
the source's pad id (its text tower pools at the last position).

    tok = load_tokenizer("clip_bpe:/path/bpe_simple_vocab_16e6.txt.gz")  # or "hf:PATH", or a dir
    ids = tok(["a photo of a cat", "a dog"], context_length=77)  # np.int32 (2, 77)
    tok.save("run/tokenizer")                                    # self-contained directory
    tok = train_tokenizer(captions, vocab_size=8192, out_dir="run/tokenizer")

``clip_bpe`` lives in :mod:`clip_jax.data.clip_bpe` (parity with OpenAI's ``simple_tokenizer.py``,
and why it is faster), ``hf`` and ``train_tokenizer`` in :mod:`clip_jax.data.hf_tokenizer`, the
SentencePiece ones in :mod:`clip_jax.data.sentencepiece_tokenizer`, the shared padding and
truncation in :mod:`clip_jax.data.tokenizer_base`. This module resolves a spec into one of them,
finds a preset's standard tokenizer (:func:`preset_tokenizer`), and re-exports the names callers
use.
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
from clip_jax.data.hf_tokenizer import (
    HF_EOT,
    HF_FILE,
    HF_SOT,
    HFTokenizer,
    read_hf_tokenizer,
    train_tokenizer,
    write_hf_tokenizer,
)
from clip_jax.data.sentencepiece_tokenizer import (
    SIGLIP2_RECIPE,
    SIGLIP_RECIPE,
    SPM_FILES,
    JSONTokenizer,
    SentencePieceTokenizer,
    load_recipe_tokenizer,
)
from clip_jax.data.tokenizer_base import CONFIG_FILE

__all__ = [
    "CLIP_EOT", "CLIP_NUM_MERGES", "CLIP_PATTERN", "CLIP_SOT", "CLIP_VOCAB_FILE", "CLIP_VOCAB_SIZE",
    "CONFIG_FILE", "HF_EOT", "HF_FILE", "HF_SOT", "KINDS", "SIGLIP2_RECIPE", "SIGLIP_RECIPE",
    "ClipBPETokenizer", "HFTokenizer", "JSONTokenizer", "SentencePieceTokenizer", "TextTokenizer",
    "basic_clean", "bytes_to_unicode", "clip_clean", "load_tokenizer", "read_hf_tokenizer",
    "train_tokenizer", "whitespace_clean", "write_hf_tokenizer",
]

TextTokenizer = ClipBPETokenizer | HFTokenizer | SentencePieceTokenizer | JSONTokenizer
_CLASSES = (ClipBPETokenizer, HFTokenizer, SentencePieceTokenizer, JSONTokenizer)
KINDS = tuple(c.kind for c in _CLASSES)  # what a saved tokenizer_config.json's 'kind' may be

_SPEC_HELP = ("expected 'clip_bpe:PATH_TO_bpe_simple_vocab_16e6.txt.gz', 'hf:PATH' (tokenizer.json "
              "or a directory containing it), 'sentencepiece:PATH' (spiece.model / "
              "tokenizer.model), 'json:PATH' (a Gemma-style tokenizer.json) or a directory "
              "written by tok.save()")


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
    elif kind in (SentencePieceTokenizer.kind, JSONTokenizer.kind):
        tok = load_recipe_tokenizer(directory, config)
    else:
        raise ValueError(f"{config_path}: unknown tokenizer kind {kind!r} "
                         f"(expected one of {list(KINDS)})")
    for key in ("vocab_size", "sot_id", "eot_id", "pad_id"):
        if key in config and config[key] != getattr(tok, key):
            raise ValueError(f"{config_path} records {key}={config[key]} but the loaded "
                             f"tokenizer has {getattr(tok, key)}")
    return tok


def load_tokenizer(spec: str | os.PathLike | TextTokenizer) -> TextTokenizer:
    """``"clip_bpe:PATH"``, ``"hf:PATH"``, ``"sentencepiece:PATH"``, ``"json:PATH"``, a
    directory saved by ``tok.save()``, or a path to a ``*.txt.gz`` CLIP vocabulary,
    ``tokenizer.json`` (clip_jax-trained) or ``*.model`` SentencePiece file (SigLIP's recipe, or
    SigLIP 2's when the vocabulary has ``<eos>``). A tokenizer is returned as is."""
    if isinstance(spec, _CLASSES):
        return spec
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"tokenizer spec must be a string or path, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if not text:
        raise ValueError(f"empty tokenizer spec; {_SPEC_HELP}")
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        if not rest:
            raise ValueError(f"tokenizer spec {text!r} has no path after '{kind}:'; {_SPEC_HELP}")
        path = Path(rest).expanduser()
        if kind == ClipBPETokenizer.kind:
            return ClipBPETokenizer(path / CLIP_VOCAB_FILE if path.is_dir() else path)
        if kind == SentencePieceTokenizer.kind:
            if path.is_dir():
                path = next((path / f for f in SPM_FILES if (path / f).is_file()),
                            path / SPM_FILES[0])
            return SentencePieceTokenizer(path)
        if kind == JSONTokenizer.kind:
            return JSONTokenizer(path)
        return HFTokenizer.from_file(path)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_dir(path)
    if path.is_file():
        if path.name.endswith(".gz"):
            return ClipBPETokenizer(path)
        if path.suffix == ".json":
            return HFTokenizer.from_file(path)
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        raise ValueError(f"cannot tell the tokenizer kind of file {path}; {_SPEC_HELP}")
    if sep and re.fullmatch(r"[A-Za-z_]\w*", kind) and len(kind) > 1:
        raise ValueError(f"unknown tokenizer kind {kind!r} in spec {text!r}; {_SPEC_HELP}")
    raise FileNotFoundError(f"tokenizer spec {text!r}: no such file or directory; {_SPEC_HELP}")
