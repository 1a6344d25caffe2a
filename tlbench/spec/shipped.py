"""The suites shipped with tlbench: the repository's ``suites/`` folder, installed with the wheel as
the data package ``tlbench_suites``, so ``tlbench run quickstart`` works wherever tlbench is
installed, not only in a checkout.

A bare name (no folder, no such file here) is a shipped suite's file name without ``.yaml``; read
through :mod:`importlib.resources`, so a zipped install works too.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE = "tlbench_suites"
SUFFIXES = (".yaml", ".yml")
#: shipped suites extracted to a temporary file (a zipped install) live until the process ends
_EXTRACTED = contextlib.ExitStack()
atexit.register(_EXTRACTED.close)


def shipped_suites() -> dict[str, Traversable]:
    """Every shipped suite by name (its file name without ``.yaml``), sorted."""
    folder = _folder()
    if folder is None:
        return {}
    files = [f for f in folder.iterdir() if f.is_file() and f.name.endswith(SUFFIXES)]
    return {f.name.rsplit(".", 1)[0]: f for f in sorted(files, key=lambda f: f.name)}


def _folder() -> Traversable | None:
    """The installed data package; in a source checkout run without installing (``PYTHONPATH=.``),
    the ``suites/`` folder beside ``tlbench/``."""
    try:
        return importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "suites"
        return checkout if checkout.is_dir() else None


def resolve_suite(path: Path) -> Path:
    """The suite file ``tlbench run``/``data prepare`` reads: ``path`` when it exists or names a
    folder; else the shipped suite of that name (``quickstart`` or ``quickstart.yaml``); else a
    one-line error that lists the shipped suites."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.stem if path.suffix in SUFFIXES else path.name
    shipped = shipped_suites()
    if name not in shipped:
        names = ", ".join(shipped) or "none (tlbench_suites is not installed)"
        raise UserError(
            f"{path}: no such suite file, nor a shipped suite of that name; shipped suites: {names} "
            "(give a path to a suite's .yaml file, or one of these names)"
        )
    return _EXTRACTED.enter_context(importlib.resources.as_file(shipped[name]))


def describe_shipped(pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, description) of the shipped suites whose name matches a shell-style wildcard
    (all without one): what ``tlbench list suites`` prints."""
    from tlbench.spec.suite_yaml import read_yaml

    rows = []
    for name, file in shipped_suites().items():
        if pattern is None or fnmatch.fnmatchcase(name, pattern):
            with importlib.resources.as_file(file) as path:
                rows.append((name, str(read_yaml(path).get("description", ""))))
    return rows
