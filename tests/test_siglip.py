"""SigLIP in and out: Hugging Face ``SiglipModel`` (SigLIP, SigLIP 2 at a fixed resolution with a
256k vocabulary, towers of different widths) and open_clip's timm SigLIP.

(a) the key maps alone, bit-exact both ways, without torch; (b) a random ``SiglipModel`` with
every weight perturbed and a non-zero logit scale and bias goes in through ``export import
--from hf``, gives transformers' image and text embeddings and logits, and goes back out through
``export hf`` into a directory ``SiglipModel.from_pretrained`` loads with no missing or unexpected
keys and the very same weights; (c) an open_clip ``CustomTextCLIP`` with a timm SigLIP trunk
imports with open_clip's embeddings. The torch parts skip where torch / transformers / open_clip
are absent.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import export, models
from clip_jax import params as params_lib
from clip_jax.interop import hf as hf_lib
from clip_jax.interop import hf_siglip, keymap

TOL = 1e-4
# Small SiglipConfigs (as transformers' config.json would hold them): SigLIP, SigLIP 2 at a
# fixed resolution (Gemma's 256k vocabulary, nothing else differs), and a text tower wider
# than the image tower (text head maps 48 -> projection_size 32), whose image tower also has its
# own activation (erf GELU, as timm's SigLIP trunks in open_clip).
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
_TEXT = {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "max_position_embeddings": 16}
VARIANTS = {
    "siglip": {"text_config": dict(_TEXT), "vision_config": dict(_VISION)},
    "siglip2": {"text_config": dict(_TEXT, vocab_size=256000), "vision_config": dict(_VISION)},
    "unequal": {"text_config": dict(_TEXT, hidden_size=48, intermediate_size=96,
                                    num_attention_heads=3, projection_size=32),
                "vision_config": dict(_VISION, hidden_act="gelu")},
}


def _cfg(variant: str, scan: bool = False) -> models.ModelConfig:
    return hf_siglip.model_config_from_hf({"model_type": "siglip", **VARIANTS[variant]}).replace(
        scan=scan)


def _random_state_dict(shapes, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in shapes.items()}


# ---------------------------------------------------------------------------------------------
# (a) the key maps, without torch


@pytest.mark.parametrize("fmt", keymap.FORMATS)
@pytest.mark.parametrize("scan", [False, True])
def test_siglip_key_maps_round_trip_exactly(fmt, scan):
    cfg = _cfg("unequal", scan)
    assert keymap.family(cfg) == "siglip" and cfg.embed_dim == 32 and cfg.text.width == 48
    assert (cfg.act, cfg.vision.act, cfg.text.act) == ("gelu_tanh", "gelu", None)
    shapes = keymap.external_shapes(cfg, fmt)
    sd = _random_state_dict(shapes)
    params = keymap.from_external(sd, cfg, fmt)
    back = keymap.to_external(params, cfg, fmt)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert np.array_equal(np.asarray(back[k]), sd[k]), k
    flat = params_lib.flatten_params(params)
    want = params_lib.flatten_params(models.abstract_params(cfg))
    assert sorted(flat) == sorted(want)
    assert all(flat[k].shape == want[k].shape for k in want)
    # the MAP head's q;k;v land where HF's nn.MultiheadAttention keeps them
    if fmt == "hf":
        w = sd["vision_model.head.attention.in_proj_weight"]
        q = flat["visual/map_head/attn/kernel_q"].reshape(32, 32).T
        v = flat["visual/map_head/attn/kernel_kv"][:, 1].reshape(32, 32).T
        assert np.array_equal(w[:32], q) and np.array_equal(w[64:], v)


def test_siglip_config_round_trips_and_bad_configs_are_refused():
    cfg = _cfg("unequal")
    d = hf_siglip.hf_config(cfg)
    assert d["text_config"]["projection_size"] == 32 and d["model_type"] == "siglip"
    assert (d["vision_config"]["hidden_act"], d["text_config"]["hidden_act"]) == (
        "gelu", "gelu_pytorch_tanh")
    assert hf_lib.model_config_from_hf(d) == cfg
    bad = {"model_type": "siglip", "text_config": dict(_TEXT, hidden_size=48),
           "vision_config": dict(_VISION)}
    with pytest.raises(ValueError, match="projection_size=48 differs from vision_config"):
        hf_lib.model_config_from_hf(bad)
    bad = {"model_type": "siglip", "text_config": dict(_TEXT, hidden_act="relu"),
           "vision_config": dict(_VISION)}
    with pytest.raises(ValueError, match="text_config.hidden_act='relu'"):
        hf_lib.model_config_from_hf(bad)
    with pytest.raises(ValueError, match="model_type='blip'.*'siglip2' .Siglip2Model, NaFlex"):
        hf_lib.model_config_from_hf({"model_type": "blip"})


def test_a_model_neither_format_holds_is_refused_before_writing(tmp_path):
    cfg = _cfg("siglip")
    params = jax.tree.map(np.asarray, models.CLIP(cfg).init(
        jax.random.key(0), *models.init_inputs(cfg))["params"])
    mixed = cfg.replace(vision={"pool": "gap"})
    mixed_params = jax.tree.map(np.asarray, models.CLIP(mixed).init(
        jax.random.key(0), *models.init_inputs(mixed))["params"])
    with pytest.raises(ValueError, match=r"neither CLIP- nor SigLIP-shaped.*vision.pool='gap'"):
        hf_lib.export_hf(tmp_path / "mixed", mixed_params, mixed)
    assert not (tmp_path / "mixed").exists()
    qk = cfg.replace(qk_norm=True)
    qk_params = jax.tree.map(np.asarray, models.CLIP(qk).init(
        jax.random.key(0), *models.init_inputs(qk))["params"])
    with pytest.raises(ValueError, match="SiglipModel has no qk-norm"):
        hf_lib.export_hf(tmp_path / "qk", qk_params, qk)
    assert not (tmp_path / "qk").exists()
    hf_lib.export_hf(tmp_path / "ok", params, cfg)
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["model_type"] == "siglip"


# ---------------------------------------------------------------------------------------------
# (b) transformers' SiglipModel -> CLI import -> clip_jax -> CLI export -> SiglipModel


def _hf_model(variant: str, seed: int = 0):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    v = VARIANTS[variant]
    config = transformers.SiglipConfig(text_config=v["text_config"],
                                       vision_config=v["vision_config"])
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # no zero biases / unit LN scales that would hide a layout mistake
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(10.0) + 0.3)  # HF's random init sets both to 0
        model.logit_bias.fill_(-3.7)
    return model


def _inputs(model, n: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    vc, tc = model.config.vision_config, model.config.text_config
    images = rng.standard_normal((n, vc.image_size, vc.image_size, 3)).astype(np.float32)
    ids = rng.integers(0, tc.vocab_size, (n, tc.max_position_embeddings)).astype(np.int32)
    ids[0, 5:] = 1  # a padded caption: SigLIP pools the last position, pad included
    ids[1, -1] = tc.vocab_size - 1
    return images, ids


def _hf_outputs(model, images, ids):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(),
                    pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def _assert_close(ours, theirs, label: str) -> None:
    for name, a, b in zip(("image", "text", "logits"), ours, theirs, strict=True):
        diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
        print(f"{label}: max |diff| {name} {diff:.2e}")
        assert diff < TOL, (label, name, diff)


def _ours(m: clip_jax.InferenceModel, images, ids):
    img, txt = m.encode_image(images), m.encode_text(ids)
    return img, txt, math.exp(m.logit_scale) * img @ txt.T + m.logit_bias


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_siglip_round_trip_through_the_cli(tmp_path, capsys, variant):
    import torch
    import transformers

    model = _hf_model(variant)
    src, bundle, out = tmp_path / "hf", tmp_path / "bundle", tmp_path / "out"
    model.save_pretrained(str(src))
    images, ids = _inputs(model)
    ref = _hf_outputs(model, images, ids)

    assert export.main(["import", "--from", "hf", "--src", str(src), "--out", str(bundle)]) == 0
    assert "no tokenizer" in capsys.readouterr().err  # the one-line note; the import works
    m = clip_jax.load(bundle)
    assert keymap.family(m.cfg) == "siglip" and m.cfg.text.vocab_size == (
        model.config.text_config.vocab_size)
    assert m.logit_scale == pytest.approx(math.log(10.0) + 0.3) and m.logit_bias == (
        pytest.approx(-3.7))
    _assert_close(_ours(m, images, ids), ref, f"HF {variant} -> clip_jax")

    # back out, from the bundle (and, for one variant, straight from the HF directory)
    again = src if variant == "siglip" else bundle
    assert export.main(["hf", "--checkpoint", str(again), "--out", str(out)]) == 0
    back, info = transformers.SiglipModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    theirs, mine = model.state_dict(), back.state_dict()
    assert sorted(theirs) == sorted(mine)
    for k in theirs:
        assert torch.equal(theirs[k], mine[k]), k
    _assert_close(_hf_outputs(back.eval(), images, ids), ref, f"clip_jax {variant} -> HF")
    assert json.loads((out / "preprocessor_config.json").read_text())[
        "image_processor_type"] == "SiglipImageProcessor"
