"""Tokenizers: clip_bpe parity with OpenAI's simple_tokenizer.py, the trainable HF BPE, loading."""

import gzip
import html
import json
import pickle
import random
import unicodedata
from pathlib import Path

import ftfy
import numpy as np
import pytest
import regex

from clip_jax.data import tokenizer as T

BPE_VOCAB = Path(__file__).resolve().parents[1].parent / "shared/data/bpe_simple_vocab_16e6.txt.gz"


# ---------------------------------------------------------------------------------------------
# Reference: a faithful transcription of OpenAI CLIP's clip/simple_tokenizer.py (MIT License,
# Copyright (c) 2021 OpenAI), unoptimised, plus the open_clip-style tokenize() with truncation.
# Only change: the bare `except:` around `word.index` is `except ValueError:` (what it catches).


def ref_bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    cs = [chr(n) for n in cs]
    return dict(zip(bs, cs))


def ref_get_pairs(word):
    pairs = set()
    prev_char = word[0]
    for char in word[1:]:
        pairs.add((prev_char, char))
        prev_char = char
    return pairs


def ref_basic_clean(text):
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def ref_whitespace_clean(text):
    text = regex.sub(r"\s+", " ", text)
    text = text.strip()
    return text


class RefSimpleTokenizer:
    def __init__(self, bpe_path):
        self.byte_encoder = ref_bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = merges[1:49152 - 256 - 2 + 1]
        merges = [tuple(merge.split()) for merge in merges]
        vocab = list(ref_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        for merge in merges:
            vocab.append("".join(merge))
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        self.merges = merges

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = ref_get_pairs(word)

        if not pairs:
            return token + "</w>"

        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break

                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            new_word = tuple(new_word)
            word = new_word
            if len(word) == 1:
                break
            else:
                pairs = ref_get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        bpe_tokens = []
        text = ref_whitespace_clean(ref_basic_clean(text)).lower()
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens):
        text = "".join([self.decoder[token] for token in tokens])
        text = bytearray([self.byte_decoder[c] for c in text]).decode(
            "utf-8", errors="replace").replace("</w>", " ")
        return text

    def tokenize(self, texts, context_length=77):
        sot_token = self.encoder["<|startoftext|>"]
        eot_token = self.encoder["<|endoftext|>"]
        all_tokens = [[sot_token] + self.encode(text) + [eot_token] for text in texts]
        result = np.zeros((len(all_tokens), context_length), dtype=np.int64)
        for i, tokens in enumerate(all_tokens):
            if len(tokens) > context_length:
                tokens = tokens[:context_length]  # Truncate
                tokens[-1] = eot_token
            result[i, :len(tokens)] = tokens
        return result


# ---------------------------------------------------------------------------------------------

LONG_TEXT = ("A very long caption about a small brown dog, running across the beach at sunset "
             "while the waves crash; " * 12)

