"""open_clip itself against clip_jax (the ``compare`` extra: torch 2.14.1, torchvision 0.29.1,
open-clip-torch 3.3.0; ``scripts/test.sh`` installs it unless ``CLIP_JAX_COMPARE=0``).

(a) a random open_clip ``CLIP`` built by ``open_clip.create_model`` from a JSON model config,
saved as open_clip saves it, imported with ``clip_jax.export import --from open_clip``, gives
open_clip's image and text embeddings; (b) a clip_jax bundle exported with ``clip_jax.export
open_clip`` loads strictly in ``open_clip.create_model`` (a registered config with
``pretrained=FILE``, and ``local-dir:``) and gives clip_jax's embeddings; (c) our CLIP BPE gives
the ids of ``open_clip.get_tokenizer("ViT-B-32")`` on a hard corpus; (a) and (b) run with
qk-norm and layer scale too; (d) open_clip's SigLIP (a timm trunk) imports with its embeddings,
and its full-size layouts are our key maps'. The whole module skips where open_clip does not
import.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import random
import socket
from pathlib import Path

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import bundle as bundle_lib
from clip_jax import export, models
from clip_jax.data.tokenizer import load_tokenizer

try:
    import open_clip
    import safetensors.torch
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf
except Exception as e:  # ImportError, or a torchvision built for another torch (RuntimeError)
    pytest.skip(f"open_clip does not import ({type(e).__name__}: {e}); install the extra: "
                f"pip install -e '.[open-clip]'", allow_module_level=True)

TOL = 1e-4
# A small open_clip model config, in open_clip's JSON format (as its model_configs/*.json).
TINY_JSON = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# (activation, logit bias): open_clip's default GELU; QuickGELU with a SigLIP-style logit_bias;
# open_clip's stability options in both towers: qk-norm (attn.ln_q / ln_k) and layer scale
# (ls_1 / ls_2.gamma)
_STABLE = {"qk_norm": True, "ls_init_value": 0.5}
VARIANTS = {"gelu": {}, "quick_gelu_bias": {"quick_gelu": True, "init_logit_bias": -10.0},
            "qk_norm_ls": {"vision_cfg": {**TINY_JSON["vision_cfg"], **_STABLE},
                           "text_cfg": {**TINY_JSON["text_cfg"], **_STABLE}}}
TEXTS = ["a photo of a cat", "", "Zwei Hunde im Schnee 🐕🐕", "&lt;b&gt;bold&lt;/b&gt; &amp; café",
         "a very long caption " * 30]
_registered = itertools.count()
pytestmark = pytest.mark.usefixtures("no_network")  # open_clip must not download anything


def _register(tmp_path: Path, model_cfg: dict, tag: str) -> str:
    """Register ``model_cfg`` in open_clip under a fresh name, as a user adds a JSON config."""
    name = f"clip-jax-test-{tag}-{next(_registered)}"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)
    assert name in open_clip.list_models()
    return name


def _inputs(n: int = 4, seed: int = 1):
    """Normalised NHWC pixels (ours) and token ids from open_clip's own tokenizer."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    ids = open_clip.tokenize(TEXTS).numpy().astype(np.int32)
    assert ids[-1, -1] == ids.max()  # the long caption is truncated, its end token at 76
    return images, ids


def _open_clip_embeddings(model, images: np.ndarray, ids: np.ndarray):
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 normalize=True)
        txt = model.encode_text(torch.from_numpy(ids).long(), normalize=True)
    return img.numpy(), txt.numpy()


def _assert_same_embeddings(model, m: clip_jax.InferenceModel, label: str) -> None:
    images, ids = _inputs()
    img, txt = _open_clip_embeddings(model, images, ids)
    diff_i = float(np.abs(m.encode_image(images) - img).max())
    diff_t = float(np.abs(m.encode_text(ids) - txt).max())
    print(f"{label}: max |diff| image {diff_i:.2e} text {diff_t:.2e}")
    assert diff_i < TOL and diff_t < TOL, (diff_i, diff_t)
    assert m.logit_scale == model.logit_scale.item()
    assert m.logit_bias == (None if model.logit_bias is None else model.logit_bias.item())


