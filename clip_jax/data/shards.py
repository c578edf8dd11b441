"""Shard specs: which tar shards a dataset is made of, and with what weight they are mixed.

A *source* is a list of tar shards, written as any of

* a brace pattern: ``"/data/laion/{00000..41407}.tar"`` (expanded by ``braceexpand``, as
  webdataset does: numeric ranges keep the zero padding of their bounds, ``{a,b,c}``
  alternatives, several groups per pattern, left group outermost);
* a list / tuple of such strings (their expansions concatenated);
* an fsspec URL (``gs://bucket/cc12m/{0000..1099}.tar``, ``s3://...``; opened with
  ``fsspec.open``, so the matching fsspec backend must be installed);
* a command whose stdout is the tar: ``"pipe:gsutil cat gs://bucket/{000..999}.tar"`` (braces
  are expanded in the command too).

Several sources are mixed, sample by sample, with weights (default 1 each):

* a string ``"SPEC_A::SPEC_B"``, each part optionally ending in ``@WEIGHT``:
  ``"/data/laion/{00000..41407}.tar@0.8::/data/cc12m/{0000..1099}.tar@0.2"``
  (a trailing ``@`` + number is always read as a weight);
* a list of mappings ``[{"shards": SPEC_A, "weight": 0.8}, {"shards": SPEC_B, "weight": 0.2}]``.

Shard specs are not glob patterns: ``*``, ``?`` and ``[...]`` stay as they are (opening such a
name fails with a hint, see :mod:`clip_jax.data.tario`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from braceexpand import braceexpand

_WEIGHT = re.compile(r"^(.*)@([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$", re.S)


def expand_braces(pattern: str) -> list[str]:
    """``"a{00..02}b{x,y}"`` -> ``["a00bx", "a00by", "a01bx", ...]`` (left group outermost)."""
    return list(braceexpand(pattern))


@dataclass(frozen=True)
class Source:
    """One shard list mixed into the stream with ``weight``."""

    shards: tuple[str, ...]
    weight: float = 1.0


def _expand_one(spec) -> list[str]:
    if isinstance(spec, str):
        spec = spec.strip()
        return expand_braces(spec) if spec else []
    if isinstance(spec, Iterable):
        return [s for part in spec for s in _expand_one(part)]
    raise TypeError(f"shard spec must be a string or a list of strings, got {type(spec).__name__}")


def _is_mapping(x) -> bool:
    return isinstance(x, Mapping) or (hasattr(x, "keys") and hasattr(x, "__getitem__")
                                      and not isinstance(x, str | bytes))


def _source_from_mapping(m) -> Source:
    if "shards" not in m:
        raise ValueError(f"a weighted source needs a 'shards' entry, got keys {list(m.keys())}")
    weight = m["weight"] if "weight" in m else 1.0
    return Source(tuple(_expand_one(m["shards"])), float(weight))


def parse_sources(spec) -> list[Source]:
    """Parse a shard spec (see the module docstring) into weighted sources."""
    if isinstance(spec, Source):
        return [spec]
    if isinstance(spec, str):
        sources = []
        for part in (p.strip() for p in spec.split("::")):
            weight = 1.0
            m = _WEIGHT.match(part)
            if m:
                part, weight = m.group(1).strip(), float(m.group(2))
            sources.append(Source(tuple(_expand_one(part)), weight))
    elif _is_mapping(spec):
        sources = [_source_from_mapping(spec)]
    elif isinstance(spec, Iterable):
        items = list(spec)
        if items and all(_is_mapping(x) for x in items):
            sources = [_source_from_mapping(x) for x in items]
        elif any(_is_mapping(x) for x in items):
            raise ValueError("a shard spec list mixes sources ({'shards', 'weight'}) and shards")
        else:
            sources = [Source(tuple(_expand_one(items)))]
    else:
        raise TypeError(f"unsupported shard spec {spec!r}")
    for i, s in enumerate(sources):
        if not s.shards:
            raise ValueError(f"shard spec {spec!r}: source {i} has no shards")
        if not (s.weight > 0 and math.isfinite(s.weight)):
            raise ValueError(f"shard spec {spec!r}: source {i} has weight {s.weight}, need > 0")
    if not sources:
        raise ValueError(f"empty shard spec {spec!r}")
    return sources


def expand_shards(spec) -> list[str]:
    """Every shard of every source in ``spec``, in order (weights ignored)."""
    return [s for src in parse_sources(spec) for s in src.shards]
