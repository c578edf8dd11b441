"""Evaluators: encode a dataset with a model, compute :mod:`~clip_jax.evaluate.metrics`, report.

An *encoder* is anything with ``encode_image(float32 NHWC pixels) -> (N, D)``,
``encode_text(list of strings) -> (N, D)`` (L2-normalised NumPy), ``image_size`` and
``batch_size`` (and, for a NaFlex model, ``naflex``: its images go in whole,
:func:`clip_jax.evaluate.encode.image_batches`): :class:`MeshEncoder` (the training mesh,
parameters left sharded as they are in training) or :class:`clip_jax.inference.InferenceModel`
(a bundle or checkpoint on the local devices).

Evaluation kinds (:data:`EVALS`)::

    zeroshot      labelled set: prompt-ensembled classifier, acc1/acc5, per-class recall,
                  confusion matrix
    retrieval     captioned set: image->text / text->image recall@1/5/10 (several captions each)
    fewshot       labelled set(s): k-shot logistic-regression probes (the CLIP paper's few-shot
                  linear probe, :func:`clip_jax.evaluate.probes.fewshot_linear_probe`, as in the
                  suite), ``{k}shot`` = acc1 averaged over seeds
    linear_probe  labelled set(s): full logistic regression with a validation sweep of the L2
                  strength (the CLIP paper's protocol), plus the same k-shot probes

An evaluation is an :class:`EvalSpec`: a kind run on one dataset under a name (a run's come
from ``config.evals`` and the single-dataset ``config.eval.<kind>`` keys, through
:func:`clip_jax.config.eval_sets`). :func:`run` takes several and returns a full report per
name; :func:`scalars` flattens reports into ``eval/<name>/<metric>`` numbers for
``metrics.jsonl``; :func:`write_report` writes the JSON report and its plots (a confusion-matrix
PNG per zero-shot evaluation). :func:`make_train_evaluator` is what the train loop calls.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

from clip_jax import config as config_lib
from clip_jax import files, inference, models, sharding
from clip_jax.evaluate import captioning, datasets, encode, metrics, plots, probes, suite_prompts
from clip_jax.evaluate import referring as referring_lib
from clip_jax.evaluate import segmentation as segmentation_lib
from clip_jax.evaluate import suite as suite_lib
from clip_jax.evaluate import templates as templates_lib

# captioning and referring (LocCa's boxes): from the CLI, for a model with a decoder;
# segmentation (a linear probe on a ViT's patch tokens): from the CLI
EVALS = (*config_lib.EVAL_KINDS, "captioning", "referring", "segmentation")
DEFAULT_SEEDS = (0, 1, 2)


@dataclasses.dataclass
class EvalSpec:
    """One evaluation: a ``kind`` (:data:`EVALS`) on a ``dataset`` spec, reported as ``name``."""

    kind: str
    dataset: str  # zeroshot/probes: a labelled set (tfds:NAME -> its train/test splits for
    # probes, else split per class); retrieval: a captioned set
    name: str = ""  # "" = the kind
    templates: str = ""  # "" = the dataset's own; a name (imagenet, cifar10) or a file
    classnames: str = ""  # zero-shot: "" = the dataset's own; a file (label order)
    data_dir: str = ""  # tfds data_dir
    shots: tuple[int, ...] = config_lib.DEFAULT_SHOTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS  # few-shot: the k-shot draws averaged
    max_per_class: int = 0  # probes: at most this many training images per class (0 = all)
    batch_size: int = 256
    every_steps: int = 0  # during training: run every that many steps (0 = only at the end)

    def __post_init__(self):
        if self.kind not in EVALS:
            raise ValueError(f"unknown evaluation {self.kind!r}; choose from {EVALS}")
        if not self.dataset:
            raise ValueError(f"evaluation {self.name or self.kind!r} needs a dataset")
        self.name = self.name or self.kind
        self.shots = tuple(int(k) for k in self.shots)
        self.seeds = tuple(int(k) for k in self.seeds)


def specs_from_config(config) -> list[EvalSpec]:
    """The run's evaluations: :func:`clip_jax.config.eval_sets` (``evals`` and ``eval.<kind>``)."""
    return [EvalSpec(name=name, batch_size=int(config.eval.batch_size), **entry)
            for name, entry in config_lib.eval_sets(config).items()]


