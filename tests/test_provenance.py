"""Provenance: a record names the plugin, distribution, version and source digest behind its names."""

from __future__ import annotations

import importlib
import sys

import pytest

from tlbench.plugins.provenance import provenance, source_digest
from tlbench.plugins.registry import Registry


def test_the_source_digest_follows_the_module_source(tmp_path, monkeypatch):
    module = tmp_path / "lab_strategy.py"
    module.write_text("from tlbench import Strategy\n\n\nclass Lab(Strategy):\n    name = 'lab'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = source_digest(importlib.import_module("lab_strategy").Lab)
    module.write_text(module.read_text() + "\n# a changed line\n")
    sys.modules.pop("lab_strategy")
    second = source_digest(importlib.import_module("lab_strategy").Lab)
    assert first and second and first != second
    sys.modules.pop("lab_strategy")


def test_a_built_in_names_its_distribution_and_version():
    import tlbench

    prov = provenance(Registry(), "strategy", "dann")
    assert prov["plugin"] == "strategies.dann" and prov["distribution"] == "tlbench"
    assert prov["version"] == tlbench.__version__ and len(prov["source_sha256"]) == 16


def test_a_class_without_source_has_an_empty_digest():
    assert source_digest(type("Made", (), {"__module__": "builtins"})) == ""  # no file to read


LAB = '''"""A lab's strategy, loaded through $TLBENCH_PLUGINS."""
from tlbench import Strategy, hookimpl


class LabSourceOnly(Strategy):
    """Cross-entropy on the source."""

    name = "lab_source_only"

    def training_step(self, batch, ctx):
        return self.supervised_step(batch, ctx)


@hookimpl
def register_strategies(register):
    register(LabSourceOnly)
'''


@pytest.mark.slow
def test_a_finished_cell_whose_strategy_source_changed_is_stale(tmp_path, monkeypatch, capsys):
    from conftest import TINY_SUITE

    from tlbench.cli import main
    from tlbench.plugins.registry import PLUGINS_ENV_VAR, set_registry

    (tmp_path / "stale_lab.py").write_text(LAB)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV_VAR, "stale_lab")
    set_registry(None)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [lab_source_only]"))
    run = ["run", str(suite), "--out", str(tmp_path / "out"), "--quiet", "--cache", str(tmp_path / "cache")]
    try:
        assert main(run) == 0
        assert main(run) == 0  # unchanged code: the finished cell is simply done
        (tmp_path / "stale_lab.py").write_text(LAB.replace("Cross-entropy on the source.", "Cross-entropy."))
        capsys.readouterr()
        assert main(run) == 2
        err = capsys.readouterr().err
        assert (
            "1 finished cell(s) were computed by other code than is installed now (strategy 'lab_source_only' changed;"
            in err
            and "--force" in err
            and "--keep-stale" in err
        )
        assert main([*run, "--keep-stale"]) == 0
        assert "kept although their code changed" in capsys.readouterr().err
        assert main([*run, "--force"]) == 0
        assert main(run) == 0  # rerun with the new code: no longer stale
    finally:
        sys.modules.pop("stale_lab", None)
        set_registry(None)
