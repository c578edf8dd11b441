"""Embed webdataset shards with any CLIP model: float16 image and text embeddings per shard.

    python -m clip_jax.embed --model SOURCE --data SHARDS --out DIR [--batch-size 256]

``SOURCE`` is any model source (:mod:`clip_jax.sources`: bundle, training workdir, HF CLIP
directory, open_clip weights); ``SHARDS`` any shard spec (:mod:`clip_jax.data.shards`: braces,
lists, ``pipe:``, fsspec URLs; mixture weights are ignored). Every valid sample of every shard
(:func:`clip_jax.data.tario.iter_groups` + ``to_raw_sample``: an image and a non-empty caption)
is decoded, given the evaluation transform (shorter side resized, center crop, the model's
mean / std: :meth:`clip_jax.inference.InferenceModel.preprocess`) and encoded on all local
devices (:class:`~clip_jax.inference.InferenceModel` splits each batch over them). Output, for
each shard ``NAME`` (its file name without ``.tar``; ``NNNNN_NAME`` for every shard when two
shards share a file name)::

    DIR/NAME.img.npy     float16 (n, D) image embeddings (L2-normalised in float32 first)
    DIR/NAME.txt.npy     float16 (n, D) caption embeddings
    DIR/NAME.keys.json   the n sample keys, in shard order (row i of both arrays)
    DIR/NAME.done.json   the shard's URL, n and its skipped-sample counts; written last
    DIR/embed.json       the report: model, embedding width, its logit scale (exponentiated:
                         what multiplies the cosines), shards, summed counts

Resume: each file is written to a temporary name and renamed; ``NAME.done.json`` comes last, so
a shard whose marker exists is complete and a re-run skips it (a killed run redoes only the
shard it was in). ``embed.json`` names the model: a re-run with another model into the same
``DIR`` is refused. Corrupt samples (bad tar, no image, empty caption, undecodable image) are
skipped and counted (:data:`clip_jax.data.tario.STAT_KEYS`). One process, its local devices: to
use several hosts, give each its own part of the shards and its own ``DIR``.

:func:`embed_shards` is the library entry point; :mod:`clip_jax.filter` builds on it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clip_jax import cli, files, inference
from clip_jax.data import stored, tario, transforms
from clip_jax.data.shards import expand_shards
from clip_jax.data.stored import REPORT, SUFFIXES  # the format the train stream reads back

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ShardEmbeddings:
    """One shard's valid samples: keys in shard order, float16 image / text rows."""

    keys: list[str]
    image: np.ndarray
    text: np.ndarray

    def scores(self) -> np.ndarray:
        """Each pair's image-text cosine, float32 (the rows are unit norm up to float16)."""
        return np.einsum("nd,nd->n", self.image.astype(np.float32),
                         self.text.astype(np.float32))


