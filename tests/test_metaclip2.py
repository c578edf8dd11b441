"""MetaCLIP 2 (transformers ``MetaClip2Model``, ``model_type: metaclip_2``) in and out.

A random-init ``MetaClip2Model`` (small config, built offline) with an XLM-R-style multilingual
``tokenizer.json`` (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, as XLM-V's) goes through the CLI: import
to a bundle, export back to a transformers directory. Embeddings are compared with
transformers' own within 1e-4, the tokenizer's ids with transformers' tokenizer, the weights
loaded strictly. Skips without torch / transformers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import clip_jax
from clip_jax import export
from clip_jax.interop import hf as hf_lib

CAPTIONS = ["a photo of a cat", "a photo of a dog on the grass", "une photo d'un chat noir",
            "ein Foto von einem kleinen Hund", "una foto de un perro", "猫の写真",
            "фотография собаки", "a red car in the street", "zwei Katzen auf dem Sofa"]
TEXTS = ["a photo of a cat", "une photo d'un chien", "ein rotes Auto", "猫", "собака на траве",
         " ".join(["a very long caption"] * 8)]  # the last is truncated
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CTX = 16


def _tokenizer_dir(path):
    """An XLM-R-style tokenizer: Unigram over Metaspace pieces, ``<s> $A </s>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CAPTIONS * 4, UnigramTrainer(
        vocab_size=120, special_tokens=SPECIALS, unk_token="<unk>"))
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
        "model_max_length": CTX}))
    return tok.get_vocab_size()


def _hf_model(vocab: int):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    if not hasattr(transformers, "MetaClip2Model"):
        pytest.skip("this transformers has no MetaClip2Model")
    config = transformers.MetaClip2Config(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CTX,
                         bos_token_id=0, pad_token_id=1, eos_token_id=2, hidden_act="gelu"),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8,
                           hidden_act="gelu"),
        projection_dim=24)
    torch.manual_seed(0)
    model = transformers.MetaClip2Model(config).eval()
    with torch.no_grad():  # every tensor moved off its init (LN ones, zero biases hide layouts)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _hf_embeddings(model, images, enc):
    import torch

    def unit(x):
        x = x if torch.is_tensor(x) else x.pooler_output
        x = x.numpy()
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    with torch.no_grad():
        img = model.get_image_features(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
        txt = model.get_text_features(input_ids=torch.tensor(enc["input_ids"]),
                                      attention_mask=torch.tensor(enc["attention_mask"]))
    return unit(img), unit(txt)


def test_metaclip2_round_trips_through_the_cli_with_its_tokenizer(tmp_path, capsys):
    import torch
    import transformers

    src, bundle, out = tmp_path / "hf", tmp_path / "bundle", tmp_path / "out"
    vocab = _tokenizer_dir(src)
    model = _hf_model(vocab)
    model.save_pretrained(str(src))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(src))
    enc = hf_tok(TEXTS, padding="max_length", max_length=CTX, truncation=True)
    images = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
    ref_img, ref_txt = _hf_embeddings(model, images, enc)

    assert export.main(["import", "--from", "hf", "--src", str(src), "--out", str(bundle)]) == 0
    for path in (bundle, src):  # the bundle, and the HF directory itself as a model source
        m = clip_jax.load(path)
        assert m.cfg.text.eot_id == 2
        np.testing.assert_array_equal(m.tokenize(TEXTS), np.asarray(enc["input_ids"]))
        np.testing.assert_allclose(m.encode_image(images), ref_img, atol=1e-4)
        np.testing.assert_allclose(m.encode_text(TEXTS), ref_txt, atol=1e-4)

    assert export.main(["hf", "--checkpoint", str(bundle), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "metaclip_2"
    assert config["text_config"]["eos_token_id"] == 2
    assert config["text_config"]["pad_token_id"] == 1
    back, info = transformers.MetaClip2Model.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    theirs, mine = model.state_dict(), back.state_dict()
    assert sorted(theirs) == sorted(mine)
    for k in theirs:
        assert torch.equal(theirs[k], mine[k]), k
    back_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert back_tok(TEXTS, padding="max_length", max_length=CTX,
                    truncation=True)["input_ids"] == enc["input_ids"]
    img, txt = _hf_embeddings(back.eval(), images, enc)
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)


def test_a_model_pooling_at_id_2_is_refused_as_clipmodel(tmp_path, capsys):
    """transformers' CLIPModel reads eos_token_id 2 as its legacy argmax pooling: exporting
    such a model as ``clip`` would change its text embeddings, so it is refused, in one line,
    before anything is written."""
    from clip_jax import models

    cfg = models.get_model_config("tiny")
    cfg = cfg.replace(text={"eot_id": 2})
    assert hf_lib.clip_model_type(cfg) == "metaclip_2"
    assert hf_lib.clip_model_type(models.get_model_config("tiny")) == "clip"
    with pytest.raises(ValueError, match="legacy argmax"):
        hf_lib.clip_model_type(cfg, "clip")
    params = clip_jax.create_model("tiny")[1]
    with pytest.raises(ValueError, match="legacy argmax"):
        hf_lib.export_hf(tmp_path / "x", params, cfg, model_type="clip")
    assert not (tmp_path / "x").exists()
    d = hf_lib.hf_config(cfg)
    assert d["model_type"] == "metaclip_2" and d["architectures"] == ["MetaClip2Model"]
    assert hf_lib.model_config_from_hf(d).text.eot_id == 2  # read back: pooled at id 2
    d["model_type"] = "clip"  # CLIPConfig's eos 2: HF's legacy argmax, ours the same
    assert hf_lib.model_config_from_hf(d).text.eot_id is None
