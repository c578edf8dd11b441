"""Reading a suite dataset (:mod:`clip_jax.evaluate.registry`) from a data directory.

``DIR`` holds tfds datasets (``DIR/<builder>/<config>/<version>``, as ``tfds build`` writes
them) and folder datasets (``DIR/<suite name>/{train,val,test}/<class>/*.{jpg,png,...}``; a
folder wins over tfds when both are there). A class folder is named by its label index
(``0``, ``00042``), or by its class name (``_`` read as a space, case ignored); failing both, a
folder set with exactly as many class folders as the dataset has classes takes them in sorted
order, as torchvision's ``ImageFolder`` does (GTSRB's ``00000``.., Country211's ISO codes).
``val`` is optional (``valid`` also read), carved from train when absent. A folder may carry
``classnames.txt`` (one name per line, in label order) and ``templates.txt``, used where the
registry names none (the ``demo`` entry: :func:`card_to_folder` writes both). Retrieval folders:
``DIR/flickr30k/images/`` with ``DIR/flickr30k/captions.txt`` (``FILE<TAB>caption``,
``FILE#n<TAB>caption`` as in Flickr30k's token file, or CLIP_benchmark's ``FILE.jpg,caption``
CSV with a header line), one line per caption, in the order images are evaluated;
Crossmodal-3600 (``xm3600_<lang>``): ``DIR/xm3600/images/KEY.jpg`` and its
``DIR/xm3600/captions.jsonl``, every caption of the entry's language.

API::

    locate(entry, data_dir) -> ("folder", path) | ("tfds", builder) | None
    missing_message(entry) -> one line: how to prepare it (nothing is ever downloaded)
    labelled_split(entry, data_dir, which) -> LabelledSet or None   (which: test/train/val)
    captioned_set(entry, data_dir) -> CaptionedSet
    card_to_folder(card, out_dir, train_fraction=0.5) -> {split: count}   (a labelled card,
        e.g. the demo's held-out zeroshot.json, as a folder dataset)
    resolve_split(expr, counts) -> the expression with VTAB's percentage rule applied
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from PIL import Image

from clip_jax import files
from clip_jax.data import tario, tfds_reader
from clip_jax.evaluate import classnames, datasets, prompts, registry
from clip_jax.evaluate import templates as templates_lib

_SUFFIXES = tuple(f".{e}" for e in tario.FOLDER_IMAGE_EXTS)
_SPLIT_DIRS = {"test": ("test",), "train": ("train",), "val": ("val", "valid", "validation")}


def class_names(entry: registry.Entry) -> list[str] | None:
    """The entry's class names in label order (None: the tfds builder's own)."""
    key = entry.classes
    if not key:
        return None
    if key in classnames.CLASSNAMES:
        return list(classnames.CLASSNAMES[key])
    if key in prompts.SMALL_CLASSNAMES:
        return list(prompts.SMALL_CLASSNAMES[key])
    names = templates_lib.get_classnames(key)
    subset = _imagenet_subset(entry)
    return [names[i] for i in subset] if subset is not None else names


def _folder_list(root: str | None, name: str) -> list[str] | None:
    path = os.path.join(root, name) if root else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()] or None


def templates(entry: registry.Entry, folder: str | None = None) -> list[str]:
    """The entry's templates (a folder's ``templates.txt`` where the registry names none)."""
    path = os.path.join(folder, "templates.txt") if folder else ""
    if not entry.templates and path and os.path.isfile(path):  # the rule of --templates FILE
        return templates_lib.get_templates(path)
    if entry.templates in prompts.TEMPLATES:
        return list(prompts.TEMPLATES[entry.templates])
    return templates_lib.get_templates(entry.templates or "imagenet_simple")


def prompt_sources(entry: registry.Entry, where) -> tuple[str, str]:
    """Where the entry's default templates and class names come from, for the report."""
    folder = where[1] if where and where[0] == "folder" else None
    if not entry.templates and folder and os.path.isfile(os.path.join(folder, "templates.txt")):
        templates_from = os.path.join(os.path.abspath(folder), "templates.txt")
    else:
        templates_from = f"registry {entry.templates or 'imagenet_simple'}"
    if entry.classes:
        names_from = f"registry {entry.classes}"
    elif folder:
        names_from = (os.path.join(os.path.abspath(folder), "classnames.txt")
                      if os.path.isfile(os.path.join(folder, "classnames.txt"))
                      else "the class folders")
    else:
        names_from = "the tfds builder's label names"
    return templates_from, names_from


