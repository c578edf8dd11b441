"""CLIP-score filtering of webdataset shards: keep the pairs whose image and caption agree.

    python -m clip_jax.filter --model SOURCE --data SHARDS --out DIR --min-score 0.28 \\
        [--top-fraction 0.3] [--batch-size 256]

How LAION was built (OpenAI ViT-B/32 image-text cosine >= 0.3 for LAION-400M, >= 0.28 for
LAION-5B English) and DataComp's CLIP-score baselines (keep the best 30%). Steps:

1. every shard is embedded into ``DIR/embeddings/`` by :func:`clip_jax.embed.embed_shards`
   (resumable; corrupt samples skipped and counted, and never kept);
2. each sample's score is its image-text cosine; a sample is kept when ``score >= --min-score``
   **and**, with ``--top-fraction f``, ``score >= t_f``, the ``ceil(f * N)``-th highest score
   of all N valid samples (so with both, the kept set is the top fraction minus anything below
   the minimum; ties at ``t_f`` are all kept). At least one of the two must be given;
3. ``DIR/NAME.tar`` (one per input shard, in order, empty if nothing is kept, so the input's
   brace pattern names the output too) holds the kept samples, every member of each sample
   byte for byte (image, caption, ``.json``, anything else; extensions lower-cased as the
   reader sees them; members named ``__*``, which webdataset ignores, are not copied),
   written by :func:`clip_jax.data.write_shards.open_tar_writer` (deterministic metadata)
   to a temporary name and renamed;
4. ``DIR/sizes.json`` (kept per shard), ``DIR/filter_report.json`` (kept / total, thresholds,
   score quantiles, skipped counts, per-shard counts) and ``DIR/score_histogram.png``.

Resume: a shard's output is recorded in ``DIR/.filter/NAME.json`` with the threshold it was
written for; a re-run with the same thresholds skips it, with others rewrites it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clip_jax import cli, embed, files, inference
from clip_jax.data import tario
from clip_jax.data.write_shards import open_tar_writer

REPORT, HISTOGRAM, SIZES, EMBEDDINGS, DONE = ("filter_report.json", "score_histogram.png",
                                              "sizes.json", "embeddings", ".filter")
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


class _EveryMember:
    """A ``wanted`` set for :func:`clip_jax.data.tario.iter_groups` holding every extension."""

    def __contains__(self, ext) -> bool:
        return True


def check_thresholds(min_score: float | None, top_fraction: float | None) -> None:
    if min_score is None and top_fraction is None:
        raise cli.UserError("give --min-score, --top-fraction or both: nothing to filter by")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise cli.UserError(f"--min-score must be a cosine in [-1, 1], got {min_score}")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise cli.UserError(f"--top-fraction must be in (0, 1], got {top_fraction}")


def check_out_dir(urls: Sequence[str], out_dir: str) -> None:
    """The filtered shards must not overwrite the input (same directory)."""
    out_abs = os.path.realpath(out_dir)
    for url in urls:
        if os.path.dirname(os.path.realpath(url.removeprefix("file://"))) == out_abs:
            raise cli.UserError(f"--out {out_dir} holds the input shard {url}: write the "
                                "filtered shards to another directory")


def threshold(scores: np.ndarray, min_score: float | None,
              top_fraction: float | None) -> tuple[float, float | None]:
    """``(t, t_f)``: keep ``score >= t``; ``t_f`` is the top-fraction cut (None without one)."""
    check_thresholds(min_score, top_fraction)
    t_f = None
    if top_fraction is not None and len(scores):
        k = math.ceil(top_fraction * len(scores))
        t_f = float(np.partition(scores, len(scores) - k)[len(scores) - k])
    cuts = [c for c in (min_score, t_f) if c is not None]
    return (max(cuts) if cuts else -math.inf), t_f


def write_kept(url: str, keys: Sequence[str], keep: np.ndarray, path: str) -> int:
    """Write the groups of shard ``url`` whose key is kept (``keys[i]`` with ``keep[i]``, in
    shard order) to ``path`` atomically; returns the count. Groups that are not in ``keys``
    (skipped as corrupt when embedded) are left out."""
    tmp = f"{path}.{os.getpid()}.tmp"
    i = kept = 0
    try:
        with open_tar_writer(tmp) as sink:
            for group in tario.iter_groups(url, _EveryMember()):
                if i < len(keys) and group["__key__"] == keys[i]:
                    if keep[i]:
                        sink.write(group)
                        kept += 1
                    i += 1
        if i != len(keys):
            raise RuntimeError(f"{url} changed since it was embedded: {len(keys) - i} of its "
                               f"embedded samples are gone (from {keys[i]!r}); delete the "
                               f"embeddings of this shard and re-run")
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return kept


def plot_histogram(scores: np.ndarray, cuts: dict[str, float], out_png: str) -> str:
    """Score histogram with a vertical line per threshold (matplotlib Agg canvas)."""
    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(scores, bins=min(100, max(10, len(scores) // 20)), color="0.45")
    for (label, value), colour in zip(cuts.items(), ("tab:red", "tab:blue"), strict=False):
        ax.axvline(value, color=colour, linestyle="--", label=f"{label} {value:.3f}")
    ax.set_xlabel("image-text cosine")
    ax.set_ylabel("samples")
    ax.set_title(f"CLIP scores of {len(scores)} samples")
    if cuts:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png


def filter_shards(model: inference.InferenceModel, urls: Sequence[str], out_dir: str,
                  model_spec: str, min_score: float | None = None,
                  top_fraction: float | None = None, batch_size: int = 256,
                  log=None) -> dict:
    """Embed, score and write the kept samples of ``urls`` into ``out_dir``; returns the report
    (also written to ``out_dir/filter_report.json``)."""
    check_thresholds(min_score, top_fraction)
    check_out_dir(urls, out_dir)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    emb_dir = os.path.join(out_dir, EMBEDDINGS)
    emb_report = embed.embed_shards(model, urls, emb_dir, model_spec, batch_size, log)
    names = embed.shard_names(urls)
    scores = [embed.shard_scores(emb_dir, n) for n in names]  # 4 bytes a sample in memory
    everything = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if not len(everything):
        raise cli.UserError(f"no valid sample (image + caption) in the {len(urls)} shard(s): "
                            f"skipped {emb_report['totals']}")
    cut, t_f = threshold(everything, min_score, top_fraction)
    files.make_dir(os.path.join(out_dir, DONE))
    sizes, per_shard = {}, {}
    for i, (url, name, s) in enumerate(zip(urls, names, scores, strict=True)):
        marker = os.path.join(out_dir, DONE, name + ".json")
        tar = os.path.join(out_dir, name + ".tar")
        keep = s >= cut
        if (os.path.isfile(marker) and os.path.isfile(tar)
                and embed.read_json(marker).get("threshold") == cut):
            kept = embed.read_json(marker)["kept"]
        else:
            keys = embed.read_json(os.path.join(emb_dir, name + ".keys.json"))
            kept = write_kept(url, keys, keep, tar)
            files.write_json(marker, {"shard": url, "threshold": cut, "kept": kept,
                                      "total": len(s)})
            log(f"filter [{i + 1}/{len(urls)}] {name}.tar: kept {kept} of {len(s)}")
        sizes[name + ".tar"] = kept
        per_shard[name + ".tar"] = {"shard": url, "kept": kept, "total": len(s)}
    kept = int(sum(sizes.values()))
    cuts = {k: v for k, v in (("min-score", min_score), ("top-fraction cut", t_f))
            if v is not None}
    report = {
        "model": model_spec, "kept": kept, "total": len(everything),
        "kept_fraction": kept / len(everything),
        "min_score": min_score, "top_fraction": top_fraction, "top_fraction_threshold": t_f,
        "threshold": cut,
        "score_quantiles": {str(q): float(v) for q, v in
                            zip(QUANTILES, np.quantile(everything, QUANTILES), strict=True)},
        "score_mean": float(everything.mean()),
        "skipped": {k: v for k, v in emb_report["totals"].items() if k.startswith("skipped")},
        "histogram": plot_histogram(everything, cuts, os.path.join(out_dir, HISTOGRAM)),
        "shards": per_shard,
    }
    files.write_json(os.path.join(out_dir, SIZES), sizes)
    files.write_json(os.path.join(out_dir, REPORT), report)
    return report


def _parser() -> cli.ArgumentParser:
    p = embed.shard_parser("python -m clip_jax.filter", __doc__.split("\n")[0],
                           "output directory (not the input's)")
    p.add_argument("--min-score", type=float, default=None,
                   help="keep pairs with image-text cosine >= this (LAION-5B: 0.28)")
    p.add_argument("--top-fraction", type=float, default=None,
                   help="keep only the best fraction of pairs by score (with --min-score: both "
                   "must hold)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_thresholds(args.min_score, args.top_fraction)
    embed.check_batch_size(args.batch_size)
    urls = embed.list_shards(args.data)
    check_out_dir(urls, args.out)
    model = inference.load(args.model, batch_size=args.batch_size)
    report = filter_shards(model, urls, args.out, os.path.abspath(args.model), args.min_score,
                           args.top_fraction, args.batch_size)
    print(json.dumps({k: report[k] for k in ("kept", "total", "kept_fraction", "threshold",
                                             "histogram")}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