CORPUS = [
    # ascii, case, punctuation, numbers, contractions
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "It's a dog's life; they're here, we've gone, I'm sure you'll see he'd won't",
    "IT'S THEY'RE 'S 'T 're 'tis o'clock rock'n'roll",
    "Numbers: 1234567 3.14159 1,000,000 2nd 42nd 0x1F 1e-9 -17 +3",
    "hello,world...!?;:--()[]{}<>@#$%^*_+=~`|\\/ \"quoted\"",
    "price: $19.99 (50% off!) -- email me@example.com or visit https://example.org/a?b=c",
    # emoji, CJK, other scripts, accents
    "I ❤️ New York 🗽🍕 👨‍👩‍👧‍👦 👍🏽",
    "東京タワーの写真 北京烤鸭 서울의 밤",
    "Café naïve résumé Ångström Straße façade Œuvre São Paulo",
    "مرحبا بالعالم नमस्ते दुनिया สวัสดีชาวโลก Привет мир Γειά σου",
    "e\u0301 decomposed, İstanbul, ΣΑΣ, 'ſ long s, \u212a kelvin",
    # html entities (with and without '<', which turns off ftfy's own unescaping)
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;s &#x2019; &amp;amp; &nbsp;x &hellip;",
    "<b>bold</b> &amp; more &amp;lt;",
    "fish &amp chips &notanentity; & alone",
    # mojibake and other things ftfy fixes
    "The Mona Lisa doesnâ€™t have eyebrows. sÃ³ âœ” No problems",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ﬂubberiﬁc “smart” ‘quotes’",
    "a\x00b\x0bc\x1b[31mred\x1b[0m d\x7fe \x85 line\u2028sep \ufeffbom \ud83d lone \ud83d\ude00",
    # whitespace runs, empty
    "  lots   of\t\twhitespace\n\nand\r\nnewlines \x0c form feed  ",
    "",
    "   ",
    "\n\t",
    # literal special tokens (the reference maps them to their ids)
    "<|startoftext|> hi <|endoftext|> <|EndOfText|> <start_of_text>",
    # long words (heap BPE), long text (truncation)
    "supercalifragilisticexpialidocious" * 5 + " " + "ab" * 150 + " " + "!?" * 40,
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def vocab_path():
    if not BPE_VOCAB.exists():
        pytest.skip(f"CLIP BPE vocabulary not found at {BPE_VOCAB}")
    return BPE_VOCAB


@pytest.fixture(scope="module")
def ref(vocab_path):
    return RefSimpleTokenizer(vocab_path)


@pytest.fixture(scope="module")
def tok(vocab_path):
    return T.load_tokenizer(f"clip_bpe:{vocab_path}")


def _fuzz_texts(n, seed=0):
    """Random mixtures of ascii, latin, CJK, emoji, html entities, whitespace and mojibake."""
    rng = random.Random(seed)
    pieces = ["a", "the", "cat", "DOG", "'s", "'re", "'ll", "123", "4.5", "!", "?!", "...",
              "&amp;", "&lt;", "&#39;", "<", ">", "é", "ñ", "ß", "Å", "日本", "中文", "한국", "😀",
              "👍🏽", "❤️", "â€™", "Ã©", "\u00a0", " ", "  ", "\t", "\n", "-", "_", "/", "ﬁ", "Ｆ",
              "İ", "\u0301"]
    texts = []
    for _ in range(n):
        parts = [rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        parts += [chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(0, 4))]
        rng.shuffle(parts)
        texts.append("".join(parts))
    return texts


def test_clip_vocab_and_special_ids(tok, ref):
    assert tok.vocab_size == 49408 == len(ref.encoder)
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)
    assert tok.encoder == ref.encoder


def test_parity_corpus(tok, ref):
    for text in CORPUS:
        assert tok.encode(text) == ref.encode(text), text
    np.testing.assert_array_equal(tok(CORPUS), ref.tokenize(CORPUS))
    got = tok(CORPUS, context_length=20)
    np.testing.assert_array_equal(got, ref.tokenize(CORPUS, context_length=20))
    assert got.dtype == np.int32 and got.shape == (len(CORPUS), 20)


def test_parity_fuzz(tok, ref):
    texts = _fuzz_texts(300)
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]
    np.testing.assert_array_equal(tok(texts), ref.tokenize(texts))


def test_fast_clean_path_is_exact(tok, ref):
    """Plain printable ASCII skips ftfy and html.unescape: check that they change nothing."""
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\r", "\x0c", "  ", "&", "\x0b"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    for text in texts:
        assert T.clip_clean(text) == ref_whitespace_clean(ref_basic_clean(text)).lower(), text
    assert tok.encode_batch(texts[:500]) == [ref.encode(t) for t in texts[:500]]


def test_bpe_long_words_match_reference(tok, ref):
    """The O(n log n) BPE used for long words gives the reference's merges."""
    rng = random.Random(2)
    words = ["ab" * 40, "aaaa" * 30, "hello" * 20, "!?" * 50, "😀" * 20, "日本語" * 10]
    for _ in range(150):
        n = rng.randint(1, 80)
        letters = rng.choice(["ab", "abc", "etaoinshr", "thequickbrownfx"])
        words.append("".join(rng.choice(letters) for _ in range(n)))
    enc = ref.byte_encoder
    for w in words:
        symbols = "".join(enc[b] for b in w.encode("utf-8"))
        expected = ref.bpe(symbols).split(" ")
        assert tok.bpe(symbols) == expected, w
        word = list(symbols[:-1]) + [symbols[-1] + "</w>"]
        assert tok._bpe_heap(word) == expected, w


