"""NaFlex preprocessing (SigLIP 2 at each image's own aspect ratio), NumPy + PIL: the
``pixel_values``, ``pixel_attention_mask`` and ``spatial_shapes`` of transformers'
``Siglip2ImageProcessor`` as a dict of ``patches`` (B, N, p*p*3) float32, ``mask`` (B, N) bool
and ``shapes`` (B, 2) int32 (rows, cols), which :mod:`clip_jax.models.naflex` takes.

Each image is resized (PIL bilinear, 8-bit, as the reference) to the largest size whose sides
are multiples of the patch size, keep its aspect ratio and give at most ``max_num_patches``
patches (the reference's binary search over the scale, :func:`target_size`), rescaled to [0, 1],
normalised with ``mean``/``std`` (SigLIP: 0.5, 0.5), cut into patches row-major over the grid
(each patch (row, column, channel)), and padded with zero patches to ``max_num_patches``.

Training (``data.naflex``): :class:`BucketPlan` gives each step a sequence-length bucket (drawn
from a hash of the seed and the step, so a resume redraws it) and the number of images a step of
that bucket holds (the token budget over the bucket, rounded down to a multiple of the devices);
the stream (:mod:`clip_jax.data.stream`) resizes each image once, from its decoded size, to fit
the step's bucket and delivers raw ``uint8`` patches (:func:`patches_uint8`), normalised on the
device like square images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from clip_jax.data.hashing import unit
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


def resized(image, patch_size: int, max_num_patches: int,
            resample: str = "bilinear") -> np.ndarray:
    """One image resized to :func:`target_size` (once, from its own size): uint8 (H, W, 3)."""
    img = _pil(image)
    h, w = target_size(img.height, img.width, patch_size, max_num_patches)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), RESAMPLE[resample])
    return np.asarray(img)


def patches_uint8(image, patch_size: int, max_num_patches: int,
                  resample: str = "bilinear") -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (its raw patches (rows * cols, p*p*3) uint8, (rows, cols)), unpadded."""
    x = resized(image, patch_size, max_num_patches, resample)
    return patchify(x, patch_size), (x.shape[0] // patch_size, x.shape[1] // patch_size)


def preprocess_one(image, patch_size: int, max_num_patches: int,
                   mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD,
                   resample: str = "bilinear") -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (its patches (rows * cols, p*p*3) float32, (rows, cols)), unpadded."""
    img = resized(image, patch_size, max_num_patches, resample)
    h, w = img.shape[:2]
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


# ---------------------------------------------------------------------------------------------
# Training: a bucket per step

_TAG_BUCKET = 16
BUCKETS = (128, 256, 576, 784, 1024)  # open_clip's and the SigLIP 2 paper's sequence lengths


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """Step ``k`` uses bucket ``bucket(k)`` (uniform over the buckets, from a hash of the seed
    and ``k``): ``batch_sizes[i]`` images of at most ``buckets[i]`` patches each."""

    buckets: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    patch_size: int
    seed: int

    def bucket(self, step: int) -> int:
        """The index of step ``step``'s bucket."""
        return min(int(unit(self.seed, int(step), _TAG_BUCKET) * len(self.buckets)),
                   len(self.buckets) - 1)

    def shape(self, step: int) -> tuple[int, int]:
        """(global images, patches per image) of step ``step``."""
        i = self.bucket(step)
        return self.batch_sizes[i], self.buckets[i]

    def describe(self) -> list:
        return [list(self.buckets), list(self.batch_sizes), self.patch_size, self.seed]


def bucket_plan(buckets: Sequence[int], tokens: int, patch_size: int, seed: int,
                multiple: int) -> BucketPlan:
    """The plan of ``buckets`` (patches per image) under ``tokens`` patches per global batch:
    ``(tokens // bucket)`` images rounded down to a ``multiple`` (the devices, so each shards
    evenly). One-line ValueErrors name a bucket list that does not hold the budget."""
    where = "data.naflex"
    b = list(buckets)
    if not b or any(isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 1
                    for x in b):
        raise ValueError(f"{where}.buckets={tuple(buckets)!r}: must be one or more positive "
                         "patch counts, e.g. (128, 256, 576, 784, 1024)")
    if len(set(b)) != len(b):
        raise ValueError(f"{where}.buckets={tuple(buckets)!r}: a bucket is listed twice")
    check_budget(patch_size, max(b))
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"{where}.tokens={tokens!r}: must be a positive integer (patches per "
                         "global batch)")
    sizes = [(tokens // x) // multiple * multiple for x in sorted(b)]
    short = [x for x, n in zip(sorted(b), sizes, strict=True) if n == 0]
    if short:
        raise ValueError(f"{where}.tokens={tokens} does not hold {multiple} image(s) (one per "
                         f"device) of bucket {short[-1]}: it needs at least {short[-1] * multiple} "
                         f"tokens, or a smaller bucket")
    return BucketPlan(tuple(int(x) for x in sorted(b)), tuple(sizes), int(patch_size), int(seed))