# ---------------------------------------------------------------------------------------------
# Encoding datasets


image_features = encode.image_features


def _templates(spec: EvalSpec, dataset: datasets.LabelledSet) -> list[str]:
    if spec.templates:
        return templates_lib.get_templates(spec.templates)
    return dataset.templates


def _no_shots(name: str, shots: Sequence[int], train_y: np.ndarray, class_names: Sequence[str],
              max_per_class: int) -> str:
    """Why no k of ``shots`` can run: the class with the fewest training images, named."""
    counts = np.bincount(train_y, minlength=len(class_names))
    cap = f" (--max-per-class / probe_max_per_class {max_per_class})" if max_per_class else ""
    return (f"fewshot on {name}: its smallest class has {int(counts.min())} training images"
            f"{cap} ({class_names[int(counts.argmin())]!r}), fewer than the smallest k in "
            f"{list(shots)}; lower --shots")


# ---------------------------------------------------------------------------------------------
# Evaluations


def zeroshot(encoder, spec: EvalSpec) -> dict:
    t0 = time.perf_counter()
    ds = datasets.labelled(spec.dataset, spec.data_dir)
    templates = _templates(spec, ds)
    if spec.classnames:
        names = templates_lib.get_classnames(spec.classnames)
        if len(names) != len(ds.class_names):
            raise ValueError(f"--classnames {spec.classnames}: {len(names)} names for "
                             f"{ds.name}'s {len(ds.class_names)} classes (one per line, in "
                             "label order)")
        ds.class_names = names
    classifier = inference.build_zeroshot_classifier(encoder.encode_text, ds.class_names,
                                                   templates, batch_size=spec.batch_size)
    feats, labels = image_features(encoder, ds, spec.batch_size)
    topk = (1, 5) if len(ds.class_names) > 5 else (1,)
    out = metrics.zeroshot_metrics(feats, classifier, labels, topk=topk)
    out.pop("predictions")
    out.update(dataset=ds.name, class_names=ds.class_names, templates=templates,
               templates_from=spec.templates or "the dataset's own",
               class_names_from=spec.classnames or "the dataset's own",
               num_templates=len(templates),
               chance=1.0 / len(ds.class_names), skipped=dict(ds.stats),
               seconds=time.perf_counter() - t0)
    return out


def retrieval(encoder, spec: EvalSpec) -> dict:
    t0 = time.perf_counter()
    ds = datasets.captioned(spec.dataset)
    out = encode.retrieval(encoder, ds, spec.batch_size)
    out.update(dataset=ds.name, skipped=dict(ds.stats), seconds=time.perf_counter() - t0)
    return out


def _probe_features(encoder, spec: EvalSpec):
    """(train x, train y, test x, test y, class names, dataset name)."""
    train_set, test_set = datasets.probe_sets(spec.dataset, spec.data_dir)
    x, y = image_features(encoder, train_set, spec.batch_size, spec.max_per_class)
    if test_set is None:
        tr, te = datasets.split_per_class(y)
        if not len(te):  # every class had one image: nothing left to test on
            cap = (f" (--max-per-class / probe_max_per_class {spec.max_per_class})"
                   if spec.max_per_class else "")
            raise ValueError(f"{spec.kind} on {train_set.name}: it has no test split and "
                             f"each class has one image{cap}, which cannot be split into "
                             "train and test; raise --max-per-class or give a dataset with "
                             "a test split")
        return x[tr], y[tr], x[te], y[te], train_set.class_names, train_set.name
    tx, ty = image_features(encoder, test_set, spec.batch_size)
    return x, y, tx, ty, train_set.class_names, f"{train_set.name} -> {test_set.name}"


