"""The plugin registry: names, wildcards, provenance, broken plugins, clashes and qualified names."""

from __future__ import annotations

import types

import pytest

import tlbench
from tlbench.errors import UnknownNameError
from tlbench.plugins.registry import (
    KINDS,
    NAME_PATTERN,
    NAME_RULE,
    AmbiguousNameError,
    PluginInfo,
    PluginLoadError,
    Registry,
    get_registry,
)


def _plugin(**hooks):
    return types.SimpleNamespace(**{k: tlbench.hookimpl(v) for k, v in hooks.items()})


class Alpha(tlbench.Strategy):
    name = "alpha"


class Alpha2(tlbench.Strategy):
    name = "alpha"


class Beta(tlbench.Strategy):
    name = "beta"


def test_register_records_the_providing_plugin():
    reg = Registry(entry_points=False, plugins={"p1": _plugin(register_strategies=lambda register: register(Alpha))})
    assert reg.names("strategy") == ["alpha"]
    assert reg.get("strategy", "alpha") is Alpha
    assert reg.entry("strategy", "alpha").plugin == "p1"
    assert reg.plugins["p1"].registered == {"strategy": ["alpha"]}


def test_wildcards():
    def reg_both(register):
        register(Alpha)
        register(Beta)

    reg = Registry(entry_points=False, plugins={"p": _plugin(register_strategies=reg_both)})
    assert reg.names("strategy", "a*") == ["alpha"]
    assert reg.names("strategy", "*") == ["alpha", "beta"]


def test_a_name_two_third_parties_registered_is_ambiguous_bare_and_reachable_qualified():
    reg = Registry(
        entry_points=False,
        plugins={
            "first": _plugin(register_strategies=lambda register: register(Alpha)),
            "second": _plugin(register_strategies=lambda register: (register(Alpha2), register(Beta))),
        },
    )
    with pytest.raises(
        AmbiguousNameError,
        match=r"^strategy 'alpha' is registered by 2 plugins: 'first', 'second'; tlbench will not choose between "
        r"them: write first:alpha or second:alpha \(see 'tlbench plugins'\)$",
    ):
        reg.get("strategy", "alpha")  # never a silent choice of one of them
    assert reg.get("strategy", "first:alpha") is Alpha and reg.get("strategy", "second:alpha") is Alpha2
    assert reg.entry("strategy", "second:alpha").plugin == "second" and reg.get("strategy", "beta") is Beta
    assert reg.failures() == []  # both kept: a clash is no plugin's failure
    assert reg.names("strategy") == ["alpha", "beta"] and reg.resolvable("strategy") == ["beta"]
    assert reg.qualified_names("strategy") == ["first:alpha", "second:alpha", "second:beta"]
    assert reg.objects("strategy") == [Alpha, Alpha2, Beta]
    assert reg.clashes() == ["strategy 'alpha': ambiguous: use first:alpha or second:alpha"]


def _builtin(reg: Registry, name: str, module) -> None:
    """``module`` added as a built-in plugin would be (distribution tlbench, package tlbench_builtins)."""
    info = PluginInfo(name=name, module=f"tlbench_builtins.{name}", distribution="tlbench", version="0.1.0")
    reg.add_plugin(name, module, info=info)


def test_a_third_party_keeps_a_bare_name_the_builtin_took_later():
    reg = Registry(entry_points=False, plugins={"lab": _plugin(register_strategies=lambda register: register(Alpha))})
    _builtin(reg, "strategies.alpha", _plugin(register_strategies=lambda register: register(Alpha2)))
    assert reg.get("strategy", "alpha") is Alpha and reg.get("strategy", "tlbench:alpha") is Alpha2
    assert reg.get("strategy", "lab:alpha") is Alpha and reg.get("strategy", "strategies.alpha:alpha") is Alpha2
    assert reg.is_builtin("strategies.alpha") and not reg.is_builtin("lab")
    assert reg.failures() == []
    assert reg.clashes() == [
        "strategy 'alpha': bare name resolves to lab:alpha (a third-party plugin takes precedence over the "
        "built-in; the built-in is tlbench:alpha)"
    ]
    # a second third party makes it ambiguous again: tlbench never picks one of two third parties
    reg.add_plugin("other", _plugin(register_strategies=lambda register: register(Alpha2)))
    with pytest.raises(AmbiguousNameError, match="write lab:alpha or tlbench:alpha or other:alpha"):
        reg.get("strategy", "alpha")


