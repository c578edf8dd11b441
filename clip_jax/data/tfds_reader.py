"""Prepared tensorflow-datasets, read without TensorFlow (and without ever downloading).

One reading layer for everything that takes tfds data: evaluation sets
(:mod:`clip_jax.evaluate.datasets`, the suite registry) and training sources. A dataset is
prepared elsewhere (``tfds build NAME --data_dir DIR --file_format array_record``, on a machine
with internet) and read here from ``DIR/<name>/<config>/<version>``; array_record files are read
through ``builder.as_data_source`` (random access, no TensorFlow), tfrecord files through
``tf.data`` (needs ``tensorflow``). A dataset whose builder code cannot be constructed here (not
installed, or its module imports TensorFlow, as ``coco_captions`` does) is opened from the
metadata its files carry.

API::

    open_builder(name, data_dir) -> tfds builder   (FileNotFoundError if not prepared there)
    is_prepared(name, data_dir) -> bool             (never raises for a missing dataset)
    num_examples(builder, split) -> int             (split expressions: "train[:80%]" ...)
    records(builder, split) -> iterator of example dicts (NumPy), in the stored order
    data_source(builder, split) -> random-access sequence (array_record only)
    to_pil(image) -> PIL image of an image feature's array (grey (H, W, 1) squeezed)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from PIL import Image


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise ImportError("tfds datasets need tensorflow-datasets (pip install "
                          "tensorflow-datasets)") from e
    return tfds


def _prepared_dir(name: str, data_dir: str) -> str | None:
    """``data_dir/<name>[/<config>]/<version>`` holding a ``dataset_info.json`` (the newest
    version when several are there), or None."""
    base, _, config = name.partition("/")
    root = os.path.join(data_dir, base, *([config] if config else []))
    if not os.path.isdir(root):
        return None
    versions = [v for v in os.listdir(root)
                if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        return None

    def key(v):
        parts = v.split(".")
        return tuple(int(p) if p.isdigit() else -1 for p in parts)

    return os.path.join(root, max(versions, key=key))


def is_prepared(name: str, data_dir: str | None) -> bool:
    """Whether ``name`` (``builder[/config]``) is prepared under ``data_dir``."""
    return bool(data_dir) and _prepared_dir(name, str(data_dir)) is not None


def open_builder(name: str, data_dir: str | None):
    """The builder of a dataset prepared under ``data_dir`` (nothing is downloaded)."""
    tfds = _tfds()
    path = _prepared_dir(name, str(data_dir)) if data_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # builder code absent here, or it needs TensorFlow to construct
        if path is None:
            raise FileNotFoundError(
                f"tfds dataset {name!r} is not prepared under data_dir={data_dir!r} (clip_jax "
                f"never downloads): run `tfds build {name} --data_dir DIR --file_format "
                f"array_record` where it can, then pass DIR ({type(e).__name__}: {e})") from e
        return tfds.builder_from_directory(path)
    if not builder.is_prepared():
        if path is not None:  # another version than the installed code's: read from its files
            return tfds.builder_from_directory(path)
        raise FileNotFoundError(
            f"tfds dataset {name!r} is not prepared under data_dir={data_dir!r} (clip_jax never "
            f"downloads): run `tfds build {name} --data_dir DIR --file_format array_record` "
            "where it can, then pass DIR")
    return builder


def _check_split(builder, split: str) -> None:
    base = split.split("[")[0].split("+")[0]
    splits = sorted(builder.info.splits)
    if any(s.split("[")[0] not in builder.info.splits for s in split.split("+")):
        raise ValueError(f"tfds dataset {builder.info.full_name!r} has no split {base!r} "
                         f"(in {split!r}): it has {splits}")


def num_examples(builder, split: str) -> int:
    """Examples in ``split`` (a tfds split expression such as ``train[80%:]``)."""
    _check_split(builder, split)
    return int(builder.info.splits[split].num_examples)


def _file_format(builder) -> str:
    return str(getattr(builder.info, "file_format", "") or "").lower()


def data_source(builder, split: str):
    """A random-access sequence of the split's examples (array_record datasets only)."""
    _check_split(builder, split)
    if "array_record" not in _file_format(builder):
        raise ValueError(f"tfds dataset {builder.info.full_name!r} is stored as "
                         f"{_file_format(builder) or 'tfrecord'}: random access needs "
                         "array_record (tfds build ... --file_format array_record)")
    return builder.as_data_source(split)


def records(builder, split: str) -> Iterator[dict]:
    """The split's examples in their stored order, as dicts of NumPy values."""
    _check_split(builder, split)
    if "array_record" in _file_format(builder):
        source = builder.as_data_source(split)
        for i in range(len(source)):
            yield source[i]
        return
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"tfds dataset {builder.info.full_name!r} is stored as "
            f"{_file_format(builder) or 'tfrecord'}, which needs tensorflow to read; install "
            "tensorflow-cpu, or prepare it with --file_format array_record (read without "
            "TensorFlow)") from e
    yield from _tfds().as_numpy(builder.as_dataset(split=split, shuffle_files=False))


def to_pil(image) -> Image.Image:
    """A PIL image of an image feature's decoded array ((H, W, 3) or grey (H, W[, 1]))."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)
