"""SigLIP's tokenizers: a SentencePiece model (``sentencepiece``: SigLIP's 32k ``spiece.model``,
Gemma's 256k ``tokenizer.model``) or a ``tokenizer.json`` (``json``: SigLIP 2's Gemma, through
Hugging Face ``tokenizers``), each with the model's text recipe, saved beside the vocabulary in
``tokenizer_config.json`` so that every bundle carries it:

- ``fix_text``: ftfy + HTML unescape, as open_clip's ``basic_clean``;
- ``canonicalize``: ``"none"``, ``"transformers"`` (HF ``SiglipTokenizer.canonicalize_text``:
  ASCII punctuation, ``_`` included, removed, whitespace runs collapsed, stripped) or
  ``"big_vision"`` (big_vision's and open_clip's: the same, but ``_`` first becomes a space);
- ``lower``: lower case (SigLIP and SigLIP 2 were trained on lower-cased text);
- ``sot_id`` (None: no start token), ``eot_id`` appended (kept last when truncating),
  ``pad_id`` filling the row (SigLIP pads with its end token ``</s>``, SigLIP 2 with ``<pad>``),
  ``context_length`` (64 for both).

    tok = SentencePieceTokenizer("spiece.model", **SIGLIP_RECIPE)
    ids = tok(["A photo of a cat."])  # np.int32 (1, 64): ids..., </s>, </s>, ...
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clip_jax import files
from clip_jax.data.clip_bpe import basic_clean
from clip_jax.data.tokenizer_base import TokenizerBase

try:  # a declared dependency, imported here so that a missing one is named when used
    import sentencepiece as spm
except ImportError:  # pragma: no cover
    spm = None

SPM_FILES = ("spiece.model", "tokenizer.model")  # SigLIP's name, Gemma's name
JSON_FILE = "tokenizer.json"
CANONICALIZE = ("none", "transformers", "big_vision")
RECIPE_KEYS = ("lower", "canonicalize", "fix_text", "sot", "eot", "pad", "context_length")

# Recipes by source, special tokens named by piece (resolved to ids against the vocabulary).
# SigLIP as open_clip tokenizes it (canonicalize='big_vision' on basic_clean'ed text, pad = eos).
SIGLIP_RECIPE = {"lower": True, "canonicalize": "big_vision", "fix_text": True, "sot": None,
                 "eot": "</s>", "pad": "</s>", "context_length": 64}
# SigLIP 2: Gemma's vocabulary, no <bos>, <eos> appended, padded with <pad> (open_clip's).
SIGLIP2_RECIPE = {"lower": True, "canonicalize": "big_vision", "fix_text": True, "sot": None,
                  "eot": "<eos>", "pad": "<pad>", "context_length": 64}

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def canonicalize_text(text: str, mode: str) -> str:
    """``"transformers"``: punctuation removed, whitespace collapsed, stripped (HF's
    ``SiglipTokenizer``, which also turns ``▁`` into a space first); ``"big_vision"``: ``_`` to
    a space first (big_vision's ``_canonicalize``, open_clip's ``canonicalize_text``)."""
    if mode == "none":
        return text
    text = text.replace("_" if mode == "big_vision" else "▁", " ")
    return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()


def _special_id(value: Any, token_to_id, vocab_size: int, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"tokenizer recipe {what}={value!r}: must be a token or an id")
    if isinstance(value, int):
        i = value
    elif isinstance(value, str):
        i = token_to_id(value)
        if i is None or i < 0:
            raise ValueError(f"tokenizer recipe {what}={value!r}: no such token in the "
                             f"vocabulary")
    else:
        raise ValueError(f"tokenizer recipe {what}={value!r}: must be a token or an id")
    if not 0 <= i < vocab_size:
        raise ValueError(f"tokenizer recipe {what}={value!r}: id {i} is outside the "
                         f"vocabulary (0..{vocab_size - 1})")
    return i


class RecipeTokenizer(TokenizerBase):
    """A vocabulary plus the text recipe (module docstring). Subclasses wrap the backend."""

    def _set_recipe(self, *, lower: bool = False, canonicalize: str = "none",
                    fix_text: bool = False, sot: int | str | None = None,
                    eot: int | str | None = None, pad: int | str | None = None,
                    context_length: int = 64) -> None:
        for name, v in (("lower", lower), ("fix_text", fix_text)):
            if not isinstance(v, bool):
                raise ValueError(f"tokenizer recipe {name}={v!r}: must be true or false")
        if canonicalize not in CANONICALIZE:
            raise ValueError(f"tokenizer recipe canonicalize={canonicalize!r}: must be one of "
                             f"{list(CANONICALIZE)}")
        if not (isinstance(context_length, int) and not isinstance(context_length, bool)
                and context_length >= 1):
            raise ValueError(f"tokenizer recipe context_length={context_length!r}: must be a "
                             f"positive integer")
        if eot is None:
            raise ValueError("tokenizer recipe needs an end token (eot)")
        self.lower, self.canonicalize, self.fix_text = lower, canonicalize, fix_text
        self.sot_id = _special_id(sot, self._token_to_id, self.vocab_size, "sot")
        self.eot_id = _special_id(eot, self._token_to_id, self.vocab_size, "eot")
        self.pad_id = _special_id(self.eot_id if pad is None else pad, self._token_to_id,
                                  self.vocab_size, "pad")
        self.context_length = context_length

    @property
    def recipe(self) -> dict:
        """The recipe with special tokens as ids (what ``save`` records)."""
        return {"lower": self.lower, "canonicalize": self.canonicalize,
                "fix_text": self.fix_text, "sot": self.sot_id, "eot": self.eot_id,
                "pad": self.pad_id, "context_length": self.context_length}

    def prepare(self, text: str) -> str:
        """The caption as the vocabulary sees it: cleaned, canonicalised, lower-cased."""
        if self.fix_text:
            text = basic_clean(text)
        text = canonicalize_text(text, self.canonicalize)
        return text.lower() if self.lower else text

    def token(self, i: int) -> str:
        raise NotImplementedError

    def _token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _ids(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], limit: int | None) -> list[list[int]]:
        ids = self._ids([self.prepare(t) for t in texts])
        return ids if limit is None else [i[:limit] for i in ids]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the vocabulary file and ``tokenizer_config.json`` (kind + recipe)."""
        directory = Path(directory)
        files.make_dir(directory)
        name = self._write_vocab(directory)
        self._write_config(directory, file=name, recipe=self.recipe)
        return directory

    def _write_vocab(self, directory: Path) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, {self.recipe})"