def test_an_unknown_qualifier_names_the_registrations():
    reg = Registry(entry_points=False, plugins={"p": _plugin(register_strategies=lambda register: register(Alpha))})
    with pytest.raises(UnknownNameError, match=r"^unknown strategy 'q:alpha': no plugin or distribution is named 'q'"):
        reg.get("strategy", "q:alpha")
    with pytest.raises(UnknownNameError, match=r"^unknown strategy 'p:alpah'; did you mean p:alpha\?$"):
        reg.get("strategy", "p:alpah")


def test_a_plugin_that_registers_one_name_twice_fails_and_strict_makes_it_fatal():
    twice = _plugin(register_strategies=lambda register: (register(Alpha), register(Alpha2)))
    reg = Registry(entry_points=False, plugins={"twice": twice})
    ((plugin, error),) = reg.failures()
    assert plugin == "twice" and "strategy 'alpha' is registered twice by plugin 'twice'" in error
    assert reg.get("strategy", "alpha") is Alpha  # its first registration stays
    with pytest.raises(PluginLoadError, match="registered twice by plugin 'twice'"):
        Registry(entry_points=False, strict=True, plugins={"twice": twice})


def test_a_clash_is_not_fatal_in_strict_mode():
    reg = Registry(
        entry_points=False,
        strict=True,
        plugins={
            "first": _plugin(register_strategies=lambda register: register(Alpha)),
            "second": _plugin(register_strategies=lambda register: register(Alpha2)),
        },
    )
    assert reg.get("strategy", "second:alpha") is Alpha2


def test_wrong_base_class_is_reported():
    reg = Registry(entry_points=False, plugins={"bad": _plugin(register_strategies=lambda register: register(int))})
    assert reg.names("strategy") == []
    assert "not a tlbench.Strategy subclass" in reg.failures()[0][1]


def test_unknown_name_suggests_close_ones():
    reg = Registry(entry_points=False, plugins={"p": _plugin(register_strategies=lambda register: register(Alpha))})
    with pytest.raises(UnknownNameError, match="unknown strategy 'alpah'; did you mean alpha"):
        reg.get("strategy", "alpah")


def test_broken_entry_point_is_named_and_skipped(monkeypatch):
    import importlib.metadata as md

    good = md.EntryPoint("good", "tlbench_builtins.launchers.local", "tlbench")
    broken = md.EntryPoint("broken", "no_such_module_for_tlbench", "tlbench")
    # only tlbench's group: torch, if first imported here, asks for its own group
    monkeypatch.setattr(md, "entry_points", lambda group: [broken, good] if group == "tlbench" else [])
    reg = Registry()
    assert reg.names("launcher") == ["local"]
    assert reg.failures() == [("broken", reg.plugins["broken"].errors[0])]
    assert "no_such_module_for_tlbench" in reg.plugins["broken"].errors[0]
    with pytest.raises(PluginLoadError, match="plugin 'broken': failed to import"):
        Registry(strict=True)


def test_builtins_load_through_entry_points():
    reg = get_registry(reload=True)
    assert not reg.failures(), reg.failures()
    for kind, name in [("strategy", "dann"), ("launcher", "local"), ("dataset", "sklearn_digits")]:
        assert name in reg.names(kind)
        entry = reg.entry(kind, name)
        assert reg.plugins[entry.plugin].distribution == "tlbench"


# -- a plugin's sys.exit() is that plugin's failure, never the command's exit ------------------------------
def _exit_zero(register):
    raise SystemExit(0)


