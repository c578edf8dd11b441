"""NaFlex preprocessing (SigLIP 2 at each image's own aspect ratio), NumPy + PIL: the
``pixel_values``, ``pixel_attention_mask`` and ``spatial_shapes`` of transformers'
``Siglip2ImageProcessor`` as a dict of ``patches`` (B, N, p*p*3) float32, ``mask`` (B, N) bool
and ``shapes`` (B, 2) int32 (rows, cols), which :mod:`clip_jax.models.naflex` takes.

Each image is resized (PIL bilinear, 8-bit, as the reference) to the largest size whose sides
are multiples of the patch size, keep its aspect ratio and give at most ``max_num_patches``
patches (the reference's binary search over the scale, :func:`target_size`), rescaled to [0, 1],
normalised with ``mean``/``std`` (SigLIP: 0.5, 0.5), cut into patches row-major over the grid
(each patch (row, column, channel)), and padded with zero patches to ``max_num_patches``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from clip_jax.data.transforms import to_rgb

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def check_budget(patch_size: int, max_num_patches: int) -> None:
    """A one-line ValueError unless both are positive integers."""
    for name, value in (("patch_size", patch_size), ("max_num_patches", max_num_patches)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"NaFlex {name}={value!r}: must be a positive integer (a budget "
                             "holds at least one patch)")


def target_size(height: int, width: int, patch_size: int, max_num_patches: int,
                eps: float = 1e-5) -> tuple[int, int]:
    """(height, width), multiples of ``patch_size`` (at least one patch each), of the largest
    scale of the image whose patch grid holds at most ``max_num_patches`` (transformers'
    ``get_image_size_for_max_num_patches``: a bisection of the scale in [eps/10, 100])."""
    check_budget(patch_size, max_num_patches)
    if height < 1 or width < 1:
        raise ValueError(f"an image of {width}x{height} pixels has no pixels to resize")

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        n = (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size)
        lo, hi = (mid, hi) if n <= max_num_patches else (lo, mid)
    return scaled(lo, height), scaled(lo, width)


def patchify(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W, C) -> ((H/p)*(W/p), p*p*C), as :func:`clip_jax.models.naflex.patchify`."""
    h, w, c = image.shape
    gh, gw = h // patch_size, w // patch_size
    x = image[:gh * patch_size, :gw * patch_size].reshape(gh, patch_size, gw, patch_size, c)
    return x.transpose(0, 2, 1, 3, 4).reshape(gh * gw, patch_size * patch_size * c)


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"an image must be a PIL image or uint8 (H, W, 3) pixels, got "
                         f"{a.dtype} {a.shape}")
    return Image.fromarray(a)


def preprocess_one(image, patch_size: int, max_num_patches: int,
                   mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD,
                   resample: str = "bilinear") -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (its patches (rows * cols, p*p*3) float32, (rows, cols)), unpadded."""
    img = _pil(image)
    h, w = target_size(img.height, img.width, patch_size, max_num_patches)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), RESAMPLE[resample])
    x = np.asarray(img, np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return patchify(x, patch_size), (h // patch_size, w // patch_size)


def preprocess(images, patch_size: int, max_num_patches: int,
               mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD,
               resample: str = "bilinear") -> dict[str, np.ndarray]:
    """Images (PIL or uint8 HWC arrays) -> the NaFlex dict, padded to ``max_num_patches``."""
    check_budget(patch_size, max_num_patches)
    images = list(images)
    d = patch_size * patch_size * 3
    patches = np.zeros((len(images), max_num_patches, d), np.float32)
    mask = np.zeros((len(images), max_num_patches), bool)
    shapes = np.zeros((len(images), 2), np.int32)
    for i, image in enumerate(images):
        x, shapes[i] = preprocess_one(image, patch_size, max_num_patches, mean, std, resample)
        patches[i, :len(x)] = x
        mask[i, :len(x)] = True
    return {"patches": patches, "mask": mask, "shapes": shapes}
