"""Resolution and patch-size changes: position embeddings resampled, patch kernel resized.

(a) the resize matrices equal torch's ``F.interpolate`` (bilinear/bicubic, antialias on/off) and
``jax.image.resize``; (b) FlexiViT's rule: the resized kernel on bilinearly resized patches gives
the original tokens, through the whole image tower too; (c) the no-class-token path equals timm's
``resample_abs_pos_embed`` as open_clip's big_vision loader calls it; (d) ``create_model(SRC,
vision={"image_size": N})`` on an imported open_clip ViT equals open_clip's model built at N with
``resize_pos_embed`` on the same state dict, and ``export import --image-size N`` writes the same;
(e) what ``checkpoint.init_from`` reads (a bundle, a training checkpoint; LiT's partial take) at
another image size; bad sizes are one-line errors.
"""

from __future__ import annotations

import copy
import json
import logging
import socket

import flax.linen as nn
import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import bundle, checkpoint, cli, export, models, sources
from clip_jax import config as config_lib
from clip_jax import params as params_lib

TINY = models.get_model_config("tiny")  # 32 px, patch 8: a 4x4 grid, class token, width 32
POS, KERNEL = params_lib.POS_EMBED, params_lib.PATCH_KERNEL


def _perturbed(cfg, seed):
    p = jax.jit(lambda k: nn.meta.unbox(models.CLIP(cfg).init(k, *models.init_inputs(cfg))[
        "params"]))(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x))
                        .astype(np.float32), p)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Perturbed params of the tiny preset and a bundle of them."""
    params = _perturbed(TINY, seed=2)
    return params, bundle.save_bundle(tmp_path_factory.mktemp("tiny") / "b", params, TINY)


def _encode_image(cfg, params, images):
    return np.asarray(models.CLIP(cfg).apply({"params": params}, images,
                                             method=models.CLIP.encode_image))


# ---------------------------------------------------------------------------------------------
# (a) resize matrices


SIZES = [(n_in, n_out) for n_in in (1, 2, 3, 4, 7, 14) for n_out in (1, 2, 5, 7, 10, 16, 24)]


@pytest.mark.parametrize("method", params_lib.METHODS)
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matrix_is_torchs_interpolate(method, antialias):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for n_in, n_out in SIZES:
        basis = torch.eye(n_in).reshape(n_in, 1, 1, n_in)  # each input position alone, along w
        want = F.interpolate(basis, size=(1, n_out), mode=method, antialias=antialias,
                             align_corners=False).reshape(n_in, n_out).T.double().numpy()
        np.testing.assert_allclose(params_lib.resize_matrix(n_in, n_out, method, antialias),
                                   want, atol=1e-5, err_msg=f"{n_in} -> {n_out}")
    grid = np.random.default_rng(0).standard_normal((7, 7, 5)).astype(np.float32)
    for size in (3, 10):  # 2-D and separable, channels last
        want = F.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(size, size),
                             mode=method, antialias=antialias, align_corners=False)
        np.testing.assert_allclose(params_lib.resize_grid(grid, size, method, antialias),
                                   want[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_resize_matrix_is_jax_image_resize_with_antialias():
    # jax.image.resize (big_vision's resize, antialias=True by default) computes the same
    # filters another way (scale_and_translate); rows of an interpolation sum to one
    for method, jax_method in (("bilinear", "linear"), ("bicubic", "cubic")):
        for n_in, n_out in ((1, 5), (4, 7), (7, 4), (14, 5), (3, 16), (7, 24), (2, 1)):
            want = np.asarray(jax.image.resize(np.eye(n_in), (n_in, n_out), jax_method)).T
            got = params_lib.resize_matrix(n_in, n_out, method, True)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{method} {n_in}->{n_out}")
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(params_lib.resize_matrix(5, 5, "bicubic", False), np.eye(5))
    with pytest.raises(ValueError, match="'nearest' is not one of bilinear, bicubic"):
        params_lib.resize_matrix(4, 8, "nearest")


# ---------------------------------------------------------------------------------------------
# (b) FlexiViT


def _resize_patches(images, p, q):
    """Each p x p patch of NHWC ``images`` resized (bilinear, as the kernel's rule) to q x q."""
    n, h, w, c = images.shape
    g = h // p
    patches = images.reshape(n, g, p, g, p, c).transpose(1, 3, 2, 4, 0, 5)  # (g, g, p, p, n, c)
    big = np.stack([np.stack([params_lib.resize_grid(patches[i, j], q, "bilinear")
                              for j in range(g)]) for i in range(g)])     # (g, g, q, q, n, c)
    return big.transpose(4, 0, 2, 1, 3, 5).reshape(n, g * q, g * q, c).astype(np.float32)


@pytest.mark.parametrize("q", [12, 16])
def test_flexivit_kernel_on_resized_patches_gives_the_same_tokens(q):
    rng = np.random.default_rng(1)
    p, dim = 8, 6
    kernel = rng.standard_normal((p, p, 3, dim)).astype(np.float32)
    patches = rng.standard_normal((5, p, p, 3))
    new = params_lib.resize_patch_kernel(kernel, q)
    assert new.shape == (q, q, 3, dim) and new.dtype == np.float32
    big = np.stack([params_lib.resize_grid(x, q, "bilinear") for x in patches])
    np.testing.assert_allclose(np.einsum("nhwc,hwcd->nd", big, new),
                               np.einsum("nhwc,hwcd->nd", patches, kernel), atol=1e-4)
    # the rule itself: pinv(B^T) k with B the 2-D resize (Kronecker product of the 1-D ones)
    b = np.kron(*[params_lib.resize_matrix(p, q, "bilinear")] * 2)
    np.testing.assert_allclose(new.reshape(q * q, -1),
                               np.linalg.lstsq(b.T, kernel.reshape(p * p, -1), rcond=None)[0],
                               atol=1e-4)


def test_create_model_with_another_patch_size_sees_the_same_image(tiny, caplog):
    # patch 8 -> 16 at 32 -> 64 px: the grid stays 4x4, the kernel is resized; the model at 64 px
    # on patch-wise upsampled images gives the original model's embeddings at 32 px
    params, path = tiny
    with caplog.at_level(logging.WARNING, logger="clip_jax.params"):
        model, p16, preprocess, _ = clip_jax.create_model(
            str(path), vision={"patch_size": 16, "image_size": 64})
    assert f"{KERNEL} 8x8 -> 16x16 (FlexiViT pseudo-inverse)" in caplog.text
    assert POS not in caplog.text  # same grid: nothing else resampled
    assert model.cfg.vision.patch_size == 16 and p16["visual"]["conv1"]["kernel"].shape[0] == 16
    assert preprocess(np.zeros((70, 80, 3), np.uint8)).shape == (1, 64, 64, 3)
    images = np.random.default_rng(3).standard_normal((3, 32, 32, 3)).astype(np.float32)
    want = _encode_image(TINY, params, images)
    got = np.asarray(model.apply({"params": p16}, _resize_patches(images, 8, 16),
                                 method=models.CLIP.encode_image))
    np.testing.assert_allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# (c) without a class token, as timm / open_clip's big_vision loader


def test_pos_embed_without_class_token_is_timms_resample():
    torch = pytest.importorskip("torch")
    pos_embed = pytest.importorskip("timm.layers").resample_abs_pos_embed
    pos = np.random.default_rng(4).standard_normal((49, 8)).astype(np.float32)
    for size in (4, 10, 16):
        # open_clip's convert.py (big_vision SigLIP weights): bilinear, antialias=False
        want = pos_embed(torch.from_numpy(pos)[None], (size, size), num_prefix_tokens=0,
                         interpolation="bilinear", antialias=False)[0].numpy()
        got = params_lib.resample_pos_embed(pos, size, class_token=False)
        assert got.shape == (size * size, 8) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)
        # with a class token: timm's defaults (bicubic, antialias, one prefix token) are
        # open_clip's resize_pos_embed
        cls = np.concatenate([pos[:1], pos])
        want = pos_embed(torch.from_numpy(cls)[None], (size, size))[0].numpy()
        np.testing.assert_allclose(params_lib.resample_pos_embed(cls, size, class_token=True),
                                   want, atol=1e-5)


