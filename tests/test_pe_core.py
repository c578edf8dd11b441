"""The Perception Encoder family (``PE-Core-*``): timm's RoPE tables, open_clip's PE-Core CLIP
in and out of clip_jax exactly (a random-init shrunk one: a timm ``vit_pe_core`` trunk registered
at test size, with and without class token, every weight perturbed, imported through
``clip_jax.export import --from open_clip`` with open_clip's eval embeddings, exported through
``clip_jax.export open_clip`` into a strictly loading open_clip model with the same state and
embeddings), open_clip's PE-Core JSONs as the presets, the FLOPs against XLA's count, training on
8 devices equal to 1, and the recipe compiled for v5e. Skips without torch / open_clip / timm
(libtpu for the compile)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import export_open_clip_bundle, import_open_clip_hub

import clip_jax
from clip_jax import flops, input_pipeline, models, train
from clip_jax import topology as tpu
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.models import pe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
# test trunks: patch 8 at 32 px (a 4 x 4 grid), width 32, 2 blocks of 2 heads, MLP 64
TRUNKS = {"vit_pe_core_cjtest_patch8_32": (8, 32, 2, 2, 64, 32, True),
          "vit_pe_core_cjtestg_patch8_32": (8, 32, 2, 2, 64, 32, False)}


def _oc_json(trunk: str) -> dict:
    return {"embed_dim": 24,
            "vision_cfg": {"image_size": 32, "timm_model_name": trunk,
                           "timm_model_pretrained": False, "timm_pool": "map",
                           "timm_proj": None},
            "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2,
                         "layers": 1},
            "custom_text": True}


def _eva_builder(name, create_eva, layer_norm):
    """timm's ``vit_pe_core_*`` model function at TRUNKS[name]'s size (timm's own arguments)."""
    p, w, layers, heads, mlp, size, cls = TRUNKS[name]
    args = dict(patch_size=p, embed_dim=w, depth=layers, num_heads=heads, mlp_ratio=mlp / w,
                global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                use_rot_pos_emb=True, ref_feat_shape=(size // p, size // p),
                rope_grid_offset=float(cls), rope_grid_indexing="xy", attn_pool_num_heads=8,
                attn_pool_mlp_ratio=4.0, norm_layer=functools.partial(layer_norm, eps=1e-5),
                class_token=cls, img_size=size)

    def make(pretrained=False, **kwargs):
        return create_eva(name, pretrained=pretrained, **dict(args, **kwargs))

    make.__name__ = name
    return make


@pytest.fixture
def test_trunks(monkeypatch):
    """timm PE-Core trunks at test size, registered as timm registers its ``vit_pe_core_*``
    (the cjtest one as PE-Core-T/S/B/L: class token, RoPE grid offset 1; cjtestg as bigG:
    neither), made known to clip_jax beside timm's; no network."""
    timm = pytest.importorskip("timm")
    from timm.layers import LayerNorm
    from timm.models import register_model
    from timm.models.eva import _create_eva

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in TRUNKS:
        if name not in timm.list_models():
            register_model(_eva_builder(name, _create_eva, LayerNorm))
        monkeypatch.setitem(pe.PE_TRUNKS, name, TRUNKS[name])
    return list(TRUNKS)


def test_rope_tables_are_timms():
    """rope_table against timm's RotaryEmbeddingCat as Eva builds it for PE (in_pixels False,
    xy indexing, a reference grid), at the reference grid and at others (rescaled)."""
    pytest.importorskip("torch")
    sincos = pytest.importorskip("timm.layers.pos_embed_sincos")
    for hd, ref, offset, grid in ((64, (14, 14), 1.0, (14, 14)), (16, (4, 4), 1.0, (3, 5)),
                                  (96, (32, 32), 0.0, (32, 32)), (64, (24, 24), 1.0, (28, 20))):
        rope = sincos.RotaryEmbeddingCat(hd, in_pixels=False, feat_shape=None,
                                         ref_feat_shape=ref, grid_offset=offset,
                                         grid_indexing="xy")
        want = rope.get_embed(shape=list(grid)).numpy()
        got = pe.rope_table(grid, hd, ref, offset)
        assert got.shape == want.shape == (grid[0] * grid[1], 2 * hd)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=str((hd, ref, grid)))


def _inputs():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(1, 500, (3, 16)).astype(np.int32)
    ids[:, -1] = 511
    return images, ids


def _assert_same(model, m, label):
    torch = pytest.importorskip("torch")
    images, ids = _inputs()
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 normalize=True).numpy()
        txt = model.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()
    di = float(np.abs(m.encode_image(images) - img).max())
    dt = float(np.abs(m.encode_text(ids) - txt).max())
    print(f"{label}: max |diff| image {di:.2e} text {dt:.2e}")
    assert di < TOL and dt < TOL, (di, dt)


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_open_clip_pe_core_imports_and_exports_exactly(tmp_path, test_trunks, trunk):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("safetensors.torch")
    oc_cfg = _oc_json(trunk)
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=oc_cfg["vision_cfg"],
                                     text_cfg=oc_cfg["text_cfg"]).eval()  # as PE-Core is built
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    sd = model.state_dict()
    assert ("visual.trunk.cls_token" in sd) == TRUNKS[trunk][-1]
    assert "visual.trunk.attn_pool.kv.weight" in sd and "text.token_embedding.weight" in sd
    hub, bundle = import_open_clip_hub(tmp_path, sd, oc_cfg)
    m = clip_jax.load(str(bundle))
    assert m.cfg == models.from_open_clip_config(oc_cfg) and m.cfg.vision.family == "pe"
    _assert_same(model, m, f"open_clip PE ({trunk}) -> clip_jax")
    direct = clip_jax.load(str(hub))  # the model source resolver reads the hub folder too
    assert direct.cfg == m.cfg
    np.testing.assert_array_equal(direct.encode_image(_inputs()[0]), m.encode_image(_inputs()[0]))

    out, exported, written = export_open_clip_bundle(tmp_path, bundle)
    plain = {k.removeprefix("text."): v for k, v in sd.items()}  # CLIP's names
    assert sorted(exported) == sorted(plain)
    for k, v in plain.items():
        assert torch.equal(exported[k], v), k
    assert written["vision_cfg"] == oc_cfg["vision_cfg"]
    assert models.from_open_clip_config(written) == m.cfg
    back = open_clip.create_model(f"local-dir:{out}").eval()  # loads strictly
    for k, v in back.state_dict().items():
        assert torch.equal(v, plain[k]), k
    _assert_same(back, m, f"clip_jax -> open_clip PE ({trunk})")


