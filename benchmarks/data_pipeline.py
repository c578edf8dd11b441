"""Data-pipeline throughput: decode + augment + tokenise images/s per core, and cores needed.

    python benchmarks/data_pipeline.py                                  # synthetic JPEG shards
    python benchmarks/data_pipeline.py --shards '/data/laion/{00000..00009}.tar' \\
        --target-samples-per-sec 4096 --workers 1,2,4 --modes process,thread

1. Per core: one thread reads raw samples from the shards, then times each stage per image:
   JPEG/PNG decode (with the pipeline's DCT-downscaling draft), random resized crop to
   ``--image-size``, CLIP normalisation, tokenisation (batched). The rate is images per CPU
   second of this process (``time.process_time``), so it is meaningful on a busy machine.
2. End to end: the real train iterator with ``--workers`` workers in each of ``--modes``
   (processes vs threads), samples/s of wall time after a warm-up batch.

Prints the cores (= data workers) needed for ``--target-samples-per-sec`` (per host), then
one JSON line. Without ``--shards`` it writes ``--num-images`` synthetic photos-like JPEGs of
``--src-size`` (LAION-like: ~500x375, ~40-60 kB) with 11-17-word captions (3 of them random
strings, so the tokenizer's cache does not make it look free) to a temporary folder.
The tokenizer is ``--tokenizer`` (a load_tokenizer spec), else CLIP's BPE when its vocabulary
file is found in ../shared/data, else a trivial character tokenizer (noted in the output).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip_jax.data import pipeline, transforms, write_shards  # noqa: E402

WORDS = ("a photo of the red old car parked near green house with small dog on sunny day "
         "beautiful mountain landscape river lake city street night view people walking in "
         "park vintage poster modern art design wooden table kitchen interior").split()


class CharTokenizer:
    """Fallback with the tokenizer contract (ids = character codes)."""

    def __call__(self, texts, context_length=77):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [ord(c) % 1000 for c in t][:context_length]
            out[i, : len(ids)] = ids
        return out


def load_tokenizer(spec: str | None):
    if spec:
        from clip_jax.data.tokenizer import load_tokenizer as load

        return load(spec), spec
    vocab = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                         "shared", "data", "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(vocab):
        try:
            from clip_jax.data.tokenizer import load_tokenizer as load

            return load(f"clip_bpe:{os.path.abspath(vocab)}"), "clip_bpe"
        except Exception as e:  # tokenizer module missing or broken: still measure the rest
            print(f"(CLIP BPE tokenizer unavailable: {e!r})", file=sys.stderr)
    return CharTokenizer(), "char (fallback)"


def synthetic_shards(out_dir: str, n: int, size: tuple[int, int], per_shard: int) -> str:
    """Photo-like JPEGs: smooth random colour fields plus fine noise."""
    from PIL import Image

    w, h = size

    def gen():
        for i in range(n):
            rng = np.random.default_rng(i)
            coarse = rng.integers(0, 255, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
            buf = io.BytesIO()
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            words = list(rng.choice(WORDS, size=int(rng.integers(8, 15))))
            for _ in range(3):  # rare words / names / codes, as in web captions (BPE cache misses)
                words.insert(int(rng.integers(len(words) + 1)), "".join(
                    rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"),
                               size=int(rng.integers(4, 10)))))
            caption = " ".join(words)
            yield f"{i:09d}", buf.getvalue(), "jpg", caption

    names = write_shards.write_samples(gen(), out_dir, per_shard)
    return os.path.join(out_dir, f"{{00000..{len(names) - 1:05d}}}.tar")


def per_core(spec, tokenizer, image_size: int, batch: int, limit: int) -> dict:
    raws = []
    for url in pipeline.expand_shards(spec):
        for group in pipeline.iter_groups(url, pipeline._wanted(())):
            raw = pipeline.to_raw_sample(group, None)
            if raw is not None:
                raws.append(raw)
            if len(raws) >= limit:
                break
        if len(raws) >= limit:
            break
    if not raws:
        raise SystemExit(f"no valid samples in {spec}")
    min_size = math.ceil(image_size * 1.25)
    t = {"decode": 0.0, "crop": 0.0, "normalize": 0.0, "tokenize": 0.0}
    crops, caps = [], []
    n, kb = 0, sum(len(r.image) for r in raws) / len(raws) / 1024
    wall0 = time.perf_counter()
    for i, raw in enumerate(raws):
        c0 = time.process_time()
        img = transforms.decode_image(raw.image, min_size)
        c1 = time.process_time()
        crops.append(transforms.random_resized_crop(img, image_size, np.random.default_rng(i)))
        c2 = time.process_time()
        t["decode"] += c1 - c0
        t["crop"] += c2 - c1
        caps.append(raw.caption)
        if len(caps) == batch or i == len(raws) - 1:
            c0 = time.process_time()
            transforms.normalize(np.stack(crops))
            c1 = time.process_time()
            tokenizer(caps, 77)
            c2 = time.process_time()
            t["normalize"] += c1 - c0
            t["tokenize"] += c2 - c1
            n += len(caps)
            crops, caps = [], []
    wall = time.perf_counter() - wall0
    cpu = sum(t.values())
    return {"images": n, "avg_image_kb": round(kb, 1),
            "ms_per_image": {k: round(1000 * v / n, 3) for k, v in t.items()},
            "images_per_cpu_sec": round(n / cpu, 1), "images_per_wall_sec": round(n / wall, 1)}


def end_to_end(spec, tokenizer, image_size, batch, workers, mode, seconds) -> dict:
    cfg = {"train": spec, "workers": workers, "worker_mode": mode, "shuffle_buffer": 256,
           "resampled": True, "context_length": 77}
    it = pipeline.make_train_iterator(cfg, tokenizer, image_size, batch, seed=0)
    try:
        next(it)  # start-up (spawn, imports, first shuffle fill)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += len(next(it)["text"])
        dt = time.perf_counter() - t0
    finally:
        it.close()
    return {"workers": workers, "mode": mode, "samples_per_sec": round(n / dt, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None, help="shard spec (default: synthetic JPEGs)")
    ap.add_argument("--num-images", type=int, default=256)
    ap.add_argument("--src-size", default="500x375", help="synthetic image WxH")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokenizer", default=None, help="load_tokenizer spec")
    ap.add_argument("--target-samples-per-sec", type=float, default=None,
                    help="per-host samples/s the train step consumes (e.g. batch / step time)")
    ap.add_argument("--workers", default="", help="end-to-end runs, e.g. 1,2,4 (empty: skip)")
    ap.add_argument("--modes", default="process,thread")
    ap.add_argument("--seconds", type=float, default=5.0, help="per end-to-end run")
    args = ap.parse_args()

    tokenizer, tok_name = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.shards
        if spec is None:
            w, h = (int(v) for v in args.src_size.lower().split("x"))
            spec = synthetic_shards(tmp, args.num_images, (w, h), max(args.num_images // 4, 1))
        result = {"shards": args.shards or f"synthetic {args.src_size} JPEG",
                  "image_size": args.image_size, "tokenizer": tok_name,
                  "cpu_count": os.cpu_count()}
        result["per_core"] = per_core(spec, tokenizer, args.image_size, args.batch,
                                      args.num_images)
        rate = result["per_core"]["images_per_cpu_sec"]
        print(f"per core: {rate:.0f} images/s (decode+crop+normalize+tokenize, "
              f"{result['per_core']['ms_per_image']} ms/image)", file=sys.stderr)
        ms = result["per_core"]["ms_per_image"]
        worker_ms = ms["decode"] + ms["crop"] + ms["tokenize"]  # in the data workers
        if args.target_samples_per_sec:
            target = args.target_samples_per_sec
            cores = math.ceil(target / rate)
            workers = math.ceil(target * worker_ms / 1000)
            result.update(target_samples_per_sec=target, cores_needed=cores,
                          workers_needed=workers,
                          collector_core_fraction=round(target * ms["normalize"] / 1000, 2))
            print(f"target {target:.0f} samples/s needs about {cores} core(s): data.workers >= "
                  f"{workers} (decode+crop+tokenize) plus {target * ms['normalize'] / 1000:.1f} "
                  f"core(s) normalising in the iterator's collector thread", file=sys.stderr)
        runs = []
        for workers in [int(v) for v in args.workers.split(",") if v.strip()]:
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                r = end_to_end(spec, tokenizer, args.image_size, args.batch, workers, mode,
                               args.seconds)
                print(f"end to end: {r}", file=sys.stderr)
                runs.append(r)
        if runs:
            result["end_to_end"] = runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
