"""Which prompts a suite dataset's zero-shot classifier is built from: the registry's (the CLIP
paper's templates and class names), or the user's, for every dataset or per dataset, in any
language, and the record of what was used.

``--templates`` and ``--classnames`` (:mod:`clip_jax.evaluate.__main__`) each take values
``[DATASET=]SPEC``, repeatable; a value without ``DATASET=`` applies to every dataset, one with
it to that dataset only (and wins)::

    templates SPEC: a template set (imagenet, imagenet_simple, cifar10, or a suite dataset's own:
                    eurosat, ...), a file (one template per line, ``#`` comments; or a .json
                    list), or a directory holding DIR/<dataset>.txt for every dataset evaluated
    classnames SPEC: a file of the dataset's class names in its label order (one per line, or a
                    .json list), or a directory holding DIR/<dataset>.txt

So a language is a directory ``de/`` with ``de/templates.txt`` and ``de/<dataset>.txt``:
``--templates de/templates.txt --classnames de/``. Templates follow the one rule of
:func:`clip_jax.evaluate.templates.check_templates`; a class-name file must have exactly as many
names as the dataset has classes. Every mistake is a ValueError naming the file (exit 2 on the
command line), raised by :func:`check` before anything is encoded.

:func:`apply` sets a test split's templates and class names and returns the record kept in the
report (``details[<dataset>]["prompts"]``): the template strings and where they came from, and
where the class names came from (a file: its absolute path and sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence

from clip_jax.evaluate import datasets, prompts, registry
from clip_jax.evaluate import templates as templates_lib

_NAME = re.compile(r"[A-Za-z0-9_]+")
ALL = ""  # the key of a value without DATASET=


@dataclasses.dataclass(frozen=True)
class Choice:
    """``{dataset or "": spec}`` for templates and for class names ({} = the registry's)."""

    templates: dict = dataclasses.field(default_factory=dict)
    classnames: dict = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.templates or self.classnames)


def _values(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not (sep and _NAME.fullmatch(name)):  # a spec alone (a path may hold '=')
            name, spec = ALL, value
        if not spec.strip():
            raise ValueError(f"{flag} {value!r}: the spec is empty")
        if name in out:
            which = f"dataset {name!r}" if name else "every dataset"
            raise ValueError(f"{flag} is given twice for {which} ({out[name]!r} and {spec!r})")
        out[name] = spec
    return out


def parse(templates: Sequence[str] = (), classnames: Sequence[str] = ()) -> Choice:
    """The ``--templates`` / ``--classnames`` values (see the module docstring)."""
    return Choice(_values(templates, "--templates"), _values(classnames, "--classnames"))


def _file_in(directory: str, dataset: str, flag: str) -> str:
    for ext in (".txt", ".json"):
        path = os.path.join(directory, dataset + ext)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{flag} {directory}: no {dataset}.txt there (the directory needs one file "
                     f"per dataset evaluated)")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _source(path: str) -> str:
    return f"{os.path.abspath(path)} (sha256 {_sha256(path)})"


def _spec_for(table: dict, dataset: str) -> str | None:
    return table.get(dataset, table.get(ALL))


def user_templates(choice: Choice, dataset: str) -> tuple[list[str], str] | None:
    """(templates, where they came from) that the user chose for ``dataset``, or None."""
    spec = _spec_for(choice.templates, dataset)
    if spec is None:
        return None
    if os.path.isdir(spec):
        spec = _file_in(spec, dataset, "--templates")
    if os.path.isfile(spec):
        return templates_lib.get_templates(spec), _source(spec)
    if spec in prompts.TEMPLATES:
        return list(prompts.TEMPLATES[spec]), f"template set {spec}"
    try:
        return templates_lib.get_templates(spec), f"template set {spec}"
    except ValueError:
        raise ValueError(f"--templates {spec!r}: not a file, a directory nor a template set "
                         f"(imagenet, imagenet_simple, cifar10, or a suite dataset's: "
                         f"{', '.join(sorted(prompts.TEMPLATES)[:4])}, ...)") from None


def user_classnames(choice: Choice, dataset: str) -> tuple[list[str], str] | None:
    """(class names, where they came from) that the user chose for ``dataset``, or None."""
    spec = _spec_for(choice.classnames, dataset)
    if spec is None:
        return None
    if os.path.isdir(spec):
        spec = _file_in(spec, dataset, "--classnames")
    if not os.path.isfile(spec):
        raise ValueError(f"--classnames {spec!r}: no such file or directory")
    return templates_lib.get_classnames(spec), _source(spec)


def check(choice: Choice, names: Sequence[str], evals: Sequence[str]) -> None:
    """What cannot be honoured, before anything runs: prompts without a zero-shot evaluation,
    a ``DATASET=`` naming no classification dataset of ``names``, prompts for a suite of
    retrieval sets only."""
    if not choice:
        return
    flags = " and ".join(f for f, t in (("--templates", choice.templates),
                                         ("--classnames", choice.classnames)) if t)
    if "zeroshot" not in evals:
        raise ValueError(f"{flags} choose zero-shot prompts, but --eval {','.join(evals)} "
                         "runs no zero-shot evaluation: add --eval zeroshot")
    classify = [n for n in names if registry.ENTRIES[n].task == "classification"]
    if not classify:
        raise ValueError(f"{flags}: the datasets {list(names)} are retrieval sets, which use "
                         "no prompts")
    for flag, table in (("--templates", choice.templates), ("--classnames", choice.classnames)):
        for dataset in table:
            if dataset != ALL and dataset not in classify:
                raise ValueError(f"{flag} {dataset}=...: {dataset!r} is not a classification "
                                 f"dataset evaluated here ({', '.join(classify)})")


def apply(choice: Choice, entry: registry.Entry, ds: datasets.LabelledSet,
          defaults: tuple[str, str]) -> dict:
    """Set ``ds``'s templates and class names from ``choice`` (a ValueError names a file whose
    class count is wrong); returns the report's record of the prompts used. ``defaults``: where
    the dataset's own templates and class names come from
    (:func:`clip_jax.evaluate.suite_data.prompt_sources`)."""
    record = {"templates_from": defaults[0], "class_names_from": defaults[1]}
    chosen = user_templates(choice, entry.name)
    if chosen is not None:
        ds.templates, record["templates_from"] = chosen
    names = user_classnames(choice, entry.name)
    if names is not None:
        if len(names[0]) != len(ds.class_names):
            raise ValueError(f"--classnames {names[1].split(' (')[0]}: {len(names[0])} names "
                             f"for {entry.name}'s {len(ds.class_names)} classes (one per line, "
                             f"in label order)")
        ds.class_names, record["class_names_from"] = names
        record["class_names"] = list(ds.class_names)
    record["templates"] = list(ds.templates)
    return record
