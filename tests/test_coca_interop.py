"""open_clip CoCa in and out (the ``compare`` extra): a random open_clip ``CoCa`` built offline
from a config shrunk from ``coca_ViT-B-32.json`` (every weight perturbed, a non-zero logit
scale) imports through ``clip_jax.export import --from open_clip`` with open_clip's image and
text embeddings, its teacher-forced caption logits and its greedy captions (``generate`` with
top-k 1); a clip_jax CoCa exported with ``clip_jax.export open_clip`` loads strictly in
``open_clip.create_model(name, pretrained=FILE)`` with the same figures. Variants: the attentional
pooler with separate q/k/v projections (tower wider than embed_dim, as B-32 and L-14), fused
(as wide) with layer scale and QuickGELU, and no pooler
(as ``coca_base.json``). Skips where torch / open_clip / transformers do not import."""

from __future__ import annotations

import copy
import itertools
import json
import socket
import types

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import bundle as bundle_lib
from clip_jax import export, models
from clip_jax import params as params_lib
from clip_jax.interop import keymap

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("transformers")  # open_clip's CoCa.generate uses its logits processors
from open_clip.push_to_hf_hub import save_config_for_hf  # noqa: E402

TOL = 1e-4
SOT, EOT, PAD = 62, 63, 0  # in the tiny vocabulary (open_clip's defaults are CLIP BPE's)
CTX = 16
# coca_ViT-B-32.json with tiny widths and depths (embed_dim = the decoder's width, as there)
COCA_JSON = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8,
                   "head_width": 24, "attentional_pool": True, "attn_pooler_queries": 6,
                   "attn_pooler_heads": 4, "output_tokens": True},
    "text_cfg": {"context_length": CTX, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": CTX, "vocab_size": 64, "width": 32, "heads": 2,
                       "layers": 2, "attn_pooler_heads": 4},
    "custom_text": True,
}


def _variant(name: str) -> dict:
    cfg = copy.deepcopy(COCA_JSON)
    if name == "fused_ls_quick":  # the pooler's in_proj fused: tower as wide as embed_dim
        cfg["vision_cfg"].update(width=32, head_width=16, ls_init_value=0.5)
        cfg["text_cfg"]["ls_init_value"] = 0.5
        cfg["multimodal_cfg"]["ls_init_value"] = 0.5
        cfg["quick_gelu"] = True
    elif name == "no_pooler":  # as coca_base.json: the decoder reads ln_post's patch tokens
        cfg["vision_cfg"] = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                             "head_width": 16, "output_tokens": True}
    return cfg


VARIANTS = ("separate_qkv", "fused_ls_quick", "no_pooler")
_registered = itertools.count()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):  # open_clip must not download anything
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def greedy_generate(monkeypatch):
    """open_clip 3.3.0's ``CoCa.generate`` runs only where every name it imports from
    transformers imported, ``BeamSearchScorer`` (beam search) among them, which transformers 5
    removed; its top-k path does not use that one: give it the names that path uses."""
    from open_clip import coca_model

    if coca_model._has_transformers:
        return
    import transformers

    for name in ("LogitsProcessorList", "TopKLogitsWarper", "RepetitionPenaltyLogitsProcessor",
                 "MinLengthLogitsProcessor", "MaxLengthCriteria", "StoppingCriteriaList"):
        monkeypatch.setattr(coca_model, name, getattr(transformers, name), raising=False)
    monkeypatch.setitem(coca_model.GENERATION_TYPES, "top_k", transformers.TopKLogitsWarper)
    monkeypatch.setattr(coca_model, "_has_transformers", True)


def _register(tmp_path, model_cfg: dict, tag: str) -> str:
    name = f"clip-jax-coca-{tag}-{next(_registered)}"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)
    return name


def _inputs(n: int = 3, seed: int = 1):
    """Pixels (NHWC) and captions: start token, words, end token, padding (lengths differ)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    ids = np.full((n, CTX), PAD, np.int32)
    for i, length in enumerate((CTX - 2, 5, 9)[:n]):
        ids[i, 0], ids[i, length + 1] = SOT, EOT
        ids[i, 1:length + 1] = rng.integers(1, SOT, length)
    return images, ids


def _theirs(model, images, ids):
    """open_clip's normalised embeddings and teacher-forced logits (B, L-1, vocab)."""
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        t = torch.from_numpy(ids).long()
        out = model(x, t)
        return (model.encode_image(x).numpy(), model.encode_text(t).numpy(),
                out["logits"].numpy())


_COMPILED: dict = {}  # per model config: both directions of a variant share the compilations