def test_open_clips_pe_core_jsons_parse_as_the_presets():
    open_clip = pytest.importorskip("open_clip")
    folder = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
    names = [f[:-5] for f in sorted(os.listdir(folder)) if f.startswith("PE-Core")]
    assert set(names) == {"PE-Core-T-16-384", "PE-Core-S-16-384", "PE-Core-B-16",
                          "PE-Core-L-14-336", "PE-Core-bigG-14-448"}
    for name in names:
        with open(os.path.join(folder, f"{name}.json")) as f:
            cfg = models.from_open_clip_config(json.load(f))
        assert cfg == models.get_model_config(name), name
        assert name in clip_jax.list_models()
        assert models.from_open_clip_config(models.to_open_clip_config(cfg)) == cfg
    # open_clip.create_model("PE-Core-B-16" / "PE-Core-T-16-384").parameters(), counted offline
    for name, n in (("PE-Core-B-16", 447660545), ("PE-Core-T-16-384", 69546113)):
        assert models.count_params(models.abstract_params(models.get_model_config(name))) == n
    big = models.get_model_config("PE-Core-bigG-14-448")
    assert not big.vision.class_token and big.vision.mlp_dim == 8960


@pytest.mark.parametrize("change, message", [
    (dict(timm_proj="linear"), "vision_cfg.timm_proj='linear' is not supported .* PE-Core"),
    (dict(timm_pool="avg"), "vision_cfg.timm_pool='avg' is not supported"),
    (dict(image_size=448), "image_size=448 differs from the 224px"),
    (dict(timm_model_name="vit_pe_core_huge_patch14_224"), "knows the PE-Core trunks"),
    (dict(patch_dropout=0.5), "vision_cfg.patch_dropout=0.5 is not supported"),
])
def test_bad_pe_core_jsons_and_switches_fail_in_one_line(change, message):
    base = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "timm_model_name":
                                              "vit_pe_core_base_patch16_224",
                                              "timm_pool": "map", "timm_proj": None},
            "text_cfg": {"context_length": 32, "width": 1024, "heads": 16, "layers": 24}}
    base["vision_cfg"].update(change)
    with pytest.raises(ValueError, match=message) as e:
        models.from_open_clip_config(base)
    assert "\n" not in str(e.value)


