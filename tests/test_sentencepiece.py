"""SigLIP's tokenizers against the reference tokenizers' ids: a SentencePiece model trained here
(transformers' SiglipTokenizer as HF's SigLIP processors call it), a Gemma-style tokenizer.json
built here (transformers' GemmaTokenizerFast as open_clip calls it for SigLIP 2), the text recipe
saved with the tokenizer, and the Hugging Face directory files in and out (AutoTokenizer)."""

import json
import pickle
import random

import numpy as np
import pytest

from clip_jax.data import tokenizer as T
from clip_jax.data.sentencepiece_tokenizer import canonicalize_text

spm = pytest.importorskip("sentencepiece")

WORDS = ("a photo of the cat dog bird car house tree red blue green small large running sitting "
         "on in with near city street beach mountain person people two three").split()
CAPTIONS = [
    "A photo of a Cat, sitting_on the street!",
    "Two DOGS -- running (fast) near: the beach...",
    "  a   red\tcar  ",
    "",
    "a photo of the " * 30,  # longer than 64 tokens: truncated, eos kept last
    "snake_case and CamelCase; 100% #tags @people",
    "café déjà vu",
]


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    return lines + ["snake case camel case tags people café déjà vu 100"]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A SentencePiece unigram model with T5's (SigLIP's) specials: <pad>=0, </s>=1, <unk>=2."""
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(_corpus()))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "spiece"), vocab_size=56,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    return d / "spiece.model"


@pytest.fixture(scope="module")
def gemma_json(tmp_path_factory):
    """A Gemma-style tokenizer.json: BPE with byte fallback, '▁' for spaces, specials
    <pad>=0 <eos>=1 <bos>=2 <unk>=3, and Gemma's own post-processor adding <bos>."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<eos>", "<bos>",
                                                                  "<unk>", "<mask>"],
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())  # byte-fallback pieces, as Gemma's vocabulary has them
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", 2)])
    path = tmp_path_factory.mktemp("gemma") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_canonicalize_matches_both_references():
    text = "A Cat_sitting, on the   STREET!"
    assert canonicalize_text(text, "big_vision").lower() == "a cat sitting on the street"
    assert canonicalize_text(text, "transformers").lower() == "a catsitting on the street"
    assert canonicalize_text(text, "none") == text


def test_siglip_matches_transformers_siglip_tokenizer(spiece, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.SiglipTokenizer(vocab_file=str(spiece))
    tok = T.SentencePieceTokenizer(spiece, lower=True, canonicalize="transformers",
                                   fix_text=False)
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (56, None, 1, 1)
    expected = ref([c.lower() for c in CAPTIONS], padding="max_length", max_length=64,
                   truncation=True)["input_ids"]
    ids = tok(CAPTIONS)
    assert ids.dtype == np.int32 and ids.shape == (len(CAPTIONS), 64)
    np.testing.assert_array_equal(ids, expected)
    assert ids[4, -1] == 1 and (ids[4] != 1).sum() == 63  # truncated, </s> kept last
    assert (ids[3] == 1).all()  # the empty caption: </s> then </s> padding
    # the recipe travels with the tokenizer: save/load, pickle, HF files through AutoTokenizer
    tok.save(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / T.CONFIG_FILE).read_text())
    assert cfg["kind"] == "sentencepiece" and cfg["recipe"]["canonicalize"] == "transformers"
    for again in (T.load_tokenizer(tmp_path / "ours"), pickle.loads(pickle.dumps(tok))):
        np.testing.assert_array_equal(again(CAPTIONS), ids)
    assert T.write_hf_tokenizer(tmp_path / "hf", tok, 64) is None
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    np.testing.assert_array_equal(auto(CAPTIONS, padding="max_length", max_length=64,
                                       truncation=True)["input_ids"], ids)
    back, note = T.read_hf_tokenizer(tmp_path / "hf", 56)
    assert note is None and back.recipe == tok.recipe
    np.testing.assert_array_equal(back(CAPTIONS), ids)
    np.testing.assert_array_equal(T.load_tokenizer(tmp_path / "hf")(CAPTIONS), ids)  # HF dir
    assert tok.decode(ids[0]) == "a photo of a cat sittingon the street"


