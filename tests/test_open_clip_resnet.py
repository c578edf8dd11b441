"""open_clip's ModifiedResNet CLIP in and out of clip_jax, exactly: a random-init tiny open_clip
ResNet (every weight and BatchNorm running statistic perturbed) imports through ``clip_jax.export
import --from open_clip`` with open_clip's eval embeddings, and exports through ``clip_jax.export
open_clip`` back into a strictly loading open_clip model with the same state and embeddings.
Skips where torch / open_clip do not import."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import export_open_clip_bundle, import_open_clip_hub

import clip_jax
from clip_jax import models

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-4
# small widths and depths; layer2 with two blocks (a block without downsample)
OC_JSON = {"embed_dim": 24,
           "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 8, "head_width": 32,
                          "patch_size": None},
           "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2,
                        "layers": 1}}
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def no_network(monkeypatch):  # open_clip must not download anything
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _perturbed_model(quick_gelu: bool):
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=OC_JSON["embed_dim"], vision_cfg=OC_JSON["vision_cfg"],
                           text_cfg=OC_JSON["text_cfg"], quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(1, 1000, ())))
    return model


def _inputs():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 64, 64, 3)).astype(np.float32)
    ids = rng.integers(1, 500, (3, 16)).astype(np.int32)
    ids[:, -1] = 511  # the end token (the largest id) where argmax pooling finds it
    return images, ids


def _embeddings(model, images, ids):
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 normalize=True)
        txt = model.encode_text(torch.from_numpy(ids).long(), normalize=True)
    return img.numpy(), txt.numpy()


def _assert_same(model, m, label):
    images, ids = _inputs()
    img, txt = _embeddings(model, images, ids)
    di = float(np.abs(m.encode_image(images) - img).max())
    dt = float(np.abs(m.encode_text(ids) - txt).max())
    print(f"{label}: max |diff| image {di:.2e} text {dt:.2e}")
    assert di < TOL and dt < TOL, (di, dt)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_resnet_imports_and_exports_exactly(tmp_path, quick_gelu):
    oc_cfg = dict(OC_JSON, quick_gelu=True) if quick_gelu else OC_JSON
    model = _perturbed_model(quick_gelu)
    sd = model.state_dict()
    assert {"visual.layer1.0.downsample.1.running_var", "visual.attnpool.q_proj.weight"} <= set(sd)
    hub, bundle = import_open_clip_hub(tmp_path, sd, oc_cfg)
    m = clip_jax.load(str(bundle))
    assert m.cfg == models.from_open_clip_config(oc_cfg) and m.cfg.vision.family == "resnet"
    _assert_same(model, m, "open_clip ResNet -> clip_jax")

    out, exported, written = export_open_clip_bundle(tmp_path, bundle)
    assert sorted(exported) == sorted(sd)
    for k, v in sd.items():  # bit-exact, running statistics and int64 counts included
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    back = open_clip.create_model(f"local-dir:{out}").eval()  # loads strictly
    assert type(back.visual).__name__ == "ModifiedResNet"
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k
    _assert_same(back, m, "clip_jax -> open_clip ResNet")


def test_hf_format_refuses_a_resnet():
    from clip_jax.interop import keymap

    with pytest.raises(ValueError, match="transformers has no ModifiedResNet"):
        keymap.external_shapes(models.get_model_config("tiny-rn"), "hf")