def _ours(m, images, ids):
    if (m.cfg, "forward") not in _COMPILED:
        module = models.CLIP(m.cfg)
        _COMPILED[m.cfg, "forward"] = jax.jit(lambda p, x, t: module.apply(
            models.variables(p), x, t, method=models.CLIP.caption_forward))
    (img, txt, _, _), logits = _COMPILED[m.cfg, "forward"](m.params, images, ids)
    return np.asarray(img), np.asarray(txt), np.asarray(logits)


def _greedy_ours(m, images, length: int) -> np.ndarray:
    """``predict --caption``'s path (:class:`~clip_jax.evaluate.captioning.Captioner`), with a
    stand-in tokenizer giving the start and end ids."""
    from clip_jax.evaluate.captioning import Captioner

    if (m.cfg, "captioner") not in _COMPILED:
        _COMPILED[m.cfg, "captioner"] = Captioner(m)
    cap = _COMPILED[m.cfg, "captioner"]
    cap.model = m  # the compiled generate takes the params as an argument
    cap.tokenizer = types.SimpleNamespace(sot_id=SOT, eot_id=EOT)
    return cap.caption_ids(images, beams=1, length=length)


def _greedy_theirs(model, images, seq_len: int) -> np.ndarray:
    """open_clip's ``generate`` with top-k 1 (greedy): it starts from ``sot``, stops a row at
    ``eot`` or ``pad``, and forces ``eot`` at position ``seq_len - 1``; ``min_seq_len=1`` lifts
    its ban on an early ``eot`` (which needs ``min_seq_len`` tokens first)."""
    with torch.no_grad():
        out = model.generate(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                             generation_type="top_k", top_k=1, seq_len=seq_len, min_seq_len=1,
                             sot_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD,
                             fixed_output_length=True)
    return out.numpy()


def _assert_same(model, m, label: str) -> None:
    images, ids = _inputs()
    theirs, ours = _theirs(model, images, ids), _ours(m, images, ids)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)]
    print(f"{label}: max |diff| image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}")
    assert max(diffs) < TOL, diffs
    assert m.logit_scale == model.logit_scale.item() != float(models.INIT_LOGIT_SCALE)
    # greedy captions: ours run to L - 1 tokens; open_clip's last is the forced end token, or
    # padding for a row that ended
    seq_len = 12
    want = _greedy_theirs(model, images, seq_len)
    got = _greedy_ours(m, images, seq_len - 1)
    assert want.shape == (len(images), seq_len), want.shape
    np.testing.assert_array_equal(got, want[:, :-1])
    ended = np.isin(got[:, -1], (EOT, PAD))  # a row ends at its end token or a padding token
    np.testing.assert_array_equal(want[:, -1], np.where(ended, PAD, EOT))
    print(f"{label}: greedy ids {want.tolist()}")


def _perturbed(name: str, oc_cfg: dict):
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()  # random init, as open_clip builds it
    with torch.no_grad():
        # open_clip leaves the decoder's text_projection as torch.empty left it (its
        # MultimodalTransformer.init_parameters is never called): initialise it as that would
        proj = model.text_decoder.text_projection
        proj.normal_(std=proj.shape[0] ** -0.5)
        for p in model.parameters():  # no zero biases / unit LN scales hiding a layout mistake
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(3.1)
    assert type(model) is open_clip.CoCa
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_open_clip_coca_imports_with_its_embeddings_logits_and_captions(tmp_path, variant):
    oc_cfg = _variant(variant)
    name = _register(tmp_path, oc_cfg, variant)
    model = _perturbed(name, oc_cfg)
    sd = model.state_dict()
    if variant == "separate_qkv":
        assert "visual.attn_pool.attn.k_proj_weight" in sd
    elif variant == "fused_ls_quick":
        assert "visual.attn_pool.attn.in_proj_weight" in sd
    hub = tmp_path / "hub"
    hub.mkdir()
    safetensors_torch.save_file(sd, hub / "open_clip_model.safetensors")
    save_config_for_hf(model, hub / "open_clip_config.json", model_config=oc_cfg)
    out = tmp_path / "bundle"
    assert export.main(["import", "--from", "open_clip", "--src", str(hub), "--out",
                        str(out)]) == 0
    m = clip_jax.load(str(out))
    assert m.cfg == models.from_open_clip_config(oc_cfg)
    assert m.cfg.decoder.input == "text" and m.cfg.text.embed_cls
    _assert_same(model, m, f"open_clip CoCa -> clip_jax ({variant})")
    # and back: the same state dict, bit for bit
    back = tmp_path / "back"
    assert export.main(["open_clip", "--checkpoint", str(out), "--out", str(back)]) == 0
    again = safetensors_torch.load_file(back / "open_clip_model.safetensors")
    assert sorted(again) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(again[k], v), k
    # and through the scanned layout (model.scan: the decoder's blocks stacked too)
    numpy_sd = {k: v.numpy() for k, v in sd.items()}
    stacked = keymap.from_external(numpy_sd, m.cfg.replace(scan=True), "open_clip")
    assert stacked["text_decoder"]["blocks"]["cross_attn"]["ln_1_kv"]["scale"].shape[0] == 2
    for k, v in keymap.to_external(stacked, m.cfg.replace(scan=True), "open_clip").items():
        np.testing.assert_array_equal(v, numpy_sd[k], err_msg=k)


