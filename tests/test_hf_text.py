"""Hugging Face text towers (clip_jax.models.hf_text) against open_clip's ``HFTextEncoder`` and
transformers' encoders, all random-init and shrunk, built offline.

(a) open_clip's ``xlm-roberta-base-ViT-B-32``, ``roberta-ViT-B-32`` and ``mt5-base-ViT-B-32``
JSONs (and a BERT one), their ``hf_model_name`` a local directory holding a tiny transformers
config: the weights open_clip saves import with its text embeddings, and export back bit-exact,
strict in ``open_clip.create_model(pretrained=FILE)``; (b) every pooler and projection against a
NumPy reading of open_clip's; (c) a plain transformers encoder directory initialises the text
tower (``checkpoint.init_from_params``) with its tokenizer.json's ids.
"""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import jax
import numpy as np
import pytest

from clip_jax import models
from clip_jax import params as params_lib
from clip_jax.interop import keymap
from clip_jax.interop import open_clip as oc_io
from clip_jax.models import hf_text

try:
    import open_clip
    import safetensors.torch
    import torch
    import transformers
    from open_clip.push_to_hf_hub import save_config_for_hf
except Exception as e:  # ImportError, or a torchvision built for another torch
    pytest.skip(f"open_clip / transformers do not import ({type(e).__name__}: {e})",
                allow_module_level=True)

TOL = 1e-4
VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
_BERTISH = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=40)
HF_CONFIGS = {
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**_BERTISH, type_vocab_size=1,
                                                         layer_norm_eps=1e-5, pad_token_id=1),
    "roberta": lambda: transformers.RobertaConfig(**_BERTISH, type_vocab_size=1, pad_token_id=1),
    "bert": lambda: transformers.BertConfig(**_BERTISH, hidden_act="gelu_new"),
    "mt5": lambda: transformers.MT5Config(vocab_size=120, d_model=32, d_kv=6, d_ff=40,
                                          num_layers=2, num_heads=4,
                                          relative_attention_num_buckets=8,
                                          relative_attention_max_distance=20),
    "t5": lambda: transformers.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=40,
                                        num_layers=2, num_heads=4),
}
# (HF model type, open_clip JSON extras): the shipped JSONs' choices, and the other poolers and
# projections (max_pooler: see test_poolers)
VARIANTS = {
    "xlm-roberta-base-ViT-B-32": ("xlm-roberta", {"hf_pooler_type": "mean_pooler"}),
    "roberta-ViT-B-32": ("roberta", {"hf_pooler_type": "mean_pooler", "quick_gelu": True}),
    "mt5-base-ViT-B-32": ("mt5", {"hf_pooler_type": "mean_pooler"}),
    "roberta-cls-linear": ("roberta", {"hf_pooler_type": "cls_pooler", "hf_proj_type": "linear"}),
    "bert-cls-hidden-none": ("bert", {"hf_pooler_type": "cls_last_hidden_state_pooler",
                                      "hf_proj_type": None, "embed_dim": 32}),
    "mt5-cls-linear": ("mt5", {"hf_pooler_type": "cls_pooler", "hf_proj_type": "linear"}),
}
_registered = itertools.count()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hf_dir(tmp_path: Path, kind: str) -> Path:
    d = tmp_path / f"hf-{kind}"
    HF_CONFIGS[kind]().save_pretrained(d)
    return d


def _oc_json(tmp_path: Path, variant: str) -> dict:
    kind, extra = VARIANTS[variant]
    extra = dict(extra)
    top = {k: extra.pop(k) for k in ("quick_gelu", "embed_dim") if k in extra}
    d = str(_hf_dir(tmp_path, kind))
    return {"embed_dim": top.get("embed_dim", 24), **{k: v for k, v in top.items()
                                                      if k != "embed_dim"},
            "vision_cfg": dict(VISION),
            "text_cfg": {"hf_model_name": d, "hf_tokenizer_name": d, "context_length": 12,
                         **extra}}


def _register(tmp_path: Path, model_cfg: dict) -> str:
    name = f"clip-jax-hf-text-{next(_registered)}"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)
    return name


def _ids(cfg: models.ModelConfig, n: int = 5, seed: int = 0) -> np.ndarray:
    """Rows of a start id, random text ids and padding (one row unpadded, one length 1)."""
    t = cfg.text
    rng = np.random.default_rng(seed)
    ids = np.full((n, t.context_length), t.pad_id, np.int32)
    for i, length in enumerate([t.context_length, 1, 3, 7, 10][:n]):
        ids[i, :length] = rng.integers(t.pad_id + 1, t.vocab_size, length)
        ids[i, 0] = 0 if t.pad_id else 2
    return ids


