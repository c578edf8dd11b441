"""How often the demo's captioning decoder names an image's colour and shape.

    python benchmarks/caption_demo.py --model workdirs/coca_demo [--per-class 10] [--beams 1]

Captions (``clip_jax.evaluate.captioning.Captioner``, greedy or beam search) the first
``--per-class`` images of each held-out class of the demo's evaluation shards
(``data/demo/eval``: colour x shape pairs never seen in training) and, with ``--seen`` > 0, that
many freshly rendered images of each training pair (``demo.make_sample`` on a split of its own,
new random draws). A caption names the colour when it contains the image's colour word and no
other colour word; the shape likewise (singular or plural, ``demo.SHAPES``). Prints one JSON
object: counts, fractions and every caption with its attributes.

``--shape-probe``: the decoder's choice among the six shape words (teacher-forced, no sampling)
right after ``a photo of a`` (the image's evidence alone: no colour word yet) and right after
``a photo of a COLOUR`` (the image's true colour): how often it is the image's shape.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import time

import jax.numpy as jnp
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from clip_jax import inference, models  # noqa: E402
from clip_jax.data import demo  # noqa: E402
from clip_jax.data.demo_render import COLOURS  # noqa: E402
from clip_jax.evaluate.captioning import Captioner  # noqa: E402


def words_named(text: str, words) -> set[str]:
    """The ``words`` (singular; plurals count) that occur in ``text`` as whole words."""
    toks = set(re.findall(r"[a-z]+", text.lower()))
    return {w for w in words if w in toks or demo.plural_of(w) in toks}


def names(text: str, colour: str, shape: str) -> tuple[bool, bool]:
    """(names the colour and no other, names the shape and no other)."""
    return (words_named(text, COLOURS) == {colour},
            words_named(text, demo.SHAPES) == {shape})


def heldout_images(data: str, per_class: int):
    """The first ``per_class`` images of each held-out class: (key, PIL image, attrs)."""
    sizes = json.load(open(os.path.join(data, "eval", "sizes.json")))
    taken: dict[int, int] = {}
    out = []
    for shard in sorted(sizes):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(os.path.join(data, "eval", shard)) as tar:
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            f = members[key]
            cls = int(f["cls"])
            if taken.get(cls, 0) >= per_class:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            out.append((key, Image.open(io.BytesIO(f["png"])).convert("RGB"),
                        json.loads(f["json"])))
    return out


def seen_images(per_pair: int, heldout, image_size: int, seed: int = 1):
    """``per_pair`` new renders of each training pair (seed ``seed``, not the corpus's 0)."""
    held = {tuple(p) for p in heldout}
    pairs = [(c, s) for c in COLOURS for s in demo.SHAPES if (c, s) not in held]
    out = []
    for i in range(per_pair * len(pairs)):
        # an "eval"-split sample of a one-pair held-out list: that pair's attributes, new draws
        colour, shape = pairs[i % len(pairs)]
        key, f = demo.make_sample("eval", i, seed, image_size, [(colour, shape)])
        out.append((f"seen-{key}", Image.open(io.BytesIO(f["png"])).convert("RGB"),
                    json.loads(f["json"])))
    return out


def shape_probe(cap, items) -> dict[str, float]:
    """Fraction of ``items`` whose shape is the decoder's argmax among the shape words after
    ``a photo of a`` and after ``a photo of a COLOUR``."""
    tok, n_ctx = cap.tokenizer, cap.cfg.text.context_length
    shape_ids = [int(tok([f"a photo of a {s}"], n_ctx)[0][5]) for s in demo.SHAPES]
    if [tok.decode([i]) for i in shape_ids] != list(demo.SHAPES):
        raise ValueError("the tokenizer does not give each shape word one token")
    tokens = cap.image_tokens([img for _, img, _ in items])
    truth = np.array([demo.SHAPES.index(at["shape"]) for _, _, at in items])

    def argmax_shape(prefixes):
        ids = np.asarray(tok(prefixes, n_ctx))
        last = np.argmax(ids == tok.eot_id, axis=1) - 1  # the prefix's last position
        ids = np.where(ids == tok.eot_id, cap.pad_id, ids)
        logits = np.concatenate([np.asarray(cap._apply(
            cap.model.params, jnp.asarray(tokens[s:s + 64]), jnp.asarray(ids[s:s + 64]),
            method=models.CLIP.decode)) for s in range(0, len(ids), 64)])
        return logits[np.arange(len(ids)), last][:, shape_ids].argmax(axis=1)

    plain = argmax_shape(["a photo of a"] * len(items))
    coloured = argmax_shape([f"a photo of a {at['colour']}" for _, _, at in items])
    return {"after_a_photo_of_a": round(float(np.mean(plain == truth)), 4),
            "after_a_photo_of_a_colour": round(float(np.mean(coloured == truth)), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seen", type=int, default=0, help="new renders per training pair")
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--shape-probe", action="store_true",
                   help="also the decoder's shape-word choice after a fixed prefix")
    a = p.parse_args(argv)
    card = json.load(open(os.path.join(a.data, "zeroshot.json")))
    heldout = [(h["colour"], h["shape"]) for h in card["heldout"]]
    model = inference.load(a.model)
    cap = Captioner(model)
    result = {"model": a.model, "beams": a.beams}
    sets = {"heldout": heldout_images(a.data, a.per_class)}
    if a.seen:
        sets["seen"] = seen_images(a.seen, heldout, card["image_size"])
    for name, items in sets.items():
        t0 = time.time()
        texts = cap.captions([img for _, img, _ in items], beams=a.beams)
        rows, both = [], 0
        colour_ok = shape_ok = 0
        for (key, _, attrs), text in zip(items, texts, strict=True):
            c_ok, s_ok = names(text, attrs["colour"], attrs["shape"])
            colour_ok, shape_ok, both = colour_ok + c_ok, shape_ok + s_ok, both + (c_ok and s_ok)
            rows.append({"key": key, "pair": f"{attrs['colour']} {attrs['shape']}",
                         "caption": text, "colour": c_ok, "shape": s_ok})
        n = len(items)
        result[name] = {"n": n, "colour": colour_ok, "shape": shape_ok, "both": both,
                        "both_frac": round(both / max(n, 1), 4),
                        "seconds": round(time.time() - t0, 1), "captions": rows}
        if a.shape_probe:
            result[name]["shape_probe"] = shape_probe(cap, items)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
