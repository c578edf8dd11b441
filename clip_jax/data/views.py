"""Extra augmented views of each image for self-distillation (SILC, TIPS: :mod:`clip_jax.
objectives.silc`, :mod:`clip_jax.objectives.tips`), made by the input pipeline.

A :class:`ViewSpec` says which views a batch carries, from which step on: ``view_global``
(b, S, S, 3), one random resized crop at the model's size (area ``global_scale``), from the
0-based step ``global_start``; ``view_local`` (b, L, s, s, 3), ``local_count`` crops at
``local_size`` (area ``local_scale``), from ``local_start`` (-1: never). Each crop is also
flipped left-right with probability 1/2; no colour augmentation (the first view, the one the
image-text losses read, is left exactly as it was). The views of a sample come from their own
generator (:func:`make`), seeded by the sample's identity, never from the main crop's, so the
main stream is unchanged and a resume makes the same views. Batches of earlier steps carry no
views at all: until the terms switch on, they cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from clip_jax.data import transforms

GLOBAL, LOCAL = "view_global", "view_local"
TAG = 16  # seeds the views' generator beside the sample's identity (the main crop uses 15)


@dataclass(frozen=True)
class ViewSpec:
    global_size: int
    global_start: int = -1  # first 0-based step whose batch has view_global (-1: never)
    local_size: int = 0
    local_count: int = 0
    local_start: int = -1  # first 0-based step whose batch has view_local (-1: never)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)

    def fields(self, step: int) -> tuple[str, ...]:
        """The view fields of the batch of the 0-based global ``step``."""
        out = ()
        if 0 <= self.global_start <= step:
            out += (GLOBAL,)
        if self.local_count and 0 <= self.local_start <= step:
            out += (LOCAL,)
        return out

    def allocate(self, step: int, n: int, dtype) -> dict[str, np.ndarray]:
        """Empty arrays for ``n`` rows of the fields of ``step``."""
        shapes = {GLOBAL: (n, self.global_size, self.global_size, 3),
                  LOCAL: (n, self.local_count, self.local_size, self.local_size, 3)}
        return {k: np.empty(shapes[k], dtype) for k in self.fields(step)}


def crop(pixels: np.ndarray, size: int, rng: np.random.Generator, scale) -> np.ndarray:
    """A random resized crop of (H, W, 3) ``pixels`` (uint8, or float such as the synthetic
    source's) at ``size``, flipped left-right with probability 1/2; the crop box is drawn as
    :func:`clip_jax.data.transforms.random_resized_crop_params`, the resize as the main crop's."""
    h, w = pixels.shape[:2]
    left, top, cw, ch = transforms.random_resized_crop_params(w, h, rng, tuple(scale))
    box = np.ascontiguousarray(pixels[top:top + ch, left:left + cw])
    interp = cv2.INTER_AREA if cw >= size and ch >= size else cv2.INTER_CUBIC
    out = box if (cw, ch) == (size, size) else cv2.resize(box, (size, size),
                                                           interpolation=interp)
    return out[:, ::-1] if rng.random() < 0.5 else out


def make(pixels: np.ndarray, spec: ViewSpec, rng: np.random.Generator, out: dict,
         row: int) -> None:
    """Write the views of one sample into row ``row`` of ``out`` (:meth:`ViewSpec.allocate`),
    drawn from ``rng`` in a fixed order (the global view first, then each local one)."""
    g = crop(pixels, spec.global_size, rng, spec.global_scale)
    if GLOBAL in out:
        out[GLOBAL][row] = g
    if LOCAL in out:
        for j in range(spec.local_count):
            out[LOCAL][row, j] = crop(pixels, spec.local_size, rng, spec.local_scale)


def switch_step(total_steps: int, fraction: float) -> int:
    """The 0-based step from which a term switched on at ``fraction`` of training runs:
    ``round(fraction * total_steps)`` steps run without it (SigLIP 2: 0.8, the last 20%)."""
    return int(round(float(fraction) * int(total_steps)))


def local_size(silc_cfg, image_size: int, patch: int) -> int:
    """``silc.local_size``, or (0) DINO's 96/224 of the image size in whole patches (96 px
    at 224, 112 px at 256)."""
    return int(silc_cfg.local_size) or patch * max(1, round(image_size * 96 / 224 / patch))


def spec_from_config(config, image_size: int, patch: int) -> ViewSpec | None:
    """The views the run's ``silc`` / ``tips`` terms read (None when both are off): the global
    view from the first term's switch-on, the local ones from SILC's."""
    silc, tips = config.silc, config.tips
    on = {k: switch_step(config.total_steps, c.start_fraction)
          for k, c in (("silc", silc), ("tips", tips)) if float(c.weight) > 0}
    if not on:
        return None
    return ViewSpec(image_size, min(on.values()), local_size(silc, image_size, patch),
                    int(silc.local_crops) if "silc" in on else 0, on.get("silc", -1),
                    tuple(silc.global_scale), tuple(silc.local_scale))
