"""Export / import: bundles, open_clip and Hugging Face layouts, clip_jax.load, predict CLI.

Round trips are checked bit-exact; the open_clip layout is checked numerically against a NumPy
re-implementation of open_clip's forward pass (so transposes, q;k;v order and OIHW are verified
without torch); where torch + transformers are installed, the exported HF directory is loaded
with ``CLIPModel.from_pretrained`` and its embeddings are compared with ours.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import bundle as bundle_lib
from clip_jax import export, models, sources
from clip_jax import params as params_lib
from clip_jax.interop import hf as hf_lib
from clip_jax.interop import keymap, weights_io

TINY = models.get_model_config("tiny")
CAPTIONS = [f"a photo of a {c} {n}" for c in ("red", "green", "blue", "small", "big")
            for n in ("cat", "dog", "zebra", "car", "tree", "house")]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from clip_jax.data.tokenizer import train_tokenizer

    return train_tokenizer(CAPTIONS * 3, TINY.text.vocab_size,
                           tmp_path_factory.mktemp("tok"), min_frequency=1)


def _params(cfg: models.ModelConfig, seed: int = 0) -> dict:
    """Initialised params with every leaf perturbed (no all-zero biases / all-one LN scales,
    which would hide layout mistakes), as NumPy float32."""
    import flax.linen as nn

    p = nn.unbox(models.CLIP(cfg).init(jax.random.key(seed), *models.init_inputs(cfg))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x))).astype(np.float32),
        p)


def _apply(cfg, params, images=None, text=None):
    model = models.CLIP(cfg)
    if images is not None:
        return np.asarray(model.apply({"params": params}, images,
                                      method=models.CLIP.encode_image))
    return np.asarray(model.apply({"params": params}, text, method=models.CLIP.encode_text))


def _inputs(cfg, n=3, seed=1):
    rng = np.random.default_rng(seed)
    v, t = cfg.vision, cfg.text
    images = rng.standard_normal((n, v.image_size, v.image_size, 3)).astype(np.float32)
    ids = np.zeros((n, t.context_length), np.int32)
    for i in range(n):
        length = 3 + 2 * i
        ids[i, 0] = t.vocab_size - 2
        ids[i, 1:length] = rng.integers(1, t.vocab_size - 2, length - 1)
        ids[i, length] = t.vocab_size - 1  # eot: the largest id
    return images, ids


def _assert_same_tree(a, b):
    fa, fb = params_lib.flatten_params(a), params_lib.flatten_params(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), f"{k} differs"


# ---------------------------------------------------------------------------------------------
# key / shape maps on the real ViT-B-32, without allocating


def _open_clip_b32_keys() -> set[str]:
    """open_clip's ViT-B-32 state_dict keys, written out independently of clip_jax.export."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
             "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
             "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    keys = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
            "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight",
            "visual.ln_post.bias", "visual.proj", "token_embedding.weight",
            "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
            "logit_scale"}
    for i in range(12):
        keys |= {f"visual.transformer.resblocks.{i}.{b}" for b in block}
        keys |= {f"transformer.resblocks.{i}.{b}" for b in block}
    return keys