def _imagenet_subset(entry: registry.Entry) -> list[int] | None:
    """ImageNet-A/R: the 1000-class indices of their 200 classes (wnids sorted = indices)."""
    wnids = {"imagenet_a": classnames.IMAGENET_A_WNIDS,
             "imagenet_r": classnames.IMAGENET_R_WNIDS}.get(entry.label)
    if wnids is None:
        return None
    all_wnids = _IMAGENET_WNIDS.get("names")
    if all_wnids is None:
        import tensorflow_datasets as tfds  # the 1000 wnids ship with tfds's imagenet2012 code

        path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
        all_wnids = path.read_text().split()
        _IMAGENET_WNIDS["names"] = all_wnids
    index = {w: i for i, w in enumerate(all_wnids)}
    return [index[w] for w in wnids]


_IMAGENET_WNIDS: dict = {}


# ---------------------------------------------------------------------------------------------
# Derived labels (VTAB's definitions, task_adaptation/data/{clevr,kitti}.py)


def _bin(value: float, thresholds) -> int:
    """VTAB's ``reduce_max(where(thrs - value < 0))``: the last threshold below value."""
    return int(np.flatnonzero(np.asarray(thresholds) - value < 0).max())


def clevr_count(ex, img):
    return [(img, len(ex["objects"]["size"]) - 3)]


def clevr_distance(ex, img):
    dist = float(np.min(np.asarray(ex["objects"]["pixel_coords"])[:, 2]))
    return [(img, _bin(dist, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]))]


def kitti_distance(ex, img):
    """Closest Car / Van / Truck (``type`` < 3): < 8 m, 8-20 m, > 20 m, or none (1000 m)."""
    objects = ex["objects"]
    z = np.asarray(objects["location"], np.float64).reshape(-1, 3)[:, 2]
    z = np.concatenate([z[np.asarray(objects["type"]) < 3], [1000.0]])
    return [(img, _bin(float(z.min()), [-100.0, 8.0, 20.0, 999.0]))]


def voc_objects(ex, img):
    """One crop per object box (tfds boxes: normalised ymin, xmin, ymax, xmax), as
    CLIP_benchmark's cropped-object VOC 2007."""
    w, h = img.size
    out = []
    for box, y in zip(np.asarray(ex["objects"]["bbox"]).reshape(-1, 4),
                      np.asarray(ex["objects"]["label"])):
        y0, x0, y1, x1 = box
        crop = (int(x0 * w), int(y0 * h), max(int(x0 * w) + 1, int(round(x1 * w))),
                max(int(y0 * h) + 1, int(round(y1 * h))))
        out.append((img.crop(crop), int(y)))
    return out


def _subset_label(subset: list[int]):
    remap = {c: i for i, c in enumerate(subset)}

    def derive(ex, img):
        y = remap.get(int(ex["label"]))
        return [] if y is None else [(img, y)]

    return derive


def _label(entry: registry.Entry):
    subset = _imagenet_subset(entry)
    if subset is not None:
        return _subset_label(subset)
    return {"clevr_count": clevr_count, "clevr_distance": clevr_distance,
            "kitti_distance": kitti_distance, "voc_objects": voc_objects}.get(entry.label,
                                                                             entry.label)


# ---------------------------------------------------------------------------------------------
# Locating and splits