def test_truncation_keeps_eot_last(tok, ref):
    full = ref.encode(LONG_TEXT)
    assert len(full) > 200
    row = tok(LONG_TEXT)[0]
    assert row.shape == (77,) and row[0] == tok.sot_id and row[-1] == tok.eot_id
    assert row[1:76].tolist() == full[:75]
    assert int(np.argmax(row)) == 76
    # exactly full (75 tokens + sot + eot): nothing dropped; one more: the 76th is dropped
    words = ["cat"] * 76
    fit, over = tok([" ".join(words[:75]), " ".join(words)])
    assert fit[-1] == tok.eot_id and fit[-2] == tok.encode("cat")[0]
    np.testing.assert_array_equal(fit, over)
    np.testing.assert_array_equal(tok(LONG_TEXT, context_length=2), [[tok.sot_id, tok.eot_id]])
    with pytest.raises(ValueError, match="context_length"):
        tok("x", context_length=1)


def test_single_string_padding_and_decode(tok):
    ids = tok("A photo of a CAT.")
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    n = int(np.argmax(ids[0]))
    assert ids[0, n] == tok.eot_id and not ids[0, n + 1:].any()
    assert tok.decode(ids[0]) == "a photo of a cat ."
    assert tok.decode(tok.encode("café 日本 😀")) == "café 日本 😀"
    assert tok(["", "x"]).shape == (2, 77) and tok([]).shape == (0, 77)


def test_clip_save_load_pickle(tok, tmp_path):
    out = tok.save(tmp_path / "tok")
    config = json.loads((out / T.CONFIG_FILE).read_text())
    assert config["kind"] == "clip_bpe" and (out / T.CLIP_VOCAB_FILE).is_file()
    texts = CORPUS[:6]
    for again in (T.load_tokenizer(str(out)), T.load_tokenizer(out / T.CLIP_VOCAB_FILE),
                  pickle.loads(pickle.dumps(tok))):
        assert isinstance(again, T.ClipBPETokenizer)
        np.testing.assert_array_equal(again(texts), tok(texts))


def _hf_comparable(clean):
    """Text on which HF's tokenizer is expected to agree with CLIP's once cleaned as CLIP cleans.

    Left out: non-NFC text (HF normalises NFC after cleaning), "'ſ" (CLIP's regex is
    case-insensitive, so it matches the "'s" contraction; HF's is not), and unassigned code
    points or combining marks (the `regex` module and HF's Oniguruma disagree on the Unicode
    version / letter classes there).
    """
    return (unicodedata.normalize("NFC", clean) == clean and "ſ" not in clean
            and not any(unicodedata.category(c) in ("Cn", "Mn", "Mc", "Me") for c in clean))