@pytest.mark.parametrize("scan", [False, True])
def test_vit_b32_open_clip_keys_and_shapes_abstract(scan):
    cfg = models.get_model_config("ViT-B-32").replace(scan=scan)
    abstract = params_lib.flatten_params(models.abstract_params(cfg))  # ShapeDtypeStructs only
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in abstract.values())
    sd = jax.eval_shape(lambda p: keymap.to_external(p, cfg, "open_clip"), abstract)
    assert len(sd) == 302
    assert set(sd) == _open_clip_b32_keys()
    assert sum(math.prod(s.shape) for s in sd.values()) == 151_277_313
    want = {
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.class_embedding": (768,),
        "visual.positional_embedding": (50, 768),
        "visual.transformer.resblocks.11.attn.in_proj_weight": (2304, 768),
        "visual.transformer.resblocks.0.attn.in_proj_bias": (2304,),
        "visual.transformer.resblocks.0.attn.out_proj.weight": (768, 768),
        "visual.transformer.resblocks.0.mlp.c_fc.weight": (3072, 768),
        "visual.transformer.resblocks.0.mlp.c_proj.weight": (768, 3072),
        "visual.proj": (768, 512),
        "token_embedding.weight": (49408, 512),
        "positional_embedding": (77, 512),
        "transformer.resblocks.3.attn.in_proj_weight": (1536, 512),
        "transformer.resblocks.3.mlp.c_fc.weight": (2048, 512),
        "text_projection": (512, 512),
        "logit_scale": (),
    }
    for k, shape in want.items():
        assert sd[k].shape == shape, k
    hf = keymap.external_shapes(cfg, "hf")
    assert len(hf) == 398  # q/k/v split: 4 more tensors per block
    assert sum(math.prod(s.shape) for s in hf.values()) == 151_277_313
    assert hf["vision_model.encoder.layers.0.self_attn.q_proj.weight"].shape == (768, 768)
    assert hf["visual_projection.weight"].shape == (512, 768)
    assert hf["vision_model.embeddings.patch_embedding.weight"].shape == (768, 3, 32, 32)


def test_hf_keys_match_transformers_model_b32():
    torch = pytest.importorskip("torch", exc_type=ImportError)
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    cfg = models.get_model_config("ViT-B-32")
    with torch.device("meta"):  # no allocation
        m = transformers.CLIPModel(transformers.CLIPConfig.from_dict(hf_lib.hf_config(cfg)))
    theirs = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in keymap.external_shapes(cfg, "hf").items()}
    assert ours == theirs


# ---------------------------------------------------------------------------------------------
# exact round trips on the tiny preset


@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_exact(fmt, scan, tmp_path):
    cfg = TINY.replace(scan=scan)
    params = _params(cfg)
    sd = keymap.to_external(params, cfg, fmt)
    assert set(sd) == set(keymap.external_shapes(cfg, fmt))
    path = tmp_path / "w.safetensors"
    weights_io.save_safetensors(sd, path)
    back = keymap.from_external(weights_io.read_state_dict(path), cfg, fmt)
    _assert_same_tree(params, back)
    # across layouts: exported from one block layout, imported into the other
    other = cfg.replace(scan=not scan)
    back_other = keymap.from_external(sd, other, fmt)
    _assert_same_tree(params_lib.unstack_layers(params_lib.flatten_params(back_other)),
                      params_lib.unstack_layers(params_lib.flatten_params(params)))


def test_round_trip_with_logit_bias_and_quick_gelu():
    cfg = TINY.replace(init_logit_bias=-10.0, act="quick_gelu")
    params = _params(cfg)
    sd = keymap.to_external(params, cfg, "open_clip")
    assert "logit_bias" in sd
    _assert_same_tree(params, keymap.from_external(sd, cfg, "open_clip"))
    oc = models.from_open_clip_config(models.to_open_clip_config(cfg))
    assert oc.act == "quick_gelu" and oc.init_logit_bias == -10.0


# ---------------------------------------------------------------------------------------------
# open_clip layout checked numerically by a NumPy port of open_clip's forward


_erf = np.vectorize(math.erf)


def _np_ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_act(x, act):
    if act == "gelu":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    return x / (1 + np.exp(-1.702 * x))