@pytest.mark.parametrize("exc", [SystemExit(0), SystemExit("bye"), GeneratorExit()])
def test_a_register_hook_that_exits_is_named_and_skipped(exc):
    def leave(register):
        register(Beta)
        raise exc

    reg = Registry(
        entry_points=False,
        plugins={
            "exits": _plugin(register_strategies=leave),
            "good": _plugin(register_strategies=lambda register: register(Alpha)),
        },
    )
    assert reg.names("strategy") == ["alpha", "beta"]
    ((plugin, error),) = reg.failures()
    assert plugin == "exits" and error.startswith(f"register_strategies raised {type(exc).__name__}")
    with pytest.raises(PluginLoadError, match=f"plugin 'exits': register_strategies raised {type(exc).__name__}"):
        Registry(entry_points=False, strict=True, plugins={"exits": _plugin(register_strategies=leave)})


def test_a_register_hook_interrupted_by_ctrl_c_is_not_swallowed():
    def interrupted(register):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Registry(entry_points=False, plugins={"p": _plugin(register_strategies=interrupted)})


def test_an_entry_point_module_that_exits_at_import_is_named_and_skipped(monkeypatch, tmp_path):
    import importlib.metadata as md

    (tmp_path / "tlbench_test_exits_at_import.py").write_text("raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good = md.EntryPoint("good", "tlbench_builtins.launchers.local", "tlbench")
    exits = md.EntryPoint("exits", "tlbench_test_exits_at_import", "tlbench")
    # only tlbench's group: torch, if first imported here, asks for its own group
    monkeypatch.setattr(md, "entry_points", lambda group: [exits, good] if group == "tlbench" else [])
    reg = Registry()
    assert reg.names("launcher") == ["local"]
    assert reg.failures() == [("exits", "failed to import tlbench_test_exits_at_import: SystemExit: 0")]
    with pytest.raises(PluginLoadError, match="plugin 'exits': failed to import tlbench_test_exits_at_import"):
        Registry(strict=True)


# -- a registered name is one plain word --------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, shown",
    [
        ("two words", "'two words'"),
        ("line\nbreak", "'line\\nbreak'"),
        ("nul\0", "'nul\\x00'"),
        ("a->b", "'a->b'"),
        ("blur:3", "'blur:3'"),
        ("-dash", "'-dash'"),
        ("_under", "'_under'"),
        ("x" * 10_000, "... (10000 characters)"),
    ],
)
def test_a_name_that_is_not_one_plain_word_fails_its_plugin(bad, shown):
    Bad = type("Bad", (tlbench.Strategy,), {"name": bad})

    def reg_both(register):
        register(Bad)
        register(Beta)

    reg = Registry(entry_points=False, plugins={"odd": _plugin(register_strategies=reg_both)})
    assert reg.names("strategy") == ["beta"]  # the plugin's other names still register
    ((plugin, error),) = reg.failures()
    assert plugin == "odd"
    assert error.startswith("register_strategies: ValueError: strategy name ")
    assert shown in error and error.endswith("is not allowed: " + NAME_RULE)
    assert len(error) < 300
    with pytest.raises(PluginLoadError, match="plugin 'odd': register_strategies: ValueError: strategy name "):
        Registry(entry_points=False, strict=True, plugins={"odd": _plugin(register_strategies=reg_both)})


@pytest.mark.parametrize("good", ["a", "9lives", "resnet50.tv_in1k", "tlbench-coral", "x" * 100, "A_B.c-d"])
def test_plain_names_register(good):
    Good = type("Good", (tlbench.Strategy,), {"name": good})
    reg = Registry(entry_points=False, plugins={"p": _plugin(register_strategies=lambda register: register(Good))})
    assert reg.names("strategy") == [good] and not reg.failures()


def test_every_builtin_name_is_a_plain_word():
    reg = get_registry(reload=True)
    assert not reg.failures(), reg.failures()
    for kind in KINDS:
        for name in reg.names(kind):
            assert NAME_PATTERN.fullmatch(name), (kind, name)