# ---------------------------------------------------------------------------------------------
# (a) open_clip -> clip_jax


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_open_clip_model_imports_with_its_embeddings(tmp_path, variant):
    oc_cfg = {**copy.deepcopy(TINY_JSON), **VARIANTS[variant]}
    name = _register(tmp_path, oc_cfg, variant)
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()  # random init, as open_clip builds it
    with torch.no_grad():  # no zero biases / unit LN scales that would hide a layout mistake
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert type(model) is open_clip.CLIP and (model.logit_bias is not None) == (
        "init_logit_bias" in oc_cfg)

    # open_clip's hub layout (open_clip_model.safetensors + open_clip_config.json, written by
    # open_clip's own writer), and a bare torch.save'd state dict with --model-config
    hub = tmp_path / "hub"
    hub.mkdir()
    safetensors.torch.save_file(model.state_dict(), hub / "open_clip_model.safetensors")
    save_config_for_hf(model, hub / "open_clip_config.json", model_config=oc_cfg)
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, tmp_path / "epoch_1.pt")
    bundled_vocab = open_clip.tokenizer.default_bpe()
    runs = {"hub": ["--src", str(hub)],
            "pt": ["--src", str(tmp_path / "epoch_1.pt"), "--model-config",
                   str(tmp_path / f"{name}.json"), "--scan",
                   "--tokenizer", f"clip_bpe:{bundled_vocab}"]}
    for label, args in runs.items():
        out = tmp_path / f"bundle_{label}"
        assert export.main(["import", "--from", "open_clip", *args, "--out", str(out)]) == 0
        m = clip_jax.load(str(out))
        assert m.cfg == models.from_open_clip_config(oc_cfg).replace(scan=label == "pt")
        _assert_same_embeddings(model, m, f"open_clip -> clip_jax ({variant}, {label})")
        np.testing.assert_allclose(m.preprocess_cfg["mean"], model.visual.image_mean)
        np.testing.assert_allclose(m.preprocess_cfg["std"], model.visual.image_std)
    # text through both whole pipelines: our tokenizer (open_clip's vocab) + model vs theirs
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(name)(TEXTS), normalize=True).numpy()
    assert float(np.abs(m.encode_text(TEXTS) - want).max()) < TOL


# ---------------------------------------------------------------------------------------------
# (b) clip_jax -> open_clip


def _clip_jax_params(cfg: models.ModelConfig, seed: int) -> dict:
    """Initialised clip_jax params with every leaf perturbed, as NumPy float32."""
    import flax.linen as nn

    p = nn.unbox(models.CLIP(cfg).init(jax.random.key(seed), *models.init_inputs(cfg))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x))).astype(np.float32), p)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_clip_jax_export_loads_strictly_in_open_clip(tmp_path, variant):
    cfg = models.from_open_clip_config({**copy.deepcopy(TINY_JSON), **VARIANTS[variant]})
    bundle_lib.save_bundle(tmp_path / "b", _clip_jax_params(cfg.replace(scan=True), seed=3),
                           cfg.replace(scan=True))
    out = tmp_path / "oc"
    assert export.main(["open_clip", "--checkpoint", str(tmp_path / "b"), "--out", str(out)]) == 0
    m = clip_jax.load(str(tmp_path / "b"))
    weights = out / "open_clip_model.safetensors"
    exported = safetensors.torch.load_file(weights)
    oc_json = json.loads((out / "open_clip_config.json").read_text())

    # 1. our model_cfg registered as a user's JSON config, weights by pretrained=FILE
    name = _register(tmp_path, oc_json["model_cfg"], variant)
    by_file = open_clip.create_model(name, pretrained=str(weights)).eval()
    # 2. the directory as open_clip's local hub layout
    by_dir = open_clip.create_model(f"local-dir:{out}").eval()
    for label, model in (("pretrained=FILE", by_file), ("local-dir", by_dir)):
        assert type(model) is open_clip.CLIP
        # strict: create_model loads with strict=True; beyond that, the model's state is exactly
        # our file (same keys, shapes, values: nothing filled in or reshaped by open_clip)
        sd = model.state_dict()
        assert sorted(sd) == sorted(exported)
        for k, v in exported.items():
            assert sd[k].shape == v.shape and torch.equal(sd[k], v), k
        _assert_same_embeddings(model, m, f"clip_jax -> open_clip ({variant}, {label})")
        pre = model.visual.preprocess_cfg
        assert np.broadcast_to(pre["size"], 2).tolist() == [cfg.vision.image_size] * 2
        np.testing.assert_allclose(pre["mean"], m.preprocess_cfg["mean"])
        np.testing.assert_allclose(pre["std"], m.preprocess_cfg["std"])


# ---------------------------------------------------------------------------------------------
# (d) open_clip's SigLIP: a timm trunk (visual.trunk.*, attn_pool) and open_clip's text tower


