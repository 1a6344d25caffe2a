"""docs/plugins.md stays true: every hook is in its reference with the exact signature and docstring,
its Python blocks parse, and its example plugins pass the conformance kit."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

from tlbench.plugins import hookspecs
from tlbench.plugins.registry import Registry
from tlbench.testing import (
    check_backbone,
    check_dataset,
    check_reporter,
    check_shift,
    check_strategy,
    check_validator,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def hookspec_functions() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"  # pluggy's HookspecMarker sets this attribute
    return {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)}


def render_spec(name: str, fn) -> str:
    """``name(a: T, b: U) -> R`` as written in hookspecs.py (annotations are strings there)."""

    def text(annotation) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    sig = inspect.signature(fn)
    params = ", ".join(
        p.name if p.annotation is p.empty else f"{p.name}: {text(p.annotation)}" for p in sig.parameters.values()
    )
    ret = "" if sig.return_annotation is sig.empty else f" -> {text(sig.return_annotation)}"
    return f"{name}({params}){ret}"


def render_doc(fn: ast.FunctionDef) -> str:
    ret = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
    return f"{fn.name}({ast.unparse(fn.args)}){ret}"


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, re.S | re.M)
    assert match, f"docs/plugins.md has no '## {title}' section"
    return match.group(1)


def documented_hooks() -> dict[str, ast.FunctionDef]:
    """The ``def`` blocks of the hook reference, by name."""
    found: dict[str, ast.FunctionDef] = {}
    for lang, code in FENCE.findall(section("Hook reference")):
        if lang != "python":
            continue
        for node in ast.parse(code).body:
            if isinstance(node, ast.FunctionDef):
                assert node.name not in found, f"hook {node.name} is documented twice"
                found[node.name] = node
    return found


SPECS = hookspec_functions()


def test_the_hookspecs_are_found():
    assert {"register_strategies", "register_launchers", "before_cell", "after_cell"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_exact_signature_and_docstring(name):
    docs = documented_hooks()
    assert name in docs, f"hook {name} is missing from the hook reference of docs/plugins.md"
    expected = render_spec(name, SPECS[name])
    assert render_doc(docs[name]) == expected, (
        f"docs/plugins.md documents {render_doc(docs[name])}, hookspecs.py says {expected}"
    )
    assert ast.get_docstring(docs[name]) == inspect.getdoc(SPECS[name]), f"the docstring of {name} differs"
    assert re.search(rf"^### `{name}`$", section("Hook reference"), re.MULTILINE), f"no '### `{name}`' heading"


def test_no_hook_is_documented_that_does_not_exist():
    stale = sorted(set(documented_hooks()) - set(SPECS))
    assert not stale, f"docs/plugins.md documents hooks that hookspecs.py does not have: {stale}"


def test_signature_rendering_compares_like_with_like():
    tree = ast.parse("def after_cell(cell: Cell, record: CellRecord) -> None:\n    pass\n")
    assert render_doc(tree.body[0]) == render_spec("after_cell", SPECS["after_cell"])
    tree = ast.parse("def after_cell(cell: Cell) -> None:\n    pass\n")
    assert render_doc(tree.body[0]) != render_spec("after_cell", SPECS["after_cell"])


@pytest.mark.parametrize("index", range(len(FENCE.findall(TEXT))))
def test_python_blocks_parse(index):
    lang, code = FENCE.findall(TEXT)[index]
    if lang == "python":
        ast.parse(code, filename=f"docs/plugins.md block {index}")


EXAMPLES = {
    m.group(1): code
    for lang, code in FENCE.findall(TEXT)
    if lang == "python" and (m := re.match(r"# example: (\w+)\n", code))
}
CHECKS = {
    "strategy": check_strategy,
    "dataset": check_dataset,
    "shift": check_shift,
    "reporter": check_reporter,
    "backbone": check_backbone,
    "validator": check_validator,
}
KIND_OF_HOOK = {
    "strategy": "register_strategies",
    "dataset": "register_datasets",
    "shift": "register_shifts",
    "reporter": "register_reporters",
    "backbone": "register_backbones",
    "validator": "register_validators",
}


def test_every_checkable_kind_has_an_example():
    assert set(EXAMPLES) == set(CHECKS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_example_plugin_registers_and_conforms(kind, tmp_path):
    path = tmp_path / f"doc_example_{kind}.py"
    path.write_text(EXAMPLES[kind])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
        registry = Registry(entry_points=False, plugins={"doc": module})
        assert registry.failures() == []
        (name,) = registry.plugins["doc"].registered[kind]
        assert hasattr(module, KIND_OF_HOOK[kind])
        CHECKS[kind](registry.get(kind, name))
    finally:
        del sys.modules[path.stem]


def test_recipe_keys_table_matches_the_recipe_model():
    from tlbench.spec.recipe import Recipe, recipe_keys_markdown

    text = (DOC.parent / "recipe.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- recipe-keys:start -->\n(.*?)<!-- recipe-keys:end -->", text, re.DOTALL)
    assert table, "docs/recipe.md has lost its recipe-keys markers"
    assert table.group(1) == recipe_keys_markdown(), (
        "docs/recipe.md's table is stale: regenerate it with tlbench.spec.recipe.recipe_keys_markdown()"
    )
    assert [ln.split("`")[1] for ln in table.group(1).splitlines()[2:]] == list(Recipe.model_fields)


def test_no_doc_says_a_failed_cell_must_be_deleted_to_be_retried():
    """The runner retries a failed cell by itself (only ok and diverged records mark a cell done), so a
    sentence telling users to delete a failed cell's folder to retry it is stale."""
    from tlbench.spec.record import DONE_STATUSES

    assert "failed" not in DONE_STATUSES
    root = DOC.parents[1]
    stale = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        text = " ".join(path.read_text(encoding="utf-8").split())
        for sentence in re.split(r"(?<=\.)\s", text):
            if all(re.search(word, sentence, re.I) for word in ("fail", "delet|remov", "retr|again")):
                stale.append(f"{path.relative_to(root)}: {sentence}")
    assert not stale, stale
    scaling = " ".join((root / "docs" / "scaling.md").read_text(encoding="utf-8").split())
    assert "a failed cell is run again by the next run" in scaling