def _clip_jax_params(cfg: models.ModelConfig, seed: int) -> dict:
    """Random params of ``cfg``'s tree (nothing compiled): LayerNorm and layer scales about 1,
    every other leaf N(0, 0.1), a non-default logit scale."""
    rng = np.random.default_rng(seed)
    flat = params_lib.flatten_params(models.abstract_params(cfg))
    flat = {k: (float(k.endswith(("/scale", "/gamma"))) + (0.05 if k.endswith(
        ("/scale", "/gamma")) else 0.1) * rng.standard_normal(s.shape)).astype(np.float32)
        for k, s in flat.items()}
    flat["logit_scale"] = np.asarray(2.9, np.float32)
    return params_lib.unflatten_params(flat)


@pytest.mark.parametrize("variant", VARIANTS)
def test_clip_jax_coca_export_loads_strictly_in_open_clip(tmp_path, variant):
    cfg = models.from_open_clip_config(_variant(variant))
    bundle_lib.save_bundle(tmp_path / "b", _clip_jax_params(cfg, seed=3), cfg)
    out = tmp_path / "oc"
    assert export.main(["open_clip", "--checkpoint", str(tmp_path / "b"), "--out", str(out)]) == 0
    m = clip_jax.load(str(tmp_path / "b"))
    weights = out / "open_clip_model.safetensors"
    exported = safetensors_torch.load_file(weights)
    oc_json = json.loads((out / "open_clip_config.json").read_text())
    name = _register(tmp_path, oc_json["model_cfg"], variant)
    model = open_clip.create_model(name, pretrained=str(weights)).eval()  # strict=True
    assert type(model) is open_clip.CoCa
    sd = model.state_dict()
    assert sorted(sd) == sorted(exported)
    for k, v in exported.items():
        assert sd[k].shape == v.shape and torch.equal(sd[k], v), k
    assert models.from_open_clip_config(oc_json["model_cfg"]) == cfg
    _assert_same(model, m, f"clip_jax CoCa -> open_clip ({variant})")


def test_coca_refusals(tmp_path):
    """What open_clip CoCa cannot hold, or clip_jax cannot build, is one line naming it."""
    cap = models.from_open_clip_config(_variant("separate_qkv")).replace(
        decoder={"input": "embed"})
    bundle_lib.save_bundle(tmp_path / "b", _clip_jax_params(cap, seed=1), cap)
    with pytest.raises(ValueError, match="decoder.input='embed'"):
        export.main(["open_clip", "--checkpoint", str(tmp_path / "b"), "--out",
                     str(tmp_path / "oc")])
    assert not (tmp_path / "oc").exists()
    roberta = open_clip.get_model_config("coca_roberta-ViT-B-32")
    with pytest.raises(ValueError, match="hf_model_name"):
        models.from_open_clip_config(roberta)
    parallel = copy.deepcopy(COCA_JSON)
    parallel["vision_cfg"]["attentional_pool"] = "parallel"
    with pytest.raises(ValueError, match="attentional_pool"):
        models.from_open_clip_config(parallel)


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "coca_ViT-L-14", "coca_base"])
def test_open_clip_coca_configs_at_full_size(tmp_path, name):
    """open_clip's own CoCa configs, built on the meta device (nothing allocated): their state
    dicts are our key map's keys and shapes, and the config we write back builds the same."""
    from clip_jax.interop import keymap

    cfg = models.from_open_clip_config(open_clip.get_model_config(name))
    assert keymap.family(cfg) == "coca"
    ours = {k: tuple(s.shape) for k, s in keymap.external_shapes(cfg, "open_clip").items()}
    with torch.device("meta"):
        theirs = open_clip.create_model(name, device="meta").state_dict()
    assert {k: tuple(x.shape) for k, x in theirs.items()} == ours
    back = _register(tmp_path, models.to_open_clip_config(cfg), "full")
    with torch.device("meta"):
        rebuilt = open_clip.create_model(back, device="meta").state_dict()
    assert {k: tuple(x.shape) for k, x in rebuilt.items()} == ours
