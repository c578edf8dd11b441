"""Evaluation datasets: labelled image sets (zero-shot, probes) and captioned sets (retrieval).

A dataset is named by a *spec* string:

* ``tfds:NAME[:SPLIT]``: a tensorflow-datasets builder read from ``data_dir`` (nothing is ever
  downloaded: prepare it first where there is internet and TensorFlow, e.g.
  ``tfds build cifar10 --data_dir D --file_format array_record`` or, for ImageNet, with
  ``--manual_dir``, and copy ``D/<name>/``; README "Evaluation"). Datasets prepared as
  ``array_record`` are read without TensorFlow (``builder.as_data_source``; a dataset whose
  builder code is not installed is read from its files' metadata); ``tfrecord`` ones need
  ``tensorflow`` installed. Image and
  label come from the builder's ``supervised_keys``; class names from its ``ClassLabel``
  (for cifar10 / cifar100 / imagenet2012 the curated CLIP names and templates of
  :mod:`clip_jax.evaluate.templates` are used instead). SPLIT defaults to ``test``
  (``validation`` for imagenet2012).
* a ``.json`` *card*, e.g. the demo corpus's ``zeroshot.json``: ``{"classes": [...],
  "templates": [...] (optional), "shards" (or "eval_shards"): a shard spec relative to the card,
  "label_key": "cls"}``: webdataset shards whose ``KEY.<label_key>`` member holds the class
  index. The same card serves retrieval (captions from ``KEY.txt``, plus a ``"captions"``
  list in ``KEY.json`` when there are several per image).
* ``folder:PATH`` or a directory: an image folder ``PATH/<class name>/*.jpg`` (any of
  :data:`clip_jax.data.tario.FOLDER_IMAGE_EXTS`: the shard image formats plus BMP; underscores in
  folder names become spaces in class names).
* for retrieval only, a plain shard spec (``/data/coco/{000..004}.tar``).

Samples come out as ``uint8`` (S, S, 3) arrays after the eval transform (shorter side resized to
S, center crop); :func:`batches` normalises (:func:`clip_jax.data.transforms.normalize`) and
zero-pads them into fixed-size float32 batches: the one collation of every evaluator.
Undecodable images are skipped and counted in ``dataset.stats``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from clip_jax.data import naflex as naflex_lib
from clip_jax.data import shards, tario, tfds_reader, transforms
from clip_jax.evaluate import templates as templates_lib
from clip_jax.evaluate.templates import DEFAULT_TEMPLATES

_FOLDER_SUFFIXES = tuple(f".{e}" for e in tario.FOLDER_IMAGE_EXTS)
_TFDS_CURATED = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet2012": "imagenet",
                 "imagenet2012_subset": "imagenet", "imagenet_v2": "imagenet",
                 "imagenet_a": "imagenet", "imagenet_r": "imagenet"}
_STATS = ("skipped_corrupt_image", "skipped_no_image", "skipped_bad_tar",
          "skipped_empty_caption")


@dataclasses.dataclass
class LabelledSet:
    """Images with class labels. ``samples(size)`` yields ``(uint8 (size, size, 3), label)``."""

    name: str
    class_names: list[str]
    templates: list[str]
    samples: Callable[[int], Iterator[tuple[np.ndarray, int]]]
    stats: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(_STATS, 0))

    def __post_init__(self):
        self.templates = templates_lib.check_templates(self.templates, self.name)


@dataclasses.dataclass
class CaptionedSet:
    """Images with one or more captions. ``samples(size)`` yields ``(uint8 image, [captions])``."""

    name: str
    samples: Callable[[int], Iterator[tuple[np.ndarray, list[str]]]]
    stats: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(_STATS, 0))


def _decode(data, size: int, stats: dict) -> np.ndarray | None:
    """The eval transform of image bytes (or a PIL image): the centre ``size`` square, or with
    ``size`` 0 the whole image (a NaFlex model's, resized by :func:`batches`); None, counted,
    if it does not decode.

    Only the decoder's errors mean a bad image: anything else is a bug, raised."""
    try:
        img = data if not isinstance(data, bytes) else transforms.decode_image(
            data, size or None)
        if not size:
            return np.asarray(transforms.to_rgb(img), np.uint8)
        return transforms.resize_center_crop(img, size)
    except transforms.DECODE_ERRORS:  # corrupt / truncated image: skip and count
        stats["skipped_corrupt_image"] += 1
        return None


def list_folder(path: str) -> list[str]:
    """A folder's entries, sorted; one that cannot be read is the user's error, named."""
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        raise ValueError(f"cannot read the folder {path}: {e.strerror or e}") from None


def folder_images(files: Sequence[tuple[str, int]], size: int, stats: dict):
    """``(image, label)`` of ``(path, label)`` files; one that cannot be read (permissions, an
    I/O error) is skipped and counted like a corrupt one (``skipped_unreadable_image``)."""
    for path, label in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            stats["skipped_unreadable_image"] = stats.get("skipped_unreadable_image", 0) + 1
            continue
        arr = _decode(data, size, stats)
        if arr is not None:
            yield arr, label


# ---------------------------------------------------------------------------------------------
# Cards (webdataset shards + a JSON description)


def read_card(path: str) -> dict:
    with open(path) as f:
        card = json.load(f)
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a dataset card must be a JSON object")
    shard_spec = card.get("shards") or card.get("eval_shards")
    if not shard_spec:
        raise ValueError(f"{path}: the card names no 'shards' (or 'eval_shards')")
    specs = [shard_spec] if isinstance(shard_spec, str) else list(shard_spec) if isinstance(
        shard_spec, list) else None
    if specs is None or not all(isinstance(s, str) for s in specs):
        raise ValueError(f"{path}: 'shards' must be a shard spec string or a list of them")
    if any(s.strip().startswith("pipe:") or "::pipe:" in s.replace(" ", "") for s in specs):
        raise ValueError(f"{path}: the card's shards use 'pipe:' (a shell command); a dataset "
                         "card may name files and URLs only (cards are downloaded: they must "
                         "not run commands). Pass a pipe: spec on the command line instead")
    base = os.path.dirname(os.path.abspath(path))
    if isinstance(shard_spec, str) and "://" not in shard_spec:
        shard_spec = (shard_spec if os.path.isabs(shard_spec)
                      else os.path.join(base, shard_spec))
    card = dict(card, shards=shard_spec)
    return card


def _card_labelled(path: str, templates: Sequence[str] | None) -> LabelledSet:
    card = read_card(path)
    if "classes" not in card:
        raise ValueError(f"{path}: a labelled card needs 'classes' (the class names)")
    classes = list(card["classes"])
    key = card.get("label_key", "cls")
    ds = LabelledSet(os.path.basename(os.path.dirname(os.path.abspath(path))) or path, classes,
                     list(templates or card.get("templates") or DEFAULT_TEMPLATES), None)

    def samples(size):
        wanted = frozenset((*tario.IMAGE_EXTS, key))
        for url in shards.expand_shards(card["shards"]):
            for group in tario.iter_groups(url, wanted, 0, ds.stats):
                image = tario.image_of(group)
                if image is None:
                    ds.stats["skipped_no_image"] += 1
                    continue
                if key not in group:
                    raise ValueError(f"{path}: sample {group['__key__']} has no '{key}' member "
                                     "(its class index)")
                label = int(group[key].decode().strip())
                if not 0 <= label < len(classes):
                    raise ValueError(f"{path}: sample {group['__key__']} has label {label}, "
                                     f"outside the {len(classes)} classes")
                arr = _decode(image, size, ds.stats)
                if arr is not None:
                    yield arr, label

    ds.samples = samples
    return ds


def _captions_of(raw_json: str | None, caption: str) -> list[str]:
    extra = []
    if raw_json:
        try:
            value = json.loads(raw_json).get("captions")
            if isinstance(value, list):
                extra = [c.strip() for c in value if isinstance(c, str) and c.strip()]
        except (ValueError, AttributeError):
            pass
    return extra or [caption]


def _shards_captioned(spec, name: str) -> CaptionedSet:
    ds = CaptionedSet(name, None)

    def samples(size):
        for _, image, caption, extras in tario.iterate_samples(
                spec, decode=False, extra_fields=("json",), stats=ds.stats):
            arr = _decode(image, size, ds.stats)
            if arr is not None:
                yield arr, _captions_of(extras.get("json"), caption)

    ds.samples = samples
    return ds


# ---------------------------------------------------------------------------------------------
# Image folders


def _folder_labelled(root: str, templates: Sequence[str] | None) -> LabelledSet:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = [d for d in list_folder(root) if os.path.isdir(os.path.join(root, d))]
    files = []
    for label, c in enumerate(classes):
        for f in list_folder(os.path.join(root, c)):
            if f.lower().endswith(_FOLDER_SUFFIXES):
                files.append((os.path.join(root, c, f), label))
    if not files:
        raise ValueError(f"image folder {root} holds no <class>/<image> files "
                         f"({', '.join(_FOLDER_SUFFIXES)})")
    ds = LabelledSet(os.path.basename(os.path.normpath(root)),
                     [c.replace("_", " ") for c in classes],
                     list(templates or DEFAULT_TEMPLATES), None)

    ds.samples = lambda size: folder_images(files, size, ds.stats)
    return ds


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets


def default_tfds_split(name: str) -> str:
    return "validation" if name.startswith("imagenet2012") else "test"


def tfds_labelled(name: str, split: str | None, data_dir: str | None,
                  templates: Sequence[str] | None, class_names: Sequence[str] | None = None,
                  label: str | Callable | None = None, display: str | None = None,
                  builder=None) -> LabelledSet:
    """A tfds split as a labelled set. ``label``: the label feature's key (default: the
    builder's supervised label), or a function ``(example, PIL image) -> [(image, label),
    ...]`` for a derived label (a count, a distance bin, one crop per object; ``[]`` skips the
    example); ``class_names`` default to the curated CLIP names, else the ``ClassLabel``'s."""
    split = split or default_tfds_split(name)
    builder = builder or tfds_reader.open_builder(name, data_dir)
    info = builder.info
    tfds_reader.num_examples(builder, split)  # the split exists (one-line error otherwise)
    image_key, label_key = info.supervised_keys or ("image", "label")
    if isinstance(label, str):
        label_key = label
    if class_names is not None:
        names, default_templates = list(class_names), list(DEFAULT_TEMPLATES)
    else:
        names = list(info.features[label_key].names)
        curated = _TFDS_CURATED.get(name.split("/")[0].split(":")[0])
        if curated and len(templates_lib.get_classnames(curated)) == len(names):
            names = templates_lib.get_classnames(curated)
            default_templates = templates_lib.get_templates(curated)
        else:
            names = [n.replace("_", " ") for n in names]
            default_templates = list(DEFAULT_TEMPLATES)
    derive = label if callable(label) else (lambda ex, img: [(img, int(ex[label_key]))])
    ds = LabelledSet(display or f"{name}:{split}", names, list(templates or default_templates),
                     None)

    def samples(size):
        for ex in tfds_reader.records(builder, split):
            pairs = derive(ex, tfds_reader.to_pil(ex[image_key]))
            if not pairs:  # a derived label this example has none of
                ds.stats["skipped_no_label"] = ds.stats.get("skipped_no_label", 0) + 1
            for img, y in pairs:
                if not 0 <= y < len(names):
                    raise ValueError(f"tfds dataset {name!r} split {split!r}: label {y} is "
                                     f"outside the {len(names)} class names")
                arr = _decode(img, size, ds.stats)
                if arr is not None:
                    yield arr, int(y)

    ds.samples = samples
    return ds


# ---------------------------------------------------------------------------------------------
# Entry points


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``tfds:NAME[:SPLIT]`` -> (NAME, SPLIT)."""
    rest = spec[len("tfds:"):]
    name, _, split = rest.partition(":")
    if not name:
        raise ValueError(f"dataset spec {spec!r}: expected tfds:NAME[:SPLIT]")
    return name, split or None


def labelled(spec: str, data_dir: str | None = None, templates: Sequence[str] | None = None,
             split: str | None = None) -> LabelledSet:
    """A labelled image set from a spec (see the module docstring). ``split`` overrides the
    split of a ``tfds:`` spec."""
    spec = str(spec)
    if spec.startswith("tfds:"):
        name, s = _split_spec(spec)
        return tfds_labelled(name, split or s, data_dir, templates)
    if spec.startswith("folder:"):
        return _folder_labelled(spec[len("folder:"):], templates)
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"dataset card {spec} does not exist")
        return _card_labelled(spec, templates)
    if os.path.isdir(spec):
        return _folder_labelled(spec, templates)
    raise ValueError(f"dataset spec {spec!r}: expected tfds:NAME[:SPLIT], a .json card, "
                     "folder:PATH or an existing directory")


def captioned(spec: str) -> CaptionedSet:
    """A captioned image set from a ``.json`` card or a shard spec."""
    spec = str(spec)
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"dataset card {spec} does not exist")
        card = read_card(spec)
        return _shards_captioned(card["shards"], os.path.basename(os.path.dirname(spec)))
    if spec.startswith("tfds:") or spec.startswith("folder:"):
        raise ValueError(f"retrieval needs captions: {spec!r} is a labelled set; give a .json "
                         "card or a shard spec of (image, caption) samples")
    shards.expand_shards(spec)  # validates the spec now, with a clear error
    return _shards_captioned(spec, os.path.basename(spec.split("{")[0].rstrip("/")) or spec)


def probe_sets(spec: str, data_dir: str | None = None) -> tuple[LabelledSet, LabelledSet | None]:
    """(train set, test set or None) for linear / few-shot probes: a ``tfds:NAME`` spec gives its
    ``train`` and default test split; anything else one set, which the evaluator splits per
    class (see :func:`split_per_class`)."""
    if spec.startswith("tfds:"):
        name, split = _split_spec(spec)
        if split is None:
            return (labelled(spec, data_dir, split="train"),
                    labelled(spec, data_dir, split=default_tfds_split(name)))
    return labelled(spec, data_dir), None


def short_name(spec: str) -> str:
    """A name for a dataset spec, made of letters, digits, ``_ - .``: ``tfds:cifar10`` ->
    ``cifar10`` (``tfds:cifar10:train`` -> ``cifar10_train``), a card ``data/demo/zeroshot.json``
    -> ``demo`` (its directory), ``folder:/x/pets`` -> ``pets``, shards
    ``/data/coco/{000..004}.tar`` -> ``coco``."""
    spec = str(spec).strip()
    if spec.startswith("tfds:"):
        name, split = _split_spec(spec)
        base = f"{name}_{split}" if split else name
    elif spec.endswith(".json"):
        base = os.path.basename(os.path.dirname(os.path.abspath(spec)))
    else:
        path = os.path.normpath(spec.removeprefix("folder:").split("{")[0].split("::")[0] or ".")
        base = os.path.basename(path)
        if base.endswith(".tar"):
            base = os.path.basename(os.path.dirname(path))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.-") or "dataset"


def split_per_class(labels: np.ndarray, test_fraction: float = 0.5,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train indices, test indices): in each class a ``test_fraction`` of the
    samples (rounded, at least one when the class has two or more) goes to test."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x5F17])
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))


def batches(items: Iterator[tuple[np.ndarray, object]], batch_size: int,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            naflex: tuple | None = None) -> Iterator[tuple[np.ndarray | dict, list, int]]:
    """``(float32 (batch_size, S, S, 3) normalised, [the items' second elements], n valid)``
    from ``(uint8 image, x)`` pairs; the last batch is zero-padded to ``batch_size``.
    ``mean`` / ``std`` (in [0, 1] units) default to CLIP's. ``naflex``: (patch size, patch
    budget, resampling) of a NaFlex model (the images whole, each of its own size): batches
    are its dict of normalised patches, mask and grid shapes, each image resized as training
    resizes it (:func:`clip_jax.data.naflex.patches_uint8`); padding rows repeat the last."""
    collate = _collate if naflex is None else functools.partial(_collate_naflex, naflex=naflex)
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield collate(chunk, batch_size, mean, std)
            chunk = []
    if chunk:
        yield collate(chunk, batch_size, mean, std)


def _collate_naflex(chunk, batch_size: int, mean, std, naflex: tuple):
    patch, budget, resample = naflex
    patches = np.zeros((batch_size, budget, patch * patch * 3), np.float32)
    mask = np.zeros((batch_size, budget), bool)
    shapes = np.zeros((batch_size, 2), np.int32)
    for i, (img, _) in enumerate(chunk):
        x, shapes[i] = naflex_lib.patches_uint8(img, patch, budget, resample)
        patches[i, :len(x)] = transforms.normalize(x.reshape(len(x), -1, 3), mean=mean,
                                                   std=std).reshape(x.shape)
        mask[i, :len(x)] = True
    for a in (patches, mask, shapes):
        a[len(chunk):] = a[len(chunk) - 1]
    return ({"patches": patches, "mask": mask, "shapes": shapes}, [x for _, x in chunk],
            len(chunk))


def _collate(chunk, batch_size: int, mean, std):
    images = np.zeros((batch_size, *chunk[0][0].shape), np.uint8)
    for i, (img, _) in enumerate(chunk):
        images[i] = img
    out = transforms.normalize(images, mean=mean, std=std)
    out[len(chunk):] = 0
    return out, [x for _, x in chunk], len(chunk)