def _register_timm_trunk(v: models.VisionConfig, act: str) -> str:
    """A timm SigLIP ViT of ``v``'s size (no class token, MAP pooling), registered as timm
    registers its own ``vit_*_siglip_*`` entry points, for open_clip's ``timm_model_name``."""
    timm = pytest.importorskip("timm", exc_type=ImportError)
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    name = f"vit_cjtest{v.width}_patch{v.patch_size}_siglip_{v.image_size}"
    if name not in timm.list_models():
        def entry(pretrained=False, **kwargs):
            args = dict(img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width,
                        depth=v.layers, num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width,
                        class_token=False, global_pool="map", act_layer=act)
            return _create_vision_transformer(name, pretrained=pretrained,
                                              **dict(args, **kwargs))
        entry.__name__ = name
        register_model(entry)
    return name


def test_open_clip_timm_siglip_imports_with_its_embeddings(tmp_path):
    cfg = models.get_model_config("tiny-siglip")
    v, t = cfg.vision, cfg.text
    trunk = _register_timm_trunk(v, "gelu_tanh")
    oc_cfg = {  # as open_clip's ViT-B-16-SigLIP2.json, at tiny-siglip's size
        "embed_dim": v.width, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": v.image_size, "timm_model_name": trunk,
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size,
                     "width": t.width, "heads": t.heads, "layers": t.layers,
                     "mlp_ratio": t.mlp_dim / t.width, "no_causal_mask": True, "proj_bias": True,
                     "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                     "act_kwargs": {"approximate": "tanh"}}}
    name = _register(tmp_path, oc_cfg, "siglip")
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert type(model) is open_clip.CustomTextCLIP
    assert "visual.trunk.attn_pool.kv.weight" in model.state_dict()
    hub = tmp_path / "hub"
    hub.mkdir()
    safetensors.torch.save_file(model.state_dict(), hub / "open_clip_model.safetensors")
    save_config_for_hf(model, hub / "open_clip_config.json", model_config=oc_cfg)

    # the JSON names a trunk clip_jax has no size for: one line naming it, nothing written
    with pytest.raises(ValueError, match=trunk):
        export.main(["import", "--from", "open_clip", "--src", str(hub), "--out",
                     str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "bundle"
    assert export.main(["import", "--from", "open_clip", "--src", str(hub), "--model-config",
                        "tiny-siglip", "--out", str(out)]) == 0
    m = clip_jax.load(str(out))
    rng = np.random.default_rng(2)
    images = rng.standard_normal((4, v.image_size, v.image_size, 3)).astype(np.float32)
    ids = rng.integers(0, t.vocab_size, (4, t.context_length)).astype(np.int32)
    img, txt = _open_clip_embeddings(model, images, ids)
    diff_i = float(np.abs(m.encode_image(images) - img).max())
    diff_t = float(np.abs(m.encode_text(ids) - txt).max())
    print(f"open_clip timm SigLIP -> clip_jax: max |diff| image {diff_i:.2e} text {diff_t:.2e}")
    assert diff_i < TOL and diff_t < TOL, (diff_i, diff_t)
    assert m.logit_scale == model.logit_scale.item() and m.logit_bias == model.logit_bias.item()


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"])
def test_open_clip_siglip_layouts_at_full_size(tmp_path, name):
    """open_clip's own SigLIP configs, built on the meta device (nothing allocated): their state
    dicts are our key maps' keys and shapes, and the config we export builds in open_clip with
    exactly the keys and shapes we write."""
    pytest.importorskip("timm", exc_type=ImportError)
    from clip_jax.interop import keymap

    cfg = models.from_open_clip_config(open_clip.get_model_config(name))
    assert keymap.family(cfg) == "siglip"
    ours = {k: tuple(s.shape) for k, s in keymap.external_shapes(cfg, "open_clip").items()}
    with torch.device("meta"):
        theirs = open_clip.create_model(name, device="meta").state_dict()
    assert {k.removeprefix("text."): tuple(x.shape) for k, x in theirs.items()} == ours
    back = _register(tmp_path, models.to_open_clip_config(cfg), "siglip-full")
    with torch.device("meta"):
        rebuilt = open_clip.create_model(back, device="meta").state_dict()
    assert {k: tuple(x.shape) for k, x in rebuilt.items()} == ours


# ---------------------------------------------------------------------------------------------
# (c) tokenizer ids


HARD_TEXTS = [
    "", " ", "\t\n ", "A photo of a CAT!", "naïve café, 3 dogs", "Ünïcödé ÀÉÎÕÜ ß ﬁ ǅ İstanbul ΣΑΣ",
    "東京タワーの写真", "Привет, мир", "مرحبا بالعالم", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
    "👍🏽 🐱‍👤 👨‍👩‍👧 🇫🇷 ❤️ 🐕🐕🐕", "e\u0301 a\u0308 combining", "zero\u200bwidth\u200d",
    "&amp; &lt;b&gt; &quot;x&quot; &#39;s &#x1F600; &nbsp;x", "&amp;amp;lt; double",
    "Tom &amp Jerry",
    "don't we'll I'm they've she'd it's", "mojibake: Ã©tÃ© â€œquoteâ€\x9d",
    "x\x1cy\x1dz\x1e\x1fw", "a\x0bb\x85c\u2028d\u00a0e\u3000f", "ctrl\x00\x07\x7f\x1b[0m",
    "word " * 100, "supercalifragilistic" * 20, "1234567890" * 10, "🐕" * 100,
    "a,b.c;d:e!f?g(h)i[j]k{l}m<n>o/p\\q|r~s`t@u#v$w%x^y*z", "  lots   of\n\nspace  ",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x20, 0x7E), (0x0, 0x1F), (0xA0, 0x2FF), (0x300, 0x36F),
              (0x370, 0x2FFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.05:
                parts.append(rng.choice(["&amp;", "&lt;", "&#39;", "&#x263A;", "&bogus;", " "]))
            else:
                lo, hi = rng.choice(ranges)
                parts.append(chr(rng.randint(lo, hi)))
        texts.append("".join(parts))
    return texts


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_clip_bpe_ids_equal_open_clip_tokenizer(bpe_vocab_path):
    theirs = open_clip.get_tokenizer("ViT-B-32")
    # open_clip's default: its SimpleTokenizer on the vocabulary it ships, which is ours
    assert type(theirs) is open_clip.tokenizer.SimpleTokenizer
    shipped = Path(open_clip.tokenizer.default_bpe())
    assert shipped.is_file() and shipped.parent == Path(open_clip.__file__).parent
    assert gzip.decompress(shipped.read_bytes()) == gzip.decompress(
        Path(bpe_vocab_path).read_bytes())
    ours = load_tokenizer(f"clip_bpe:{bpe_vocab_path}")
    assert (ours.sot_id, ours.eot_id, ours.vocab_size) == (
        theirs.sot_token_id, theirs.eot_token_id, theirs.vocab_size)

    corpus = HARD_TEXTS + _random_texts(300)
    got, want = ours(corpus, 77), theirs(corpus).numpy()
    bad = [t for t, a, b in zip(corpus, got, want, strict=True) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} texts tokenize differently, e.g. {bad[:3]!r}"
    np.testing.assert_array_equal(ours(corpus, 16), theirs(corpus, context_length=16).numpy())
    # the hard cases are what we meant: empty -> [sot, eot]; long -> cut at 77, eot last
    assert list(got[0, :3]) == [ours.sot_id, ours.eot_id, 0]
    long_rows = got[[HARD_TEXTS.index("word " * 100), HARD_TEXTS.index("🐕" * 100)]]
    assert (long_rows[:, -1] == ours.eot_id).all() and (long_rows[:, 1:-1] != ours.eot_id).all()
    for text in ("a\u0301", "&amp;", "👍🏽"):  # decode inverts encode on cleaned text
        assert ours.decode(ours(text)[0]) == theirs.decode(theirs.encode(text)).strip()

    # Known, deliberate difference: the literal special-token strings. We follow OpenAI's
    # tokenizer (``<|startoftext|>`` / ``<|endoftext|>`` in a text are the special ids);
    # open_clip 3.3.0 renamed its specials to ``<start_of_text>`` / ``<end_of_text>``, so each
    # library reads the other's spelling as plain text. Everything else agrees id for id.
    sot, eot, a = ours.sot_id, ours.eot_id, ours.encode("a")
    assert ours("a <|endoftext|>")[0, :4].tolist() == [sot, *a, eot, eot]
    assert theirs("a <end_of_text>")[0, :4].tolist() == [sot, *a, eot, eot]
    assert theirs("a <|endoftext|>")[0].tolist().index(eot) > 4  # '<|', 'endoftext', '|>'
    assert ours("a <end_of_text>")[0].tolist().index(eot) > 4
