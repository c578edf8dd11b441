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

import importlib.util
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
    "basic_clean", "bytes_to_unicode", "clip_clean", "load_tokenizer", "preset_tokenizer",
    "read_hf_tokenizer", "train_tokenizer", "whitespace_clean", "write_hf_tokenizer",
]

TextTokenizer = ClipBPETokenizer | HFTokenizer | SentencePieceTokenizer | JSONTokenizer
_CLASSES = (ClipBPETokenizer, HFTokenizer, SentencePieceTokenizer, JSONTokenizer)
KINDS = tuple(c.kind for c in _CLASSES)  # what a saved tokenizer_config.json's 'kind' may be

_SPEC_HELP = ("expected 'clip_bpe:PATH_TO_bpe_simple_vocab_16e6.txt.gz', 'hf:PATH' (tokenizer.json "
              "or a directory containing it), 'sentencepiece:PATH' (spiece.model / "
              "tokenizer.model), 'json:PATH' (a Gemma-style tokenizer.json) or a directory "
              "written by tok.save()")


def _hf_dir(directory: Path) -> TextTokenizer:
    tok, note = read_hf_tokenizer(directory)
    if tok is None:
        raise ValueError(f"{note}; {_SPEC_HELP}")
    return tok


def _load_dir(directory: Path) -> TextTokenizer:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        if (directory / HF_FILE).is_file():
            return HFTokenizer.from_file(directory / HF_FILE)
        if any((directory / f).is_file() for f in ("vocab.json", *SPM_FILES)):
            return _hf_dir(directory)  # a Hugging Face model directory's tokenizer files
        raise FileNotFoundError(f"tokenizer directory {directory} has no {CONFIG_FILE} "
                                f"(nor {HF_FILE}); {_SPEC_HELP}")
    try:
        config = json.loads(config_path.read_text())
        hf_own = isinstance(config, dict) and "kind" not in config and "tokenizer_class" in config
        kind = None if hf_own else config["kind"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path} is not a valid tokenizer config (needs a JSON object "
                         f"with a 'kind'): {e}") from e
    if hf_own:  # Hugging Face's tokenizer_config.json beside its tokenizer files
        return _hf_dir(directory)
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


# ---------------------------------------------------------------------------------------------
# A preset's standard tokenizer, found on this machine (nothing is downloaded).

BPE_ENV = "CLIP_JAX_BPE"  # path to bpe_simple_vocab_16e6.txt.gz
SIGLIP_ENV = "CLIP_JAX_SIGLIP_SPM"  # SigLIP's spiece.model (or a directory holding it)
GEMMA_ENV = "CLIP_JAX_GEMMA_TOKENIZER"  # SigLIP 2's tokenizer.json / tokenizer.model (or a dir)
FITTED_PRESETS = ("tiny", "small-demo", "tiny-rn", "tiny-naflex")  # fitted per run: no standard one
_HF_REPOS = {"clip": ("openai--clip-*",), "siglip": ("google--siglip-*", "timm--ViT-*SigLIP*"),
             "siglip2": ("google--siglip2-*", "timm--ViT-*SigLIP2*")}


def _family(name: str) -> str | None:
    if name in FITTED_PRESETS:
        return None
    low = name.lower()
    return "siglip2" if "siglip2" in low else "siglip" if "siglip" in low else "clip"


