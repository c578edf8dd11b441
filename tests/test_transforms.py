"""Tests for image decoding and the train / eval transforms (clip_jax/data/transforms.py)."""

from __future__ import annotations

import io
import math

import cv2
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from clip_jax.data import transforms

SIZE = 224
MIN_SIZE = math.ceil(SIZE * 1.25)  # what the train pipeline asks the JPEG decoder for


def jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def photo() -> Image.Image:
    """A real photograph shipped with matplotlib (a dependency): 512 x 600 RGB."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def photo_jpegs() -> list[bytes]:
    """The photo re-encoded at LAION-like sizes (some reduced by the DCT draft, some not)."""
    img = photo()
    return [jpeg(np.asarray(img.resize(s, Image.LANCZOS)))
            for s in [(500, 375), (375, 500), (640, 750), (256, 300), (1024, 1200), (200, 150)]]


def torchvision_params(width, height, rng, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, transcribed (torch.rand -> rng)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return j, i, w, h
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def previous_train_crop(data: bytes, size: int, rng) -> np.ndarray:
    """The train crop as the pipeline made it before OpenCV: PIL draft decode, PIL bicubic."""
    img = transforms.decode_image(data, math.ceil(size * 1.25))
    left, top, w, h = transforms.random_resized_crop_params(img.width, img.height, rng)
    out = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# crop parameters and statistics


def test_crop_params_follow_torchvision():
    """Same algorithm and same generator stream as torchvision's get_params; ranges hold."""
    areas, aspects = [], []
    for seed in range(400):
        for width, height in [(500, 375), (80, 50), (30, 200)]:
            a = transforms.random_resized_crop_params(width, height, np.random.default_rng(seed))
            b = torchvision_params(width, height, np.random.default_rng(seed))
            # torchvision draws top before left; the order of the two integer draws differs, so
            # compare the size (drawn first, identical) and the position ranges
            assert a[2:] == b[2:]
            left, top, w, h = a
            assert 0 <= left <= width - w and 0 <= top <= height - h
            if (width, height) == (500, 375):
                areas.append(w * h / (width * height))
                aspects.append(w / h)
    # uniform 0.9-1.0 target areas (a few full-image fallbacks at the 4:3 edge: mean ~0.96)
    assert 0.9 - 0.01 <= min(areas) and max(areas) <= 1.0
    assert 0.945 < np.mean(areas) < 0.97
    assert 3 / 4 - 0.02 <= min(aspects) and max(aspects) <= 4 / 3 + 0.02


def test_random_resized_crop_uses_the_drawn_box():
    """The resize covers exactly the box random_resized_crop_params draws, from the same stream.

    The image is a horizontal ramp (value = x) / vertical ramp (value = y): the mean of the
    output is the box's centre, and after the call the generator is where the params left it.
    """
    height, width = 375, 500
    xs = np.broadcast_to(np.arange(width, dtype=np.float64) * 250 / width, (height, width))
    ys = np.broadcast_to(np.arange(height, dtype=np.float64)[:, None] * 250 / height,
                         (height, width))
    img = np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8)
    for seed in range(20):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        out = transforms.random_resized_crop(img, 64, r1)
        left, top, w, h = transforms.random_resized_crop_params(width, height, r2)
        assert r1.integers(1 << 30) == r2.integers(1 << 30)  # same draws consumed
        cx, cy = (left + (w - 1) / 2) * 250 / width, (top + (h - 1) / 2) * 250 / height
        assert abs(out[..., 0].mean() - cx) < 1.0 and abs(out[..., 1].mean() - cy) < 1.0
        assert out[..., 0].min() >= left * 250 / width - 1
        assert out[..., 0].max() <= (left + w) * 250 / width + 1


