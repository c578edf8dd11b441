"""Held-out zero-shot of the NaFlex demo's two models (configs/naflex_demo.py), each fed the
strip corpus's eval images by its own preprocessing, and the NaFlex model also fed square crops.

    python -m clip_jax.train --config configs/naflex_demo.py:naflex --workdir workdirs/naflex_demo
    python -m clip_jax.train --config configs/naflex_demo.py:fixed --workdir workdirs/fixed_demo
    python benchmarks/naflex_demo.py workdirs/naflex_demo workdirs/fixed_demo

Each workdir is loaded with ``clip_jax.load`` (its last checkpoint and tokenizer). "own": the
model's own preprocessing of the whole image, as ``predict`` / ``embed`` use it: a NaFlex model
sees each strip at its aspect ratio under its budget (16 patches: a 2 x 8 or 8 x 2 grid), the
ViT the square centre crop (shorter side to 64 px, the centre 64 x 64). "square crop": the
centre crop fed to either model. Classes and templates: the corpus's ``zeroshot.json``; top-1
is the argmax of ``zero_shot``. Also: which end of the strip the object is at, zero-shot among
4 phrases (``END_CLASSES``, chance 25%). Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


ENDS = ("left", "right", "top", "bottom")
END_CLASSES = ["on the left", "on the right", "at the top", "at the bottom"]
END_TEMPLATES = ["a shape {}.", "an object {}.", "a picture of a shape {}."]


def eval_set(corpus: str):
    """(PIL images, labels, the ends the objects are at, card) of the corpus's eval split."""
    from clip_jax.data import tario

    with open(os.path.join(corpus, "zeroshot.json")) as f:
        card = json.load(f)
    images, labels, ends = [], [], []
    spec = os.path.join(corpus, card["eval_shards"])
    for _, image, _, extra in tario.iterate_samples(spec, extra_fields=("cls", "json")):
        images.append(image)
        labels.append(int(extra["cls"]))
        ends.append(ENDS.index(json.loads(extra["json"])["end"]))
    return images, np.asarray(labels), np.asarray(ends), card


def accuracy(model, images, labels, classes, templates) -> float:
    probs = model.zero_shot(images, classes, templates)
    return float(np.mean(probs.argmax(-1) == labels))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+", help="training workdirs (or any model source)")
    p.add_argument("--corpus", default="data/demo_strip", help="the strip corpus")
    a = p.parse_args(argv)

    import clip_jax
    from clip_jax.data import transforms

    images, labels, ends, card = eval_set(a.corpus)
    crops = [transforms.resize_center_crop(img, card["image_size"]) for img in images]
    rows = []
    for w in a.workdirs:
        model = clip_jax.load(w)
        family = model.cfg.vision.family
        held = (card["classes"], card["templates"])
        own = accuracy(model, images, labels, *held)
        square = own if family != "naflex" else accuracy(model, crops, labels, *held)
        end = accuracy(model, images, ends, END_CLASSES, END_TEMPLATES)
        rows.append({"model": w, "family": family, "own": own, "square_crop": square,
                     "end_own": end, "n": len(labels), "chance": card["chance"]})
    print("| model | tower | held-out pairs, own preprocessing | fed square centre crops | "
          "which end (4 classes), own preprocessing |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['family']} | {100 * r['own']:.1f}% | "
              f"{100 * r['square_crop']:.1f}% | {100 * r['end_own']:.1f}% |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