def test_pe_switches_are_checked_and_export_refuses_what_timm_cannot_build():
    cfg = models.get_model_config("PE-Core-B-16")
    for change, message in ((dict(pool="tok"), "model.vision.pool='tok': the Perception"),
                            (dict(patch_dropout=0.5), "patch_dropout=0.5: the Perception"),
                            (dict(heads=128), "head width 6 must be a multiple of 4"),
                            (dict(attn_pooler_heads=5), "attn_pooler_heads=5: must divide")):
        with pytest.raises(ValueError, match=message):
            cfg.replace(vision=change)
    with pytest.raises(ValueError, match="has neither"):
        cfg.replace(qk_norm=True)
    with pytest.raises(ValueError, match="is no timm PE-Core trunk"):
        models.to_open_clip_config(cfg.replace(vision=dict(image_size=448)))
    from clip_jax.interop import keymap
    with pytest.raises(ValueError, match="transformers' CLIP classes hold no PE-Core"):
        keymap.external_shapes(cfg, "hf")


def test_pe_runs_at_other_sizes_with_timms_rescaled_rope():
    """``any_size`` (self-distillation's views): a 48 px view of a 32 px model gets the RoPE
    table of its 6 x 6 grid rescaled to the model's 4 x 4 (timm's ref_feat_shape)."""
    cfg = models.ModelConfig(embed_dim=24, vision=models.VisionConfig(
        32, 8, 32, 1, 2, 64, pool="map", family="pe"), text=models.get_model_config(
        "tiny").text)
    model = pe.PerceptionEncoder(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    x, tokens = jax.jit(functools.partial(model.apply, tokens=True, any_size=True))(
        params, jnp.ones((2, 48, 48, 3)))
    assert np.all(np.isfinite(np.asarray(x)))
    assert x.shape == (2, 24) and tokens.shape == (2, 37, 32)
    with pytest.raises(ValueError, match="built for 32x32"):
        model.apply(params, jnp.ones((2, 48, 48, 3)))
    t = pe.rope_table((6, 6), 16, (4, 4), 1.0)
    # row 1: x = (1 + 1) / 6 * 4, y = (0 + 1) / 6 * 4; channel 0 x's first band, 8 y's
    np.testing.assert_allclose(t[1, [0, 1, 8]], np.sin([4 / 3, 4 / 3, 2 / 3]), rtol=1e-6)


def test_pe_flops_match_xla_on_an_unrolled_compile():
    """The family's analytic forward FLOPs of the image tower against XLA's count (every block
    unrolled): within 3% (XLA adds the element-wise work: RoPE, softmax, norms, GELU)."""
    cfg = models.ModelConfig(embed_dim=96, vision=models.VisionConfig(
        64, 8, 128, 2, 4, 512, pool="map", family="pe"), text=models.get_model_config(
        "tiny").text)
    model = models.CLIP(cfg)
    fn = jax.jit(lambda p, x: model.apply(models.variables(p), x,
                                          method=models.CLIP.encode_image))
    cost = fn.lower(models.abstract_params(cfg), jax.ShapeDtypeStruct(
        (1, 64, 64, 3), jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert flops.tower_flops(cfg)["vision"] == pytest.approx(cost["flops"], rel=0.03)


def _config(tmp_path, devices: int):
    import sys
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny

    path = tmp_path / "pe.json"
    oc = _oc_json("vit_pe_core_cjtest_patch8_32")
    path.write_text(json.dumps(oc))
    c = tiny.get_config()
    c.model.name, c.model.open_clip_config, c.batch_size = "", str(path), 16
    c.mesh.data, c.mesh.fsdp = (4, 2) if devices == 8 else (1, 1)
    return c


@pytest.mark.slow  # ~60 s: a done-when check, run with -m slow (docs/benchmarks.md)
def test_pe_trains_on_8_devices_like_on_1(tmp_path, monkeypatch):
    """A PE-Core CLIP (the test trunk, class token and RoPE) trains the same on 8 simulated
    devices (4 data x 2 FSDP) as on 1: losses and parameters step by step."""
    monkeypatch.setitem(pe.PE_TRUNKS, "vit_pe_core_cjtest_patch8_32",
                        TRUNKS["vit_pe_core_cjtest_patch8_32"])
    assert jax.device_count() >= 8
    runs = []
    for n in (8, 1):
        setup = train.build(_config(tmp_path, n), jax.devices()[:n])
        assert setup.model_cfg.vision.family == "pe"
        state = train.init_state(setup)
        step = train.make_train_step(setup)
        m = setup.model_cfg
        data = SyntheticSource(16, m.vision.image_size, m.text.context_length,
                               m.text.vocab_size, 4, 0.5, 0)
        losses = []
        for _ in range(3):
            state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding,
                                                                  next(data)))
            losses.append(float(metrics["loss"]))
        runs.append((np.array(losses), jax.device_get(state.params)))
    (l8, p8), (l1, p1) = runs
    assert np.all(np.isfinite(l1)) and l1[-1] != l1[0]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)