def _np_resblock(x, sd, p, heads, causal, act, eps):
    """open_clip ResidualAttentionBlock with torch.nn.MultiheadAttention semantics."""
    b, n, d = x.shape
    hd = d // heads
    y = _np_ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
    qkv = y @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = (t.reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
               for t in np.split(qkv, 3, axis=-1))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    if causal:
        s = s + np.triu(np.full((n, n), -np.inf), 1)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    y = _np_ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
    h = _np_act(y @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"], act)
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def _np_open_clip_image(sd, cfg, images_nhwc):
    x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)  # NCHW, as torch
    w = sd["visual.conv1.weight"]  # OIHW
    o, c, p, _ = w.shape
    b, _, h, wd = x.shape
    patches = x.reshape(b, c, h // p, p, wd // p, p).transpose(0, 2, 4, 1, 3, 5)
    x = patches.reshape(b, -1, c * p * p) @ w.reshape(o, -1).T  # == conv2d, stride p
    cls = np.broadcast_to(sd["visual.class_embedding"], (b, 1, o))
    x = np.concatenate([cls, x], axis=1) + sd["visual.positional_embedding"]
    x = _np_ln(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], cfg.ln_eps)
    for i in range(cfg.vision.layers):
        x = _np_resblock(x, sd, f"visual.transformer.resblocks.{i}.", cfg.vision.heads, False,
                         cfg.act, cfg.ln_eps)
    x = _np_ln(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], cfg.ln_eps)
    return x @ sd["visual.proj"]


def _np_open_clip_text(sd, cfg, ids):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(cfg.text.layers):
        x = _np_resblock(x, sd, f"transformer.resblocks.{i}.", cfg.text.heads, True, cfg.act,
                         cfg.ln_eps)
    x = _np_ln(x, sd["ln_final.weight"], sd["ln_final.bias"], cfg.ln_eps)
    return x[np.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("act,scan", [("gelu", False), ("quick_gelu", True)])
def test_open_clip_layout_numerics(act, scan):
    cfg = TINY.replace(act=act, scan=scan)
    params = _params(cfg, seed=3)
    sd = {k: np.asarray(v, np.float64) for k, v in
          keymap.to_external(params, cfg, "open_clip").items()}
    images, ids = _inputs(cfg)
    np.testing.assert_allclose(_unit(_np_open_clip_image(sd, cfg, images)),
                               _apply(cfg, params, images=images), atol=2e-5)
    np.testing.assert_allclose(_unit(_np_open_clip_text(sd, cfg, ids)),
                               _apply(cfg, params, text=ids), atol=2e-5)


def test_hf_layout_matches_open_clip_layout():
    params = _params(TINY)
    oc = keymap.to_external(params, TINY, "open_clip")
    hf = keymap.to_external(params, TINY, "hf")
    for ours, theirs in (("visual.transformer.resblocks.1", "vision_model.encoder.layers.1"),
                         ("transformer.resblocks.0", "text_model.encoder.layers.0")):
        a = f"{theirs}.self_attn"
        np.testing.assert_array_equal(
            np.concatenate([hf[f"{a}.{n}_proj.weight"] for n in "qkv"]),
            oc[f"{ours}.attn.in_proj_weight"])
        np.testing.assert_array_equal(np.concatenate([hf[f"{a}.{n}_proj.bias"] for n in "qkv"]),
                                      oc[f"{ours}.attn.in_proj_bias"])
        np.testing.assert_array_equal(hf[f"{a}.out_proj.weight"],
                                      oc[f"{ours}.attn.out_proj.weight"])
        np.testing.assert_array_equal(hf[f"{theirs}.mlp.fc1.weight"], oc[f"{ours}.mlp.c_fc.weight"])
        np.testing.assert_array_equal(hf[f"{theirs}.layer_norm2.bias"], oc[f"{ours}.ln_2.bias"])
    np.testing.assert_array_equal(hf["vision_model.embeddings.patch_embedding.weight"],
                                  oc["visual.conv1.weight"])
    np.testing.assert_array_equal(hf["visual_projection.weight"].T, oc["visual.proj"])
    np.testing.assert_array_equal(hf["text_projection.weight"].T, oc["text_projection"])
    np.testing.assert_array_equal(hf["vision_model.pre_layrnorm.weight"],
                                  oc["visual.ln_pre.weight"])


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_name_the_keys(tmp_path, monkeypatch):
    params = _params(TINY)
    sd = keymap.to_external(params, TINY, "open_clip")

    bad = dict(sd, **{"visual.conv1.weight": np.zeros((32, 3, 4, 4), np.float32)})
    with pytest.raises(ValueError, match=r"visual\.conv1\.weight has shape \(32, 3, 4, 4\), "
                                         r"expected \(32, 3, 8, 8\)"):
        keymap.from_external(bad, TINY, "open_clip")

    bad = {k: v for k, v in sd.items() if k not in ("ln_final.bias", "visual.proj")}
    bad["visual.head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        keymap.from_external(bad, TINY, "open_clip")
    msg = str(e.value)
    assert "2 missing keys: ln_final.bias, visual.proj" in msg
    assert "1 unexpected keys: visual.head.weight" in msg

    bad = dict(sd, logit_scale=np.array(4, np.int32))
    with pytest.raises(ValueError, match="logit_scale has dtype int32"):
        keymap.from_external(bad, TINY, "open_clip")

    # a config that does not fit (more heads): the error names the tensor
    with pytest.raises(ValueError, match="text_projection has shape"):
        keymap.from_external(sd, TINY.replace(embed_dim=16), "open_clip")

    # bundles loaded into a different architecture name our key
    bundle_lib.save_bundle(tmp_path / "b", params, TINY)
    wrong = models.abstract_params(TINY.replace(text={"context_length": 8}))
    with pytest.raises(ValueError, match="text/positional_embedding has shape"):
        bundle_lib.load_params(tmp_path / "b", wrong)

    # pickles need torch's weights_only loader; without torch the error says what to do
    (tmp_path / "x.pt").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="safetensors"):
        weights_io.read_state_dict(tmp_path / "x.pt")


def test_torch_state_dict_weights_only(tmp_path):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    params = _params(TINY)
    sd = keymap.to_external(params, TINY, "open_clip")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(np.array(v))
                                           for k, v in sd.items()}}, tmp_path / "epoch_3.pt")
    back = keymap.from_external(weights_io.read_state_dict(tmp_path / "epoch_3.pt"), TINY,
                                "open_clip")
    _assert_same_tree(params, back)