def test_transformers_clip_tokenizer_parity(tok, ref, tmp_path):
    """An independent BPE implementation (HF's), fed text already cleaned as CLIP cleans it:
    HF's CLIPTokenizer skips html.unescape (and, from transformers 5, ftfy)."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.json").write_text(json.dumps(ref.encoder))
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ref.merges))
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    texts = [t for t in CORPUS + _fuzz_texts(300, seed=3)
             if "<|" not in t.lower() and len(ref.encode(t)) <= 75]
    compared = 0
    for text in texts:
        clean = ref_whitespace_clean(ref_basic_clean(text)).lower()
        if _hf_comparable(clean):
            ids = hf(clean)["input_ids"]
            assert ids == [tok.sot_id] + tok.encode(text) + [tok.eot_id], text
            compared += 1
    assert compared > 100


# --- the trainable byte-level BPE ------------------------------------------------------------


def _captions(n, seed=0):
    rng = random.Random(seed)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "cross"]
    patterns = ["striped", "dotted", "checkered", "solid"]
    where = ["on the left", "at the top", "in the middle", "near the corner",
             "on a grey background"]
    templates = ["a {c} {s}", "A {p} {c} {s} {w}.", "two {c} {s}s {w}", "a photo of a {p} {s}",
                 "{w}, a {c} {s}"]
    return [rng.choice(templates).format(c=rng.choice(colors), s=rng.choice(shapes),
                                         p=rng.choice(patterns), w=rng.choice(where))
            for _ in range(n)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_tok")


@pytest.fixture(scope="module")
def hf_tok(hf_dir):
    return T.train_tokenizer(iter(_captions(200)), vocab_size=500, out_dir=hf_dir)


def test_hf_special_ids_are_largest(hf_tok, hf_dir):
    assert isinstance(hf_tok, T.HFTokenizer)
    assert hf_tok.vocab_size == 500
    assert (hf_tok.sot_id, hf_tok.eot_id) == (498, 499)
    assert (hf_dir / "tokenizer.json").is_file()
    assert json.loads((hf_dir / T.CONFIG_FILE).read_text())["kind"] == "hf"
    caps = _captions(50, seed=1)
    ids = hf_tok(caps)
    assert ids.shape == (50, 77) and ids.dtype == np.int32
    assert (ids[:, 0] == 498).all()
    ends = ids.argmax(axis=1)
    assert (ids[np.arange(50), ends] == 499).all()
    assert ids.max() == 499 and ids[ids < 498].max() < 498


def test_hf_save_load_identical_and_decode(hf_tok, hf_dir, tmp_path):
    caps = _captions(30, seed=2) + ["  Émile's  RED\tStar!  ", "", "ünïcödé 日本 😀"]
    expected = hf_tok(caps)
    hf_tok.save(tmp_path / "again")
    for spec in (str(hf_dir), f"hf:{hf_dir}", f"hf:{hf_dir / 'tokenizer.json'}",
                 tmp_path / "again", hf_dir / "tokenizer.json"):
        np.testing.assert_array_equal(T.load_tokenizer(spec)(caps), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(hf_tok))(caps), expected)
    assert hf_tok.decode(expected[0]) == caps[0].lower()
    assert hf_tok.decode(expected[-3]) == "émile's red star!"
    assert hf_tok.decode(expected[-1]) == "ünïcödé 日本 😀"


def test_hf_truncation_and_tiny_corpus(tmp_path):
    tok = T.train_tokenizer(["a red star", "a blue circle"], vocab_size=400, out_dir=tmp_path)
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (400, 398, 399)  # padded with fillers
    row = tok("a red star " * 100, context_length=16)[0]
    assert row[0] == 398 and row[-1] == 399 and (row[1:-1] < 398).all()
    assert row[1:-1].tolist() == tok.encode("a red star " * 100)[:14]
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_tokenizer(["a"], vocab_size=258, out_dir=tmp_path / "x")
    with pytest.raises(TypeError, match="captions must be str"):
        T.train_tokenizer([1, 2], vocab_size=300, out_dir=tmp_path / "y")
    with pytest.raises(TypeError, match="must be str or a list of str"):
        tok([b"bytes"])


def test_hf_training_is_deterministic(tmp_path):
    caps = _captions(200, seed=5)
    a = T.train_tokenizer(caps, vocab_size=450, out_dir=tmp_path / "a")
    b = T.train_tokenizer(caps, vocab_size=450, out_dir=tmp_path / "b")
    files = [(tmp_path / d / "tokenizer.json").read_text() for d in "ab"]
    assert files[0] == files[1]
    np.testing.assert_array_equal(a(caps), b(caps))


# --- load_tokenizer errors -------------------------------------------------------------------


def test_load_tokenizer_errors(tmp_path, hf_tok):
    with pytest.raises(ValueError, match="empty tokenizer spec"):
        T.load_tokenizer("")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bogus'"):
        T.load_tokenizer("bogus:/x")
    with pytest.raises(ValueError, match="no path after 'clip_bpe:'"):
        T.load_tokenizer("clip_bpe:")
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        T.load_tokenizer(f"clip_bpe:{tmp_path / 'nope.txt.gz'}")
    with pytest.raises(FileNotFoundError, match="HF tokenizer file not found"):
        T.load_tokenizer(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        T.load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer_config.json"):
        T.load_tokenizer(tmp_path)
    with pytest.raises(TypeError):
        T.load_tokenizer(3)

    bad = tmp_path / "bad_kind"
    bad.mkdir()
    (bad / T.CONFIG_FILE).write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        T.load_tokenizer(bad)
    (bad / T.CONFIG_FILE).write_text("not json")
    with pytest.raises(ValueError, match="not a valid tokenizer config"):
        T.load_tokenizer(bad)

    not_clip = tmp_path / "not_clip.txt.gz"
    not_clip.write_bytes(gzip.compress(b"#version\na b\n"))
    with pytest.raises(ValueError, match="not a CLIP BPE vocabulary"):
        T.load_tokenizer(f"clip_bpe:{not_clip}")
    not_gz = tmp_path / "plain.txt.gz"
    not_gz.write_text("hello")
    with pytest.raises(ValueError, match="not a gzipped CLIP BPE merges file"):
        T.load_tokenizer(f"clip_bpe:{not_gz}")

    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{")
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        T.load_tokenizer(f"hf:{bad_json}")
    # an HF tokenizer whose special tokens are not the two largest ids is refused
    from tokenizers import AddedToken

    backend = hf_tok.backend.__class__.from_str(hf_tok.backend.to_str())
    backend.add_special_tokens([AddedToken("<pad>", special=True)])
    backend.save(str(tmp_path / "shifted.json"))
    with pytest.raises(ValueError, match="two largest ids"):
        T.load_tokenizer(f"hf:{tmp_path / 'shifted.json'}")


# --- a preset's standard tokenizer -----------------------------------------------------------


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No CLIP_JAX_* variable, empty Hugging Face caches, and fake open_clip / clip packages
    without the vocabulary shadowing any installed ones (their __init__ raises if imported)."""
    import importlib
    import sys

    for var in ("CLIP_JAX_BPE", "CLIP_JAX_SIGLIP_SPM", "CLIP_JAX_GEMMA_TOKENIZER", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    for package in ("open_clip", "clip"):
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(f"raise RuntimeError('{package} imported')\n")
        monkeypatch.delitem(sys.modules, package, raising=False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return tmp_path


def test_preset_tokenizer_from_env_and_explicit_argument(bare_machine, monkeypatch, vocab_path,
                                                         tok, hf_tok, hf_dir):
    assert T.preset_tokenizer("tiny") is None and T.preset_tokenizer("small-demo") is None
    monkeypatch.setenv("CLIP_JAX_BPE", str(vocab_path))
    found = T.preset_tokenizer("ViT-B-32")
    assert isinstance(found, T.ClipBPETokenizer) and found.vocab_path == vocab_path
    np.testing.assert_array_equal(found(CORPUS[:20]), tok(CORPUS[:20]))
    assert T.preset_tokenizer("ViT-B-32", tokenizer=str(hf_dir)).kind == "hf"  # argument first
    monkeypatch.setenv("CLIP_JAX_BPE", str(bare_machine / "nope.txt.gz"))
    with pytest.raises(ValueError, match="CLIP_JAX_BPE=.*nope.txt.gz: no such file"):
        T.preset_tokenizer("ViT-B-16")


def test_preset_tokenizer_error_names_every_way(bare_machine):
    with pytest.raises(ValueError) as e:
        T.preset_tokenizer("ViT-L-14")
    msg = str(e.value)
    assert "\n" not in msg and "'ViT-L-14'" in msg
    for way in ("CLIP_JAX_BPE", "open_clip", "openai/clip-*", "Hugging Face cache", "tokenizer="):
        assert way in msg
    with pytest.raises(ValueError, match="CLIP_JAX_SIGLIP_SPM.*google/siglip-\\*"):
        T.preset_tokenizer("ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="CLIP_JAX_GEMMA_TOKENIZER.*google/siglip2-\\*"):
        T.preset_tokenizer("ViT-B-16-SigLIP2")


def test_preset_tokenizer_from_a_hugging_face_cache(bare_machine, tok):
    snap = bare_machine / "hub/models--openai--clip-vit-base-patch32/snapshots/0123abcd"
    assert T.write_hf_tokenizer(snap, tok, 77) is None  # vocab.json + merges.txt, as HF's
    found = T.preset_tokenizer("ViT-B-32", vocab_size=49408)
    assert isinstance(found, T.ClipBPETokenizer)
    np.testing.assert_array_equal(found(CORPUS[:20]), tok(CORPUS[:20]))
    np.testing.assert_array_equal(T.load_tokenizer(snap)(CORPUS[:20]), tok(CORPUS[:20]))


def test_preset_tokenizer_from_an_installed_package_without_importing_it(bare_machine,
                                                                         vocab_path):
    """open_clip's package layout (its vocabulary beside __init__.py), found without importing
    open_clip (its __init__ raises here) or torch, in a fresh interpreter."""
    import os
    import shutil
    import subprocess
    import sys

    fake = bare_machine / "site" / "open_clip"
    shutil.copy(vocab_path, fake / T.CLIP_VOCAB_FILE)
    code = ("import sys; from clip_jax.data import tokenizer as T; "
            "tok = T.preset_tokenizer('ViT-B-32'); "
            "print(tok.vocab_path, tok.vocab_size, 'torch' in sys.modules, "
            "'open_clip' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bare_machine / "site"), str(repo)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(fake / T.CLIP_VOCAB_FILE), "49408", "False", "False"]
