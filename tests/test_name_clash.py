"""Issue 34: a third-party package keeps working when a built-in takes its name.

A fake installed distribution, ``tlbench-mcc`` (a ``.dist-info`` folder with an entry point on
``sys.path``: what pip leaves, without pip), registers ``mcc`` and ``cdan`` (names tlbench ships as
built-ins) and ``dann`` (a built-in name that is certainly there, so the precedence tests hold
whether or not the built-in mcc/cdan have landed). Its own checks pass unchanged; the built-in
stays reachable as ``tlbench:<name>``; two third parties on one name leave the bare name ambiguous.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.data.domains import DomainSpec
from tlbench.errors import UnknownNameError
from tlbench.plugins.registry import PLUGINS_ENV_VAR, AmbiguousNameError, get_registry, set_registry
from tlbench.testing import run_cli

PACKAGE = "tlbench_mcc_fake"
OTHER = "tlbench_other_mcc_fake"  # a second third party, loaded through $TLBENCH_PLUGINS

STRATEGIES = '''\
"""A third-party package that registered mcc, cdan and dann before tlbench shipped them."""

from tlbench import Batch, StepContext, StepOutput, Strategy, SupervisedParams, hookimpl


class _Plain(Strategy):
    """Source cross-entropy: enough to tell this package's code from the built-in's."""

    Params = SupervisedParams
    protocols = ("uda",)
    target_views = ()

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx, 0.0)


class ThirdPartyMCC(_Plain):
    name = "mcc"


class ThirdPartyCDAN(_Plain):
    name = "cdan"


class ThirdPartyDANN(_Plain):
    name = "dann"


@hookimpl
def register_strategies(register):
    register(ThirdPartyMCC)
    register(ThirdPartyCDAN)
    register(ThirdPartyDANN)
'''

OTHER_SOURCE = """\
from tlbench import Strategy, hookimpl


class OtherMCC(Strategy):
    name = "mcc"


@hookimpl
def register_strategies(register):
    register(OtherMCC)