class SentencePieceTokenizer(RecipeTokenizer):
    """A SentencePiece model file (SigLIP's ``spiece.model``, Gemma's ``tokenizer.model``)
    through the ``sentencepiece`` package, with a text recipe (``SIGLIP_RECIPE`` by default,
    ``SIGLIP2_RECIPE`` when the vocabulary has ``<eos>``). Picklable (by the model's bytes)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike, **recipe: Any):
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.model_file = path
        self._load(path.read_bytes(), str(path))
        default = SIGLIP2_RECIPE if self._token_to_id("<eos>") is not None else SIGLIP_RECIPE
        self._set_recipe(**{**default, **recipe})

    def _load(self, proto: bytes, where: str) -> None:
        if spm is None:
            raise ImportError("the sentencepiece package is needed for SentencePiece "
                              "tokenizers: pip install sentencepiece")
        self._proto = proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except (RuntimeError, TypeError, OSError) as e:
            raise ValueError(f"{where} is not a SentencePiece model: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.vocab_size = self._sp.get_piece_size()

    def __getstate__(self) -> dict[str, Any]:
        return {"model_file": self.model_file, "proto": self._proto, "recipe": self.recipe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model_file = state["model_file"]
        self._load(state["proto"], str(self.model_file))
        self._set_recipe(**state["recipe"])

    @property
    def backend(self) -> Any:
        """The ``sentencepiece.SentencePieceProcessor``."""
        return self._sp

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def token(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def _token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # piece_to_id gives unk_id for an unknown piece
        return i if self._sp.id_to_piece(i) == token else None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        specials = {self.sot_id, self.eot_id, self.pad_id}
        return self._sp.decode([i for i in self._strip_specials(ids) if i not in specials])

    def _write_vocab(self, directory: Path) -> str:
        name = self.model_file.name if self.model_file.name in SPM_FILES else SPM_FILES[0]
        files.write_atomic(directory / name, self._proto)
        return name


class JSONTokenizer(RecipeTokenizer):
    """A Hugging Face ``tokenizers`` JSON file (SigLIP 2's Gemma ``tokenizer.json``) with a text
    recipe (``SIGLIP2_RECIPE`` by default); the file's own post-processor is not used: the
    recipe says which start/end tokens are added."""

    kind = "json"

    def __init__(self, tokenizer_file: str | os.PathLike, **recipe: Any):
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        if path.is_dir():
            path = path / JSON_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer JSON file not found: {path}")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a valid tokenizers JSON file: {e}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._set_recipe(**{**SIGLIP2_RECIPE, **recipe})

    @property
    def backend(self) -> Any:
        """The ``tokenizers.Tokenizer``."""
        return self._tok

    def token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def _token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(self._strip_specials(ids), skip_special_tokens=True).strip()

    def _write_vocab(self, directory: Path) -> str:
        self._tok.save(str(directory / JSON_FILE))
        return JSON_FILE


def load_recipe_tokenizer(directory: Path, config: Mapping) -> RecipeTokenizer:
    """A ``sentencepiece`` / ``json`` tokenizer from the directory ``save`` wrote."""
    recipe = config.get("recipe", {})
    if not isinstance(recipe, dict) or set(recipe) - set(RECIPE_KEYS):
        raise ValueError(f"{directory}: tokenizer recipe must be an object with keys among "
                         f"{list(RECIPE_KEYS)}, got {json.dumps(recipe)[:200]}")
    cls = SentencePieceTokenizer if config["kind"] == SentencePieceTokenizer.kind \
        else JSONTokenizer
    default = SPM_FILES[0] if cls is SentencePieceTokenizer else JSON_FILE
    name = config.get("file", default)
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{directory}: tokenizer file {name!r} must be a file name")
    return cls(directory / name, **recipe)