# ---------------------------------------------------------------------------------------------
# bundles and clip_jax.load


def test_bundle_round_trip_and_inference(tmp_path, tok):
    cfg = TINY.replace(scan=True)
    params = _params(cfg, seed=5)
    bundle_lib.save_bundle(tmp_path / "b", params, cfg, tok)
    conf = json.loads((tmp_path / "b" / "config.json").read_text())
    assert conf["format"] == "clip_jax.bundle" and conf["version"] == 1
    assert set(conf["preprocess"]) == {"image_size", "mean", "std", "resize"}
    weights = weights_io.read_safetensors(tmp_path / "b" / "model.safetensors")
    assert "visual/conv1/kernel" in weights

    m = clip_jax.load(str(tmp_path / "b"))
    _assert_same_tree(jax.device_get(m.params), params)
    images, _ = _inputs(cfg, n=5)
    np.testing.assert_allclose(m.encode_image(images), _apply(cfg, params, images=images),
                               atol=1e-6)
    texts = ["a photo of a cat", "a big zebra", "tree"]
    ids = tok(texts, context_length=cfg.text.context_length)
    np.testing.assert_array_equal(m.tokenize(texts), ids)
    want = _apply(cfg, params, text=ids)
    np.testing.assert_allclose(m.encode_text(texts), want, atol=1e-6)
    np.testing.assert_allclose(m.encode_text(ids), want, atol=1e-6)

    from PIL import Image

    from clip_jax.data.transforms import eval_transform

    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
            rng.integers(0, 256, (33, 32, 3), dtype=np.uint8)]
    pre = m.preprocess(pics)
    np.testing.assert_array_equal(pre[0], eval_transform(Image.fromarray(pics[0]), 32))
    np.testing.assert_allclose(m.encode_image(pics), m.encode_image(pre), atol=1e-6)

    probs = m.zero_shot(pics, ["cat", "dog", "zebra"], ["a photo of a {}.", "a {}"])
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    cls = m.classifier(["cat", "dog", "zebra"], ["a photo of a {}.", "a {}"])
    emb = m.encode_text([t.format(c) for c in ("cat", "dog", "zebra")
                         for t in ("a photo of a {}.", "a {}")]).reshape(3, 2, -1).mean(1)
    np.testing.assert_allclose(cls, _unit(emb), atol=1e-6)
    logits = math.exp(float(params["logit_scale"])) * m.encode_image(pics) @ cls.T
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, ref / ref.sum(1, keepdims=True), atol=1e-5)

    # checkpoint.init_from: a bundle loads into either block layout, sharded as asked

    flat_cfg = cfg.replace(scan=False)
    loaded = sources.load_params(str(tmp_path / "b"), models.abstract_params(flat_cfg))
    _assert_same_tree(jax.device_get(loaded),
                      params_lib.unflatten_params(params_lib.unstack_layers(
                          params_lib.flatten_params(params))))


