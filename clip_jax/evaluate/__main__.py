"""Evaluate a trained model from the command line.

    python -m clip_jax.evaluate --model BUNDLE_OR_WORKDIR --eval zeroshot --dataset SPEC \\
        [--eval retrieval ...] [--dataset [NAME=]SPEC ...] [--templates imagenet] \\
        [--data-dir TFDS_DIR] [--out DIR]

``--model``: any model source (:mod:`clip_jax.sources`): a bundle, a training workdir or its
``checkpoints`` directory (latest complete step), an HF CLIP directory or open_clip weights.
``--eval``: zeroshot, retrieval, fewshot, linear_probe (repeat the flag or give a comma list).
``--dataset``: a dataset spec (see :mod:`clip_jax.evaluate.datasets`: a ``.json`` card such as
the demo corpus's ``zeroshot.json``, ``tfds:cifar10``, ``folder:PATH``, or shards for
retrieval), optionally named ``NAME=SPEC``; repeat it for several. Every ``--eval`` runs on every
``--dataset``. With one unnamed dataset each evaluation is named after its kind (``zeroshot``:
``eval/zeroshot/top1``, as in training with ``eval.zeroshot``); otherwise ``KIND_NAME``
(``--dataset cifar=tfds:cifar10`` gives ``zeroshot_cifar``), an unnamed dataset's name being
:func:`clip_jax.evaluate.datasets.short_name` of its spec (``tfds:cifar10`` -> ``cifar10``).
Writes one ``DIR/report.json`` (``{"model", "datasets": {NAME: SPEC}, "evals": {name:
report}}``), a confusion-matrix PNG per zero-shot evaluation (``DIR/<name>_confusion.png``)
and, for a workdir, ``DIR/training_curves.png``; prints the headline numbers
(``eval/<name>/<metric>``) as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from clip_jax import cli, inference
from clip_jax.evaluate import datasets, evaluators, plots
from clip_jax.evaluate.evaluators import DEFAULT_SHOTS, EVALS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m clip_jax.evaluate",
                           description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="bundle, training workdir or checkpoints dir, "
                   "HF CLIP directory, open_clip weights")
    p.add_argument("--eval", action="append", required=True,
                   help=f"evaluation(s): {', '.join(EVALS)} (repeat or comma-separate)")
    p.add_argument("--dataset", action="append", required=True, metavar="[NAME=]SPEC",
                   help="dataset spec, optionally named; repeat for several (every --eval "
                   "runs on every --dataset)")
    p.add_argument("--templates", default="", help="prompt templates: imagenet, cifar10, "
                   "imagenet_simple or a file (default: the dataset's own)")
    p.add_argument("--data-dir", default="", help="tensorflow-datasets data_dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shots", default=",".join(map(str, DEFAULT_SHOTS)),
                   help="k for few-shot probes, comma-separated")
    p.add_argument("--max-per-class", type=int, default=0,
                   help="probes: at most this many training images per class (0 = all)")
    p.add_argument("--out", default="", help="report directory (default: <workdir>/eval, or "
                   "eval_report for a bundle)")
    return p


def _split(value: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a spec alone (even one holding '=') -> (None, SPEC)."""
    name, sep, spec = value.partition("=")
    return (name, spec) if sep and _NAME.fullmatch(name) else (None, value)


def named_datasets(values: Sequence[str]) -> dict[str, str]:
    """``--dataset`` values -> ``{name: spec}`` (``NAME=SPEC``, else the spec's short name)."""
    out = {}
    for value in values:
        name, spec = _split(value)
        name = name or datasets.short_name(spec)
        if not spec.strip():
            raise cli.UserError(f"--dataset {value!r}: the dataset spec is empty")
        if name in out:
            raise cli.UserError(f"--dataset: two datasets are named {name!r} ({out[name]!r} "
                                f"and {spec!r}); name them apart as NAME=SPEC")
        out[name] = spec
    return out


def eval_specs(kinds: Sequence[str], values: Sequence[str], **common) -> tuple[dict, list]:
    """``({dataset name: spec}, [EvalSpec])``: every kind on every dataset, each evaluation
    named ``KIND`` (one unnamed dataset) or ``KIND_NAME``."""
    named = named_datasets(values)
    plain = len(values) == 1 and _split(values[0])[0] is None
    specs = [evaluators.EvalSpec(kind=k, dataset=spec, name=k if plain else f"{k}_{name}",
                                 **common)
             for name, spec in named.items() for k in kinds]
    return named, specs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    names = [n.strip() for e in args.eval for n in e.split(",") if n.strip()]
    bad = [n for n in names if n not in evaluators.EVALS]
    if bad:
        print(f"error: unknown evaluation(s) {bad}; choose from {evaluators.EVALS}",
              file=sys.stderr)
        return 2
    try:
        shots = tuple(int(k) for k in args.shots.split(",") if k.strip())
    except ValueError:
        print(f"error: --shots {args.shots!r} must be comma-separated integers", file=sys.stderr)
        return 2
    named, specs = eval_specs(names, args.dataset, templates=args.templates,
                              data_dir=args.data_dir, shots=shots,
                              max_per_class=args.max_per_class, batch_size=args.batch_size)
    model = inference.load(args.model, batch_size=args.batch_size)
    if model.tokenizer is None and ({"zeroshot", "retrieval"} & set(names)):
        print(f"error: {args.model} has no tokenizer, which zero-shot and retrieval need",
              file=sys.stderr)
        return 2
    reports = evaluators.run(model, specs)

    workdir = args.model if os.path.isfile(os.path.join(args.model, "metrics.jsonl")) else None
    out = args.out or (os.path.join(workdir, "eval") if workdir else "eval_report")
    written = evaluators.write_report(reports, out, extra={
        "model": os.path.abspath(args.model), "datasets": named})
    if workdir:
        written.append(plots.plot_training_curves(
            os.path.join(workdir, "metrics.jsonl"), os.path.join(out, "training_curves.png")))
    print(json.dumps({"report": written[0], **evaluators.scalars(reports)}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
