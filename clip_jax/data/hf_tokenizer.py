"""Hugging Face tokenizers: a trainable byte-level BPE (``hf``) on ``tokenizers``, the wrapper
and training one on a caption corpus; and the tokenizer files of a Hugging Face model directory
read into (:func:`read_hf_tokenizer`) and written from (:func:`write_hf_tokenizer`) any of our
tokenizers. ``tokenizers`` is imported only where used.

    tok = train_tokenizer(captions, vocab_size=8192, out_dir="run/tokenizer")
    tok, note = read_hf_tokenizer("hf_model_dir", vocab_size=32000)
    note = write_hf_tokenizer("hf_export_dir", tok, context_length=64)
"""

from __future__ import annotations

import gzip
import json
import os
import string
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clip_jax import files
from clip_jax.data.clip_bpe import CLIP_VOCAB_FILE, ClipBPETokenizer
from clip_jax.data.sentencepiece_tokenizer import (
    SIGLIP_RECIPE,
    SPM_FILES,
    JSONTokenizer,
    RecipeTokenizer,
    SentencePieceTokenizer,
)
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
        files.make_dir(directory)
        files.write_atomic(directory / HF_FILE, self._tok.to_str())
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



# ---------------------------------------------------------------------------------------------
# Hugging Face model directories: their tokenizer files in, and out.

_HF_FILES = "vocab.json + merges.txt, tokenizer.json, spiece.model or tokenizer.model"


