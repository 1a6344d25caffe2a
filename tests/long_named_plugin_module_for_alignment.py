"""A plugin whose name is longer than the 28 columns ``tlbench plugins`` gives names by default."""

from __future__ import annotations

from tlbench import hookimpl


@hookimpl
def after_cell(cell, record) -> None:
    record.extra["aligned"] = True