def _usable_shots(shots: Sequence[int], train_y: np.ndarray, num_classes: int) -> list[int]:
    smallest = np.bincount(train_y, minlength=num_classes).min()
    return [k for k in shots if k <= smallest]


def fewshot(encoder, spec: EvalSpec) -> dict:
    t0 = time.perf_counter()
    tr_x, tr_y, te_x, te_y, names, name = _probe_features(encoder, spec)
    shots = _usable_shots(spec.shots, tr_y, len(names))
    if not shots:
        raise ValueError(_no_shots(name, spec.shots, tr_y, names, spec.max_per_class))
    out = probes.fewshot_linear_probe(tr_x, tr_y, te_x, te_y, shots=shots, seeds=spec.seeds,
                                      num_classes=len(names))
    skipped = [k for k in spec.shots if k not in shots]
    out.update(dataset=name, method="logistic regression (L-BFGS, l2 1e-2)", shots=shots,
               seeds=len(spec.seeds), num_train=len(tr_y), num_test=len(te_y),
               chance=1.0 / len(names), seconds=time.perf_counter() - t0)
    if skipped:
        out["shots_not_run"] = (f"k={skipped}: a class has only "
                                f"{int(np.bincount(tr_y, minlength=len(names)).min())} "
                                "training images")
    return out


def linear_probe(encoder, spec: EvalSpec) -> dict:
    t0 = time.perf_counter()
    tr_x, tr_y, te_x, te_y, names, name = _probe_features(encoder, spec)
    out = probes.linear_probe(tr_x, tr_y, te_x, te_y, num_classes=len(names))
    shots = _usable_shots(spec.shots, tr_y, len(names))
    if shots:
        out["fewshot"] = probes.fewshot_linear_probe(tr_x, tr_y, te_x, te_y, shots=shots,
                                                      seeds=spec.seeds, num_classes=len(names))
    else:
        out["fewshot_not_run"] = _no_shots(name, spec.shots, tr_y, names, spec.max_per_class)
    out.update(dataset=name, num_train=len(tr_y), num_test=len(te_y), chance=1.0 / len(names),
               seconds=time.perf_counter() - t0)
    return out


def suite(encoder, spec: EvalSpec) -> dict:
    """A ``suite:NAME[:a,b]`` dataset: that suite (or those of its datasets) under
    ``spec.data_dir`` with this evaluation kind (:mod:`clip_jax.evaluate.suite`); missing
    datasets are listed, not fatal. A zero-shot entry's ``templates`` apply to every dataset
    of the suite (:mod:`clip_jax.evaluate.suite_prompts`)."""
    name, _, only = spec.dataset[len("suite:"):].partition(":")
    if spec.kind not in suite_lib.SUITE_EVALS:
        raise ValueError(f"evaluation {spec.name!r}: a suite runs {suite_lib.SUITE_EVALS}, "
                         f"not {spec.kind!r}")
    chosen = suite_prompts.parse([spec.templates] if spec.templates and
                                 spec.kind == "zeroshot" else [])
    return suite_lib.run_suite(encoder, suite_lib.resolve(name, only.split(",")),
                               spec.data_dir, (spec.kind,), batch_size=spec.batch_size,
                               max_per_class=spec.max_per_class, shots=spec.shots,
                               seeds=spec.seeds, prompts=chosen)


_RUN = {"zeroshot": zeroshot, "retrieval": retrieval, "fewshot": fewshot,
        "linear_probe": linear_probe, "captioning": captioning.captioning,
        "referring": referring_lib.referring, "segmentation": segmentation_lib.segmentation}