def _json_object(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _token_name(v: Any) -> str | None:
    """A special token as HF's configs write it: a string or an AddedToken dict."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def _clip_from_files(path: Path) -> ClipBPETokenizer:
    lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [ln for ln in lines[1:] if ln.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        gz = Path(tmp) / CLIP_VOCAB_FILE
        gz.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
        try:
            tok = ClipBPETokenizer(gz)
        except AssertionError:
            raise ValueError("merges.txt is not CLIP's BPE") from None
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    if vocab != tok.encoder:
        raise ValueError("vocab.json is not the vocabulary CLIP's merges.txt defines")
    return tok


def _recipe_overrides(conf: dict, eot: str, pad: str) -> dict:
    ctx = conf.get("model_max_length")
    ok = isinstance(ctx, int) and not isinstance(ctx, bool) and 0 < ctx <= 65536
    return {"eot": _token_name(conf.get("eos_token")) or eot,
            "pad": _token_name(conf.get("pad_token")) or pad,
            "context_length": ctx if ok else 64}


# transformers' text-encoder tokenizers (clip_jax.models.hf_text's towers): the start and end
# tokens their tokenizer.json's post-processor adds ([CLS] x [SEP], <s> x </s>, x </s>), padded
# with pad_token, no other cleaning (AutoTokenizer's ids)
ENCODER_CLASSES = ("XLMRoberta", "Roberta", "Bert", "T5", "MT5")


def _template_specials(backend) -> tuple[str | None, str | None]:
    """The special tokens a ``tokenizers`` post-processor puts before and after one text."""
    spec = json.loads(backend.to_str()).get("post_processor") or {}
    for proc in spec.get("processors", [spec]):  # a Sequence, or one
        kind = proc.get("type")
        if kind in ("RobertaProcessing", "BertProcessing"):
            return proc["cls"][0], proc["sep"][0]
        if kind == "TemplateProcessing" and proc.get("single"):
            names = [p.get("SpecialToken", {}).get("id") for p in proc["single"]]
            return names[0], names[-1]
    return None, None


def _encoder_tokenizer(path: Path, conf: dict) -> JSONTokenizer:
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path / HF_FILE))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{HF_FILE} is not a valid tokenizers JSON file: {e}") from None
    sot, eot = _template_specials(backend)
    if eot is None:
        sot = _token_name(conf.get("bos_token"))
    over = _recipe_overrides(conf, eot or "</s>", "<pad>")
    if eot is not None:
        over["eot"] = eot
    return JSONTokenizer(path / HF_FILE, lower=False, canonicalize="none", fix_text=False,
                         sot=sot, **over)


def read_hf_tokenizer(path: str | os.PathLike, vocab_size: int | None = None):
    """``(tokenizer or None, note or None)`` from a Hugging Face model directory's tokenizer files.

    Recognises CLIP's BPE (``vocab.json`` + ``merges.txt``), a clip_jax-trained
    ``tokenizer.json``, a text encoder's (``tokenizer_class`` of :data:`ENCODER_CLASSES`: XLM-R,
    MetaCLIP 2's XLM-V, RoBERTa, BERT, T5, mT5; the start and end tokens its post-processor
    adds, ``pad_token`` padding; T5's ``spiece.model`` alone: text ``</s>``), a Gemma-style
    ``tokenizer.json`` (SigLIP 2: lower case, ``<eos>``
    appended, ``<pad>`` padding, no ``<bos>``), SigLIP's ``spiece.model`` (``SiglipTokenizer``'s
    ``do_lower_case``, punctuation removed, ``</s>`` appended and padded, from
    ``tokenizer_config.json`` / ``special_tokens_map.json``) and Gemma's ``tokenizer.model``.
    The note (one line) says why no tokenizer was taken (none there, unreadable, or not
    ``vocab_size`` tokens when given), or what was assumed.
    """
    path = Path(path)
    conf = {**_json_object(path / "special_tokens_map.json"),
            **_json_object(path / "tokenizer_config.json")}
    cls_name = str(conf.get("tokenizer_class") or "")
    lower = conf.get("do_lower_case", True)
    lower = lower if isinstance(lower, bool) else True
    note = None
    try:
        if cls_name.startswith(ENCODER_CLASSES) and (path / HF_FILE).is_file():
            tok = _encoder_tokenizer(path, conf)  # XLM-R, MetaCLIP 2's XLM-V, BERT, T5...
        elif cls_name.startswith(("T5", "MT5")) and (path / SPM_FILES[0]).is_file():
            tok = SentencePieceTokenizer(path / SPM_FILES[0], lower=False, canonicalize="none",
                                         fix_text=False, sot=None,
                                         **_recipe_overrides(conf, "</s>", "<pad>"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = _clip_from_files(path)
        elif (path / HF_FILE).is_file():
            from tokenizers import Tokenizer

            try:
                backend = Tokenizer.from_file(str(path / HF_FILE))
            except Exception as e:  # tokenizers raises a bare Exception on bad JSON
                raise ValueError(f"{HF_FILE} is not a valid tokenizers JSON file: {e}") from None
            if backend.token_to_id(HF_EOT) is not None:
                tok = HFTokenizer(backend)
            elif backend.token_to_id("<|endoftext|>") is not None:
                return None, (f"{path / HF_FILE} is CLIP's tokenizer without vocab.json + "
                              f"merges.txt: pass tokenizer='clip_bpe:PATH' instead")
            else:
                tok = JSONTokenizer(path / HF_FILE, lower=lower, canonicalize="none",
                                    fix_text=False, sot=None,
                                    **_recipe_overrides(conf, "<eos>", "<pad>"))
                if conf.get("add_bos_token") is True:
                    note = (f"{path / 'tokenizer_config.json'} asks for a start token; SigLIP 2 "
                            f"was trained without one (as big_vision and open_clip tokenize): "
                            f"not added")
        elif (path / SPM_FILES[0]).is_file():
            over = _recipe_overrides(conf, "</s>", "</s>")
            if cls_name.startswith("Siglip"):
                tok = SentencePieceTokenizer(path / SPM_FILES[0], lower=lower,
                                             canonicalize="transformers", fix_text=False,
                                             sot=None, **over)
            else:
                tok = SentencePieceTokenizer(path / SPM_FILES[0], **{**SIGLIP_RECIPE, **over})
                note = (f"{path} has {SPM_FILES[0]} without a SiglipTokenizer config: "
                        f"tokenized as open_clip tokenizes SigLIP (ftfy, big_vision's "
                        f"canonicalisation, lower case)")
        elif (path / SPM_FILES[1]).is_file():
            tok = SentencePieceTokenizer(path / SPM_FILES[1], lower=lower, canonicalize="none",
                                         fix_text=False, sot=None,
                                         **_recipe_overrides(conf, "<eos>", "<pad>"))
        else:
            return None, f"no tokenizer files in {path} ({_HF_FILES})"
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"tokenizer files in {path} not used: {e}"
    if vocab_size is not None and tok.vocab_size != vocab_size:
        return None, (f"tokenizer files in {path} not used: {tok.vocab_size} tokens, the model "
                      f"has {vocab_size}")
    return tok, note


def _write_clip(out: Path, tok: ClipBPETokenizer, context_length: int) -> None:
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    files.write_json(out / "vocab.json", tok.encoder)
    files.write_atomic(out / "merges.txt",
                       "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    files.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
        "do_lower_case": True, "errors": "replace", **specials})
    files.write_json(out / "special_tokens_map.json", specials)


def _recipe_normalizers(tok: RecipeTokenizer) -> list:
    """The recipe as ``tokenizers`` normalizers (ftfy excepted), in ``prepare``'s order."""
    from tokenizers import Regex, normalizers

    steps = []
    if tok.canonicalize != "none":
        steps.append(normalizers.Replace("_" if tok.canonicalize == "big_vision" else "▁", " "))
        punct = "".join("\\" + c for c in string.punctuation)
        steps += [normalizers.Replace(Regex(f"[{punct}]"), ""),
                  normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if tok.lower:
        steps.append(normalizers.Lowercase())
    return steps


def _write_json_tokenizer(out: Path, tok: JSONTokenizer, context_length: int) -> None:
    from tokenizers import Tokenizer, normalizers, processors

    backend = Tokenizer.from_str(tok.backend.to_str())
    steps = _recipe_normalizers(tok)
    if backend.normalizer is not None:
        steps.append(backend.normalizer)
    backend.normalizer = normalizers.Sequence(steps) if steps else None
    specials = [tok.token(i) for i in (tok.sot_id, tok.eot_id) if i is not None]
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(specials[:-1] + ["$A", specials[-1]]),
        special_tokens=[(s, backend.token_to_id(s)) for s in specials])
    files.write_atomic(out / HF_FILE, backend.to_str())
    names = {"eos_token": tok.token(tok.eot_id), "pad_token": tok.token(tok.pad_id)}
    if tok.sot_id is not None:
        names["bos_token"] = tok.token(tok.sot_id)
    files.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
        "padding_side": "right", "do_lower_case": tok.lower, **names})
    files.write_json(out / "special_tokens_map.json", names)


