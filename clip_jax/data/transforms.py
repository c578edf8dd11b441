"""Image transforms (PIL + NumPy) producing NHWC float32 arrays, CLIP-normalised.

* :func:`train_transform`: random resized crop (area scale 0.9-1.0 of the image, aspect ratio
  3/4-4/3, torchvision's sampling algorithm) resized bicubically to ``size x size``; the crop is
  drawn from the ``numpy.random.Generator`` passed in, so the result is a pure function of
  (image, generator state).
* :func:`eval_transform`: resize the shorter side to ``size`` (bicubic) then center crop, exactly
  as CLIP's / open_clip's evaluation preprocessing.
* :func:`normalize`: ``(x / 255 - CLIP_MEAN) / CLIP_STD`` in float32, for one image or a batch.

The crop / resize functions return ``uint8`` (H, W, 3) arrays (``random_resized_crop``,
``resize_center_crop``): the data pipeline ships those from its workers (4x less data than
float32) and normalises whole batches with :func:`normalize`. ``train_transform`` /
``eval_transform`` are the composed one-image versions.

:func:`decode_image` decodes bytes to an RGB PIL image; with ``min_size`` it lets the JPEG
decoder downscale by 1/2, 1/4 or 1/8 in the DCT (``Image.draft``) while keeping both sides at
least ``min_size``, which makes decoding large photos several times faster.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_SCALE = (0.9, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)

_MEAN255 = np.asarray(CLIP_MEAN, np.float32) * 255
_INV_STD255 = 1 / (np.asarray(CLIP_STD, np.float32) * 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of ``img`` (palette / grey / alpha / CMYK images converted as CLIP does)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decode image bytes to a loaded RGB image; raises on corrupt or truncated data.

    ``min_size``: allow the decoder to return a reduced image (JPEG DCT scaling) whose sides are
    both at least ``min_size`` (never smaller than that, never upscaled).
    """
    img = Image.open(io.BytesIO(data))
    if min_size is not None and img.format == "JPEG":
        w, h = img.size
        # draft() keeps the result >= the requested size in both dimensions
        img.draft("RGB", (min(w, min_size), min(h, min_size)))
    img.load()
    return to_rgb(img)


def random_resized_crop_params(
        width: int, height: int, rng: np.random.Generator,
        scale: tuple[float, float] = TRAIN_SCALE,
        ratio: tuple[float, float] = TRAIN_RATIO) -> tuple[int, int, int, int]:
    """(left, top, crop_w, crop_h) as torchvision's RandomResizedCrop.get_params draws them."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
    # fallback: central crop at the clamped aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = TRAIN_SCALE,
                        ratio: tuple[float, float] = TRAIN_RATIO) -> np.ndarray:
    """Random crop (see :func:`random_resized_crop_params`) resized bicubically: uint8 (s, s, 3)."""
    img = to_rgb(img)
    left, top, w, h = random_resized_crop_params(img.width, img.height, rng, scale, ratio)
    out = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    return np.asarray(out, dtype=np.uint8)


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), then the central ``size x size``: uint8 (s, s, 3).

    Same arithmetic as torchvision's ``Resize(size)`` + ``CenterCrop(size)`` used by CLIP.
    """
    img = to_rgb(img)
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def normalize(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (..., 3) in [0, 255] -> float32 ``(x/255 - CLIP_MEAN) / CLIP_STD`` (into ``out``)."""
    if out is None:
        out = np.empty(images.shape, np.float32)
    np.subtract(images, _MEAN255, out=out, dtype=np.float32)
    np.multiply(out, _INV_STD255, out=out)
    return out


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop + CLIP normalisation: float32 (size, size, 3)."""
    return normalize(random_resized_crop(img, size, rng))


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Resize shorter side + center crop + CLIP normalisation: float32 (size, size, 3)."""
    return normalize(resize_center_crop(img, size))