def _hub_dirs() -> list[Path]:
    """Hugging Face hub caches, as huggingface_hub finds them."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    dirs.append(Path(xdg) / "huggingface" / "hub")
    return list(dict.fromkeys(d.expanduser() for d in dirs))


def _hf_snapshots(family: str) -> list[Path]:
    found = []
    for hub in _hub_dirs():
        for pattern in _HF_REPOS[family]:
            for snap in sorted(hub.glob(f"models--{pattern}/snapshots/*")):
                name = snap.parent.parent.name.lower()
                if ("siglip2" in name) == (family == "siglip2") and snap.is_dir():
                    found.append(snap)
    return found


def _package_vocab() -> Path | None:
    """CLIP's vocabulary inside an installed open_clip or OpenAI clip package, located with
    ``importlib.util.find_spec`` (importing open_clip would load torch)."""
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for d in (spec.submodule_search_locations or []) if spec else []:
            if (Path(d) / CLIP_VOCAB_FILE).is_file():
                return Path(d) / CLIP_VOCAB_FILE
    return None


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{var}={value}: no such file or directory")
    return path


def _checked(tok: TextTokenizer, vocab_size: int | None, where: str) -> TextTokenizer:
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise ValueError(f"{where}: its tokenizer has {tok.vocab_size} tokens, the model "
                         f"{vocab_size}")
    return tok


def _clip_preset_tokenizer(name: str, vocab_size: int | None) -> TextTokenizer:
    path = _env_path(BPE_ENV)
    if path is not None:
        tok = ClipBPETokenizer(path / CLIP_VOCAB_FILE if path.is_dir() else path)
        return _checked(tok, vocab_size, f"{BPE_ENV}={path}")
    path = _package_vocab()
    if path is not None:
        return _checked(ClipBPETokenizer(path), vocab_size, str(path))
    for snap in _hf_snapshots("clip"):
        tok, _ = read_hf_tokenizer(snap, vocab_size or CLIP_VOCAB_SIZE)
        if isinstance(tok, ClipBPETokenizer):
            return tok
    raise ValueError(f"no CLIP BPE vocabulary for {name!r}: set {BPE_ENV}=/path/to/"
                     f"{CLIP_VOCAB_FILE}, install open_clip (pip install open-clip-torch) or "
                     f"OpenAI's clip, keep an openai/clip-* tokenizer in the Hugging Face cache "
                     f"({_hub_dirs()[0]}), or pass tokenizer=")


def _siglip_file(path: Path, family: str) -> Path | None:
    names = ((HF_FILE,) + SPM_FILES[::-1]) if family == "siglip2" else SPM_FILES
    if path.is_file():
        return path
    return next((path / n for n in names if (path / n).is_file()), None)


def _siglip_tokenizer(file: Path, family: str) -> TextTokenizer:
    recipe = SIGLIP2_RECIPE if family == "siglip2" else SIGLIP_RECIPE
    if file.suffix == ".json":
        return JSONTokenizer(file, **recipe)
    return SentencePieceTokenizer(file, **recipe)


def _siglip_preset_tokenizer(name: str, family: str, vocab_size: int | None) -> TextTokenizer:
    var = GEMMA_ENV if family == "siglip2" else SIGLIP_ENV
    what = ("Gemma's tokenizer.json / tokenizer.model" if family == "siglip2"
            else "SigLIP's spiece.model")
    path = _env_path(var)
    if path is not None:
        file = _siglip_file(path, family)
        if file is None:
            raise ValueError(f"{var}={path}: no {what} there")
        return _checked(_siglip_tokenizer(file, family), vocab_size, f"{var}={path}")
    for snap in _hf_snapshots(family):
        if "i18n" in snap.parent.parent.name.lower() and "i18n" not in name.lower():
            continue
        file = _siglip_file(snap, family)
        if file is not None:
            try:
                tok = _siglip_tokenizer(file, family)
            except ValueError:
                continue
            if vocab_size is None or tok.vocab_size == vocab_size:
                return tok
    repo = "google/siglip2-*" if family == "siglip2" else "google/siglip-*"
    raise ValueError(f"no {what} for {name!r}: set {var}=/path/to/it, keep a {repo} tokenizer "
                     f"in the Hugging Face cache ({_hub_dirs()[0]}), or pass tokenizer=")


def preset_tokenizer(preset_name: str, tokenizer=None,
                     vocab_size: int | None = None) -> TextTokenizer | None:
    """The standard tokenizer of a preset, in this order: ``tokenizer`` (a spec for
    :func:`load_tokenizer`, or a tokenizer); for CLIP presets ``$CLIP_JAX_BPE``, the vocabulary
    file inside an installed ``open_clip`` or ``clip`` package (not imported: no torch), an
    ``openai/clip-*`` tokenizer in the Hugging Face cache; for SigLIP presets
    ``$CLIP_JAX_SIGLIP_SPM`` / a ``google/siglip-*`` cache, for SigLIP 2 ones
    ``$CLIP_JAX_GEMMA_TOKENIZER`` / a ``google/siglip2-*`` cache (open_clip's recipe: ftfy,
    big_vision's canonicalisation, end token, 64 positions). ``tiny`` and ``small-demo`` fit
    their vocabulary per run: None. Otherwise a one-line ValueError naming those ways.
    ``vocab_size`` (the model's) skips cached tokenizers of another size."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    family = _family(os.fspath(preset_name))
    if family is None:
        return None
    if family == "clip":
        return _clip_preset_tokenizer(preset_name, vocab_size)
    return _siglip_preset_tokenizer(preset_name, family, vocab_size)
