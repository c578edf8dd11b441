"""Zero-shot prediction with any model source (bundle, workdir, HF or open_clip weights), or
captions from a model with a decoder.

    python -m clip_jax.predict --model SOURCE --image a.jpg [--image b.jpg] \\
        --labels "cat,dog,zebra" [--templates "a photo of a {}." "a drawing of a {}."] \\
        [--top-k 3] [--json]
    python -m clip_jax.predict --model SOURCE --image a.jpg [--image b.jpg] --caption \\
        [--beams 4] [--json]

``--labels``: comma-separated class names, or a file / dataset name understood by
:func:`clip_jax.evaluate.templates.get_classnames`. ``--templates``: ``str.format`` strings with
``{}`` (prompt-ensembled), or a dataset name / file for
:func:`clip_jax.evaluate.templates.get_templates` (``imagenet`` = OpenAI's 80 templates); the
default is ``"a photo of a {}."``. Prints, per image, the labels ranked by probability (softmax of
``exp(logit_scale) * cosine similarity``; for SigLIP models each label's own sigmoid).
``--caption``: one line per image, ``PATH<TAB>caption``, written by the model's captioning
decoder (:class:`clip_jax.evaluate.captioning.Captioner`; greedy, or beam search with
``--beams`` > 1), the images in batches of ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from PIL import Image

from clip_jax import cli, inference, sources
from clip_jax.data.transforms import to_rgb
from clip_jax.evaluate.captioning import Captioner
from clip_jax.evaluate.templates import DEFAULT_TEMPLATES, get_classnames, get_templates


def parse_labels(spec: str) -> list[str]:
    if os.path.isfile(spec):
        return get_classnames(spec)
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if len(labels) == 1 and "," not in spec:
        try:  # a dataset name ("cifar10"...)
            return get_classnames(labels[0])
        except (ValueError, KeyError, FileNotFoundError):
            pass
    if not labels:
        raise ValueError(f"no labels in {spec!r}")
    return labels


def parse_templates(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(DEFAULT_TEMPLATES)
    out: list[str] = []
    for v in values:
        if "{}" in v or "{c}" in v:
            out.append(v)
        else:
            out.extend(get_templates(v))
    return out


def load_images(paths: Sequence[str]):
    images = []
    for p in paths:
        try:
            with Image.open(p) as f:
                f.load()
                images.append(to_rgb(f))
        except (OSError, ValueError) as e:
            raise cli.UserError(f"cannot read image {p}: {e}") from e
    return images


def predict(model, images, labels: Sequence[str], templates: Sequence[str]):
    """(n_images, n_labels) probabilities."""
    return model.zero_shot(images, list(labels), list(templates))


def format_ranking(name: str, probs, labels: Sequence[str], top_k: int = 0) -> str:
    order = sorted(range(len(labels)), key=lambda j: -float(probs[j]))
    if top_k > 0:
        order = order[:top_k]
    lines = [name] + [f"  {100 * float(probs[j]):7.2f}%  {labels[j]}" for j in order]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m clip_jax.predict",
                           description="Zero-shot classification of images.")
    p.add_argument("--model", required=True, help="bundle, training workdir, HF CLIP directory "
                   "or open_clip weights")
    p.add_argument("--image", action="append", required=True,
                   help="image file (repeat for several)")
    p.add_argument("--labels", default=None,
                   help='comma-separated class names ("cat,dog,zebra"), a file, or a dataset')
    p.add_argument("--caption", action="store_true",
                   help="write a caption per image with the model's decoder (no --labels)")
    p.add_argument("--beams", type=int, default=1,
                   help="--caption: beam search with this many beams (1: greedy)")
    p.add_argument("--templates", nargs="+", default=None,
                   help='prompt templates with {} ("a photo of a {}.") or a dataset name/file')
    p.add_argument("--top-k", type=int, default=0, help="print only the k best labels")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weights", choices=sources.WEIGHTS, default="raw",
                   help="ema: the weight average of a training run with ema.decay > 0")
    return p


def caption(args) -> int:
    """``--caption``: each image's caption, one line (or a JSON list)."""
    if args.beams < 1:
        raise cli.UserError(f"--beams {args.beams}: must be >= 1")
    images = load_images(args.image)
    model = inference.load(args.model, batch_size=args.batch_size, weights=args.weights)
    if model.cfg.decoder is None:
        raise cli.UserError(f"{args.model} has no captioning decoder (model.decoder), which "
                            "--caption needs")
    texts = Captioner(model).captions(images, beams=args.beams)
    if args.json:
        print(json.dumps([{"image": p, "caption": t} for p, t in zip(args.image, texts,
                                                                      strict=True)], indent=2))
    else:
        print("\n".join(f"{p}\t{t}" for p, t in zip(args.image, texts, strict=True)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.caption:
        if args.labels or args.templates or args.top_k:
            raise cli.UserError("--caption writes captions: --labels, --templates and --top-k "
                                "are for zero-shot prediction")
        return caption(args)
    if args.labels is None:
        raise cli.UserError("give --labels (zero-shot) or --caption")
    labels = parse_labels(args.labels)
    templates = parse_templates(args.templates)
    images = load_images(args.image)
    model = inference.load(args.model, batch_size=args.batch_size, weights=args.weights)
    probs = predict(model, images, labels, templates)
    if args.json:
        out = []
        for path, row in zip(args.image, probs, strict=True):
            ranked = sorted(zip(labels, map(float, row), strict=True), key=lambda t: -t[1])
            if args.top_k > 0:
                ranked = ranked[:args.top_k]
            out.append({"image": path, "predictions": [{"label": lab, "probability": p}
                                                       for lab, p in ranked]})
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(format_ranking(path, row, labels, args.top_k)
                        for path, row in zip(args.image, probs, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