# ---------------------------------------------------------------------------------------------
# CLI: training workdir -> bundle / open_clip / hf -> import back


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tok):
    from clip_jax import checkpoint
    from clip_jax import config as config_lib

    wd = tmp_path_factory.mktemp("run")
    c = config_lib.base_config()  # model.name = "tiny"
    params = _params(TINY, seed=7)
    ckpt_cfg = types.SimpleNamespace(every_steps=1, keep=1, keep_period=0, async_save=False)
    ckpt = checkpoint.Checkpointer(str(wd), ckpt_cfg, None, None)
    ckpt.save(1, {"step": np.int32(1), "params": jax.device_put(params)}, {},
              c.to_json_best_effort(), force=True)
    ckpt.close()
    (wd / "config.json").write_text(c.to_json_best_effort(indent=2))
    tok.save(wd / "tokenizer")
    return wd, params


def test_export_cli_round_trips(tmp_path, workdir, tok):
    wd, params = workdir
    out = {}
    for fmt in ("bundle", "open_clip", "hf"):
        out[fmt] = tmp_path / fmt
        src = wd if fmt != "open_clip" else wd / "checkpoints"
        assert export.main([fmt, "--checkpoint", str(src), "--out", str(out[fmt])]) == 0
    cfg, got, got_tok, _ = bundle_lib.read_bundle(out["bundle"])
    assert cfg == TINY
    _assert_same_tree(params_lib.unflatten_params(got), params)
    assert got_tok.vocab_size == tok.vocab_size
    assert (out["open_clip"] / "open_clip_model.safetensors").is_file()
    oc_conf = json.loads((out["open_clip"] / "open_clip_config.json").read_text())
    assert models.from_open_clip_config(oc_conf) == TINY
    assert oc_conf["preprocess_cfg"]["size"] == 32
    hf_conf = json.loads((out["hf"] / "config.json").read_text())
    assert hf_conf["text_config"]["eos_token_id"] == tok.eot_id
    assert hf_lib.model_config_from_hf(hf_conf) == TINY

    for fmt in ("open_clip", "hf"):
        b = tmp_path / f"imported_{fmt}"
        assert export.main(["import", "--from", fmt, "--src", str(out[fmt]), "--scan",
                            "--out", str(b)]) == 0
        cfg, got, got_tok, _ = bundle_lib.read_bundle(b)
        assert cfg == TINY.replace(scan=True)
        _assert_same_tree(params_lib.unflatten_params(params_lib.unstack_layers(got)), params)
        assert got_tok is not None and got_tok.eot_id == tok.eot_id
    # open_clip weights file + an explicit model config (JSON text)
    b = tmp_path / "imported_file"
    export.main(["import", "--from", "open_clip", "--src",
                 str(out["open_clip"] / "open_clip_model.safetensors"), "--model-config",
                 json.dumps(models.to_open_clip_config(TINY)), "--out", str(b)])
    _assert_same_tree(params_lib.unflatten_params(bundle_lib.read_bundle(b)[1]), params)
    # an HF directory is also accepted directly as checkpoint.init_from
    _assert_same_tree(jax.device_get(sources.load_params(
        str(out["hf"]), models.abstract_params(TINY))), params)