def test_resample_vision_follows_the_target_tree_and_names_bad_grids(caplog):
    d = 8
    pos = np.random.default_rng(5).standard_normal((16, d)).astype(np.float32)
    want = {POS: jax.ShapeDtypeStruct((36, d), np.float32)}  # no visual/class_embedding
    with caplog.at_level(logging.WARNING, logger="clip_jax.params"):
        out = params_lib.resample_vision({POS: pos, "other": 1}, want, "src")
    assert caplog.text.count("\n") == 1 and (
        f"src: resampled {POS} 4x4 -> 6x6 (bilinear, no class token)") in caplog.text
    np.testing.assert_array_equal(out[POS], params_lib.resample_pos_embed(pos, 6, False))
    assert out["other"] == 1
    with pytest.raises(ValueError, match=f"src: {POS} has 15 grid positions, not a square"):
        params_lib.resample_vision({POS: pos[:15]}, want, "src")
    # another width is not resampled: check names the mismatch as before
    with pytest.raises(ValueError, match=r"has shape \(16, 8\), expected \(36, 4\)"):
        params_lib.adapt({POS: pos}, {POS: jax.ShapeDtypeStruct((36, 4), np.float32)}, "src")


# ---------------------------------------------------------------------------------------------
# (d) against open_clip's resize_pos_embed