"""


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """``tlbench-mcc`` 0.1.0 installed beside the built-ins (the environment's plugins only)."""
    site = tmp_path / "site"
    (site / PACKAGE).mkdir(parents=True)
    (site / PACKAGE / "__init__.py").write_text("")
    (site / PACKAGE / "strategies.py").write_text(STRATEGIES)
    dist = site / "tlbench_mcc-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tlbench-mcc\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[tlbench]\ntlbench_mcc.strategies = {PACKAGE}.strategies\n")
    (site / f"{OTHER}.py").write_text(OTHER_SOURCE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(PLUGINS_ENV_VAR, raising=False)
    set_registry(None)
    yield site
    set_registry(None)
    for name in (PACKAGE, f"{PACKAGE}.strategies", OTHER):
        sys.modules.pop(name, None)


@pytest.fixture
def two_third_parties(third_party, monkeypatch):
    monkeypatch.setenv(PLUGINS_ENV_VAR, OTHER)
    set_registry(None)
    return third_party


def _suite(tmp_path, strategies: str, extra: str = "") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", f"strategies: {strategies}") + extra)
    return str(path)


def _run(suite: str, out, *extra: str) -> int:
    return run_cli(["run", suite, "--out", out, "--quiet", "--set", "recipe.steps=2", "--set", "reports=[csv]", *extra])


def _records(out) -> dict[str, dict]:
    return {r["strategy"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


# -- the package's own checks, unchanged after tlbench ships mcc and cdan --------------------------------
def test_the_packages_own_checks_pass_next_to_the_builtins(third_party, tmp_path, capsys):
    from tlbench_mcc_fake.strategies import ThirdPartyCDAN, ThirdPartyMCC

    registry = get_registry()
    assert registry.get("strategy", "mcc") is ThirdPartyMCC
    assert registry.get("strategy", "cdan") is ThirdPartyCDAN
    assert registry.failures() == []  # a clash is no plugin's failure

    out = tmp_path / "out"
    assert _run(_suite(tmp_path, "[mcc, cdan]"), str(out)) == 0, capsys.readouterr()
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["strategy"]) == ["cdan", "mcc"] and (df["status"] == "ok").all()
    for record in _records(out).values():  # the package's code ran, not the built-in's
        prov = record["extra"]["provenance"]["strategy"]
        assert prov["distribution"] == "tlbench-mcc" and prov["plugin"] == "tlbench_mcc.strategies"


def test_the_builtin_stays_reachable_by_its_qualified_name(third_party):
    from tlbench_mcc_fake.strategies import ThirdPartyDANN, ThirdPartyMCC

    from tlbench_builtins.strategies.dann import Dann as BuiltinDANN

    registry = get_registry()
    assert registry.get("strategy", "dann") is ThirdPartyDANN  # the bare name keeps its third-party meaning
    assert registry.get("strategy", "tlbench:dann") is BuiltinDANN
    assert registry.get("strategy", "tlbench-mcc:dann") is ThirdPartyDANN
    assert registry.get("strategy", "TLBench_MCC:dann") is ThirdPartyDANN  # distribution names compare as pip does
    assert registry.get("strategy", "tlbench_mcc.strategies:mcc") is ThirdPartyMCC  # its plugin's name too
    assert registry.get("strategy", "tlbench:source_only").name == "source_only"  # unclashed names too
    assert "tlbench:dann" in registry.names("strategy", "tlbench:*")
    assert registry.names("strategy", "*:dann") == ["tlbench-mcc:dann", "tlbench:dann"]
    assert registry.names("strategy").count("dann") == 1
    builtin_mcc = [e for e in registry.registrations("strategy", "mcc") if registry.is_builtin(e.plugin)]
    if builtin_mcc:  # once the built-in mcc has landed
        assert registry.get("strategy", "tlbench:mcc") is builtin_mcc[0].obj is not ThirdPartyMCC
    assert (
        "strategy 'dann': bare name resolves to tlbench-mcc:dann (a third-party plugin takes precedence over "
        "the built-in; the built-in is tlbench:dann)"
    ) in registry.clashes()


def test_a_qualified_name_runs_and_is_recorded_as_written(third_party, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_suite(tmp_path, "[dann, tlbench:dann]"), str(out)) == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "'dann'" in line]
    assert notes == [
        "tlbench: warning: strategy 'dann': bare name resolves to tlbench-mcc:dann (a third-party plugin takes "
        "precedence over the built-in; the built-in is tlbench:dann)"
    ]  # once per command, not per cell
    records = _records(out)
    assert sorted(records) == ["dann", "tlbench:dann"]
    assert records["tlbench:dann"]["label"] == "tlbench:dann"
    assert records["tlbench:dann"]["extra"]["provenance"]["strategy"]["distribution"] == "tlbench"
    assert records["dann"]["extra"]["provenance"]["strategy"]["distribution"] == "tlbench-mcc"
    assert records["dann"]["cell_id"] != records["tlbench:dann"]["cell_id"]
    assert sorted(pd.read_csv(out / "results.csv")["strategy"]) == ["dann", "tlbench:dann"]
    assert _run(_suite(tmp_path, "[dann, tlbench:dann]"), str(out)) == 0  # a rerun finds both done, not stale
    assert "0 run, 2 already done" in capsys.readouterr().out


def test_every_plugin_name_of_a_suite_may_be_qualified(third_party, tmp_path, capsys):
    suite = _suite(tmp_path, "[tlbench:source_only]").replace(
        "dataset: sklearn_digits", "dataset: tlbench:sklearn_digits"
    )
    suite_path = tmp_path / "qualified.yaml"
    suite_path.write_text(
        open(suite)
        .read()
        .replace("dataset: sklearn_digits", "dataset: tlbench:sklearn_digits")
        .replace("digits->digits+invert", "digits->digits+tlbench:invert")
        + "launcher: tlbench:local\nselection: tlbench:source_acc\n"
    )
    out = tmp_path / "out"
    code = run_cli(
        ["run", suite_path, "--out", out, "--quiet", "--set", "recipe.steps=2", "--set", "reports=[tlbench:csv]"]
    )
    assert code == 0, capsys.readouterr()
    (record,) = _records(out).values()
    assert record["strategy"] == "tlbench:source_only" and record["target"] == "digits+tlbench:invert"
    assert record["dataset"] == "tlbench:sklearn_digits" and record["status"] == "ok"
    assert set(record["extra"]["provenance"]["shifts"]) == {"tlbench:invert"}


def test_a_shift_in_a_domain_may_be_qualified():
    assert DomainSpec.parse("digits+tlbench:rotate:3").shifts == (("tlbench:rotate", 3),)
    assert DomainSpec.parse("digits+tlbench-x:invert").shifts == (("tlbench-x:invert", None),)
    assert DomainSpec.parse("digits+rotate:3+invert").shifts == (("rotate", 3), ("invert", None))
    assert str(DomainSpec.parse("digits+tlbench:rotate:3")) == "digits+tlbench:rotate:3"


# -- two third parties on one name ---------------------------------------------------------------------
def test_two_third_parties_leave_the_bare_name_ambiguous_naming_both(two_third_parties, tmp_path, capsys):
    from tlbench_mcc_fake.strategies import ThirdPartyMCC
    from tlbench_other_mcc_fake import OtherMCC

    registry = get_registry()
    assert registry.failures() == []  # both kept: neither is skipped
    with pytest.raises(AmbiguousNameError) as caught:
        registry.get("strategy", "mcc")
    message = str(caught.value)
    assert message.startswith("strategy 'mcc' is registered by ")
    assert "tlbench-mcc:mcc" in message and f"{OTHER}:mcc" in message and "tlbench will not choose" in message
    assert registry.get("strategy", "tlbench-mcc:mcc") is ThirdPartyMCC
    assert registry.get("strategy", f"{OTHER}:mcc") is OtherMCC

    code = run_cli(["run", _suite(tmp_path, "[mcc]"), "--out", tmp_path / "out", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"tlbench: error: {message}"
    assert not (tmp_path / "out" / "cells").exists()

    run_cli(["plugins"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line and not line.startswith(" ")}
    assert rows[OTHER][1] == "ok" and rows["tlbench_mcc.strategies"][1] == "ok"
    (mcc,) = [line.strip() for line in lines if line.startswith("  strategy 'mcc': ")]
    assert mcc.startswith("strategy 'mcc': ambiguous: use ") and f"{OTHER}:mcc" in mcc and "tlbench-mcc:mcc" in mcc

    assert run_cli(["list", "strategies", "mcc"]) == 0
    (listed,) = capsys.readouterr().out.splitlines()
    assert listed.split()[:3] == ["mcc", "(ambiguous)", "use"] and "tlbench-mcc:mcc" in listed


def test_an_unknown_qualifier_says_which_ones_register_the_name(third_party, tmp_path, capsys):
    registry = get_registry()
    with pytest.raises(UnknownNameError) as caught:
        registry.get("strategy", "nosuch:dann")
    assert str(caught.value) == (
        "unknown strategy 'nosuch:dann': no plugin or distribution is named 'nosuch'; 'dann' is registered as "
        "tlbench:dann or tlbench-mcc:dann"
    )
    with pytest.raises(UnknownNameError, match="'tlbench-mcc' registers no strategy 'source_only'; 'source_only' "):
        registry.get("strategy", "tlbench-mcc:source_only")
    with pytest.raises(UnknownNameError, match=r"unknown strategy 'tlbench:dan'; did you mean tlbench:dann"):
        registry.get("strategy", "tlbench:dan")
    code = run_cli(["run", _suite(tmp_path, "[nosuch:dann]"), "--out", tmp_path / "out", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("tlbench: error: unknown strategy 'nosuch:dann'")
