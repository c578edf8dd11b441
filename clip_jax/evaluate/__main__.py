"""Evaluate a trained model from the command line.

    python -m clip_jax.evaluate --model BUNDLE_OR_WORKDIR --eval zeroshot --dataset SPEC \\
        [--eval retrieval ...] [--dataset [NAME=]SPEC ...] [--templates imagenet] \\
        [--data-dir TFDS_DIR] [--out DIR]
    python -m clip_jax.evaluate --model SRC --suite clip_paper --data-dir DIR \\
        [--datasets a,b] [--eval zeroshot,linear_probe,fewshot] [--max-per-class N] \\
        [--templates [DATASET=]SPEC ...] [--classnames [DATASET=]SPEC ...] --out OUT

``--suite``: a suite of :mod:`clip_jax.evaluate.registry` (clip_paper, robustness, vtab,
retrieval, xm3600), a dataset of it, or a comma list; every dataset present under
``--data-dir`` is evaluated with each ``--eval`` (default zeroshot; retrieval sets always
retrieve, segmentation sets always run the patch-token probe) and each missing one is named in
one line with how to prepare it (:mod:`clip_jax.evaluate.suite`). Zero-shot prompts are the
registry's unless ``--templates`` / ``--classnames`` choose them, for every dataset or per
dataset (:mod:`clip_jax.evaluate.suite_prompts`). Writes ``OUT/report.json`` (``"suite":
{dataset: {kind: {"acc1", "acc5", "mean_per_class_recall", "headline"}}}``, the prompts used in
``"details"``), ``OUT/suite.md`` and ``OUT/suite.png``. Every flag is honoured or refused in
one line (exit 2) before a model loads: prompts without zeroshot, ``--shots`` / ``--seeds``
without fewshot, probe flags on retrieval sets only, ``--dataset`` (and, without ``--suite``,
``--datasets``, ``DATASET=`` prompts, probe flags without a probe).

``--model``: any model source (:mod:`clip_jax.sources`): a bundle, a training workdir or its
``checkpoints`` directory (latest complete step), an HF CLIP directory or open_clip weights;
``--weights ema``: a training run's weight average (:mod:`clip_jax.ema`) instead of its params.
``--eval``: zeroshot, retrieval, fewshot, linear_probe, and for a model with a decoder
captioning and referring (LocCa's referring-expression accuracy, IoU > 0.5:
:mod:`clip_jax.evaluate.referring`), and for a ViT segmentation (a linear probe on its patch
tokens, mIoU: :mod:`clip_jax.evaluate.segmentation`; ``--dataset`` the demo's card or a VOC 2012
folder) (repeat the flag or give a comma list).
``--dataset``: a dataset spec (see :mod:`clip_jax.evaluate.datasets`: a ``.json`` card such as
the demo corpus's ``zeroshot.json``, ``tfds:cifar10``, ``folder:PATH``, or shards for
retrieval), optionally named ``NAME=SPEC``; repeat it for several. Every ``--eval`` runs on every
``--dataset``. With one unnamed dataset each evaluation is named after its kind (``zeroshot``:
``eval/zeroshot/acc1``, as in training with ``eval.zeroshot``); otherwise ``KIND_NAME``
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

from clip_jax import cli, inference, sources
from clip_jax.config import DEFAULT_SHOTS
from clip_jax.evaluate import datasets, evaluators, plots, registry, suite_prompts
from clip_jax.evaluate import suite as suite_lib
from clip_jax.evaluate.evaluators import EVALS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m clip_jax.evaluate",
                           description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="bundle, training workdir or checkpoints dir, "
                   "HF CLIP directory, open_clip weights")
    p.add_argument("--eval", action="append", default=[],
                   help=f"evaluation(s): {', '.join(EVALS)} (repeat or comma-separate)")
    p.add_argument("--suite", default="", help="evaluation suite(s) or suite datasets, comma-"
                   "separated (clip_paper, robustness, vtab, retrieval); needs --data-dir")
    p.add_argument("--datasets", default="", help="with --suite: only these of its datasets")
    p.add_argument("--seeds", type=int, default=None,
                   help="few-shot probes: how many k-shot draws are averaged (default 3)")
    p.add_argument("--dataset", action="append", default=[], metavar="[NAME=]SPEC",
                   help="dataset spec, optionally named; repeat for several (every --eval "
                   "runs on every --dataset)")
    p.add_argument("--templates", action="append", default=[], metavar="[DATASET=]SPEC",
                   help="zero-shot prompt templates: imagenet, cifar10, imagenet_simple or a "
                   "file (default: the dataset's own); with --suite also a suite dataset's set, "
                   "a directory of <dataset>.txt, or DATASET=SPEC for one dataset (repeat)")
    p.add_argument("--classnames", action="append", default=[], metavar="[DATASET=]SPEC",
                   help="zero-shot class names, a file in label order (one per line); with "
                   "--suite also a directory of <dataset>.txt, or DATASET=FILE (repeat)")
    p.add_argument("--data-dir", default="", help="tensorflow-datasets data_dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shots", default=None,
                   help="k for few-shot probes, comma-separated (default "
                   f"{','.join(map(str, DEFAULT_SHOTS))})")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="probes: at most this many training images per class (0 = all); "
                   "with --suite every split, test included (quick runs)")
    p.add_argument("--out", default="", help="report directory (default: <workdir>/eval, or "
                   "eval_report for a bundle)")
    p.add_argument("--weights", choices=sources.WEIGHTS, default="raw",
                   help="ema: the weight average of a training run with ema.decay > 0")
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


def _probe_flags(args) -> list[str]:
    return [f for f, v in (("--shots", args.shots), ("--seeds", args.seeds)) if v is not None]


def _run_suite(args, names: list[str]) -> int:
    """``--suite``: every flag is honoured or refused in one line (see the module docstring)."""
    if args.dataset:
        raise cli.UserError("--suite and --dataset do not go together: name suite datasets "
                            "with --datasets a,b")
    bad = [n for n in names if n not in suite_lib.SUITE_KINDS]
    if bad:
        raise cli.UserError(f"--eval {bad} cannot run over a suite; choose from "
                            f"{suite_lib.SUITE_KINDS}")
    if not args.data_dir or not os.path.isdir(args.data_dir):
        raise cli.UserError(f"--suite needs --data-dir, an existing directory (got "
                            f"{args.data_dir!r})")
    try:
        datasets_ = suite_lib.resolve(args.suite, args.datasets.split(","))
    except ValueError as e:
        raise cli.UserError(f"--suite: {e}") from e
    probe_flags = _probe_flags(args)
    if probe_flags and "fewshot" not in names:
        raise cli.UserError(f"{' and '.join(probe_flags)} set the few-shot probes, but --eval "
                            f"{','.join(names)} runs none over the suite: add --eval fewshot")
    if all(registry.ENTRIES[n].task in ("retrieval", "segmentation") for n in datasets_):
        unused = probe_flags + (["--max-per-class"] if args.max_per_class is not None else [])
        if unused:
            raise cli.UserError(f"{' and '.join(unused)}: the datasets {datasets_} are "
                                "retrieval or segmentation sets, which have no such probes")
    choice = suite_prompts.parse(args.templates, args.classnames)
    suite_lib.check_prompts(choice, datasets_, args.data_dir, names)  # before loading a model
    model = inference.load(args.model, batch_size=args.batch_size, weights=args.weights)
    if model.tokenizer is None and "zeroshot" in names and any(
            registry.ENTRIES[n].task != "segmentation" for n in datasets_):
        raise cli.UserError(f"{args.model} has no tokenizer, which zero-shot needs")
    base = args.suite.replace(",", "+")
    probe_sizes = registry.SUITE_PROBE_SIZES.get(args.suite)
    result = suite_lib.run_suite(
        model, datasets_, args.data_dir, names, batch_size=args.batch_size,
        max_per_class=args.max_per_class or 0, shots=_shots(args.shots),
        seeds=tuple(range(args.seeds or 3)), probe_sizes=probe_sizes, prompts=choice,
        log=lambda m: print(m, file=sys.stderr))
    out = args.out or "eval_report"
    model_name = os.path.basename(os.path.normpath(args.model))
    written = suite_lib.write_suite(result, out, title=f"{base}: {model_name}", extra={
        "model": os.path.abspath(args.model), "suite_name": args.suite,
        "data_dir": os.path.abspath(args.data_dir), "evals": names,
        "max_per_class": args.max_per_class or 0, "templates": args.templates,
        "classnames": args.classnames})
    if not result["suite"]:  # an evaluation that produced nothing says why
        why = "; ".join(f"{n}: {w}" for n, w in {**result["missing"], **result["not_run"]}.items())
        raise cli.UserError(f"nothing was evaluated ({why or 'no datasets'}); the report is "
                            f"{written[0]}")
    print(json.dumps({"report": written[0], "table": written[1],
                      **suite_lib.suite_scalars(result)}, sort_keys=True))
    return 0


def _shots(value: str | None) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_SHOTS
    try:
        shots = tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
        shots = ()
    if not shots or min(shots) < 1:
        raise cli.UserError(f"--shots {value!r} must be comma-separated integers >= 1")
    return shots


def _one_for_all(args) -> None:
    """Without --suite, --templates / --classnames are one spec each, for every --dataset."""
    for flag, values in (("--templates", args.templates), ("--classnames", args.classnames)):
        if len(values) > 1 or any(_split(v)[0] and not os.path.exists(v) for v in values):
            raise cli.UserError(f"{flag} {values}: without --suite it takes one spec, for "
                                "every --dataset (DATASET=SPEC is for --suite)")
        if values and "zeroshot" not in args.names:
            raise cli.UserError(f"{flag} chooses zero-shot prompts, but --eval "
                                f"{','.join(args.names)} runs no zero-shot: add --eval zeroshot")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    names = [n.strip() for e in args.eval for n in e.split(",") if n.strip()]
    if args.seeds is not None and args.seeds < 1:
        raise cli.UserError(f"--seeds {args.seeds}: must be >= 1")
    if args.max_per_class is not None and args.max_per_class < 0:
        raise cli.UserError(f"--max-per-class {args.max_per_class}: must be >= 0")
    shots = _shots(args.shots)
    if args.suite:
        return _run_suite(args, names or ["zeroshot"])
    if not names or not args.dataset:
        raise cli.UserError("give --eval KIND and --dataset SPEC (or --suite NAME --data-dir "
                            "DIR)")
    bad = [n for n in names if n not in evaluators.EVALS]
    if bad:
        print(f"error: unknown evaluation(s) {bad}; choose from {evaluators.EVALS}",
              file=sys.stderr)
        return 2
    if args.datasets:
        raise cli.UserError(f"--datasets {args.datasets!r} picks datasets of a --suite; "
                            "without one, give each as --dataset")
    args.names = names
    _one_for_all(args)
    probes_run = {"fewshot", "linear_probe"} & set(names)
    unused = [f for f in _probe_flags(args) + (["--max-per-class"] if args.max_per_class
                                                is not None else []) if not probes_run]
    if unused:
        raise cli.UserError(f"{' and '.join(unused)} set the probes, but --eval "
                            f"{','.join(names)} runs none: add --eval fewshot or linear_probe")
    named, specs = eval_specs(names, args.dataset, templates="".join(args.templates),
                              classnames="".join(args.classnames), data_dir=args.data_dir,
                              shots=shots, seeds=tuple(range(args.seeds or 3)),
                              max_per_class=args.max_per_class or 0, batch_size=args.batch_size)
    model = inference.load(args.model, batch_size=args.batch_size, weights=args.weights)
    if model.tokenizer is None and ({"zeroshot", "retrieval", "captioning", "referring"}
                                    & set(names)):
        print(f"error: {args.model} has no tokenizer, which zero-shot, retrieval, captioning "
              "and referring need",
              file=sys.stderr)
        return 2
    reports = evaluators.run(model, specs)
    for name, rep in reports.items():  # k that could not run are said, not dropped silently
        for key in ("shots_not_run", "fewshot_not_run"):
            if key in rep:
                print(f"{name}: {rep[key]}", file=sys.stderr)

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