def test_predict_cli(tmp_path, tok):
    from PIL import Image

    bundle_lib.save_bundle(tmp_path / "b", _params(TINY, seed=9), TINY, tok)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run(
        [sys.executable, "-m", "clip_jax.predict", "--model", str(tmp_path / "b"),
         "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "b.png"),
         "--labels", "cat,dog,zebra", "--templates", "a photo of a {}.", "a {}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 8 and lines[0].endswith("a.png") and lines[4].endswith("b.png")
    probs = [float(ln.split("%")[0]) for ln in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.1
    assert {ln.split()[-1] for ln in lines[1:4]} == {"cat", "dog", "zebra"}

    from clip_jax import predict

    m = clip_jax.load(str(tmp_path / "b"))
    want = m.zero_shot([str(tmp_path / "a.png")], ["cat", "dog", "zebra"],
                       ["a photo of a {}.", "a {}"])[0]
    assert lines[1].split()[-1] == ["cat", "dog", "zebra"][int(np.argmax(want))]
    assert predict.parse_templates(["imagenet"])[0] == "a bad photo of a {}."


# ---------------------------------------------------------------------------------------------
# transformers: the exported directory loads in CLIPModel and gives our embeddings


def _features(out):
    import torch

    return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns outputs


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_hf_transformers_embeddings_match(tmp_path, tok, act):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    cfg = TINY.replace(act=act)
    params = _params(cfg, seed=11)
    hf_lib.export_hf(tmp_path / "hf", params, cfg, tok)
    model = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    images, _ = _inputs(cfg, n=4)
    texts = ["a photo of a cat", "a big zebra", "green tree house", "dog"]
    ids = tok(texts, context_length=cfg.text.context_length)
    with torch.no_grad():
        img = _features(model.get_image_features(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())))
        txt = _features(model.get_text_features(input_ids=torch.from_numpy(ids).long()))
    diff_i = np.abs(_unit(img.numpy()) - _apply(cfg, params, images=images)).max()
    diff_t = np.abs(_unit(txt.numpy()) - _apply(cfg, params, text=ids)).max()
    print(f"HF vs clip_jax ({act}): max |diff| image {diff_i:.2e} text {diff_t:.2e}")
    assert diff_i < 1e-4 and diff_t < 1e-4
    assert model.logit_scale.detach().item() == float(params["logit_scale"])

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = hf_tok(texts, padding="max_length", max_length=cfg.text.context_length,
                 truncation=True)["input_ids"]
    for row, ours in zip(enc, ids, strict=True):
        n = int(np.argmax(ours)) + 1
        assert list(row[:n]) == list(ours[:n])


def test_hf_clip_bpe_tokenizer_files(tmp_path, bpe_vocab_path):
    from clip_jax.data.tokenizer import load_tokenizer

    clip_tok = load_tokenizer(f"clip_bpe:{bpe_vocab_path}")
    cfg = TINY.replace(text={"vocab_size": clip_tok.vocab_size})
    hf_lib.export_hf(tmp_path / "hf", _params(cfg), cfg, clip_tok)
    import shutil

    shutil.rmtree(tmp_path / "hf" / "tokenizer")  # rebuilt from vocab.json + merges.txt
    _, _, tok2, _ = hf_lib.import_hf(tmp_path / "hf")
    texts = ["A photo of a CAT!", "naïve café, 3 dogs"]
    np.testing.assert_array_equal(tok2(texts, 16), clip_tok(texts, 16))
    try:
        import transformers
    except ImportError:
        return
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text, ours in zip(texts, clip_tok(texts, 16), strict=True):
        n = int(np.argmax(ours)) + 1
        assert hf_tok(text)["input_ids"][:n] == list(ours[:n])
