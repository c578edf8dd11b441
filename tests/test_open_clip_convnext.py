"""open_clip's ConvNeXt CLIP (a timm trunk in open_clip's TimmModel) in and out of clip_jax,
exactly: a random-init tiny one (a timm ConvNeXt registered at small widths and depths, every
weight perturbed, linear and MLP projection heads) imports through ``clip_jax.export import
--from open_clip`` with open_clip's eval embeddings and exports through ``clip_jax.export
open_clip`` back into a strictly loading open_clip model with the same state and embeddings;
open_clip's convnext_*.json configs parse as the presets. Skips without torch / open_clip /
timm."""

from __future__ import annotations

import json
import os
import socket

import jax
import numpy as np
import pytest
from conftest import export_open_clip_bundle, import_open_clip_hub

import clip_jax
from clip_jax import models, train

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-4
TRUNK = "convnext_cjtest"
TRUNK_SIZE = ((1, 1, 2, 1), 8, 1e-6)  # blocks per stage, first channels, LayerNorm eps


@pytest.fixture
def no_network(monkeypatch):  # open_clip must not download anything
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_trunk(monkeypatch, no_network):
    """A timm ConvNeXt at test size, registered as timm registers its own ``convnext_*``, and
    made known to clip_jax beside timm's."""
    from timm.models import register_model
    from timm.models.convnext import _create_convnext

    if TRUNK not in timm.list_models():
        def convnext_cjtest(pretrained=False, **kwargs):
            args = dict(depths=TRUNK_SIZE[0], dims=tuple(TRUNK_SIZE[1] * 2**i for i in range(4)))
            return _create_convnext(TRUNK, pretrained=pretrained, **dict(args, **kwargs))
        register_model(convnext_cjtest)
    monkeypatch.setitem(models.presets.CONVNEXT_TRUNKS, TRUNK, TRUNK_SIZE)
    return TRUNK


def _oc_json(proj: str) -> dict:
    return {"embed_dim": 24,
            "vision_cfg": {"timm_model_name": TRUNK, "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": proj, "timm_drop": 0.0,
                           "timm_drop_path": 0.1, "image_size": 64},
            "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2,
                         "layers": 1}}


def _inputs():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 64, 64, 3)).astype(np.float32)
    ids = rng.integers(1, 500, (3, 16)).astype(np.int32)
    ids[:, -1] = 511
    return images, ids


def _assert_same(model, m, label):
    images, ids = _inputs()
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 normalize=True).numpy()
        txt = model.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()
    di = float(np.abs(m.encode_image(images) - img).max())
    dt = float(np.abs(m.encode_text(ids) - txt).max())
    print(f"{label}: max |diff| image {di:.2e} text {dt:.2e}")
    assert di < TOL and dt < TOL, (di, dt)


@pytest.mark.parametrize("proj", ["linear", "mlp"])
def test_open_clip_convnext_imports_and_exports_exactly(tmp_path, tiny_trunk, proj):
    oc_cfg = _oc_json(proj)
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=oc_cfg["embed_dim"], vision_cfg=oc_cfg["vision_cfg"],
                           text_cfg=oc_cfg["text_cfg"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = model.state_dict()
    assert "visual.trunk.stages.1.downsample.1.weight" in sd
    hub, bundle = import_open_clip_hub(tmp_path, sd, oc_cfg)
    m = clip_jax.load(str(bundle))
    assert m.cfg == models.from_open_clip_config(oc_cfg) and m.cfg.vision.family == "convnext"
    assert m.cfg.vision.proj_type == proj and m.cfg.vision.drop_path == 0.1
    _assert_same(model, m, f"open_clip ConvNeXt ({proj}) -> clip_jax")

    out, exported, written = export_open_clip_bundle(tmp_path, bundle)
    assert sorted(exported) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(exported[k], v), k
    assert written["vision_cfg"] == oc_cfg["vision_cfg"]
    assert models.from_open_clip_config(written) == m.cfg
    back = open_clip.create_model(f"local-dir:{out}").eval()  # loads strictly
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k
    _assert_same(back, m, f"clip_jax -> open_clip ConvNeXt ({proj})")


def test_open_clips_convnext_jsons_parse_as_the_presets():
    folder = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
    names = [f[:-5] for f in sorted(os.listdir(folder)) if f.startswith("convnext")]
    assert {"convnext_base", "convnext_base_w", "convnext_large_d", "convnext_xxlarge"} <= set(
        names)
    for name in names:
        with open(os.path.join(folder, f"{name}.json")) as f:
            cfg = models.from_open_clip_config(json.load(f))
        assert cfg == models.get_model_config(name), name
        assert models.from_open_clip_config(models.to_open_clip_config(cfg)) == cfg
    base = models.abstract_params(models.get_model_config("convnext_base"))
    assert models.count_params(base) == 151518849  # open_clip's convnext_base
    with pytest.raises(ValueError, match="no timm ConvNeXt trunk"):
        models.to_open_clip_config(models.get_model_config("convnext_base").replace(
            vision={"width": 64}))


@pytest.mark.slow
def test_a_convnext_trains_with_drop_path(tmp_path, tiny_trunk):
    import sys

    from clip_jax import input_pipeline
    from clip_jax.data.synthetic import SyntheticSource

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
    import tiny

    path = tmp_path / "cn.json"
    path.write_text(json.dumps(_oc_json("linear")))
    c = tiny.get_config()
    c.model.name, c.model.open_clip_config, c.batch_size = "", str(path), 8
    c.mesh.data = 2
    setup = train.build(c, jax.devices()[:2])
    state = train.init_state(setup)
    assert not jax.tree.leaves(state.batch_stats)  # LayerNorm only: no statistics
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(8, m.vision.image_size, m.text.context_length, m.text.vocab_size)
    for _ in range(2):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        assert np.isfinite(float(metrics["loss"]))