def _init(cfg, seed: int) -> dict:
    """Random float32 params of ``cfg`` (shapes from eval_shape: no init to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32),
                        models.abstract_params(cfg))


def _ours(cfg, params, ids) -> np.ndarray:
    fn = jax.jit(lambda p, x: models.CLIP(cfg).apply({"params": p}, x, normalize=False,
                                                     method=models.CLIP.encode_text))
    return np.asarray(fn(params, ids))


def _open_clip_model(name: str, **kw):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained_text=False, **kw).eval()
    with torch.no_grad():  # no zero biases / unit LN scales that would hide a layout mistake
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_open_clip_hf_text_tower_imports_and_exports_exactly(tmp_path, variant):
    oc_cfg = _oc_json(tmp_path, variant)
    name = _register(tmp_path, oc_cfg)
    model = _open_clip_model(name)
    assert type(model.text).__name__ == "HFTextEncoder"
    hub = tmp_path / "hub"
    hub.mkdir()
    sd = model.state_dict()
    safetensors.torch.save_file(sd, hub / oc_io.OPEN_CLIP_WEIGHTS)
    save_config_for_hf(model, hub / oc_io.OPEN_CLIP_CONFIG, model_config=oc_cfg)
    cfg, params, _, _ = oc_io.import_open_clip(hub)
    assert cfg.text.family == "hf" and cfg == models.from_open_clip_config(oc_cfg)
    ids = _ids(cfg)
    with torch.no_grad():
        want = model.encode_text(torch.from_numpy(ids).long()).numpy()
    got = _ours(cfg, params, ids)
    diff = float(np.abs(got - want).max())
    print(f"{variant}: max |diff| text {diff:.2e}")
    assert diff < TOL, diff
    # back: the same state dict, bit for bit, and open_clip loads our export strictly
    back = keymap.to_external(params, cfg, "open_clip")
    assert sorted(back) == sorted(sd)
    for k, v in back.items():
        assert np.array_equal(np.asarray(v), sd[k].numpy()), k
    out = oc_io.export_open_clip(tmp_path / "export", params, cfg)
    exported = json.loads((out / oc_io.OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    again = open_clip.create_model(_register(tmp_path, exported),
                                   pretrained=str(out / oc_io.OPEN_CLIP_WEIGHTS)).eval()
    with torch.no_grad():
        assert float(np.abs(again.encode_text(torch.from_numpy(ids).long()).numpy()
                            - got).max()) < TOL


@pytest.mark.parametrize("variant", ["mt5-base-ViT-B-32", "xlm-roberta-base-ViT-B-32"])
def test_scanned_tower_equals_unrolled(tmp_path, variant):
    c = models.from_open_clip_config(_oc_json(tmp_path, variant))
    p = _init(c, 1)
    stacked = params_lib.unflatten_params(params_lib.stack_layers(params_lib.flatten_params(p)))
    ids = _ids(c)
    np.testing.assert_allclose(_ours(c.replace(scan=True), stacked, ids), _ours(c, p, ids),
                               atol=1e-6)


def test_poolers_and_projections_follow_open_clip(tmp_path):
    """Each pooler on the encoder's hidden states (transformers' XLMRobertaModel, the same
    weights) and each projection, against NumPy: max_pooler as open_clip means it (its own
    raises on the integer mask)."""
    base = models.from_open_clip_config(_oc_json(tmp_path, "xlm-roberta-base-ViT-B-32"))
    p = _init(base, 2)
    ids = _ids(base)
    mask = ids != base.text.pad_id
    hidden = np.asarray(models.CLIP(base).apply(
        {"params": p}, ids, method=lambda m, x: m.text(x, tokens=True)[1]))
    with pytest.raises(RuntimeError):  # open_clip 3.3.0's MaxPooler: masked_fill with a long mask
        open_clip.hf_model.MaxPooler()(type("O", (), {"last_hidden_state": torch.zeros(
            1, 2, 3)})(), torch.ones(1, 2, dtype=torch.long))
    m = mask[..., None]
    want = {"mean_pooler": (hidden * m).sum(1) / m.sum(1),
            "max_pooler": np.where(m, hidden, -np.inf).max(1),
            "cls_last_hidden_state_pooler": hidden[:, 0]}
    for pooler, pooled in want.items():
        cfg = base.replace(text={"hf": {**base.text.hf.__dict__, "pooler": pooler,
                                        "proj": "linear"}})
        q = {**p, "text": {"transformer": p["text"]["transformer"],
                           "proj": {"kernel": p["text"]["proj_fc1"]["kernel"][:, :24]}}}
        np.testing.assert_allclose(_ours(cfg, q, ids), pooled @ q["text"]["proj"]["kernel"],
                                   atol=1e-5, err_msg=pooler)


def test_unsupported_hf_configs_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="model_type='gpt2' is not a text tower"):
        hf_text.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        hf_text.from_hf_config({**hf_text.HUB["roberta-base"],
                                "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="neither a directory with a config.json"):
        models.from_open_clip_config({"embed_dim": 8, "vision_cfg": VISION,
                                      "text_cfg": {"hf_model_name": "nobody/nothing"}})
    cfg = models.from_open_clip_config(_oc_json(tmp_path, "xlm-roberta-base-ViT-B-32"))
    with pytest.raises(ValueError, match="Hugging Face format cannot hold.*family='hf'"):
        keymap.external_shapes(cfg, "hf")
    with pytest.raises(ValueError, match="model.text.hf.pooler='attn'"):
        cfg.replace(text={"hf": {**cfg.text.hf.__dict__, "pooler": "attn"}})
    with pytest.raises(ValueError, match="proj='none': the text width 32 must equal"):
        cfg.replace(text={"hf": {**cfg.text.hf.__dict__, "proj": "none"}})


def test_round_trip_through_the_cli(tmp_path):
    """``export import --from open_clip`` of open_clip's xlm-roberta-base-ViT-B-32 (shrunk) to a
    bundle, ``clip_jax.load`` gives open_clip's text embeddings, and ``export open_clip`` writes
    open_clip's state dict back unchanged."""
    import clip_jax
    from clip_jax import export

    oc_cfg = _oc_json(tmp_path, "xlm-roberta-base-ViT-B-32")
    model = _open_clip_model(_register(tmp_path, oc_cfg))
    hub, bundle, out = tmp_path / "hub", tmp_path / "bundle", tmp_path / "out"
    hub.mkdir()
    sd = model.state_dict()
    safetensors.torch.save_file(sd, hub / oc_io.OPEN_CLIP_WEIGHTS)
    save_config_for_hf(model, hub / oc_io.OPEN_CLIP_CONFIG, model_config=oc_cfg)
    assert export.main(["import", "--from", "open_clip", "--src", str(hub), "--out",
                        str(bundle)]) == 0
    m = clip_jax.load(str(bundle))
    ids = _ids(m.cfg)
    with torch.no_grad():
        want = model.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()
    assert float(np.abs(m.encode_text(ids) - want).max()) < TOL
    assert export.main(["open_clip", "--checkpoint", str(bundle), "--out", str(out)]) == 0
    back = safetensors.torch.load_file(out / oc_io.OPEN_CLIP_WEIGHTS)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("kind", ["xlm-roberta", "mt5"])
