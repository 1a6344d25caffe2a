"""The reporter contract: a leaderboard output format (markdown, CSV, HTML, LaTeX, plots, ...).

Reports are pure functions of a set of records: :func:`tlbench.reporting.leaderboard.build_leaderboard`
turns records into a :class:`tlbench.reporting.leaderboard.Leaderboard` (tables as pandas DataFrames plus
footnotes, references and environment), and each registered reporter writes it in its format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from tlbench.plugins.registry import Plugin

if TYPE_CHECKING:
    from tlbench.reporting.leaderboard import Leaderboard


class Reporter(Plugin):
    """Base class of reporter plugins: ``write`` the leaderboard into ``out_dir``, return the files."""

    plugin_kind: ClassVar[str] = "reporter"
    name: ClassVar[str] = ""
    #: a one-line description for ``tlbench list reporters``
    description: ClassVar[str] = ""
    #: reporters run by ascending ``order`` (then name): one whose files others use runs first
    order: ClassVar[int] = 0

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        raise NotImplementedError
