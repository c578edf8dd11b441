"""The package's shape, checked from its source with ``ast`` (no module is imported).

Each module may import clip_jax modules of its own layer or the layers above it in ``LAYERS``
(the README's "Map of the code" draws the same picture), the import graph has no cycle, and no
clip_jax import hides inside a function (a function-level import is only for an optional heavy
dependency, listed in ``OPTIONAL``). No package file grows past ``MAX_LINES``.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "clip_jax"

# Lowest first: a module may import from its own layer and from the layers listed before it.
LAYERS = (
    # foundations: errors, workdir lock, process setup; input data knows no model
    ("clip_jax", "clip_jax.cli", "clip_jax.files", "clip_jax.workdir", "clip_jax.distributed",
     "clip_jax.data", "clip_jax.data.*", "clip_jax.evaluate", "clip_jax.evaluate.templates",
     "clip_jax.evaluate.plots"),
    # the model, its math and its placement
    ("clip_jax.convolution", "clip_jax.remat", "clip_jax.layers", "clip_jax.models",
     "clip_jax.models.*", "clip_jax.losses", "clip_jax.kd_losses", "clip_jax.sharding",
     "clip_jax.topology", "clip_jax.config", "clip_jax.config_schema", "clip_jax.recipes",
     "clip_jax.optimizer",
     "clip_jax.flops", "clip_jax.monitor", "clip_jax.stability", "clip_jax.ema"),
    ("clip_jax.params",),
    # formats, each apart from the things it stores
    ("clip_jax.interop", "clip_jax.interop.*", "clip_jax.bundle", "clip_jax.checkpoint",
     "clip_jax.preemption"),
    ("clip_jax.sources",),
    ("clip_jax.inference",),
    # evaluation, and feeding batches to the mesh
    ("clip_jax.evaluate.*", "clip_jax.input_pipeline", "clip_jax.distill",
     "clip_jax.objectives", "clip_jax.objectives.*", "clip_jax.gradients"),
    # entry points: parse, build, call
    ("clip_jax.train", "clip_jax.export", "clip_jax.predict", "clip_jax.plan", "clip_jax.compiled",
     "clip_jax.plan_terms",
     "clip_jax.evaluate.__main__", "clip_jax.embed", "clip_jax.filter"),
)

# May be imported inside a function: optional heavy dependencies (wandb), webdataset and
# tensorboardX (their imports load torch whenever torch is installed) and fcntl (POSIX only).
OPTIONAL = ("torch", "ml_dtypes", "tensorflow", "tensorflow_datasets", "tokenizers", "fsspec",
            "transformers", "open_clip", "pyarrow", "matplotlib", "jax.experimental.topologies",
            "libtpu", "webdataset", "tensorboardX", "wandb", "fcntl")
MAX_LINES = 460


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    # The most specific pattern wins ("clip_jax.evaluate.__main__" over "clip_jax.evaluate.*").
    best = None
    for i, patterns in enumerate(LAYERS):
        for p in patterns:
            if fnmatch.fnmatchcase(module, p) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it")
    return best[0]


def _imports(module: str, path: pathlib.Path):
    """``(imported clip_jax module, line, inside a function)`` and third-party function-level
    imports ``(name, line)``."""
    tree = ast.parse(path.read_text(), str(path))
    known = _modules()
    internal, lazy = [], []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                names = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif child.level:  # relative import
                    base = module.rsplit(".", child.level)[0] if path.name != "__init__.py" \
                        else module
                    names = [f"{base}.{child.module}" if child.module else base]
                else:
                    names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
                for name in names:
                    if name.split(".")[0] == "clip_jax":
                        if name in known:
                            internal.append((name, child.lineno, in_function))
                    elif in_function:
                        lazy.append((name, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return internal, lazy


def test_every_import_goes_down_the_layers_and_none_hides_in_a_function():
    problems = []
    for module, path in _modules().items():
        internal, lazy = _imports(module, path)
        for name, line, in_function in internal:
            if in_function:
                problems.append(f"{path.name}:{line} imports {name} inside a function")
            if name != module and _layer(name) > _layer(module):
                problems.append(f"{module} (layer {_layer(module)}) imports {name} "
                                f"(layer {_layer(name)}) at line {line}")
        for name, line in lazy:
            if not any(name == o or name.startswith(o + ".") for o in OPTIONAL):
                problems.append(f"{path.name}:{line} imports {name} inside a function "
                                f"(not an optional heavy dependency)")
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_cycle():
    graph = {m: {n for n, _, _ in _imports(m, p)[0] if n != m and n != "clip_jax"}
             for m, p in _modules().items()}
    state: dict[str, int] = {}

    def walk(m, stack):
        state[m] = 1
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, n]))
            if n not in state:
                walk(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            walk(m, [])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_package_file_is_a_room_of_its_own(module):
    path = _modules()[module]
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {n} lines (> {MAX_LINES})"


def test_the_checker_sees_a_violation():
    """The rules above are not vacuous: a data module importing the model is caught."""
    assert _layer("clip_jax.data.pipeline") < _layer("clip_jax.models")
    assert _layer("clip_jax.evaluate.__main__") > _layer("clip_jax.evaluate.evaluators")
    assert _layer("clip_jax.inference") > _layer("clip_jax.sources") > _layer("clip_jax.bundle")
