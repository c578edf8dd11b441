"""The demo segmentation probe's ceiling: the probe of clip_jax/evaluate/segmentation.py fed
"oracle" patch features (each patch's true class fractions, embedded linearly), so the only loss
is the patch grid's resolution and the bilinear upsampling. Prints mIoU and pixel accuracy per
grid, and those of always answering background.

    python benchmarks/segmentation_ceiling.py [--images 600] [--size 64] [--grids 4,8]
"""

import argparse
import json

import numpy as np

from clip_jax.data import demo
from clip_jax.evaluate import segmentation as seg


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--grids", default="4,8")
    a = p.parse_args()
    held = demo.heldout_pairs(0)
    c = len(demo.SEGMENTATION_CLASSES)
    masks = {s: np.stack([demo.segmentation_sample(s, i, 0, a.size, held)[1]
                          for i in range(a.images)]) for s in ("train", "eval")}
    rng = np.random.default_rng(0)
    out = {}
    for g in (int(x) for x in a.grids.split(",")):
        emb = rng.normal(size=(c, 32))
        feats = {s: (seg.patch_targets(m, g, c)[0] @ emb).reshape(len(m), g, g, 32)
                 for s, m in masks.items()}
        r = seg.probe([(feats["train"], masks["train"])], [(feats["eval"], masks["eval"])], c)
        out[f"grid {g} ({a.size // g} px patches)"] = {
            "miou": round(r["miou"], 4), "pixel_accuracy": round(r["pixel_accuracy"], 4)}
    bg = seg.scores(seg.confusion(np.zeros_like(masks["eval"]), masks["eval"], c))
    out["always background"] = {"miou": round(bg["miou"], 4),
                                "pixel_accuracy": round(bg["pixel_accuracy"], 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