def run(encoder, specs: Sequence[EvalSpec]) -> dict[str, dict]:
    """``{name: report}`` of each evaluation, in order; a report names its ``kind`` and the
    ``dataset_spec`` it ran on."""
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"evaluation name(s) {twice} given twice: each needs its own name")
    return {s.name: metrics.jsonable({
        "kind": s.kind, "dataset_spec": s.dataset,
        **(suite if s.dataset.startswith("suite:") else _RUN[s.kind])(encoder, s)})
        for s in specs}


_SCALARS = {
    "zeroshot": ("acc1", "acc5", "mean_per_class_recall"),
    "retrieval": ("image_to_text_recall@1", "image_to_text_recall@5",
                  "text_to_image_recall@1", "text_to_image_recall@5", "mean_recall"),
    "linear_probe": ("acc1",),
    "captioning": ("perplexity", "text_to_image_recall@1", "image_to_text_recall@1"),
    "referring": ("accuracy@0.5", "mean_iou"),
    "segmentation": ("miou", "pixel_accuracy"),
}


def scalars(reports: dict[str, dict]) -> dict[str, float]:
    """``eval/<name>/<metric>`` numbers (each kind's headline metrics) for metrics.jsonl."""
    out = {}
    for name, rep in reports.items():
        if "suite" in rep:  # eval/<dataset>/<metric> of each suite dataset
            out.update(suite_lib.suite_scalars(rep))
            continue
        keys = _SCALARS.get(rep["kind"]) or [k for k in rep if k.endswith("shot")]
        for k in keys:
            if isinstance(rep.get(k), int | float):
                out[f"eval/{name}/{k}"] = float(rep[k])
        if rep["kind"] == "linear_probe":
            for k, v in (rep.get("fewshot") or {}).items():
                if k.endswith("shot"):
                    out[f"eval/{name}/{k}"] = float(v)
    return out


def write_report(reports: dict[str, dict], out_dir: str, prefix: str = "",
                 extra: dict | None = None) -> list[str]:
    """``<out_dir>/<prefix>report.json`` and, per zero-shot evaluation (200 classes at most),
    ``<out_dir>/<prefix><name>_confusion.png``; returns the paths, the report first."""
    files.make_dir(out_dir)
    path = os.path.join(out_dir, f"{prefix}report.json")
    files.write_json(path, {**(extra or {}), "evals": reports})
    written = [path]
    for name, zs in reports.items():
        if zs["kind"] == "zeroshot" and len(zs.get("class_names") or range(201)) <= 200:
            png = os.path.join(out_dir, f"{prefix}{name}_confusion.png")
            plots.plot_confusion_matrix(
                zs["confusion_matrix"], zs["class_names"], png,
                title=f"{name}: zero-shot {zs['dataset']}, acc1 {zs['acc1']:.3f}")
            written.append(png)
    return written


# ---------------------------------------------------------------------------------------------
# Encoding on the training mesh


