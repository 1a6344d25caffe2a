"""A suite is a file or a shipped suite's bare name: ``tlbench run quickstart`` from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from tlbench.cli import main
from tlbench.errors import UserError
from tlbench.spec.shipped import resolve_suite, shipped_suites
from tlbench.spec.suite_yaml import read_yaml

SHIPPED = sorted(p.stem for p in (ROOT / "suites").glob("*.yaml"))


def test_every_yaml_in_suites_is_shipped():
    assert list(shipped_suites()) == SHIPPED


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml"])
def test_a_bare_name_is_the_shipped_suite(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here
    assert resolve_suite(Path(name)).read_bytes() == (ROOT / "suites" / "quickstart.yaml").read_bytes()


def test_a_file_of_that_name_wins_over_the_shipped_suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quickstart").write_text("name: mine\n")
    assert resolve_suite(Path("quickstart")) == Path("quickstart")


def test_a_path_with_a_folder_is_never_a_shipped_name(tmp_path):
    assert resolve_suite(tmp_path / "quickstart") == tmp_path / "quickstart"  # load_suite says it is missing


def test_an_unknown_name_is_one_line_listing_the_shipped_suites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UserError,
        match=f"quickstrat: no such suite file, nor a shipped suite of that name; "
        f"shipped suites: {', '.join(SHIPPED)} ",
    ):
        resolve_suite(Path("quickstrat"))
    assert main(["run", "quickstrat"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "quickstart" in err


def test_list_suites_names_each_with_its_description(capsys):
    assert main(["list", "suites"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows] == SHIPPED
    description = read_yaml(ROOT / "suites" / "quickstart.yaml")["description"]
    assert any(r.startswith("quickstart ") and r.endswith(" " + description) for r in rows)
    assert main(["list", "suites", "digits*"]) == 0
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines()] == [
        n for n in SHIPPED if n.startswith("digits")
    ]
