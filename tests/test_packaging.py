"""The wheel is the whole of tlbench: built, installed into a fresh virtual environment and run from a
folder outside the repository, ``tlbench run quickstart`` finds its shipped suite, its built-in plugins
load through the wheel's entry points, and a cell is recorded.

The slow packaging test (about half a minute): nothing is downloaded; the fresh environment sees
tlbench's dependencies through a ``.pth`` file naming a folder of links to this interpreter's
site-packages, every tlbench distribution left out, so what runs is the wheel alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.packaging,
    pytest.mark.skipif(os.name == "nt", reason="links to site-packages entries"),
    pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the wheel needs setuptools"),
]

SHIPPED = sorted(p.stem for p in (ROOT / "suites").glob("*.yaml"))
#: what is not part of the source a wheel is built from (and would be slow or wrong to copy)
NOT_SOURCE = (".git", ".venv", "runs", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
#: site-packages entries that would let the fresh environment see another tlbench than the wheel's
OTHER_TLBENCH = ("tlbench", "__editable__", "_tlbench")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _dependencies_folder(folder: Path) -> Path:
    """Links to this interpreter's site-packages entries, without any tlbench distribution or .pth file."""
    folder.mkdir()
    for site in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])):
        for entry in Path(site).iterdir():
            if entry.name.startswith(OTHER_TLBENCH) or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment with the wheel installed (its ``bin`` folder), and the environment
    variables to run it with."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))  # the build writes there, not here
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TLBENCH_PLUGINS", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", TLBENCH_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _check(
        _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, env),
        "pip wheel",
    )
    [wheel] = (tmp / "dist").glob("tlbench-*.whl")
    venv = tmp / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env), "python -m venv")
    python = venv / "bin" / "python"
    site = _check(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env),
        "the fresh interpreter",
    ).strip()
    (Path(site) / "tlbench-test-dependencies.pth").write_text(f"{_dependencies_folder(tmp / 'deps')}\n")
    _check(_run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp, env), "pip install")
    (tmp / "elsewhere").mkdir()
    return venv / "bin", env


def test_the_wheel_alone_provides_tlbench_its_plugins_and_its_suites(installed):
    bin_dir, env = installed
    elsewhere = bin_dir.parents[1] / "elsewhere"
    where = _check(
        _run(
            [
                str(bin_dir / "python"),
                "-c",
                "import tlbench, tlbench_builtins, tlbench_suites; "
                "print(tlbench.__file__, tlbench_builtins.__file__, tlbench_suites.__file__)",
            ],
            elsewhere,
            env,
        ),
        "import",
    )
    assert all(Path(f).is_relative_to(bin_dir.parent) for f in where.split()), where
    plugins = _check(_run([str(bin_dir / "tlbench"), "plugins"], elsewhere, env), "tlbench plugins")
    for name in ("strategies.source_only", "datasets.sklearn_digits", "weights.efficientnet_lite", "reports.markdown"):
        assert any(line.split()[:4] == [name, "ok", "tlbench", "0.1.0"] for line in plugins.splitlines()), plugins
    suites = _check(_run([str(bin_dir / "tlbench"), "list", "suites"], elsewhere, env), "tlbench list suites")
    assert [line.split()[0] for line in suites.splitlines()] == SHIPPED


def test_tlbench_run_quickstart_from_outside_the_repository_records_a_cell(installed):
    bin_dir, env = installed
    elsewhere = bin_dir.parents[1] / "elsewhere"
    _check(
        _run(
            [
                str(bin_dir / "tlbench"),
                "run",
                "quickstart",
                "--strategies",
                "source_only",
                "--seeds",
                "0",
                "--pairs",
                "digits->digits+invert",
                "--set",
                "recipe.steps=2",
                "--quiet",
            ],
            elsewhere,
            env,
        ),
        "tlbench run quickstart",
    )
    [path] = (elsewhere / "runs" / "quickstart" / "cells").glob("*/record.json")
    record = json.loads(path.read_text())
    assert (record["suite"], record["strategy"], record["status"], record["steps"]) == (
        "quickstart",
        "source_only",
        "ok",
        2,
    )
    assert record["extra"]["provenance"]["strategy"]["distribution"] == "tlbench"
    weights = record["extra"]["provenance"]["weights"]
    assert weights == {"source": "random"} or len(weights["sha256"]) == 64  # whatever the suite's backbone loads
    assert (elsewhere / "runs" / "quickstart" / "leaderboard.md").is_file()


def test_an_unknown_suite_name_lists_the_shipped_ones(installed):
    bin_dir, env = installed
    done = _run([str(bin_dir / "tlbench"), "run", "quickstrat"], bin_dir.parents[1] / "elsewhere", env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert (
        f"quickstrat: no such suite file, nor a shipped suite of that name; shipped suites: {', '.join(SHIPPED)} "
        in done.stderr
    )
