"""Run an evaluation suite (:mod:`clip_jax.evaluate.registry`) and write its report, table and
plot.

:func:`run_suite` evaluates every dataset of the suite that is present in the data directory
(:mod:`clip_jax.evaluate.suite_data`) and lists each missing one with how to prepare it. Per
dataset the test split is encoded once and every evaluation kind reuses those features:

* ``zeroshot``: the prompt-ensembled classifier, built once per model and dataset (its time is
  reported: 1000 classes x 80 templates for ImageNet is the slow part) from the registry's
  templates and class names or the user's (:mod:`clip_jax.evaluate.suite_prompts`), recorded in
  ``details[<dataset>]["prompts"]`` and listed under the table;
* ``linear_probe``: the L-BFGS logistic regression, its L2 strength swept on the validation split
  (the dataset's, or a per-class 20% carved from train), refitted on train + validation;
* ``fewshot``: k-shot logistic regressions, k in ``shots``, averaged over ``seeds`` (the
  headline is the largest k; every k is in ``shots``).

Retrieval datasets report R@1/5/10 both ways; segmentation sets (given a loaded model, whatever
the kinds asked) the patch-token probe's mIoU (:mod:`clip_jax.evaluate.segmentation`). The
result, ``{"suite": {dataset: {kind:
{"acc1", "acc5", "mean_per_class_recall", "headline"}}}, "details", "missing"}`` (``acc5``
absent under 5 classes), is what :func:`write_suite` writes to ``report.json`` next to
``suite.md`` (one row per dataset, the headline metric named, the mean over datasets) and
``suite.png``. :func:`suite_scalars` flattens it into ``eval/<dataset>/<metric>`` numbers for a
training run's ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from clip_jax import files, inference
from clip_jax.config import DEFAULT_SHOTS
from clip_jax.evaluate import (
    datasets,
    encode,
    metrics,
    plots,
    probes,
    registry,
    segmentation,
    suite_data,
    suite_prompts,
)

SUITE_EVALS = ("zeroshot", "linear_probe", "fewshot")
SUITE_KINDS = (*SUITE_EVALS, "segmentation")  # what --eval may name with --suite
_METRICS = ("acc1", "acc5", "mean_per_class_recall")


def resolve(suite: str, only: Sequence[str] = ()) -> list[str]:
    """Dataset names of ``suite`` (a suite name, a dataset name, or a comma list of them),
    restricted to ``only`` when given; a ValueError names anything unknown."""
    names: list[str] = []
    for part in (p.strip() for p in str(suite).split(",")):
        if not part:
            continue
        if part in registry.SUITES:
            names.extend(registry.SUITES[part])
        elif part in registry.ENTRIES:
            names.append(part)
        else:
            raise ValueError(f"unknown suite or dataset {part!r}: suites are "
                             f"{sorted(registry.SUITES)}, datasets {sorted(registry.ENTRIES)}")
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("the suite names no dataset")
    only = [o.strip() for o in only if o.strip()]
    outside = [o for o in only if o not in names]
    if outside:
        raise ValueError(f"--datasets {outside} are not in the suite {suite!r} ({names})")
    return [n for n in names if not only or n in only]


def _with_headline(m: dict, metric: str) -> dict:
    return {**m, "headline": m[metric]}


def _probe_sets(entry, data_dir, where, encoder, batch_size, max_per_class, sizes):
    """(train x, y, val x, y, how the val split was made) or None without a train split."""
    train = suite_data.labelled_split(entry, data_dir, "train", where)
    if train is None:
        return None
    x, y = encode.image_features(encoder, train, batch_size, max_per_class)
    val = suite_data.labelled_split(entry, data_dir, "val", where)
    if val is not None:
        vx, vy = encode.image_features(encoder, val, batch_size, max_per_class)
        how = val.name
    else:
        tr, va = datasets.split_per_class(y, 0.2)
        x, y, vx, vy = x[tr], y[tr], x[va], y[va]
        how = f"20% of {train.name} per class"
    if sizes:
        x, y, vx, vy = x[:sizes[0]], y[:sizes[0]], vx[:sizes[1]], vy[:sizes[1]]
    return x, y, vx, vy, how


def _test_split(entry, data_dir, where, choice):
    """The test split with the prompts of ``choice`` applied, and their record."""
    test = suite_data.labelled_split(entry, data_dir, "test", where)
    return test, suite_prompts.apply(choice, entry, test,
                                     suite_data.prompt_sources(entry, where))


def _classification(encoder, entry, data_dir, where, evals, batch_size, max_per_class,
                    shots, seeds, sizes, choice) -> tuple[dict, dict]:
    test, used = _test_split(entry, data_dir, where, choice)
    tx, ty = encode.image_features(encoder, test, batch_size, max_per_class)
    names = test.class_names
    out: dict = {}
    info: dict = {"test": test.name, "num_test": int(len(ty)), "num_classes": len(names),
                  "metric": entry.metric, "source": where[0], "skipped": dict(test.stats)}
    if "zeroshot" in evals:
        info["prompts"] = used
        t0 = time.perf_counter()
        classifier = inference.build_zeroshot_classifier(
            encoder.encode_text, names, test.templates, batch_size=batch_size)
        info["classifier_seconds"] = time.perf_counter() - t0
        info["num_templates"] = len(test.templates)
        scores = tx @ np.asarray(classifier, np.float32).T
        out["zeroshot"] = _with_headline(metrics.classification_metrics(scores, ty),
                                         entry.metric)
    probe_kinds = [k for k in ("linear_probe", "fewshot") if k in evals]
    sets = (_probe_sets(entry, data_dir, where, encoder, batch_size, max_per_class, sizes)
            if probe_kinds else None)
    if probe_kinds and sets is None:
        info["probes"] = "no train split: probes not run"
    if sets is not None:
        x, y, vx, vy, how = sets
        info.update(num_train=int(len(y)), num_val=int(len(vy)), val=how)
        if "linear_probe" in evals:
            r = probes.linear_probe(x, y, tx, ty, vx, vy, num_classes=len(names))
            out["linear_probe"] = _with_headline({k: r[k] for k in _METRICS if k in r},
                                                 entry.metric)
            info["linear_probe"] = {k: r[k] for k in ("best_l2", "val_acc1", "sweep")}
        smallest = int(np.bincount(y, minlength=len(names)).min())
        ks = [k for k in shots if k <= smallest]
        if "fewshot" in evals and not ks:
            info["fewshot"] = (f"a class has {smallest} training images, fewer than the "
                               f"smallest k in {list(shots)}: not run")
        elif "fewshot" in evals:
            r = probes.fewshot_linear_probe(x, y, tx, ty, shots=ks, seeds=seeds,
                                            num_classes=len(names))
            per_k = {int(k): _with_headline(m, entry.metric) for k, m in r["metrics"].items()}
            out["fewshot"] = {**per_k[max(ks)], "k": max(ks), "shots": per_k,
                              "seeds": len(seeds)}
    return out, info


def check_prompts(choice: suite_prompts.Choice, names: Sequence[str], data_dir: str,
                  evals: Sequence[str]) -> dict:
    """Whether the user's prompts can be honoured on the datasets present (every file read,
    every class count checked, nothing encoded): a ValueError names the problem. Returns
    ``{dataset: where it is or None}`` (:func:`clip_jax.evaluate.suite_data.locate`)."""
    suite_prompts.check(choice, names, evals)
    located = {name: suite_data.locate(registry.ENTRIES[name], data_dir) for name in names}
    for name, where in located.items():
        if choice and where is not None and registry.ENTRIES[name].task == "classification":
            _test_split(registry.ENTRIES[name], data_dir, where, choice)
    return located


def run_suite(encoder, names: Sequence[str], data_dir: str,
              evals: Sequence[str] = ("zeroshot",), *, batch_size: int = 256,
              max_per_class: int = 0, shots: Sequence[int] = DEFAULT_SHOTS,
              seeds: Sequence[int] = (0, 1, 2), probe_sizes: tuple[int, int] | None = None,
              prompts: suite_prompts.Choice | None = None,
              log: Callable[[str], None] = print) -> dict:
    """``{"suite": {dataset: {kind: metrics}}, "details": {dataset: {...}}, "missing":
    {dataset: how to prepare it}, "not_run": {dataset: why nothing was evaluated}}`` (see the
    module docstring). ``prompts``: the user's templates / class names
    (:mod:`clip_jax.evaluate.suite_prompts`; checked on every dataset present before anything
    is encoded), recorded per dataset in ``details[<dataset>]["prompts"]``."""
    bad = [k for k in evals if k not in SUITE_KINDS]
    if bad:
        raise ValueError(f"suite evaluations {bad}: choose from {SUITE_KINDS}")
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory")
    choice = prompts or suite_prompts.Choice()
    located = check_prompts(choice, names, data_dir, evals)
    results, details, missing, not_run = {}, {}, {}, {}
    for name in names:
        entry = registry.ENTRIES[name]
        where = located[name]
        if where is None:
            missing[name] = suite_data.missing_message(entry)
            log(missing[name])
            continue
        t0 = time.perf_counter()
        if entry.task == "retrieval":
            ds = suite_data.captioned_set(entry, data_dir, where)
            r = encode.retrieval(encoder, ds, batch_size)
            results[name] = {"retrieval": _with_headline(r, entry.metric)}
            details[name] = {"metric": entry.metric, "source": where[0],
                             "skipped": dict(ds.stats)}
        elif entry.task == "segmentation":
            r = segmentation.evaluate_set(encoder, segmentation.voc_set(
                where[1], entry.train, entry.test))
            results[name] = {"segmentation": _with_headline(
                {k: r[k] for k in ("miou", "pixel_accuracy")}, entry.metric)}
            details[name] = {"metric": entry.metric, "source": where[0],
                             **{k: r[k] for k in ("l2", "num_fit", "num_test", "grid",
                                                   "per_class_iou")}}
        else:
            results[name], details[name] = _classification(
                encoder, entry, data_dir, where, tuple(evals), batch_size, max_per_class,
                tuple(int(k) for k in shots), tuple(seeds), probe_sizes, choice)
        details[name]["seconds"] = time.perf_counter() - t0
        if not results[name]:  # e.g. fewer training images per class than any k
            del results[name]
            not_run[name] = "; ".join(str(details[name][k]) for k in ("probes", "fewshot")
                                      if k in details[name]) or "nothing to evaluate"
            log(f"{name}: not evaluated: {not_run[name]}")
            continue
        log(f"{name}: " + ", ".join(f"{k} {v['headline']:.4f}" for k, v in results[name].items())
            + f" ({entry.metric}, {details[name]['seconds']:.1f} s)")
    return metrics.jsonable({"suite": results, "details": details, "missing": missing,
                             "not_run": not_run})


def suite_table(result: dict, title: str = "") -> str:
    """The Markdown table: one row per dataset (its headline metric named), the mean last."""
    suite, details = result["suite"], result["details"]
    kinds = [k for k in (*SUITE_EVALS, "retrieval", "segmentation")
             if any(k in r for r in suite.values())]
    head = ["dataset", "metric", *[f"fewshot (k={_k(suite)})" if k == "fewshot" else k
                                   for k in kinds]]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in suite.items():
        cells = [f"{100 * r[k]['headline']:.1f}" if k in r else "" for k in kinds]
        lines.append(f"| {name} | {details[name]['metric']} | " + " | ".join(cells) + " |")
    means = []
    for k in kinds:
        vals = [r[k]["headline"] for r in suite.values() if k in r]
        means.append(f"**{100 * np.mean(vals):.1f}** ({len(vals)})" if vals else "")
    lines.append("| mean (datasets) | | " + " | ".join(means) + " |")
    used = {n: d["prompts"] for n, d in details.items() if n in suite and "prompts" in d}
    if used:
        lines += ["", "Zero-shot prompts:", ""]
        lines += [f"- {name}: {len(p['templates'])} templates from {p['templates_from']}; "
                  f"class names from {p['class_names_from']}" for name, p in used.items()]
    if result.get("not_run"):
        lines += ["", "Not evaluated:", ""]
        lines += [f"- {name}: {why}" for name, why in result["not_run"].items()]
    if result.get("missing"):
        lines += ["", "Not in the data dir (how to prepare each):", ""]
        lines += [f"- {how}" for how in result["missing"].values()]
    return "\n".join(lines) + "\n"


def _k(suite: dict) -> str:
    ks = sorted({r["fewshot"]["k"] for r in suite.values() if "fewshot" in r})
    return ",".join(map(str, ks))


def suite_scalars(result: dict) -> dict[str, float]:
    """``eval/<dataset>/<metric>`` (zero-shot) and ``eval/<dataset>/<kind>_<metric>``."""
    out = {}
    for name, r in result["suite"].items():
        for kind, m in r.items():
            prefix = "" if kind in ("zeroshot", "retrieval", "segmentation") else f"{kind}_"
            for key in ("acc1", "acc5", "mean_per_class_recall", "mean_recall", "miou",
                        "image_to_text_recall@1", "text_to_image_recall@1"):
                if isinstance(m.get(key), int | float):
                    out[f"eval/{name}/{prefix}{key}"] = float(m[key])
    return out


def write_suite(result: dict, out_dir: str, extra: dict | None = None,
                title: str = "") -> list[str]:
    """``report.json`` (``extra`` + the result), ``suite.md`` and (with any result)
    ``suite.png``; returns the paths written."""
    files.make_dir(out_dir)
    report = os.path.join(out_dir, "report.json")
    files.write_json(report, {**(extra or {}), **result})
    table = os.path.join(out_dir, "suite.md")
    files.write_atomic(table, suite_table(result, title))
    written = [report, table]
    if result["suite"]:
        headlines = {n: {k: m["headline"] for k, m in r.items()}
                     for n, r in result["suite"].items()}
        written.append(plots.plot_suite(headlines, os.path.join(out_dir, "suite.png"),
                                        title=title or None))
    return written