def test_text_tower_flops_and_layer_ids(kind):
    """The family's analytic forward FLOPs against XLA's count of the text tower (unrolled;
    XLA adds the element-wise work: a few %), T5's attention width heads * d_kv != width and its
    gated MLP included; layer ids: embeddings 0, block i i + 1, the projection L + 1."""
    import jax.numpy as jnp

    from clip_jax import flops, optimizer

    hf = {"xlm-roberta": {**hf_text.HUB["xlm-roberta-base"], "vocab_size": 1000,
                          "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 512,
                          "num_attention_heads": 4},
          "mt5": {**hf_text.HUB["google/mt5-base"], "vocab_size": 1000, "d_model": 128,
                  "d_kv": 48, "d_ff": 384, "num_layers": 2, "num_heads": 4}}[kind]
    cfg = models.get_model_config("tiny").replace(
        embed_dim=64, text=hf_text.from_hf_config(hf, 77, proj="mlp"))
    model = models.CLIP(cfg)
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=models.CLIP.encode_text))
    cost = fn.lower(models.abstract_params(cfg), jax.ShapeDtypeStruct((1, 77), jnp.int32)
                    ).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = flops.tower_flops(cfg)["text"]
    assert 1.0 <= cost["flops"] / ours <= 1.06, (cost["flops"], ours)
    shapes = {k: tuple(v.shape) for k, v in params_lib.flatten_params(
        models.abstract_params(cfg)).items()}
    ids = {k: v[0] for k, v in optimizer.layer_ids(shapes, cfg).items() if k.startswith("text/")}
    assert ids["text/transformer/token_embedding"] == 0
    assert ids["text/transformer/resblocks_1/attn/kernel_in"] == 2
    assert ids["text/proj_fc2/kernel"] == 3
