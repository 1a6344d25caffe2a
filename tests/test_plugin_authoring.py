"""What a plugin author meets first: what `tlbench list` and `tlbench plugins` print, the public
way to run the CLI in a test, --strict-plugins anywhere, and the conformance kit's own-module check."""

from __future__ import annotations

import ast
import inspect
import os
import re
from dataclasses import dataclass

import pytest
from torch import nn

from tlbench import ParamGroup, Strategy
from tlbench.plugins.registry import get_registry, set_registry
from tlbench.testing import check_strategy, run_cli

LONG = "long_named_plugin_module_for_alignment"


@pytest.fixture
def plugins_env(monkeypatch):
    """Name extra modules in $TLBENCH_PLUGINS (after what the environment names) for one test."""

    def add(*modules: str) -> None:
        named = [m for m in os.environ.get("TLBENCH_PLUGINS", "").split(",") if m]
        monkeypatch.setenv("TLBENCH_PLUGINS", ",".join([*named, *modules]))

    yield add
    monkeypatch.undo()
    set_registry(None)


def test_list_reporters_shows_the_description(capsys):
    assert run_cli(["list", "reporters", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("leaderboard.md: GitHub markdown tables (accuracy, references, cost, footnotes)")


def test_every_built_in_strategy_summary_is_one_whole_sentence(capsys):
    registry = get_registry()
    assert run_cli(["list", "strategies"]) == 0
    printed = capsys.readouterr().out.splitlines()
    for name in registry.names("strategy"):
        cls = registry.get("strategy", name)
        if not cls.__module__.startswith("tlbench_builtins."):
            continue
        first_paragraph = inspect.getdoc(cls).split("\n\n")[0]
        assert "\n" not in first_paragraph and first_paragraph.endswith("."), (
            f"{name}: the docstring's first line must be a whole sentence, got {first_paragraph!r}"
        )
        assert any(line.split()[0] == name and line.endswith(first_paragraph) for line in printed), name


def test_plugins_aligns_a_name_longer_than_28_columns(plugins_env, capsys):
    plugins_env(LONG)
    run_cli(["plugins"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.lstrip().startswith("error:")]
    status_column = {ln.index(" ok ") if " ok " in ln else ln.index(" FAILED ") for ln in lines}
    assert len(status_column) == 1 and status_column.pop() == len(LONG)


def test_strict_plugins_works_after_the_subcommand(plugins_env, capsys):
    plugins_env("no_such_plugin_module_anywhere")
    assert run_cli(["list", "strategies", "--strict-plugins"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()  # one line; the first broken plugin found
    assert re.fullmatch(r"tlbench: error: plugin '[\w.]+': failed to import [\w.]+.*", err), err
    if not get_registry().failures()[:-1]:  # nothing else is broken here: it is the test's module
        assert err == (
            "tlbench: error: plugin 'no_such_plugin_module_anywhere': failed to import "
            "no_such_plugin_module_anywhere (named in $TLBENCH_PLUGINS): ModuleNotFoundError: "
            "No module named 'no_such_plugin_module_anywhere'"
        )
    assert run_cli(["list", "strategies"]) == 0  # without it, the broken plugin is a warning only


def test_the_docs_test_recipe_uses_only_the_public_api():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    recipe = text[text.index("## Testing your plugin") : text.index("## Publishing")]
    imports = [
        node
        for block in recipe.split("```python")[1:]
        for node in ast.walk(ast.parse(block.split("```")[0]))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    modules = {n.module for n in imports if isinstance(n, ast.ImportFrom)}
    assert "tlbench.testing" in modules
    assert not {m for m in modules if m and m.startswith("tlbench.") and m != "tlbench.testing"}


class ForgetsItsDiscriminator(Strategy):
    """A strategy whose discriminator is in no parameter group (so it would never train)."""

    @dataclass
    class Params:
        pass

    name = "forgets_discriminator"
    target_views = ("weak",)

    def setup(self, model, ctx):
        self.discriminator = nn.Linear(ctx.embed_dim, 1)

    def param_groups(self, model):
        return [
            ParamGroup("backbone", list(model.backbone.parameters()), lr_scale=model.backbone_lr_scale),
            ParamGroup("head", list(model.head_parameters())),
        ]

    def training_step(self, batch, ctx):
        return self.supervised_step(batch, ctx)


def test_the_kit_fails_a_strategy_whose_own_module_never_trains():
    with pytest.raises(
        AssertionError,
        match=r"its own module 'discriminator' \(2 parameter\(s\), e.g. "
        r"discriminator.weight\) is in no parameter group",
    ):
        check_strategy(ForgetsItsDiscriminator)


@pytest.mark.parametrize("bad", ["a->b", "two words", "x" * 101, "-dash-first"])
def test_the_kit_holds_a_strategy_name_to_the_registrys_rule(bad):
    """A name the kit passes is one the registry accepts: 'a->b' (a pair's arrow) used to pass the kit
    and be refused at registration."""
    named = type("Named", (ForgetsItsDiscriminator,), {"name": bad, "__doc__": "A strategy with a bad name."})
    with pytest.raises(AssertionError, match=r"the registry's rule holds for it: a name is 1 to 100 letters"):
        check_strategy(named)