def test_siglip_default_recipe_is_open_clips(spiece):
    """The default (preset) recipe: open_clip's SigLIP tokenizer, i.e. big_vision's
    canonicalisation ('_' becomes a space) on ftfy-cleaned text, </s> appended and padded."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.SiglipTokenizer(vocab_file=str(spiece))
    tok = T.SentencePieceTokenizer(spiece)
    assert (tok.canonicalize, tok.lower, tok.fix_text, tok.context_length) == (
        "big_vision", True, True, 64)
    # big_vision's canonicalisation then HF's (a no-op on it) = open_clip's SigLipTokenizer
    texts = [canonicalize_text(T.basic_clean(c), "big_vision").lower() for c in CAPTIONS]
    expected = ref(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
    np.testing.assert_array_equal(tok(CAPTIONS), expected)
    assert tok("Cat_sitting").tolist() != T.SentencePieceTokenizer(
        spiece, canonicalize="transformers")("Cat_sitting").tolist()
    np.testing.assert_array_equal(tok("&amp; a cat", context_length=8), tok("& a cat", 8))


def test_gemma_json_matches_transformers_fast_tokenizer(gemma_json, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.GemmaTokenizerFast(tokenizer_file=str(gemma_json), add_bos_token=False,
                                          add_eos_token=True, padding_side="right")
    for canon in ("none", "big_vision"):
        tok = T.JSONTokenizer(gemma_json, canonicalize=canon, fix_text=False)
        assert (tok.sot_id, tok.eot_id, tok.pad_id) == (None, 1, 0)
        texts = [canonicalize_text(c, canon).lower() for c in CAPTIONS]
        expected = ref(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
        ids = tok(CAPTIONS)
        np.testing.assert_array_equal(ids, expected)
        assert ids[4, -1] == 1 and ids[3, 0] == 1 and not ids[3, 1:].any()
        # HF files: the recipe becomes tokenizer.json's normalizer and post-processor
        out = tmp_path / canon
        assert T.write_hf_tokenizer(out, tok, 64) is None
        auto = transformers.AutoTokenizer.from_pretrained(str(out))
        np.testing.assert_array_equal(auto(CAPTIONS, padding="max_length", max_length=64,
                                           truncation=True)["input_ids"], ids)
        back, note = T.read_hf_tokenizer(out, tok.vocab_size)
        assert isinstance(back, T.JSONTokenizer) and note is None
        np.testing.assert_array_equal(back(CAPTIONS), ids)
        tok.save(tmp_path / f"ours_{canon}")
        np.testing.assert_array_equal(T.load_tokenizer(tmp_path / f"ours_{canon}")(CAPTIONS),
                                      ids)
    assert "é" in tok.decode(tok("café")[0])  # byte fallback round trip


def test_read_hf_tokenizer_recognises_sources(spiece, gemma_json, tmp_path):
    # SigLIP's HF directory: spiece.model + SiglipTokenizer config (do_lower_case honoured)
    d = tmp_path / "siglip"
    d.mkdir()
    d.joinpath("spiece.model").write_bytes(spiece.read_bytes())
    d.joinpath("tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SiglipTokenizer", "do_lower_case": False, "model_max_length": 16,
        "eos_token": {"content": "</s>"}, "pad_token": "</s>"}))
    tok, note = T.read_hf_tokenizer(d, 56)
    assert note is None and (tok.lower, tok.canonicalize, tok.context_length) == (
        False, "transformers", 16)
    assert tok("A cat").shape == (1, 16)
    _, note = T.read_hf_tokenizer(d, 32000)
    assert "56 tokens, the model has 32000" in note
    # no SiglipTokenizer config: open_clip's recipe, said in the note
    d.joinpath("tokenizer_config.json").unlink()
    tok, note = T.read_hf_tokenizer(d, 56)
    assert tok.canonicalize == "big_vision" and "open_clip" in note
    # Gemma's tokenizer.json (SigLIP 2): lower case, <eos> appended, <pad> padding, no <bos>
    g = tmp_path / "siglip2"
    g.mkdir()
    g.joinpath("tokenizer.json").write_bytes(gemma_json.read_bytes())
    g.joinpath("tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True}))
    tok, note = T.read_hf_tokenizer(g, T.JSONTokenizer(gemma_json).vocab_size)
    assert isinstance(tok, T.JSONTokenizer) and (tok.sot_id, tok.eot_id, tok.pad_id) == (
        None, 1, 0) and tok.lower and "start token" in note
    # Gemma's tokenizer.model through sentencepiece
    m = tmp_path / "gemma_spm"
    m.mkdir()
    m.joinpath("tokenizer.model").write_bytes(spiece.read_bytes())
    m.joinpath("special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>",
                                                                 "pad_token": "<pad>"}))
    tok, note = T.read_hf_tokenizer(m, 56)
    assert isinstance(tok, T.SentencePieceTokenizer) and (tok.eot_id, tok.pad_id) == (1, 0)
    # CLIP's vocab.json + merges.txt, and nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert T.read_hf_tokenizer(empty, 10)[0] is None
    assert "no tokenizer files" in T.read_hf_tokenizer(empty, 10)[1]
    empty.joinpath("tokenizer_config.json").write_text('{"tokenizer_class": "SiglipTokenizer"}')
    with pytest.raises(ValueError, match="no tokenizer files in"):
        T.load_tokenizer(empty)
    empty.joinpath("tokenizer.json").write_text("{")
    tok, note = T.read_hf_tokenizer(empty, 10)
    assert tok is None and "not a valid tokenizers JSON" in note
    from tokenizers import Tokenizer, models

    clip_json = Tokenizer(models.BPE())
    clip_json.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    clip_json.save(str(empty / "tokenizer.json"))
    tok, note = T.read_hf_tokenizer(empty)
    assert tok is None and "CLIP's tokenizer without vocab.json" in note


def test_recipe_errors_are_one_line(spiece, tmp_path):
    for kwargs, msg in [({"canonicalize": "weird"}, "canonicalize='weird'"),
                        ({"lower": "yes"}, "lower='yes'"),
                        ({"eot": "<nope>"}, "eot='<nope>': no such token"),
                        ({"pad": 500}, "pad=500: id 500 is outside"),
                        ({"context_length": 0}, "context_length=0")]:
        with pytest.raises(ValueError, match=msg):
            T.SentencePieceTokenizer(spiece, **kwargs)
    with pytest.raises(ValueError, match="context_length must be >= 1"):
        T.SentencePieceTokenizer(spiece)("x", context_length=0)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        T.load_tokenizer(bad)
    tok = T.SentencePieceTokenizer(spiece)
    tok.save(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / T.CONFIG_FILE).read_text())
    cfg["recipe"]["colour"] = "blue"
    (tmp_path / "t" / T.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="recipe must be an object with keys"):
        T.load_tokenizer(tmp_path / "t")
    np.testing.assert_array_equal(T.load_tokenizer(f"sentencepiece:{spiece}")("a cat"),
                                  tok("a cat"))


def test_siglip_presets_find_their_tokenizer(spiece, gemma_json, tmp_path, monkeypatch):
    for var in ("CLIP_JAX_SIGLIP_SPM", "CLIP_JAX_GEMMA_TOKENIZER", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # a Hugging Face cache of google/siglip-*: the preset's (open_clip's) recipe on its model
    snap = tmp_path / "hub/models--google--siglip-base-patch16-224/snapshots/abc"
    snap.mkdir(parents=True)
    (snap / "spiece.model").write_bytes(spiece.read_bytes())
    tok = T.preset_tokenizer("ViT-B-16-SigLIP", vocab_size=56)
    assert isinstance(tok, T.SentencePieceTokenizer) and tok.recipe == T.SentencePieceTokenizer(
        spiece).recipe
    np.testing.assert_array_equal(tok(CAPTIONS), T.SentencePieceTokenizer(spiece)(CAPTIONS))
    with pytest.raises(ValueError, match="no SigLIP's spiece.model"):  # another vocab size
        T.preset_tokenizer("ViT-B-16-SigLIP", vocab_size=32000)
    with pytest.raises(ValueError, match="CLIP_JAX_GEMMA_TOKENIZER"):  # siglip-* is not Gemma
        T.preset_tokenizer("ViT-B-16-SigLIP2")
    # the environment variables, SigLIP 2's Gemma tokenizer.json
    monkeypatch.setenv("CLIP_JAX_GEMMA_TOKENIZER", str(gemma_json.parent))
    tok = T.preset_tokenizer("ViT-SO400M-14-SigLIP2")
    assert isinstance(tok, T.JSONTokenizer) and (tok.eot_id, tok.pad_id, tok.sot_id) == (
        1, 0, None) and tok.canonicalize == "big_vision"
    monkeypatch.setenv("CLIP_JAX_SIGLIP_SPM", str(spiece))
    with pytest.raises(ValueError, match="CLIP_JAX_SIGLIP_SPM=.*56 tokens, the model 32000"):
        T.preset_tokenizer("ViT-B-16-SigLIP", vocab_size=32000)
    monkeypatch.setenv("CLIP_JAX_SIGLIP_SPM", str(tmp_path))
    with pytest.raises(ValueError, match="no SigLIP's spiece.model there"):
        T.preset_tokenizer("ViT-B-16-SigLIP")


def test_the_recipe_travels_in_a_bundle(spiece, tmp_path):
    """A bundle with a SentencePiece tokenizer: clip_jax.load tokenizes with the saved recipe
    (canonicalisation, </s> padding), at the model's context length."""
    import clip_jax
    from clip_jax import bundle, models
    from clip_jax import params as params_lib

    cfg = models.get_model_config("tiny")
    cfg = cfg.replace(text={"vocab_size": 56, "context_length": 12})
    params = params_lib.unflatten_params(
        {k: np.zeros(v.shape, v.dtype)
         for k, v in params_lib.flatten_params(models.abstract_params(cfg)).items()})
    tok = T.SentencePieceTokenizer(spiece, canonicalize="transformers", fix_text=False)
    path = bundle.save_bundle(tmp_path / "b", params, cfg, tok)
    _, _, loaded, _ = bundle.read_bundle(path)
    assert isinstance(loaded, T.SentencePieceTokenizer) and loaded.recipe == tok.recipe
    ids = clip_jax.load(path).tokenize(CAPTIONS)
    np.testing.assert_array_equal(ids, tok(CAPTIONS, context_length=12))
    assert ids.shape == (len(CAPTIONS), 12) and ids[3].tolist() == [1] * 12
