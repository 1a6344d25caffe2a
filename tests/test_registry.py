"""The plugin registry: names, wildcards, provenance, broken plugins, duplicates."""

from __future__ import annotations

import types

import pytest

import tlbench
from tlbench.errors import UnknownNameError, UserError
from tlbench.plugins.registry import PluginLoadError, Registry, get_registry


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


def test_duplicate_name_names_both_plugins_and_keeps_the_others():
    reg = Registry(
        entry_points=False,
        plugins={
            "first": _plugin(register_strategies=lambda register: register(Alpha)),
            "second": _plugin(register_strategies=lambda register: (register(Alpha2), register(Beta))),
        },
    )
    with pytest.raises(
        UserError,
        match=r"strategy 'alpha' is registered by 2 plugins: 'first', 'second'; "
        "tlbench will not choose",
    ):
        reg.get("strategy", "alpha")  # never a silent choice of one of them
    assert reg.get("strategy", "beta") is Beta and reg.entry("strategy", "alpha").plugin == "first"
    ((plugin, error),) = reg.failures()
    assert plugin == "second" and "'first'" in error and "'second'" in error and "alpha" in error


def test_duplicate_is_fatal_in_strict_mode():
    with pytest.raises(PluginLoadError, match="registered by both plugin 'first' and plugin 'second'"):
        Registry(
            entry_points=False,
            strict=True,
            plugins={
                "first": _plugin(register_strategies=lambda register: register(Alpha)),
                "second": _plugin(register_strategies=lambda register: register(Alpha2)),
            },
        )


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
    monkeypatch.setattr(md, "entry_points", lambda group: [broken, good])
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
