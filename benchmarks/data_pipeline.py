"""Data-pipeline throughput: decode + augment + tokenise images/s per core, and cores needed.

    python benchmarks/data_pipeline.py                                  # synthetic JPEG shards
    python benchmarks/data_pipeline.py --shards '/data/laion/{00000..00009}.tar' \\
        --target-samples-per-sec 4096 --workers 1,2,4 --modes process,thread
    python benchmarks/data_pipeline.py --tfds                           # the same JPEGs via tfds
    python benchmarks/data_pipeline.py --tfds --tfds-name coco_captions --tfds-data-dir DIR

1. Per core: one thread reads raw samples from the shards, then times each stage per image as
   the train workers run it: decode (``transforms.decode_array``: JPEGs by simplejpeg with the
   DCT-downscaling draft), random resized crop to ``--image-size`` (OpenCV resize) and
   tokenisation (batched). Train batches leave as uint8 (normalised on the device), so there is
   no host normalise stage. The rate is images per CPU second of this process
   (``time.process_time``), so it is meaningful on a busy machine. ``--rounds`` repeats the
   measurement and reports the median round.
   The same images also go through the previous PIL-only path (``previous_path``: PIL decode
   with draft, PIL bicubic resize, host float32 normalise) in alternating rounds, for a
   before/after in one run, and the mean absolute pixel difference between the two crops
   (``crop_mean_abs_diff_vs_pil``, 0-255 grey levels) is reported.
   The read stage is timed too (``ms_per_image.read``, ``images_per_cpu_sec_with_read``):
   tar members (``tario.iter_groups``) for shards; with ``--tfds``, what a train worker does
   for a tfds source (:mod:`clip_jax.data.tfds_source`: random access in the epoch's permuted
   order, tfds's NumPy parse of the image and caption features). Without ``--tfds-name`` the
   synthetic JPEGs are written as a tfds array_record dataset (offline), so the two sources
   are compared on the same images.
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
import types

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip_jax.data import (  # noqa: E402
    pipeline,
    shards,
    tario,
    tfds_source,
    transforms,
    write_shards,
)
from clip_jax.data.tokenizer import load_tokenizer as load_named_tokenizer  # noqa: E402

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
        return load_named_tokenizer(spec), spec
    vocab = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                         "shared", "data", "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(vocab):
        try:
            return load_named_tokenizer(f"clip_bpe:{os.path.abspath(vocab)}"), "clip_bpe"
        except Exception as e:  # vocabulary unreadable: still measure the rest
            print(f"(CLIP BPE tokenizer unavailable: {e!r})", file=sys.stderr)
    return CharTokenizer(), "char (fallback)"


def synthetic_samples(n: int, size: tuple[int, int]):
    """``(key, JPEG bytes, "jpg", caption)``: photo-like JPEGs (smooth random colour fields plus
    fine noise) with web-like captions."""
    w, h = size
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


def synthetic_shards(out_dir: str, n: int, size: tuple[int, int], per_shard: int) -> str:
    names = write_shards.write_samples(synthetic_samples(n, size), out_dir, per_shard)
    return os.path.join(out_dir, f"{{00000..{len(names) - 1:05d}}}.tar")


def synthetic_tfds(data_dir: str, n: int, size: tuple[int, int]) -> str:
    """The same samples as a tfds dataset (``bench_captions``, array_record; an image feature
    and coco_captions' ``captions/text`` layout), prepared offline. Returns its name."""
    import tensorflow_datasets as tfds

    class BenchCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for key, image, _, caption in synthetic_samples(n, size):
                yield key, {"image": image, "captions": [{"text": caption}]}

    BenchCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return "bench_captions"


def read_tars(spec, limit: int) -> tuple[list, float]:
    """The first ``limit`` raw samples of the shards and the CPU ms / sample reading them."""
    raws, c0 = [], time.process_time()
    for url in shards.expand_shards(spec):
        for group in tario.iter_groups(url, tario.wanted_exts()):
            raw = tario.to_raw_sample(group, None)
            if raw is not None:
                raws.append(raw)
            if len(raws) >= limit:
                break
        if len(raws) >= limit:
            break
    return raws, 1000 * (time.process_time() - c0) / max(len(raws), 1)


def read_tfds(src, limit: int) -> tuple[list, float]:
    """Raw samples of a tfds source read as a train worker reads them (random access in the
    epoch's permuted order, parse of the image and caption features) and the CPU ms / sample
    (the reader is opened before timing)."""
    reader = tfds_source.RecordReader(types.SimpleNamespace(
        sources=(src,), seed=0, consumer=0, num_consumers=1, name="bench"), 0)
    stats = tario.new_stats()
    reader.next_valid(stats)  # opens the dataset
    reader.set_cursor([0, 0, 0])
    raws, c0 = [], time.process_time()
    for _ in range(min(limit, src.num_examples)):
        raws.append(reader.next_valid(stats)[1])
    return raws, 1000 * (time.process_time() - c0) / max(len(raws), 1)


def per_core(spec, tokenizer_spec, image_size: int, batch: int, limit: int,
             rounds: int, tfds_src=None) -> dict:
    raws, read_ms = read_tars(spec, limit) if tfds_src is None else read_tfds(tfds_src, limit)
    if not raws:
        raise SystemExit(f"no valid samples in {spec or tfds_src.name}")
    kb = sum(len(r.image) for r in raws) / len(raws) / 1024
    runs = {"current": [], "previous": []}
    for _ in range(rounds):
        for path in runs:
            tokenizer, _ = load_tokenizer(tokenizer_spec)  # fresh: a cold BPE cache each time
            runs[path].append(_time_path(raws, tokenizer, image_size, batch, path))
    out = {}
    for path, results in runs.items():
        results = sorted(results, key=lambda r: r["images_per_cpu_sec"])
        median = results[len(results) // 2]
        median["images_per_cpu_sec_all_rounds"] = [r["images_per_cpu_sec"] for r in results]
        out[path] = median
    diffs = [np.abs(_crop(raw, image_size, i, "current").astype(np.int16)
                    - _crop(raw, image_size, i, "previous")).mean()
             for i, raw in enumerate(raws[:256])]
    cur = out["current"]
    read = cur["ms_per_image"]["read"] = round(read_ms, 3)
    cur["images_per_cpu_sec_with_read"] = round(
        1000 / (1000 / cur["images_per_cpu_sec"] + read), 1)
    result = {"images": len(raws), "avg_image_kb": round(kb, 1), **out["current"],
              "crop_mean_abs_diff_vs_pil": round(float(np.mean(diffs)), 3),
              "previous_path": out["previous"]}
    return result


def _crop(raw, image_size: int, i: int, path: str) -> np.ndarray:
    """The train crop of one sample: the pipeline's (``current``) or the former PIL-only one."""
    min_size = math.ceil(image_size * 1.25)
    rng = np.random.default_rng(i)
    if path == "current":
        return transforms.random_resized_crop(transforms.decode_array(raw.image, min_size),
                                              image_size, rng)
    img = transforms.decode_image(raw.image, min_size)
    left, top, w, h = transforms.random_resized_crop_params(img.width, img.height, rng)
    out = img.resize((image_size, image_size), Image.BICUBIC, box=(left, top, left + w, top + h))
    return np.asarray(out, dtype=np.uint8)


def _time_path(raws, tokenizer, image_size: int, batch: int, path: str) -> dict:
    """CPU ms per image of each stage of ``path`` (see _crop); ``previous`` adds the host
    float32 normalise the train iterator used to do."""
    min_size = math.ceil(image_size * 1.25)
    t = {"decode": 0.0, "crop": 0.0, "tokenize": 0.0}
    if path == "previous":
        t["normalize"] = 0.0
    crops, caps = [], []
    n = 0
    wall0 = time.perf_counter()
    for i, raw in enumerate(raws):
        rng = np.random.default_rng(i)
        c0 = time.process_time()
        if path == "current":
            img = transforms.decode_array(raw.image, min_size)
            c1 = time.process_time()
            crops.append(transforms.random_resized_crop(img, image_size, rng))
        else:
            img = transforms.decode_image(raw.image, min_size)
            c1 = time.process_time()
            left, top, w, h = transforms.random_resized_crop_params(img.width, img.height, rng)
            crops.append(np.asarray(img.resize((image_size, image_size), Image.BICUBIC,
                                               box=(left, top, left + w, top + h))))
        c2 = time.process_time()
        t["decode"] += c1 - c0
        t["crop"] += c2 - c1
        caps.append(raw.caption)
        if len(caps) == batch or i == len(raws) - 1:
            c0 = time.process_time()
            if path == "previous":
                transforms.normalize(np.stack(crops))
            c1 = time.process_time()
            tokenizer(caps, 77)
            c2 = time.process_time()
            if path == "previous":
                t["normalize"] += c1 - c0
            t["tokenize"] += c2 - c1
            n += len(caps)
            crops, caps = [], []
    wall = time.perf_counter() - wall0
    cpu = sum(t.values())
    return {"ms_per_image": {k: round(1000 * v / n, 3) for k, v in t.items()},
            "images_per_cpu_sec": round(n / cpu, 1), "images_per_wall_sec": round(n / wall, 1)}


def end_to_end(spec, tokenizer, image_size, batch, workers, mode, seconds,
               tfds_cfg=None) -> dict:
    cfg = {"train": spec, "workers": workers, "worker_mode": mode, "shuffle_buffer": 256,
           "resampled": True, "context_length": 77, **(tfds_cfg or {})}
    it = pipeline.make_train_iterator(cfg, tokenizer, image_size, batch, seed=0)
    try:
        next(it)  # start-up (spawn, imports, first shuffle fill)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += len(next(it)["text"])
        dt = time.perf_counter() - t0
    finally:
        it.close()
    return {"source": cfg.get("source", "webdataset"), "workers": workers, "mode": mode,
            "samples_per_sec": round(n / dt, 1)}


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
    ap.add_argument("--rounds", type=int, default=3, help="per-core rounds (median reported)")
    ap.add_argument("--tfds", action="store_true",
                    help="read a tfds dataset (data.source='tfds') instead of shards: "
                         "--tfds-name in --tfds-data-dir, else the synthetic images written "
                         "as a tfds array_record dataset")
    ap.add_argument("--tfds-name", default="", help="a prepared image-text tfds dataset")
    ap.add_argument("--tfds-data-dir", default="")
    ap.add_argument("--tfds-split", default="train")
    ap.add_argument("--tfds-caption-key", default="captions/text")
    args = ap.parse_args()

    tokenizer, tok_name = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        spec, tfds_cfg, src = args.shards, None, None
        w, h = (int(v) for v in args.src_size.lower().split("x"))
        if args.tfds:
            name, data_dir = args.tfds_name, args.tfds_data_dir
            if not name:
                name, data_dir = synthetic_tfds(os.path.join(tmp, "tfds"), args.num_images,
                                                (w, h)), os.path.join(tmp, "tfds")
            tfds_cfg = {"source": "tfds", "tfds_name": name, "tfds_data_dir": data_dir,
                        "tfds_split": args.tfds_split, "tfds_caption_key": args.tfds_caption_key}
            src = pipeline.tfds_source(tfds_cfg)
        elif spec is None:
            spec = synthetic_shards(tmp, args.num_images, (w, h), max(args.num_images // 4, 1))
        result = {"source": f"tfds {src.full_name} {src.split}" if src else (
                      args.shards or f"synthetic {args.src_size} JPEG shards"),
                  "image_size": args.image_size, "tokenizer": tok_name,
                  "cpu_count": os.cpu_count()}
        if args.tfds and not args.tfds_name:
            result["source"] += f" (synthetic {args.src_size} JPEG)"
        result["per_core"] = per_core(spec, args.tokenizer, args.image_size, args.batch,
                                      args.num_images, max(args.rounds, 1), src)
        pc = result["per_core"]
        rate, prev = pc["images_per_cpu_sec"], pc["previous_path"]
        print(f"per core: {rate:.0f} images/s (decode+crop+tokenize, uint8 out, "
              f"{pc['images_per_cpu_sec_with_read']:.0f} with the read stage, "
              f"{pc['ms_per_image']} ms/image); previous PIL path with host normalise: "
              f"{prev['images_per_cpu_sec']:.0f} images/s ({prev['ms_per_image']} ms/image); "
              f"crops differ by {pc['crop_mean_abs_diff_vs_pil']} grey levels (mean abs)",
              file=sys.stderr)
        if args.target_samples_per_sec:
            target = args.target_samples_per_sec
            cores = math.ceil(target / rate)
            result.update(target_samples_per_sec=target, cores_needed=cores,
                          workers_needed=cores)
            print(f"target {target:.0f} samples/s needs about {cores} core(s): data.workers >= "
                  f"{cores} (decode+crop+tokenize; no host normalise)", file=sys.stderr)
        runs = []
        for workers in [int(v) for v in args.workers.split(",") if v.strip()]:
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                r = end_to_end(spec, tokenizer, args.image_size, args.batch, workers, mode,
                               args.seconds, tfds_cfg)
                print(f"end to end: {r}", file=sys.stderr)
                runs.append(r)
        if runs:
            result["end_to_end"] = runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
