"""Image decoding and transforms (NumPy / PIL / OpenCV / simplejpeg) producing NHWC arrays.

* :func:`random_resized_crop` (training): random crop (area scale 0.9-1.0 of the image, aspect
  ratio 3/4-4/3, torchvision's sampling algorithm) resized to ``size x size`` with OpenCV
  (``INTER_AREA`` when both sides shrink, ``INTER_CUBIC`` otherwise); the crop is drawn from the
  ``numpy.random.Generator`` passed in, so the result is a pure function of (image, generator
  state). Returns ``uint8`` (s, s, 3): the train pipeline ships raw uint8 pixels to the device,
  which normalises them inside the jitted step with :data:`CLIP_MEAN` / :data:`CLIP_STD`.
* :func:`resize_center_crop` (evaluation / inference): shorter side to ``size`` (PIL bicubic)
  then center crop, exactly as CLIP's / open_clip's evaluation preprocessing; ``uint8``.
* :func:`normalize`: ``(x / 255 - CLIP_MEAN) / CLIP_STD`` in float32, for one image or a batch
  (the evaluation and inference paths, which still feed float32; another mean / std may be
  given). The one place pixel normalisation is written on the host.
* ``train_transform`` / ``eval_transform``: the composed one-image float32 versions.

Decoding: :func:`decode_image` returns an RGB PIL image (evaluation, tools);
:func:`decode_array` returns uint8 (H, W, 3) pixels for the train pipeline, decoding JPEGs with
libjpeg-turbo through ``simplejpeg`` (faster than PIL, same pixels) and everything else with PIL.
With ``min_size`` both let the JPEG decoder downscale by 1/2, 1/4 or 1/8 in the DCT while
keeping both sides at least ``min_size`` (PIL's ``Image.draft`` rule, so both return the same
size). 16-bit images (PNG ``I;16`` greyscale, 16-bit RGB) are scaled to 8 bits, not clipped.
Decoding failures raise one of :data:`DECODE_ERRORS`; nothing else is caught by the callers.

Measured choices (``benchmarks/data_pipeline.py``, docs/benchmarks.md "Data pipeline"): for
the train crop OpenCV's ``INTER_AREA`` is ~2x faster than PIL's antialiased bicubic and within
~0.5-1.1 grey levels (mean absolute error, 0-255) of it; the crop box is drawn exactly as before.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_SCALE = (0.9, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)

# What a decoder raises on bad data: PIL (UnidentifiedImageError and "image file is truncated"
# are OSErrors; a few plugins raise SyntaxError or EOFError on malformed chunks;
# DecompressionBombError for oversized images) and simplejpeg (ValueError). Anything else (a
# TypeError, an AttributeError, MemoryError...) is a bug or a real failure and must propagate.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

_JPEG_MAGIC = b"\xff\xd8\xff"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale (``I;16*``, ``I``) -> ``L`` scaled by 255/65535 (PIL would clip at 255)."""
    a = np.asarray(img)
    if img.mode == "I":  # 32-bit integer mode: PNG/TIFF 16-bit greyscale as some decoders open it
        a = np.clip(a, 0, 65535)
    a = (a.astype(np.uint32) * 255 + 32767) // 65535  # round(x * 255 / 65535)
    return Image.fromarray(a.astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of ``img`` (palette / grey / alpha / CMYK images converted as CLIP does).

    16-bit greyscale is scaled to 8 bits (PIL's own conversion clips it, turning a 16-bit PNG
    white); 16-bit RGB(A) PNGs are already reduced to 8 bits per channel by PIL when opened.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def draft_scale(width: int, height: int, min_size: int | None) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) PIL's ``draft`` picks to keep both sides >= min_size."""
    if min_size is None:
        return 1
    scale = min(width // min(width, min_size), height // min(height, min_size))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decode image bytes to a loaded RGB image; raises one of DECODE_ERRORS on bad data.

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


def decode_array(data: bytes, min_size: int | None = None) -> np.ndarray:
    """Decode image bytes to uint8 (H, W, 3) RGB pixels; raises one of DECODE_ERRORS.

    Same size and pixels as ``np.asarray(decode_image(data, min_size))``: JPEGs are decoded by
    libjpeg-turbo through simplejpeg at the DCT scale PIL's ``draft`` would pick (faster than
    PIL, which also decodes into a PIL image first); other formats, CMYK JPEGs and JPEGs
    simplejpeg refuses go through PIL (which then decodes them or raises).
    """
    if data[:3] == _JPEG_MAGIC:
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            h, w, colorspace = 0, 0, ""  # let PIL decide (and raise)
        limit = Image.MAX_IMAGE_PIXELS
        # CMYK / YCCK: PIL's conversion (Adobe inversion) differs from libjpeg-turbo's; images
        # over PIL's pixel limit: PIL's decompression-bomb check
        if (colorspace in ("YCbCr", "Gray", "RGB") and w > 0 and h > 0
                and (limit is None or w * h <= limit)):
            s = draft_scale(w, h, min_size)
            size = (-(-h // s), -(-w // s))
            try:
                arr = simplejpeg.decode_jpeg(data, "RGB", min_height=size[0], min_width=size[1])
            except ValueError:
                arr = None  # e.g. a recoverable error that PIL tolerates
            if arr is not None and arr.shape[:2] == size:  # (libjpeg's M/8 scales: tiny images)
                return arr
    return np.asarray(decode_image(data, min_size))


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


def random_resized_crop(img: Image.Image | np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = TRAIN_SCALE,
                        ratio: tuple[float, float] = TRAIN_RATIO) -> np.ndarray:
    """Random crop (see :func:`random_resized_crop_params`) resized to ``size``: uint8 (s, s, 3).

    ``img``: a PIL image or uint8 (H, W, 3) RGB pixels (:func:`decode_array`). The crop box is
    drawn on the image as given; the resize is OpenCV's ``INTER_AREA`` (exact area averaging,
    antialiased) when both sides shrink, else ``INTER_CUBIC``.
    """
    arr = img if isinstance(img, np.ndarray) else np.asarray(to_rgb(img))
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise TypeError(f"expected uint8 (H, W, 3) pixels, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    return crop_resize(arr, size, random_resized_crop_params(width, height, rng, scale, ratio))


def crop_resize(arr: np.ndarray, size: int, params: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 (H, W, 3) pixels cropped to ``params`` (left, top, w, h) and resized to ``size``
    as :func:`random_resized_crop` does (the train stream moves the sample's boxes along)."""
    left, top, w, h = params
    crop = arr[top:top + h, left:left + w]
    if (w, h) == (size, size):
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if w >= size and h >= size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


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


def pixel_scale(mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean * 255, 1 / (std * 255))`` as float32 (3,) arrays: ``(x - m) * s`` normalises uint8
    pixels ``x`` (per channel, ``mean`` / ``std`` in [0, 1] units, default CLIP's). The one
    place this arithmetic is written: :func:`normalize` on the host, the train step on the
    device (``jnp.asarray`` of these)."""
    m = np.asarray(CLIP_MEAN if mean is None else mean, np.float32) * 255
    return m, 1 / (np.asarray(CLIP_STD if std is None else std, np.float32) * 255)


_MEAN255, _INV_STD255 = pixel_scale()


def normalize(images: np.ndarray, out: np.ndarray | None = None,
              mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> np.ndarray:
    """uint8 (..., 3) in [0, 255] -> float32 ``(x/255 - mean) / std`` (into ``out``).

    ``mean`` / ``std`` are per channel in [0, 1] units (a bundle may carry its own); they
    default to :data:`CLIP_MEAN` / :data:`CLIP_STD`.
    """
    mean255, inv_std255 = ((_MEAN255, _INV_STD255) if mean is None and std is None
                           else pixel_scale(mean, std))
    if out is None:
        out = np.empty(images.shape, np.float32)
    np.subtract(images, mean255, out=out, dtype=np.float32)
    np.multiply(out, inv_std255, out=out)
    return out


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop + CLIP normalisation: float32 (size, size, 3) (the train pipeline
    itself ships the uint8 crop and leaves the normalisation to the device)."""
    return normalize(random_resized_crop(img, size, rng))


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Resize shorter side + center crop + CLIP normalisation: float32 (size, size, 3)."""
    return normalize(resize_center_crop(img, size))
