"""The layer rule of docs/architecture.md, held by a test: who may import whom inside ``tlbench/``.

Bottom to top: ``errors`` → ``plugins`` → ``runtime``, ``data`` → ``models`` → ``spec`` →
``training``, ``reporting`` → ``matrix`` → ``cli`` → ``testing``. A module imports only from its own
layer and those below; imports under ``if TYPE_CHECKING:`` are type-only and exempt, a function-local
import counts like any other (it runs). The package root ``tlbench`` (the lazy public API) may be
imported anywhere: its eager imports are ``errors`` and ``plugins`` only. No import circle between
modules at run time, and the core never imports a built-in plugin.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "tlbench"

#: each sub-package (or top-level module) of tlbench and its layer, bottom = 0
LAYERS: dict[str, int] = {
    "errors": 0,
    "plugins": 1,
    "runtime": 2,
    "data": 2,
    "models": 3,
    "spec": 4,
    "training": 5,
    "reporting": 5,
    "matrix": 6,
    "cli": 7,
    "listing": 7,
    "__main__": 8,
    "testing": 8,
}
#: a module longer than this says why at the top of its docstring (the phrase below)
MAX_LINES = 450
LONG_REASON = "longer than 450 lines because"


def runtime_imports(source: str) -> list[tuple[str, int]]:
    """``(module, line)`` of every ``tlbench*`` import that runs: top-level and function-local, not those
    under ``if TYPE_CHECKING:``. ``from tlbench.x import y`` counts as ``tlbench.x.y`` when ``y`` may be a
    module; :func:`module_of` resolves that to the module that exists."""
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0].startswith("tlbench"):
                found.extend((f"{node.module}.{a.name}", node.lineno) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names if a.name.split(".")[0].startswith("tlbench"))
    return found


def core_modules() -> dict[str, Path]:
    """Every module of ``tlbench/`` by dotted name."""
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def module_of(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module (``tlbench.spec.cell.Cell`` -> ``tlbench.spec.cell``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of a core module; None for the package root (importable anywhere)."""
    parts = module.split(".")
    return None if len(parts) == 1 else LAYERS[parts[1]]


def violations(module: str, source: str, modules: dict[str, Path]) -> list[str]:
    """The imports of ``module`` (its ``source``) that break the layer rule, one line each."""
    out = []
    own = layer_of(module)
    for name, line in runtime_imports(source):
        if name.split(".")[0] != "tlbench":
            out.append(f"{module}:{line} imports the built-in plugin {name} (the core never does)")
            continue
        target = module_of(name, modules)
        below = layer_of(target)
        if own is not None and below is not None and below > own:
            out.append(f"{module}:{line} imports {target} (layer {below}) from layer {own}")
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the core modules it imports at run time (a package's ``__init__`` counts as its own node)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {module_of(n, modules) for n, _ in runtime_imports(path.read_text(encoding="utf-8"))}
        graph[module] = {t for t in targets if t and t != module and t in modules}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_core_module_has_a_layer():
    modules = core_modules()
    unknown = sorted({m.split(".")[1] for m in modules if "." in m} - set(LAYERS))
    assert not unknown, f"sub-packages without a layer in tests/test_layers.py and docs/architecture.md: {unknown}"


def test_no_core_module_imports_upwards_or_a_built_in_plugin():
    modules = core_modules()
    found = [v for m, p in modules.items() for v in violations(m, p.read_text(encoding="utf-8"), modules)]
    assert not found, "layer rule broken (docs/architecture.md):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("tlbench.data.cache", "from tlbench.training.engine import run_cell\n", "imports tlbench.training.engine"),
        ("tlbench.spec.plan", "def f():\n    import tlbench.matrix.runner\n", "imports tlbench.matrix.runner"),
        ("tlbench.models.weights", "from tlbench.spec import cell\n", "imports tlbench.spec.cell"),
        ("tlbench.matrix.runner", "import tlbench_builtins.strategies.dann\n", "built-in plugin"),
    ],
)
def test_the_checker_finds_an_inverted_import(module, source, expected):
    (line,) = violations(module, source, core_modules())
    assert expected in line


@pytest.mark.parametrize(
    "module, source",
    [
        (
            "tlbench.data.cache",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tlbench.spec.cell import Cell\n",
        ),
        ("tlbench.training.engine", "from tlbench.spec.record import CellRecord\nimport tlbench\n"),
        ("tlbench.spec.record", "from tlbench import __version__\n"),
    ],
)
def test_type_only_downward_and_root_imports_pass(module, source):
    assert violations(module, source, core_modules()) == []


def test_no_import_circle_between_core_modules():
    found = cycles(import_graph(core_modules()))
    assert not found, "import circles at run time (function-local imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_long_core_modules_say_why_at_the_top():
    too_long = []
    for module, path in core_modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            too_long.append(f"{module}: {text.count(chr(10))} lines")
    assert not too_long, f"modules over {MAX_LINES} lines without '{LONG_REASON} ...' in their docstring: {too_long}"
