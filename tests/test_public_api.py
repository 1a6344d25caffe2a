"""``tlbench.__all__`` is the API plugins use: it exists, the core never imports a built-in plugin,
and the built-in (and example) plugins import nothing else from tlbench."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tlbench

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "tlbench"
BUILTINS = ROOT / "plugins" / "tlbench_builtins"
EXAMPLES = ROOT / "plugins" / "examples"
PUBLIC = set(tlbench.__all__)


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every import in a file, including ``import_module("x")`` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value, []))
    return found


def test_every_public_name_exists():
    missing = [name for name in tlbench.__all__ if not hasattr(tlbench, name)]
    assert not missing, f"tlbench.__all__ names what tlbench does not define: {missing}"
    assert len(PUBLIC) == len(tlbench.__all__), "tlbench.__all__ lists a name twice"


def test_the_scans_below_see_the_files_they_should():
    assert len(python_files(CORE)) >= 10 and CORE / "plugins" / "registry.py" in python_files(CORE)
    assert BUILTINS / "strategies" / "dann.py" in PLUGIN_FILES
    assert EXAMPLES / "tlbench-minent" / "src" / "tlbench_minent" / "minent.py" in PLUGIN_FILES
    assert any(("tlbench.plugins.registry" == m) for _, m, _ in imports(CORE / "cli.py"))  # the scanner reads imports


@pytest.mark.parametrize("path", python_files(CORE), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_never_imports_a_builtin_plugin(path):
    bad = [
        f"line {line}: {module}"
        for line, module, _ in imports(path)
        if module == "tlbench_builtins" or module.startswith("tlbench_builtins.")
    ]
    assert not bad, (
        f"{path.relative_to(ROOT)} imports built-in plugins ({'; '.join(bad)}); the core finds "
        "plugins through entry points only"
    )


def plugin_violations(path: Path) -> list[str]:
    out = []
    for line, module, names in imports(path):
        if module.startswith("tlbench."):
            out.append(f"line {line}: imports {module} (a private module; use names from tlbench.__all__)")
        elif module == "tlbench":
            hidden = [n for n in names if n not in PUBLIC]
            if hidden:
                out.append(f"line {line}: imports {', '.join(hidden)} from tlbench, not in tlbench.__all__")
    return out


# a plugin's own tests may use tlbench.testing and the CLI: only the plugin code is held to the public API
PLUGIN_FILES = python_files(BUILTINS) + [
    p for p in python_files(EXAMPLES) if "tests" not in p.relative_to(EXAMPLES).parts
]


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_plugins_import_only_the_public_api(path):
    bad = plugin_violations(path)
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_plugin_scan_flags_private_imports(tmp_path):
    sample = tmp_path / "plugin.py"
    sample.write_text(
        "import tlbench.data.domains\nfrom tlbench.plugins.registry import Registry\n"
        "from tlbench import Strategy, ENTRY_POINT_GROUP\nfrom tlbench import hookimpl\n"
    )
    assert plugin_violations(sample) == [
        "line 1: imports tlbench.data.domains (a private module; use names from tlbench.__all__)",
        "line 2: imports tlbench.plugins.registry (a private module; use names from tlbench.__all__)",
        "line 3: imports ENTRY_POINT_GROUP from tlbench, not in tlbench.__all__",
    ]


RUNTIME_CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys, types
    import tlbench
    for mod in pkgutil.walk_packages(tlbench.__path__, "tlbench."):
        if mod.name != "tlbench.__main__":  # __main__ runs the CLI
            importlib.import_module(mod.name)
    from tlbench.plugins.registry import Registry

    class Probe(tlbench.Strategy):
        name = "probe"

    plugin = types.SimpleNamespace(register_strategies=tlbench.hookimpl(lambda register: register(Probe)))
    registry = Registry(entry_points=False, plugins={"probe": plugin})
    assert registry.names("strategy") == ["probe"] and registry.get("strategy", "probe") is Probe
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "tlbench_builtins")
    print("BEFORE", leaked)
    from tlbench.plugins.registry import get_registry
    get_registry()  # the entry-point path does load them: proof that the check above can see them
    print("AFTER", any(m.split(".")[0] == "tlbench_builtins" for m in sys.modules))
""")


@pytest.mark.slow
def test_importing_the_core_and_using_the_registry_loads_no_builtin():
    result = subprocess.run(
        [sys.executable, "-c", RUNTIME_CHECK], capture_output=True, text=True, cwd=ROOT / "tests", timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "BEFORE []" in lines, f"importing tlbench and a registry without entry points loaded: {lines}"
    assert "AFTER True" in lines