_PART = re.compile(r"^([A-Za-z0-9_]+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def resolve_split(expr: str, counts: dict[str, int]) -> str:
    """``train[60%:80%]`` -> ``train[n*60//100:n*80//100]`` (VTAB's counts; tfds would round
    percentages its own way); absolute bounds are clamped to the split (``test[:1000]`` of a
smaller split is all of it), ``a+b`` joins."""
    out = []
    for part in expr.split("+"):
        m = _PART.match(part.strip())
        if not m:
            raise ValueError(f"split {expr!r}: expected SPLIT[[a:b]] parts joined by '+'")
        name, lo, hi = m.groups()
        if name not in counts:
            raise ValueError(f"split {expr!r}: no split {name!r} (the dataset has "
                             f"{sorted(counts)})")
        n = counts[name]

        lo, hi = (b if b is None else str(n * int(b[:-1]) // 100) if b.endswith("%") else
                  str(max(-n, min(n, int(b))))  # as Python clamps a slice; tfds refuses
                  for b in (lo, hi))
        out.append(name if lo is None and hi is None else f"{name}[{lo or ''}:{hi or ''}]")
    return "+".join(out)


def _folder_dir(entry: registry.Entry, data_dir: str) -> str | None:
    """``DIR/<name>`` (``DIR/<entry.folder>``) when it is a folder dataset (it has a split
    folder, or for retrieval a captions file), not a tfds builder's directory of that name."""
    path = os.path.join(data_dir, entry.folder or entry.name)
    marks = ("captions.txt", _XM3600) if entry.task == "retrieval" else (
        "SegmentationClass",) if entry.task == "segmentation" else (
        "test", *_SPLIT_DIRS["train"], *_SPLIT_DIRS["val"])
    return path if any(os.path.exists(os.path.join(path, m)) for m in marks) else None


def locate(entry: registry.Entry, data_dir: str):
    """Where the entry's data is: ``("folder", path)``, ``("tfds", builder)`` or None."""
    folder = _folder_dir(entry, data_dir)
    if folder:
        return "folder", folder
    if entry.tfds and tfds_reader.is_prepared(entry.tfds, data_dir):
        return "tfds", tfds_reader.open_builder(entry.tfds, data_dir)
    return None


def missing_message(entry: registry.Entry) -> str:
    how = entry.prepare or (registry.TFDS_BUILD if entry.tfds else "")
    how = how.replace("{builder}", str(entry.tfds))
    if entry.tfds and entry.task == "classification":
        how += f" (or an image folder DIR/{entry.name}/{{train,test}}/<class>/)"
    return f"{entry.name}: not in the data dir; prepare it with: {how}"


def _folder_classes(split_dir: str, names: list[str] | None) -> tuple[list[str], dict]:
    """(class names, {folder: label}) by the module docstring's rule."""
    folders = [d for d in datasets.list_folder(split_dir)
               if os.path.isdir(os.path.join(split_dir, d))]
    if names is None:  # no registry names: the folders are the classes
        return [f.replace("_", " ") for f in folders], {f: i for i, f in enumerate(folders)}
    if folders and all(f.isdigit() and int(f) < len(names) for f in folders):
        return names, {f: int(f) for f in folders}
    by_name = {n.lower(): i for i, n in enumerate(names)}
    if folders and all(f.replace("_", " ").lower() in by_name for f in folders):
        return names, {f: by_name[f.replace("_", " ").lower()] for f in folders}
    if len(folders) == len(names):
        return names, {f: i for i, f in enumerate(folders)}
    raise ValueError(f"{split_dir}: its {len(folders)} class folders are neither label indices "
                     f"nor class names, and the dataset has {len(names)} classes")


def _folder_set(entry, split_dir: str, names, display: str) -> datasets.LabelledSet:
    root = os.path.dirname(split_dir)
    names, label_of = _folder_classes(split_dir, names or _folder_list(root, "classnames.txt"))
    files = [(os.path.join(split_dir, c, f), label)
             for c, label in sorted(label_of.items())
             for f in datasets.list_folder(os.path.join(split_dir, c))
             if f.lower().endswith(_SUFFIXES)]
    if not files:
        raise ValueError(f"{split_dir}: no <class>/<image> files ({', '.join(_SUFFIXES)})")
    ds = datasets.LabelledSet(display, names, templates(entry, root), None)

    ds.samples = lambda size: datasets.folder_images(files, size, ds.stats)
    return ds


def labelled_split(entry: registry.Entry, data_dir: str, which: str,
                   where=None) -> datasets.LabelledSet | None:
    """The entry's ``which`` split (test / train / val) as a labelled set, or None when the
    entry has none (val: carve it from train)."""
    kind, found = where or locate(entry, data_dir) or (None, None)
    if kind is None:
        raise FileNotFoundError(missing_message(entry))
    names = class_names(entry)
    if kind == "folder":
        for d in _SPLIT_DIRS[which]:
            if os.path.isdir(os.path.join(found, d)):
                return _folder_set(entry, os.path.join(found, d), names, f"{entry.name}/{d}")
        if which == "test":
            raise ValueError(f"{found}: a folder dataset needs a test/ folder")
        return None
    expr = {"test": entry.test, "train": entry.train, "val": entry.val}[which]
    if expr is None:
        return None
    counts = {k: int(v.num_examples) for k, v in found.info.splits.items()}
    split = resolve_split(expr, counts)
    return datasets.tfds_labelled(entry.tfds, split, data_dir, templates(entry), names,
                                  label=_label(entry), display=f"{entry.name}:{expr}",
                                  builder=found)


def _read_captions(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if "\t" in line:
                name, caption = line.split("\t", 1)
                name = name.split("#")[0]
            elif ".jpg," in line:
                name, caption = line.split(".jpg,", 1)
                name += ".jpg"
            elif i == 0 and line.lower().startswith("image"):
                continue  # a CSV header
            else:
                raise ValueError(f"{path}:{i + 1}: expected 'FILE<TAB>caption' or "
                                 "'FILE.jpg,caption'")
            pairs.append((name.strip(), caption.strip()))
    if not pairs:
        raise ValueError(f"{path}: no captions")
    return pairs


_XM3600 = "captions.jsonl"


def _read_xm3600(path: str, lang: str) -> list[tuple[str, str]]:
    """(``KEY.jpg``, caption) of every ``lang`` caption in Crossmodal-3600's captions.jsonl
    (``{"image/key": KEY, "<lang>": {"caption": [...]}, ...}`` per line), in file order."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key, caps = rec["image/key"], rec[lang]["caption"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i + 1}: expected a JSON object with 'image/key' and "
                                 f"'{lang}': {{'caption': [...]}} ({type(e).__name__}: {e})"
                                 ) from None
            if isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"{path}:{i + 1}: '{lang}' captions must be a list of strings")
            pairs += [(f"{key}.jpg", c.strip()) for c in caps if c.strip()]
    if not pairs:
        raise ValueError(f"{path}: no '{lang}' captions")
    return pairs


def captioned_set(entry: registry.Entry, data_dir: str, where=None) -> datasets.CaptionedSet:
    """A retrieval entry's test images with their captions."""
    kind, found = where or locate(entry, data_dir) or (None, None)
    if kind is None:
        raise FileNotFoundError(missing_message(entry))
    ds = datasets.CaptionedSet(entry.name, None)
    if kind == "folder":
        by_image: dict[str, list[str]] = {}
        lang = entry.label.partition("xm3600:")[2]
        pairs = (_read_xm3600(os.path.join(found, _XM3600), lang) if lang else
                 _read_captions(os.path.join(found, "captions.txt")))
        for name, caption in pairs:
            by_image.setdefault(name, []).append(caption)
        images = os.path.join(found, "images")

        def samples(size):
            for name, caps in by_image.items():
                with open(os.path.join(images, name), "rb") as f:
                    arr = datasets._decode(f.read(), size, ds.stats)
                if arr is not None:
                    yield arr, caps
    else:
        split = resolve_split(entry.test, {k: int(v.num_examples)
                                           for k, v in found.info.splits.items()})

        def samples(size):
            for ex in tfds_reader.records(found, split):
                caps = [c.decode() if isinstance(c, bytes) else str(c)
                        for c in np.asarray(ex["captions"]["text"]).tolist()]
                arr = datasets._decode(tfds_reader.to_pil(ex["image"]), size, ds.stats)
                if arr is not None and caps:
                    yield arr, caps

    ds.samples = samples
    return ds


def card_to_folder(card: str, out_dir: str, train_fraction: float = 0.5) -> dict[str, int]:
    """Write a labelled ``.json`` card's images as a folder dataset ``out_dir/{train,test}/
    <label index>/<n>.png`` (per class, the first ``train_fraction`` of its images in card order
    to train), with the card's ``classnames.txt`` and ``templates.txt``."""
    ds = datasets.labelled(card)
    size = int(datasets.read_card(card).get("image_size", 224))
    by_class: dict[int, list[np.ndarray]] = {}
    for img, y in ds.samples(size):
        by_class.setdefault(int(y), []).append(img)
    counts = {"train": 0, "test": 0}
    for y, imgs in sorted(by_class.items()):
        n_train = int(len(imgs) * train_fraction)
        for i, img in enumerate(imgs):
            split = "train" if i < n_train else "test"
            d = os.path.join(out_dir, split, str(y))
            files.make_dir(d)
            Image.fromarray(img).save(os.path.join(d, f"{i:05d}.png"))
            counts[split] += 1
    for name, items in (("classnames.txt", ds.class_names), ("templates.txt", ds.templates)):
        files.write_atomic(os.path.join(out_dir, name), "".join(f"{x}\n" for x in items))
    return counts
