"""The reporter contract: a leaderboard output format (markdown, CSV, HTML, LaTeX, plots, ...).

Reports are pure functions of a set of records: :func:`tlbench.leaderboard.build_leaderboard`
turns records into a :class:`tlbench.leaderboard.Leaderboard` (tables as pandas DataFrames plus
footnotes, references and environment), and each registered reporter writes it in its format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from tlbench.leaderboard import Leaderboard


class Reporter:
    """Base class of reporter plugins: ``write`` the leaderboard into ``out_dir``, return the files."""

    name: ClassVar[str] = ""
    #: a one-line description for ``tlbench list reporters``
    description: ClassVar[str] = ""
    #: reporters run by ascending ``order`` (then name): one whose files others embed runs first
    order: ClassVar[int] = 0

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        raise NotImplementedError