def test_train_crop_box_is_drawn_on_the_same_size_as_before():
    """decode_array returns the size PIL's draft gave, so the boxes (and their statistics) are
    the same as with the previous PIL-only pipeline, for every DCT scale."""
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (600, 580), (1200, 700), (2400, 1500), (3000, 2300), (281, 281),
                 (120, 90), (563, 561), (1, 1), (9, 7)]:
        data = jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        pil = transforms.decode_image(data, MIN_SIZE)
        arr = transforms.decode_array(data, MIN_SIZE)
        assert arr.shape == (pil.height, pil.width, 3) and arr.dtype == np.uint8
        s = transforms.draft_scale(w, h, MIN_SIZE)
        assert arr.shape[:2] == (-(-h // s), -(-w // s))
        assert min(arr.shape[:2]) >= min(MIN_SIZE, w, h)
        # same pixels too (libjpeg-turbo in both), within rounding of the IDCT implementations
        assert np.abs(arr.astype(int) - np.asarray(pil)).mean() < 0.1
    assert transforms.draft_scale(2400, 1500, MIN_SIZE) == 4
    assert transforms.draft_scale(2400, 1500, None) == 1


def test_train_crop_close_to_pil_bicubic_on_a_photo():
    """OpenCV's area / cubic resize against the previous PIL bicubic, same boxes."""
    errors = []
    for data in photo_jpegs():
        for seed in range(5):
            new = transforms.random_resized_crop(transforms.decode_array(data, MIN_SIZE), SIZE,
                                                 np.random.default_rng(seed))
            old = previous_train_crop(data, SIZE, np.random.default_rng(seed))
            assert new.shape == old.shape == (SIZE, SIZE, 3) and new.dtype == np.uint8
            err = np.abs(new.astype(np.int16) - old).mean()
            errors.append(err)
            assert err < 3.0  # grey levels out of 255, per crop
            # same box: the images agree far better than with a box 2 pixels narrower
            img = transforms.decode_image(data, MIN_SIZE)
            left, top, w, h = transforms.random_resized_crop_params(
                img.width, img.height, np.random.default_rng(seed))
            shifted = np.asarray(img.resize((SIZE, SIZE), Image.BICUBIC,
                                            box=(left + 2, top, left + w, top + h)))
            assert err < np.abs(shifted.astype(np.int16) - old).mean()
    assert np.mean(errors) < 1.5


def test_transforms_compose():
    rng_img = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    img = Image.fromarray(rng_img)
    a = transforms.train_transform(img, 32, np.random.default_rng(1))
    b = transforms.train_transform(img, 32, np.random.default_rng(1))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    # a PIL image and its pixels give the same crop
    np.testing.assert_array_equal(
        transforms.random_resized_crop(img, 32, np.random.default_rng(3)),
        transforms.random_resized_crop(rng_img, 32, np.random.default_rng(3)))
    # upscaling (box smaller than the output) uses bicubic, like PIL's within a grey level or so
    small = np.asarray(photo().resize((60, 70), Image.LANCZOS))
    up = transforms.random_resized_crop(small, 96, np.random.default_rng(0))
    left, top, w, h = transforms.random_resized_crop_params(60, 70, np.random.default_rng(0))
    ref = np.asarray(Image.fromarray(small).resize((96, 96), Image.BICUBIC,
                                                   box=(left, top, left + w, top + h)))
    assert np.abs(up.astype(int) - ref).mean() < 2.0
    with pytest.raises(TypeError, match="uint8"):
        transforms.random_resized_crop(rng_img.astype(np.float32), 32, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# decoding


def test_decode_array_matches_pil_for_other_kinds():
    """Greyscale / progressive JPEGs, CMYK (PIL fallback), PNG with alpha, full size."""
    arr = np.asarray(photo().resize((300, 260)))
    cases = [jpeg(arr), jpeg(arr, progressive=True), jpeg(arr[..., 0])]
    buf = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(buf, "JPEG")
    cases.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.dstack([arr, arr[..., :1]])).save(buf, "PNG")
    cases.append(buf.getvalue())
    for data in cases:
        for min_size in (None, 100):
            got = transforms.decode_array(data, min_size)
            ref = np.asarray(transforms.decode_image(data, min_size))
            assert got.shape == ref.shape and got.dtype == np.uint8
            assert np.abs(got.astype(int) - ref).mean() < 0.1


def test_sixteen_bit_pngs_scale_to_8_bits():
    """16-bit greyscale (PIL mode I;16) and 16-bit RGB PNGs: scaled, not clipped to white."""
    h, w = 40, 50
    grey = np.linspace(0, 65535, h * w).reshape(h, w).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    grey_png = buf.getvalue()
    assert Image.open(io.BytesIO(grey_png)).mode.startswith("I;16")
    expect = np.round(grey / 257).astype(np.uint8)
    for got in (np.asarray(transforms.decode_image(grey_png)),
                transforms.decode_array(grey_png, 30),
                np.asarray(transforms.to_rgb(Image.open(io.BytesIO(grey_png))))):  # predict/export
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(got[..., c], expect)
    # mode "I" (32-bit integers, as some decoders open 16-bit greyscale) is read as 16-bit
    as_i = Image.fromarray(grey.astype(np.int32), "I")
    np.testing.assert_array_equal(np.asarray(transforms.to_rgb(as_i))[..., 0], expect)

    rgb = np.stack([grey, grey[::-1], 65535 - grey], -1)
    ok, enc = cv2.imencode(".png", rgb[..., ::-1])  # OpenCV writes 16-bit RGB PNGs (BGR order)
    assert ok
    rgb_png = enc.tobytes()
    assert Image.open(io.BytesIO(rgb_png)).tile[0].args == "RGB;16B"  # really 16-bit
    expect = np.round(rgb / 257)
    for got in (np.asarray(transforms.decode_image(rgb_png)), transforms.decode_array(rgb_png)):
        assert got.dtype == np.uint8 and got.shape == (h, w, 3)
        assert np.abs(got.astype(int) - expect).max() <= 1  # PIL keeps the high byte
        assert (got == 255).mean() < 0.05


def test_decode_errors_are_decoder_errors(monkeypatch):
    good = jpeg(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    for bad in (b"this is not an image", good[:200], b"\xff\xd8\xff" + b"\0" * 50,
                good[: len(good) // 2], b"\x89PNG\r\n\x1a\n" + good[8:]):
        with pytest.raises(transforms.DECODE_ERRORS):
            transforms.decode_array(bad, MIN_SIZE)
        with pytest.raises(transforms.DECODE_ERRORS):
            transforms.decode_image(bad)
    # PIL's decompression-bomb limit applies to the simplejpeg path too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 // 3)
    with pytest.raises(Image.DecompressionBombError):
        transforms.decode_array(good)
    assert TypeError not in transforms.DECODE_ERRORS
    assert not issubclass(TypeError, transforms.DECODE_ERRORS)
    assert not issubclass(AttributeError, transforms.DECODE_ERRORS)


def test_normalize():
    white = transforms.normalize(np.full((2, 1, 1, 3), 255, np.uint8))
    expect = (1 - np.array(transforms.CLIP_MEAN)) / np.array(transforms.CLIP_STD)
    np.testing.assert_allclose(white[0, 0, 0], expect, rtol=1e-6)


def test_pixel_scale_is_normalize():
    """pixel_scale (what the train step applies on the device) and normalize agree, for CLIP's
    statistics and for a bundle's own."""
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    for mean, std in ((None, None), ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))):
        m, s = transforms.pixel_scale(mean, std)
        assert m.dtype == s.dtype == np.float32 and m.shape == (3,)
        np.testing.assert_array_equal((x.astype(np.float32) - m) * s,
                                      transforms.normalize(x, mean=mean, std=std))
        ref_mean = np.array(mean or transforms.CLIP_MEAN)
        ref_std = np.array(std or transforms.CLIP_STD)
        np.testing.assert_allclose(transforms.normalize(x, mean=mean, std=std),
                                   (x / 255 - ref_mean) / ref_std, rtol=1e-5, atol=1e-5)