def list_shards(spec) -> list[str]:
    """The shard URLs of ``spec``; a spec with none, or a missing local shard, is an error."""
    try:
        urls = expand_shards(spec)
    except (ValueError, TypeError) as e:
        raise cli.UserError(f"no shards in --data {spec!r}: {e}") from e
    if not urls:
        raise cli.UserError(f"no shards in --data {spec!r}")
    missing = [u for u in urls if not u.startswith("pipe:") and ("://" not in u or
               u.startswith("file://")) and not os.path.isfile(u.removeprefix("file://"))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard not found: {missing[0]}{more}")
    return urls


def shard_names(urls: Sequence[str]) -> list[str]:
    """Output names: each shard's file name without ``.tar`` (``.tar.gz``...), made file-safe;
    when two shards share a name, ``NNNNN_NAME`` (position in the list) for all of them."""
    names = []
    for url in urls:
        words = url.split() or ["shard"]  # a pipe: command names its shard in some word
        base = next((w for w in reversed(words) if ".tar" in w), words[-1])
        base = base.rstrip("/").rsplit("/", 1)[-1]
        base = re.sub(r"\.tar(\.\w+)?$", "", base)
        names.append(_UNSAFE.sub("_", base).strip("._") or "shard")
    if len(set(names)) < len(names):
        names = [f"{i:05d}_{n}" for i, n in enumerate(names)]
    return names


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced on a background thread (decoding overlaps the device's encoding);
    an exception there is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
            q.put((end, None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put((end, e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def _batches(model: inference.InferenceModel, url: str, batch_size: int,
             stats: dict) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """``(keys, normalised pixels, captions)`` of at most ``batch_size`` valid samples."""
    keys, images, captions = [], [], []
    for group in tario.iter_groups(url, tario.wanted_exts(), 0, stats):
        raw = tario.to_raw_sample(group, stats)
        if raw is None:
            continue
        try:
            image = transforms.decode_image(raw.image)
        except transforms.DECODE_ERRORS:
            stats["skipped_corrupt_image"] += 1
            continue
        keys.append(raw.key)
        images.append(image)
        captions.append(raw.caption)
        stats["samples"] += 1
        if len(keys) == batch_size:
            yield keys, model.preprocess(images), captions
            keys, images, captions = [], [], []
    if keys:
        yield keys, model.preprocess(images), captions


def embed_shard(model: inference.InferenceModel, url: str, batch_size: int = 256,
                stats: dict | None = None) -> ShardEmbeddings:
    """Every valid sample of one shard, encoded; skipped samples are counted in ``stats``."""
    stats = tario.new_stats() if stats is None else stats
    keys, image, text = [], [], []
    for k, pixels, captions in _prefetch(_batches(model, url, batch_size, stats)):
        keys.extend(k)
        image.append(model.encode_image(pixels).astype(np.float16))
        text.append(model.encode_text(captions).astype(np.float16))
    d = model.cfg.embed_dim
    empty = np.zeros((0, d), np.float16)
    return ShardEmbeddings(keys, np.concatenate(image) if image else empty,
                           np.concatenate(text) if text else empty)


def _save_npy(path: str, array: np.ndarray) -> None:
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def is_done(out_dir: str, name: str) -> bool:
    return all(os.path.isfile(os.path.join(out_dir, name + s)) for s in SUFFIXES)


def load_shard(out_dir: str, name: str) -> ShardEmbeddings:
    """A finished shard's embeddings from ``out_dir`` (see the module docstring)."""
    p = os.path.join(out_dir, name)
    return ShardEmbeddings(read_json(p + ".keys.json"), np.load(p + ".img.npy"),
                           np.load(p + ".txt.npy"))


def shard_scores(out_dir: str, name: str) -> np.ndarray:
    """A finished shard's image-text cosines (float32), the arrays read memory-mapped."""
    p = os.path.join(out_dir, name)
    return ShardEmbeddings([], np.load(p + ".img.npy", mmap_mode="r"),
                           np.load(p + ".txt.npy", mmap_mode="r")).scores()


def _check_model(out_dir: str, model_spec: str, embed_dim: int) -> None:
    path = os.path.join(out_dir, REPORT)
    if not os.path.isfile(path):
        return
    old = read_json(path)
    if old.get("model") != model_spec or old.get("embed_dim") != embed_dim:
        raise cli.UserError(f"{out_dir} holds embeddings of model {old.get('model')!r} "
                            f"(width {old.get('embed_dim')}), not of {model_spec!r} (width "
                            f"{embed_dim}): use another --out, or the same --model to resume")


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.0f} samples/s" if seconds > 0 else ""


def embed_shards(model: inference.InferenceModel, urls: Sequence[str], out_dir: str,
                 model_spec: str, batch_size: int = 256,
                 log: Callable[[str], None] | None = None) -> dict:
    """Embed every shard in ``urls`` into ``out_dir`` (skipping finished ones); returns the
    report written to ``out_dir/embed.json``: totals, per-shard names, counts and timing."""
    if batch_size < 1:
        raise cli.UserError(f"--batch-size must be >= 1, got {batch_size}")
    if model.tokenizer is None:
        raise cli.UserError(f"model {model_spec!r} has no tokenizer: captions cannot be "
                            "encoded (re-export it with its tokenizer)")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    files.make_dir(out_dir)
    d = model.cfg.embed_dim
    _check_model(out_dir, model_spec, d)
    names = shard_names(urls)
    report = {"model": model_spec, "embed_dim": d, "dtype": "float16",
              "logit_scale": math.exp(model.logit_scale), "shards": {},
              "totals": tario.new_stats(), "embedded_now": 0, "resumed": 0}
    files.write_json(os.path.join(out_dir, REPORT), report)
    t0 = time.time()
    for i, (url, name) in enumerate(zip(urls, names, strict=True)):
        base = os.path.join(out_dir, name)
        info = read_json(base + ".done.json") if is_done(out_dir, name) else None
        if info is not None and info["shard"] != url:
            raise cli.UserError(f"{base}.done.json holds the embeddings of {info['shard']}, "
                                f"not of {url}: use another --out for other shards")
        changed = info is not None and stored.changed_since(info, url)
        if changed:
            log(f"embed {name}: {changed}: embedding it again")
        if info is not None and not changed:
            report["resumed"] += 1
        else:
            stats = tario.new_stats()
            stats["shards"] = 1
            t = time.time()
            identity = stored.shard_identity(url)  # before the read: a rewrite during it shows
            emb = embed_shard(model, url, batch_size, stats)
            _save_npy(base + ".img.npy", emb.image)
            _save_npy(base + ".txt.npy", emb.text)
            files.write_json(base + ".keys.json", emb.keys)
            info = {"shard": url, "name": name, **stats, "seconds": round(time.time() - t, 3),
                    **identity}
            files.write_json(base + ".done.json", info)
            report["embedded_now"] += 1
            skipped = sum(v for k, v in stats.items() if k.startswith("skipped"))
            elapsed = time.time() - t0
            eta = elapsed / report["embedded_now"] * (len(urls) - i - 1)
            log(f"embed [{i + 1}/{len(urls)}] {name}: {stats['samples']} samples, {skipped} "
                f"skipped, {_rate(stats['samples'], info['seconds'])}, eta {eta:.0f} s")
        report["shards"][name] = {k: info[k] for k in ("shard", *tario.STAT_KEYS)}
        for k in tario.STAT_KEYS:
            report["totals"][k] += info[k]
    report["seconds"] = round(time.time() - t0, 3)
    files.write_json(os.path.join(out_dir, REPORT), report)
    return report


def shard_parser(prog: str, description: str, out_help: str) -> cli.ArgumentParser:
    """The arguments every shard-scoring command takes (embed, filter)."""
    p = cli.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", required=True, help="bundle, training workdir, HF CLIP directory "
                   "or open_clip weights")
    p.add_argument("--data", required=True, help="shard spec, e.g. '/data/{00000..00099}.tar'")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--batch-size", type=int, default=256, help="samples per encoder call")
    return p


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise cli.UserError(f"--batch-size must be >= 1, got {batch_size}")


def main(argv: Sequence[str] | None = None) -> int:
    args = shard_parser("python -m clip_jax.embed", __doc__.split("\n")[0],
                        "output directory").parse_args(argv)
    check_batch_size(args.batch_size)
    urls = list_shards(args.data)
    model = inference.load(args.model, batch_size=args.batch_size)
    report = embed_shards(model, urls, args.out, os.path.abspath(args.model), args.batch_size)
    print(json.dumps({"out": args.out, "shards": len(urls), **report["totals"],
                      "embedded_now": report["embedded_now"], "resumed": report["resumed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