def _recipe(platform):
    spec = importlib.util.spec_from_file_location(
        "pe_core_b16", os.path.join(REPO, "configs", "pe_core_b16.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(platform)


@pytest.mark.skipif(not tpu.libtpu_available(), reason="libtpu is not installed: no TPU "
                    "compiler to ask")
def test_the_pe_core_recipe_compiles_for_v5e():
    """configs/pe_core_b16.py's v5e-256 recipe (PE-Core-B-16: scanned, bf16, full remat,
    its loss as written) with its towers shrunk (PE-T's image width 192, 3 heads, at 64 px;
    2 blocks per tower; text width 128) at batch 32, compiled for v5e:2x2 by
    clip_jax.plan (memory only: one compile)."""
    from clip_jax import plan

    c = _recipe("v5e-256")
    assert c.model.name == "PE-Core-B-16" and c.model.scan and c.model.remat == "full"
    v, t = c.model.vision, c.model.text
    v.width, v.heads, v.mlp_dim, v.layers, v.image_size = 192, 3, 768, 2, 64
    t.width, t.heads, t.mlp_dim, t.layers = 128, 2, 512, 2
    c.model.embed_dim = 128
    c.batch_size, c.accum_steps = 32, 1
    c.mesh.data, c.mesh.fsdp = 2, 2
    r = plan.compiled_plan(c, "v5e:2x2", with_cost=False)
    assert r["fits"] and r["chips"] == 4 and r["scan"] and r["memory_bytes"]["total"] > 0
    assert r["analytic_tflops_per_chip"] > 0  # the family's FLOPs counted in the step


def test_pe_layer_decay_factors_equal_timms(test_trunks):
    """The family's layer ids: per open_clip name (``visual.trunk.*``, timm's Eva), our
    ``optimizer.layer_decay`` factors equal timm's ``param_groups_layer_decay`` lr_scale."""
    timm = pytest.importorskip("timm")
    timm_optim = pytest.importorskip("timm.optim")
    from clip_jax import optimizer
    from clip_jax.interop import keymap

    trunk, decay = "vit_pe_core_cjtest_patch8_32", 0.6
    ref = timm.create_model(trunk, num_classes=24)
    names = {id(p): n for n, p in ref.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"]
              for g in timm_optim.param_groups_layer_decay(ref, layer_decay=decay)
              for p in g["params"]}
    cfg = models.from_open_clip_config(_oc_json(trunk))
    abstract = models.abstract_params(cfg)
    factors = optimizer.layer_decay_factors(abstract, decay, cfg)
    filled = jax.tree.map(lambda x, f: np.full(x.shape, f, np.float32), abstract, factors)
    external = keymap.to_external(filled, cfg, "open_clip")
    ours = {k[len("visual.trunk."):]: np.asarray(a) for k, a in external.items()
            if k.startswith("visual.trunk.")}
    assert set(ours) == set(scales)
    for name, arr in ours.items():
        np.testing.assert_allclose(arr, scales[name], rtol=1e-6, err_msg=name)


def test_a_scanned_rematerialised_pe_tower_equals_the_unrolled_one():
    """model.scan (the recipes' stacked blocks, RoPE broadcast to each) with full remat gives
    the unrolled tower's embeddings from the same (stacked) weights."""
    from clip_jax import params as params_lib

    cfg = models.ModelConfig(embed_dim=24, vision=models.VisionConfig(
        32, 8, 32, 2, 2, 64, pool="map", family="pe"), text=models.get_model_config(
        "tiny").text)
    model = models.CLIP(cfg)
    rng = np.random.default_rng(0)
    p = jax.jit(model.init)(jax.random.key(0), *models.init_inputs(cfg))["params"]
    p = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), p)
    stacked = params_lib.unflatten_params(params_lib.stack_layers(params_lib.flatten_params(p)))
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = {}
    for scan, params in ((False, p), (True, stacked)):
        m = models.CLIP(cfg.replace(scan=scan, remat="full" if scan else "none"))
        got[scan] = np.asarray(jax.jit(lambda q, m=m: m.apply(
            {"params": q}, images, method=models.CLIP.encode_image))(params))
    np.testing.assert_allclose(got[True], got[False], atol=1e-6)