TINY_JSON = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_create_model_at_another_size_is_open_clips_resize_pos_embed(tmp_path, caplog,
                                                                     monkeypatch):
    try:
        import open_clip
        import safetensors.torch
        import torch
        from open_clip.push_to_hf_hub import save_config_for_hf
    except Exception as e:  # ImportError, or a torchvision built for another torch
        pytest.skip(f"open_clip does not import ({type(e).__name__}: {e})")

    def refuse(*args, **kwargs):  # open_clip must not download anything
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg_path = tmp_path / "clip-jax-resample-tiny.json"
    cfg_path.write_text(json.dumps(TINY_JSON))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("clip-jax-resample-tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hub = tmp_path / "hub"
    hub.mkdir()
    safetensors.torch.save_file(model.state_dict(), hub / "open_clip_model.safetensors")
    save_config_for_hf(model, hub / "open_clip_config.json", model_config=TINY_JSON)

    for size, line in ((56, "4x4 -> 7x7"), (24, "4x4 -> 3x3")):  # up and down
        sd = copy.deepcopy(model.state_dict())
        ref = open_clip.create_model("clip-jax-resample-tiny", force_image_size=size).eval()
        open_clip.model.resize_pos_embed(sd, ref)
        ref.load_state_dict(sd)  # strict
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clip_jax.params"):
            ours, params, _, _ = clip_jax.create_model(str(hub), vision={"image_size": size})
        assert f"resampled {POS} {line} (bicubic, antialias, class token kept)" in caplog.text
        images = np.random.default_rng(size).standard_normal((3, size, size, 3))
        images = images.astype(np.float32)
        with torch.no_grad():
            want = ref.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
        got = ours.apply({"params": params}, images, method=models.CLIP.encode_image)
        want = want.numpy() / np.linalg.norm(want.numpy(), axis=-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=str(size))
        np.testing.assert_allclose(params["visual"]["positional_embedding"],
                                   sd["visual.positional_embedding"].numpy(), atol=1e-5)

    # the CLI writes the same model into a bundle
    out = tmp_path / "bundle56"
    assert export.main(["import", "--from", "open_clip", "--src", str(hub), "--image-size", "56",
                        "--out", str(out)]) == 0
    cfg, flat, _, pre = bundle.read_bundle(out)
    _, at56, _, _ = clip_jax.create_model(str(hub), vision={"image_size": 56})
    assert cfg.vision.image_size == 56 and pre["image_size"] == 56
    for k, v in params_lib.flatten_params(at56).items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)


# ---------------------------------------------------------------------------------------------
# (e) init_from and bad input


def test_init_from_at_another_image_size_resamples(tmp_path, tiny):
    # train.init_from reads sources.load_params (all parameters) or params.take (LiT's
    # init_from_params); both at 48 px from a bundle and from a training checkpoint at 32 px
    params, path = tiny
    run = tmp_path / "run"
    ck = checkpoint.Checkpointer(str(run), config_lib.base_config().checkpoint, None, None)
    ck.save(1, {"params": jax.device_put(params)}, {}, config_lib.base_config()
            .to_json_best_effort(), force=True)  # the run config (tiny, 32 px) saved with it
    ck.wait()
    ck.manager.close()
    cfg48 = TINY.replace(vision={"image_size": 48})
    abstract = models.abstract_params(cfg48)
    want = params_lib.resample_pos_embed(params["visual"]["positional_embedding"], 6, True)
    for kind, src in (("bundle", path), ("checkpoint", run)):
        assert sources.kind_of(src) == kind
        got = params_lib.flatten_params(jax.device_get(sources.load_params(src, abstract)))
        assert got.keys() == params_lib.flatten_params(abstract).keys()
        np.testing.assert_allclose(got[POS], want, atol=1e-6, err_msg=kind)
        np.testing.assert_array_equal(got[KERNEL], params["visual"]["conv1"]["kernel"])
    fresh = jax.device_put(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract))
    lit = params_lib.flatten_params(jax.device_get(params_lib.take(fresh, params, "^visual/pos")))
    np.testing.assert_allclose(lit[POS], want, atol=1e-6)
    assert not lit[KERNEL].any()  # not taken: left as it was


def test_bad_sizes_are_one_line_errors(tmp_path, tiny):
    path = tiny[1]
    for vision, msg in (({"image_size": 36}, "image_size=36 is not a multiple of "
                                             "model.vision.patch_size=8"),
                        ({"image_size": (32, 48)}, r"image_size=\(32, 48\): must be a positive "
                                                   "int"),
                        ({"patch_size": 0}, "patch_size=0: must be a positive int")):
        for name in (str(path), "tiny"):
            with pytest.raises(ValueError, match=msg) as e:
                clip_jax.create_model(name, vision=vision)
            assert "\n" not in str(e.value)
    rc = cli.run(export.main, ["bundle", "--checkpoint", str(path), "--out",
                               str(tmp_path / "o"), "--image-size", "33"])
    assert rc == 2 and not (tmp_path / "o").exists()
