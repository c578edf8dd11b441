"""Training-curve and confusion-matrix plots (matplotlib, Agg canvas; no pyplot global state).

    plot_training_curves(metrics_jsonl_path, out_png) -> out_png
    training_curves_figure(records) -> Figure   (what it draws: one axis per panel)
    plot_confusion_matrix(confusion, class_names, out_png, normalize=True) -> out_png
    read_metrics_jsonl(path) -> list[dict]   (one dict per step, sorted, last record per step wins)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clip_jax import files

_TRAIN_PANELS = (
    ("loss", "train loss", True),
    ("logit_scale", "logit scale", False),
    ("lr", "learning rate", False),
    ("samples_per_sec", "samples / s", False),
)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_OLD_NAME = re.compile(r"(^|/)(?:top(\d+)|(per_class_accuracy)|(mean_per_class_accuracy))$")


def canonical_name(key: str) -> str:
    """``key`` (a metric or an ``eval/<name>/<metric>`` path) with a name of an earlier release
    replaced (``top{k}`` -> ``acc{k}``, ``(mean_)per_class_accuracy`` ->
    ``(mean_)per_class_recall``: :mod:`clip_jax.evaluate.metrics`' names); else unchanged."""
    m = _OLD_NAME.search(key)
    if not m:
        return key
    new = f"acc{m[2]}" if m[2] else ("per_class_recall" if m[3] else "mean_per_class_recall")
    return key[:m.start()] + m[1] + new


def read_metrics_jsonl(path: str) -> list[dict]:
    """Parse a metrics.jsonl file (one JSON object per line with a ``step`` key).

    Metric names of an earlier release are read as today's (:func:`canonical_name`: a run
    resumed across the renaming keeps one curve per metric). Blank and unparsable lines (e.g.
    a line cut short by a crash) are skipped. When a step
    appears several times (a run resumed from an older checkpoint re-logs steps) the records
    are merged, later values winning. Returns the records sorted by step.
    """
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not _is_number(rec.get("step")):
                continue
            step = int(rec["step"])
            by_step.setdefault(step, {}).update(
                {canonical_name(k) if k.startswith("eval/") else k: v for k, v in rec.items()})
    return [by_step[s] for s in sorted(by_step)]


def _series(records: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
    if not pts:
        return None
    steps, vals = zip(*pts)
    return np.asarray(steps), np.asarray(vals, dtype=np.float64)


def _eval_panels(records: list[dict]) -> list[tuple[str, list, bool]]:
    """One panel per eval kind (``eval/<kind>/<metric>``: every metric of that kind in it),
    losses of a kind apart from its accuracies (another scale); ``eval/<metric>`` keys without
    a kind share an ``eval`` panel."""
    keys = sorted({k for r in records for k, v in r.items()
                   if k.startswith("eval/") and _is_number(v)},
                  key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
    groups: dict[tuple[str, bool], list] = {}
    for key in keys:
        s = _series(records, key)
        if s is None:
            continue
        kind, _, metric = key[len("eval/"):].rpartition("/")
        groups.setdefault((kind, "loss" in metric), []).append((metric, *s))
    return [((f"eval: {kind}" if kind else "eval") + (" (loss)" if is_loss else ""), lines, False)
            for (kind, is_loss), lines in sorted(groups.items())]


def training_curves_figure(records: list[dict], title: str | None = None) -> Figure:
    """The figure of :func:`plot_training_curves` from parsed records: one axis per train
    metric present (loss on a log scale, logit scale, lr, samples/s), then one small axis per
    eval kind. Raises ``ValueError`` when there is nothing to plot."""
    panels = []  # (title, [(label, steps, values)], log_y)
    for key, label, log_y in _TRAIN_PANELS:
        s = _series(records, key)
        if s is not None:
            use_log = log_y and bool(np.all(s[1] > 0))
            panels.append((label, [(key, *s)], use_log))
    n_train = len(panels)
    panels += _eval_panels(records)
    if not panels:
        raise ValueError("no numeric metrics to plot")
    ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 6 else 3
    # train panels take full-size rows, eval panels pack into smaller ones after them
    train_rows = math.ceil(n_train / ncols)
    eval_rows = math.ceil((len(panels) - n_train) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.4 * train_rows + 2.8 * eval_rows), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(train_rows + eval_rows, ncols,
                            height_ratios=[3.4] * train_rows + [2.8] * eval_rows)
    for i, (label, lines, log_y) in enumerate(panels):
        j = i if i < n_train else (train_rows * ncols + i - n_train)
        ax = fig.add_subplot(grid[j // ncols, j % ncols])
        for name, steps, vals in lines:
            marker = "o" if len(steps) <= 50 else None
            ax.plot(steps, vals, label=name, marker=marker, markersize=3, linewidth=1.2)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(label, fontsize="medium" if i < n_train else "small")
        ax.set_xlabel("step", fontsize="small")
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="xx-small", ncol=1 if len(lines) <= 4 else 2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(metrics_jsonl_path: str, out_png: str, title: str | None = None) -> str:
    """Plot loss (log scale), logit_scale, lr, samples/s and one small panel per eval kind
    (``eval/<kind>/*``: zeroshot, retrieval, fewshot, ...) vs step into ``out_png`` (panels
    with no data are left out). Raises ``ValueError`` if the file holds no records."""
    records = read_metrics_jsonl(metrics_jsonl_path)
    if not records:
        raise ValueError(f"no metrics records in {metrics_jsonl_path}")
    try:
        fig = training_curves_figure(records, title)
    except ValueError as e:
        raise ValueError(f"{e} in {metrics_jsonl_path}") from None
    _save(fig, out_png)
    return out_png


def plot_confusion_matrix(
    confusion,
    class_names: Sequence[str] | None,
    out_png: str,
    normalize: bool = True,
    title: str | None = None,
    max_labeled_classes: int = 50,
) -> str:
    """Heat map of a (C, C) confusion matrix (rows = true class, columns = predicted).

    ``normalize`` divides each row by its count (rows without samples stay 0). Class names label
    the axes when C <= ``max_labeled_classes``; cell values are written when C <= 20.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be square, got shape {cm.shape}")
    num_classes = cm.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(24.0, max(5.0, 0.32 * num_classes + 3.0))
    fig = Figure(figsize=(size, size * 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest",
                   vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and num_classes <= max_labeled_classes:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels(class_names, rotation=90, fontsize="small")
        ax.set_yticklabels(class_names, fontsize="small")
    if num_classes <= 20:
        vmax = cm.max() if cm.size else 0.0
        for i in range(num_classes):
            for j in range(num_classes):
                v = cm[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                color = "white" if vmax > 0 and v > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize="x-small", color=color)
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize
                           else "confusion matrix"))
    fig.tight_layout()
    _save(fig, out_png)
    return out_png


def plot_suite(headlines: dict[str, dict[str, float]], out_png: str,
               title: str | None = None) -> str:
    """Grouped bar chart of a suite: ``{dataset: {eval kind: headline value in [0, 1]}}``,
    one group per dataset, one bar per evaluation kind."""
    names = list(headlines)
    kinds = sorted({k for v in headlines.values() for k in v})
    if not names or not kinds:
        raise ValueError("plot_suite: no results to plot")
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) * max(1, len(kinds)) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(kinds)
    x = np.arange(len(names))
    for i, kind in enumerate(kinds):
        vals = [100.0 * headlines[n].get(kind, np.nan) for n in names]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, vals, width, label=kind)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("headline metric (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    ax.set_title(title or "evaluation suite")
    fig.tight_layout()
    _save(fig, out_png)
    return out_png


def _save(fig, path: str) -> None:
    """``fig`` as a PNG at ``path`` (through clip_jax.files: one-line errors, atomic)."""
    files.make_dir(os.path.dirname(os.path.abspath(path)))
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