class MeshEncoder:
    """Encoder over a device mesh with parameters sharded as given (e.g. the training state's):
    never gathers the whole model on one device. Batches of ``batch_size`` (rounded up to a
    multiple of the batch-sharded devices) are split over ``data`` x ``fsdp``; every process
    passes the same full batch (each device takes its rows) and gets the full result."""

    def __init__(self, model, mesh, param_shardings, tokenizer, context_length: int,
                 image_size: int, batch_size: int, naflex: tuple | None = None):
        self.naflex = naflex  # a NaFlex model's (patch, budget, resampling): whole images
        shards = sharding.batch_size_per_shard(mesh)
        self.batch_size = -(-int(batch_size) // shards) * shards
        self.mesh, self.tokenizer = mesh, tokenizer
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.params = None
        self._batch = sharding.batch_sharding(mesh)

        def fn(method):
            def apply(params, x):
                with nn.logical_axis_rules(sharding.RULES):
                    return model.apply(models.variables(params), x, method=method)

            return jax.jit(apply, in_shardings=(param_shardings, self._batch),
                           out_shardings=sharding.replicated(mesh))

        self._image, self._text = fn(models.CLIP.encode_image), fn(models.CLIP.encode_text)

    def bind(self, params) -> MeshEncoder:
        self.params = params
        return self

    def _call(self, fn, x) -> np.ndarray:
        def one(chunk):  # every process holds the whole chunk; each device takes its rows
            arr = jax.tree.map(lambda c: jax.make_array_from_callback(
                c.shape, self._batch, lambda idx: c[idx]), chunk)
            with jax.set_mesh(self.mesh):
                return fn(self.params, arr)

        return inference.run_batched(one, x, self.batch_size, self.batch_size, 0)

    def encode_image(self, images) -> np.ndarray:
        """Normalised float NHWC pixels, or a NaFlex model's dict of patches, mask, shapes."""
        if isinstance(images, dict):
            return self._call(self._image, {k: np.asarray(v) for k, v in images.items()})
        return self._call(self._image, np.asarray(images, np.float32))

    def encode_text(self, texts) -> np.ndarray:
        ids = self.tokenizer(list(texts), self.context_length) if (
            texts and isinstance(texts[0], str)) else np.asarray(texts, np.int32)
        return self._call(self._text, ids.astype(np.int32))


class TrainEvaluator:
    """The run's evaluations on the training mesh. ``due(step)``: the evaluations to run at
    ``step`` (each every its ``every_steps``, all at the last step when ``eval.at_end``);
    ``evaluator(params, step)`` runs them and returns their ``eval/<name>/<metric>`` numbers.
    Process 0 writes ``<workdir>/eval/step_<N>_report.json`` and its plots."""

    def __init__(self, specs: Sequence[EvalSpec], encoder: MeshEncoder, workdir: str | None,
                 total_steps: int, at_end: bool):
        self.specs, self.encoder, self.workdir = list(specs), encoder, workdir
        self.total_steps, self.at_end = int(total_steps), bool(at_end)

    def due(self, step: int) -> list[EvalSpec]:
        last = self.at_end and step == self.total_steps
        return [s for s in self.specs
                if last or (s.every_steps > 0 and step % s.every_steps == 0)]

    def __call__(self, params, step: int, tag: str = "") -> dict[str, float]:
        """``tag``: the report files' names after the step (``ema_``: the weight average's)."""
        specs = self.due(step)
        if not specs:
            return {}
        reports = run(self.encoder.bind(params), specs)
        self.encoder.bind(None)
        if self.workdir and jax.process_index() == 0:
            write_report(reports, os.path.join(self.workdir, "eval"),
                         prefix=f"step_{step}_{tag}", extra={"step": int(step)})
        return scalars(reports)


def make_train_evaluator(setup, tokenizer, workdir: str | None = None) -> TrainEvaluator | None:
    """The train loop's :class:`TrainEvaluator`, or None when no evaluation is configured."""
    specs = specs_from_config(setup.config)
    if not specs:
        return None
    text = sorted(s.name for s in specs if s.kind in ("zeroshot", "retrieval"))
    if tokenizer is None and text:
        raise ValueError(f"evaluations {text} (zero-shot, retrieval) need a tokenizer: they "
                         "cannot run on data.source='synthetic'")
    m = setup.model_cfg
    shardings = models.merge_variables(  # the model's params (not the objective's) + BatchNorm
        setup.objective.model_params(setup.state_shardings.params),
        setup.state_shardings.batch_stats)
    buckets = tuple(setup.config.data.naflex.buckets)  # NaFlex: the largest training budget
    naflex = ((m.vision.patch_size, max(buckets) if buckets else m.vision.patches(), "bilinear")
              if m.vision.family == "naflex" else None)
    encoder = MeshEncoder(setup.model, setup.mesh, shardings, tokenizer,
                          m.text.context_length, m.vision.image_size, setup.config.eval.batch_size,
                          naflex)
    return TrainEvaluator(specs, encoder, workdir, setup.config.total_steps,
                          setup.config.eval.at_end)
