"""A plain transformers text encoder directory (``save_pretrained`` of a random tiny
``XLMRobertaModel`` / ``T5EncoderModel`` with a tokenizer.json) as a model source: its encoder
gives transformers' hidden states through our tower, its tokenizer.json AutoTokenizer's ids,
and a run takes it as its text tower (``checkpoint.init_from_params='^text/transformer/'``),
locked for LiT (``optimizer.frozen``), training the projection only."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

from clip_jax import input_pipeline, models, sources, train
from clip_jax import params as params_lib
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.models import hf_text

torch = pytest.importorskip("torch", exc_type=ImportError)
transformers = pytest.importorskip("transformers", exc_type=ImportError)
pytest.importorskip("tokenizers", exc_type=ImportError)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

CAPTIONS = ["a photo of a cat", "a photo of a dog on the grass", "une photo d'un chat noir",
            "ein Foto von einem kleinen Hund", "una foto de un perro", "猫の写真",
            "фотография собаки", "a red car in the street", "zwei Katzen auf dem Sofa"]
TEXTS = ["a photo of a cat", "une photo d'un chien", "ein rotes Auto", "猫",
         " ".join(["a very long caption"] * 8)]  # the last is truncated
CTX = 16


def _tokenizer(path, t5: bool) -> int:
    """An XLM-R-style (``<s> $A </s>``, pad 1) or T5-style (``$A </s>``, pad 0) Unigram."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    specials = ["<pad>", "</s>", "<unk>"] if t5 else ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CAPTIONS * 4, UnigramTrainer(vocab_size=120, special_tokens=specials,
                                                         unk_token="<unk>"))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>" if t5 else "<s> $A </s>",
        special_tokens=[("</s>", eos)] + ([] if t5 else [("<s>", 0)]))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    names = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if not t5:
        names.update(bos_token="<s>", cls_token="<s>", sep_token="</s>")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer" if t5 else "XLMRobertaTokenizer",
        "model_max_length": CTX, **names}))
    return tok.get_vocab_size()


def _encoder_dir(tmp_path, kind: str):
    path = tmp_path / kind
    vocab = _tokenizer(path, kind == "t5")
    if kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
            relative_attention_max_distance=20))
    else:
        model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=CTX + 2, type_vocab_size=1,
            pad_token_id=1, layer_norm_eps=1e-5), add_pooling_layer=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval().save_pretrained(str(path))
    return path, model


@pytest.mark.parametrize("kind", ["xlm-roberta", "t5"])
def test_an_hf_encoder_directory_is_a_text_tower_source(tmp_path, kind):
    path, model = _encoder_dir(tmp_path, kind)
    src = sources.resolve(path)
    assert src.kind == "hf_text" and src.cfg.text.hf.model_type == kind
    assert set(src.params) == {"text"} and set(src.params["text"]) == {"transformer"}
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = hf_tok(TEXTS, padding="max_length", max_length=CTX, truncation=True)
    ids = src.tokenizer(TEXTS, context_length=CTX)
    np.testing.assert_array_equal(ids, np.asarray(enc["input_ids"]))
    np.testing.assert_array_equal(load_tokenizer(path)(TEXTS, CTX), ids)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
    cfg = src.cfg.replace(text={"context_length": CTX})
    got = hf_text.HFTextTower(cfg).apply({"params": src.params["text"]}, ids, tokens=True)[1]
    m = np.asarray(enc["attention_mask"], bool)
    diff = float(np.abs(np.asarray(got) - want.numpy())[m].max())
    assert diff < 1e-4, diff
    with pytest.raises(ValueError, match="init_from_params='\\^text/transformer/'"):
        sources.load_params(path, models.abstract_params(cfg))


@pytest.mark.slow  # ~20 s: builds and compiles a train step
def test_lit_with_a_locked_pretrained_text_tower(tmp_path):
    path, _ = _encoder_dir(tmp_path, "xlm-roberta")
    oc = tmp_path / "model.json"
    oc.write_text(json.dumps({"embed_dim": 24, "vision_cfg": {
        "image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"hf_model_name": str(path), "context_length": CTX}}))
    c = tiny.get_config()
    c.model.name = ""
    c.model.open_clip_config = str(oc)
    c.batch_size = 8
    c.checkpoint.init_from = str(path)
    c.checkpoint.init_from_params = "^text/transformer/"
    c.optimizer.frozen = ("^text/transformer/",)
    setup = train.build(c, jax.devices()[:1])
    state = train.init_from(setup, c)
    flat = params_lib.flatten_params(jax.device_get(state.params))
    want = params_lib.flatten_params(sources.resolve(path).params)
    for k, v in want.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(c.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, 8, 0.5, c.seed)
    for _ in range(2):
        state, _ = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
    after = params_lib.flatten_params(jax.device_get(state.params))
    for k, v in want.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)  # locked
    assert not np.array_equal(after["text/proj_fc1/kernel"], flat["text/proj_fc1/kernel"])


def test_a_t5_spiece_model_alone_tokenizes_as_transformers(tmp_path):
    """mT5 / T5 directories that ship only ``spiece.model``: text ``</s>``, ``<pad>`` padding,
    no other cleaning: transformers' T5Tokenizer ids."""
    spm = pytest.importorskip("sentencepiece", exc_type=ImportError)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=90, pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=3)
    d = tmp_path / "t5"
    d.mkdir()
    (tmp_path / "spiece.model").rename(d / "spiece.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "model_max_length": CTX, "extra_ids": 0}))
    enc = transformers.AutoTokenizer.from_pretrained(str(d))(
        TEXTS, padding="max_length", max_length=CTX, truncation=True)
    np.testing.assert_array_equal(load_tokenizer(d)(TEXTS, CTX), np.asarray(enc["input_ids"]))
