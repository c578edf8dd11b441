"""SigLIP 2 NaFlex: the padding of bucketed batches, and a NaFlex train step's image tokens per
second against the fixed-resolution SigLIP step at the same token count.

    python benchmarks/naflex.py --steps 8

Padding: each image is resized to fit its step's bucket (``clip_jax.data.naflex.target_size``),
so a bucket of n patches holds ``rows * cols <= n`` of them and the rest is padding. Reported
per bucket and overall (buckets drawn uniformly, as ``data.naflex`` does) for images whose aspect
ratio is log-uniform in [1/4, 4] (sizes 200-1000 px on the short side), and for square images.

Step: the real train step (``clip_jax.train.make_train_step``, sigmoid loss, uint8 pixels
normalised in the step) of one SigLIP model (``--width``, ``--layers``, patch 16) twice: as the
ViT on square ``--image-size`` images and as the NaFlex tower on batches of the same number of
images with a bucket of ``(image_size / 16)^2`` patches (the same tokens; the NaFlex images'
own grids, padded, with the position table resized per image and the padding masked). Wall and
CPU seconds per step, median of ``--steps`` after a compile step. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))


def padding(buckets, patch: int, n: int = 4000, seed: int = 0) -> dict:
    from clip_jax.data import naflex

    rng = np.random.default_rng(seed)
    aspect = np.exp(rng.uniform(np.log(1 / 4), np.log(4), n))
    short = rng.uniform(200, 1000, n)
    sizes = [(int(s), int(s * a)) if a >= 1 else (int(s / a), int(s))
             for s, a in zip(short, aspect, strict=True)]
    out = {}
    for name, imgs in (("aspect_1:4_to_4:1", sizes), ("square", [(s, s) for s, _ in sizes])):
        per = {}
        for b in buckets:
            used = [np.prod(naflex.target_size(h, w, patch, b)) // patch**2 for h, w in imgs]
            per[b] = 1 - float(np.mean(used)) / b
        out[name] = {"per_bucket": per, "overall": float(np.mean(list(per.values())))}
    return out


def _config(naflex: bool, args):
    import tiny

    c = tiny.get_config()
    c.model.name = "tiny-naflex" if naflex else "tiny-siglip"
    c.loss, c.batch_size, c.mesh.data = "siglip", args.batch, 1
    c.model.embed_dim = args.width
    v = c.model.vision
    v.image_size, v.patch_size, v.width, v.layers = args.image_size, 16, args.width, args.layers
    v.heads, v.mlp_dim = args.width // 64, 4 * args.width
    return c


def _batches(naflex: bool, args, vocab: int, ctx: int):
    from clip_jax.data import naflex as naflex_data

    rng = np.random.default_rng(0)
    text = rng.integers(0, vocab, (args.batch, ctx)).astype(np.int32)
    if not naflex:
        s = args.image_size
        return {"image": rng.integers(0, 256, (args.batch, s, s, 3), dtype=np.uint8),
                "text": text}
    bucket = (args.image_size // 16) ** 2
    patches = np.zeros((args.batch, bucket, 16 * 16 * 3), np.uint8)
    mask = np.zeros((args.batch, bucket), bool)
    shapes = np.zeros((args.batch, 2), np.int32)
    for i in range(args.batch):  # aspect ratios 1:4 .. 4:1
        a = np.sqrt(np.exp(rng.uniform(np.log(1 / 4), np.log(4))))
        pixels = rng.integers(0, 256, (int(400 * a), int(400 / a), 3), dtype=np.uint8)
        x, shapes[i] = naflex_data.patches_uint8(pixels, 16, bucket)
        patches[i, :len(x)], mask[i, :len(x)] = x, True
    return {"image": {"patches": patches, "mask": mask, "shapes": shapes}, "text": text}


def step_time(naflex: bool, args) -> dict:
    import jax

    from clip_jax import input_pipeline, train

    setup = train.build(_config(naflex, args), jax.devices()[:1])
    state, step = train.init_state(setup), train.make_train_step(setup)
    m = setup.model_cfg
    batch = input_pipeline.to_global(setup.batch_sharding,
                                     _batches(naflex, args, m.text.vocab_size,
                                              m.text.context_length))
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - t
    wall, cpu = [], []
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    tokens = args.batch * (args.image_size // 16) ** 2
    used = (int(np.prod(batch["image"]["shapes"], axis=1).sum()) if naflex else tokens)
    w = float(np.median(wall))
    return {"compile_s": round(compile_s, 2), "step_s": round(w, 4),
            "cpu_s": round(float(np.median(cpu)), 4), "tokens_per_s": round(tokens / w, 1),
            "image_tokens_per_s": round(used / w, 1), "padding": round(1 - used / tokens, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--buckets", default="128,256,576,784,1024")
    args = ap.parse_args()
    out = {"padding": padding([int(b) for b in args.buckets.split(",")], 16)}
    fixed, flex = step_time(False, args), step_time(True, args)
    out.update(fixed=fixed, naflex=flex,
               naflex_over_fixed_tokens_per_s=round(flex["tokens_per_s"] / fixed["tokens_per_s"],
                                                    3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