def _write_spiece(out: Path, tok: SentencePieceTokenizer, context_length: int) -> None:
    files.write_atomic(out / SPM_FILES[0], tok.model_proto)
    names = {"eos_token": tok.token(tok.eot_id), "pad_token": tok.token(tok.pad_id),
             "unk_token": tok.token(tok.backend.unk_id())}
    files.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "SiglipTokenizer", "model_max_length": context_length,
        "do_lower_case": tok.lower, "padding_side": "right", **names})
    files.write_json(out / "special_tokens_map.json", names)


def write_hf_tokenizer(out_dir: str | os.PathLike, tokenizer, context_length: int) -> str | None:
    """Write the files transformers' ``AutoTokenizer`` loads for ``tokenizer`` into ``out_dir``
    (CLIP: ``vocab.json`` + ``merges.txt``; trained BPE and Gemma-style: ``tokenizer.json``, the
    recipe as its normalizer and post-processor; SigLIP's SentencePiece: ``spiece.model`` for
    ``SiglipTokenizer``). Returns a one-line note when HF's tokenizer will not give the same ids
    (or no files could be written), else None."""
    out = Path(out_dir)
    files.make_dir(out)
    kind = getattr(tokenizer, "kind", None)
    notes = []
    if kind == ClipBPETokenizer.kind:
        _write_clip(out, tokenizer, context_length)
    elif kind == HFTokenizer.kind:
        tokenizer.backend.save(str(out / HF_FILE))
        specials = {"bos_token": HF_SOT, "eos_token": HF_EOT, "pad_token": HF_EOT}
        files.write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
            **specials})
        files.write_json(out / "special_tokens_map.json", specials)
    elif kind == JSONTokenizer.kind:
        _write_json_tokenizer(out, tokenizer, context_length)
    elif kind == SentencePieceTokenizer.kind:
        if tokenizer.sot_id is not None or tokenizer.canonicalize == "none":
            return (f"no Hugging Face tokenizer files written: HF's SiglipTokenizer removes "
                    f"punctuation and adds no start token, this SentencePiece recipe "
                    f"{tokenizer.recipe} differs (clip_jax's tokenizer is saved as is)")
        _write_spiece(out, tokenizer, context_length)
        if tokenizer.canonicalize == "big_vision":
            notes.append("HF's SiglipTokenizer removes '_' where this tokenizer makes it a space")
    else:
        return f"no Hugging Face tokenizer files for a {type(tokenizer).__name__}"
    if getattr(tokenizer, "fix_text", False):
        notes.append("HF's tokenizer does not apply ftfy / HTML unescaping as this one does")
    return "; ".join(notes) or None
