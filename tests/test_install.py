"""What installing clip_jax promises: every import the package makes is declared in setup.cfg
(a module-level one in install_requires, a function-level one there or in an extra), each
requirement is bounded above, and constraints.txt pins what CI installs."""

import ast
import configparser
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import names whose distribution is not named after them, where that distribution may be absent
ALIASES = {"tensorflow": {"tensorflow", "tensorflow-cpu"}, "open_clip": {"open-clip-torch"},
           "PIL": {"pillow"}, "cv2": {"opencv-python-headless"}, "yaml": {"pyyaml"}}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(block: str) -> list[str]:
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def declared(setup_cfg: Path = REPO / "setup.cfg") -> tuple[set[str], dict[str, set[str]]]:
    """(install_requires, {extra: requirements}) as normalised distribution names."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    name = lambda req: _norm(re.match(r"[A-Za-z0-9._-]+", req).group())
    core = {name(r) for r in _requirements(cfg["options"]["install_requires"])}
    extras = {k: {name(r) for r in _requirements(v)}
              for k, v in cfg["options.extras_require"].items()}
    return core, extras


def imports(source: str) -> list[tuple[str, bool]]:
    """(module, at module level) for each absolute import in ``source``."""
    found = []

    def walk(node, nested):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, not nested) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.module, not nested))
            walk(child, nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(source), False)
    return found


_packages = functools.cache(importlib.metadata.packages_distributions)


@functools.cache
def distributions(module: str) -> frozenset[str]:
    """The distributions that may provide ``module`` (normalised names)."""
    root = module.split(".")[0]
    installed = _packages().get(root, [])
    if len(installed) > 1:  # a namespace package (google.*): the one holding this module
        path = module.replace(".", "/")
        installed = [d for d in installed if any(
            str(f).startswith(path) for f in importlib.metadata.distribution(d).files or [])]
    return frozenset({_norm(d) for d in installed} or
                     {_norm(d) for d in ALIASES.get(root, {root})})


def undeclared(files, core: set[str], extras: dict[str, set[str]]) -> list[str]:
    optional = set().union(*extras.values())
    problems = []
    for f in files:
        for module, top in imports(Path(f).read_text()):
            root = module.split(".")[0]
            if root in sys.stdlib_module_names or root == "clip_jax":
                continue
            dists = distributions(module)
            if dists & core:
                continue
            if top:
                where = "an extra only" if dists & optional else "nowhere"
                problems.append(f"{f}: module-level 'import {module}' ({'/'.join(sorted(dists))})"
                                f" is declared in {where}, not in install_requires")
            elif not dists & optional:
                problems.append(f"{f}: 'import {module}' ({'/'.join(sorted(dists))}) is "
                                f"declared neither in install_requires nor in an extra")
    return problems


def test_every_import_is_declared_and_the_check_catches_one_that_is_not(tmp_path):
    core, extras = declared()
    files = sorted((REPO / "clip_jax").rglob("*.py"))
    assert len(files) > 50
    assert undeclared(files, core, extras) == []
    # the check itself: an undeclared import at either level, and an extra's at module level
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nimport yaml\nimport torch\n\n\ndef f():\n    import requests\n"
                   "    from google.protobuf import message\n    import wandb\n")
    got = undeclared([bad], core, extras)
    assert len(got) == 3, got
    assert "'import yaml' (pyyaml) is declared in nowhere" in got[0]
    assert "'import torch' (torch) is declared in an extra only" in got[1]
    assert "'import requests' (requests) is declared neither" in got[2]


def test_requirements_are_bounded_and_constraints_pin_them():
    """Each requirement has an upper bound (or an exact pin); constraints.txt pins every core
    and test requirement at one version inside its range, jax's among them."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    blocks = [cfg["options"]["install_requires"], *cfg["options.extras_require"].values()]
    for req in (r for b in blocks for r in _requirements(b)):
        spec = req.split(";")[0]
        assert "<" in spec or "==" in spec, f"setup.cfg: {req!r} has no upper bound"
    pins = {}
    for ln in _requirements((REPO / "constraints.txt").read_text()):
        name, _, version = ln.partition("==")
        assert version, f"constraints.txt: {ln!r} is not an exact pin"
        pins[_norm(name)] = version
    core, extras = declared()
    missing = (core | extras["test"]) - set(pins)
    assert not missing, f"constraints.txt pins none of {sorted(missing)}"
    assert pins["jax"].startswith("0.12.") and pins["jaxlib"] == pins["jax"]


def _readme_guards() -> list[tuple[str, str]]:
    """(test file, test function) for each test the README's "What survives what" table names
    (a cell may name several, the later ones as ``::name`` of the same file)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("What survives what (each row"):]
    table = table[:table.index("\n\n", table.index("|"))]
    found = []
    for row in table.splitlines()[3:]:
        path = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?::\w+)`", row.split("|")[-2]):
            if not ref.startswith("::"):
                path = ref.split("::")[0]
            found.append((path, ref.split("::")[1]))
    return found


def test_the_default_run_keeps_every_test_the_readme_promises_by():
    """No test named in the README's "What survives what" table is marked slow (the default
    run, CI's, leaves slow tests out), and each exists."""
    guards = _readme_guards()
    assert len(guards) >= 10
    for path, name in guards:
        tree = ast.parse((REPO / path).read_text())
        module_marks = [ast.unparse(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)]
        assert not any("slow" in m for m in module_marks), f"{path} is marked slow"
        fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
        assert fns, f"README names {path}::{name}, which does not exist"
        marks = [ast.unparse(d) for d in fns[0].decorator_list]
        assert not any("slow" in m for m in marks), f"{path}::{name} is marked slow"
