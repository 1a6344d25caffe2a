"""The ``local`` launcher: every cell in this process, one after another (the default)."""

from __future__ import annotations

from tlbench import Launcher, hookimpl


class LocalLauncher(Launcher):
    """Runs cells in-process, in order; Ctrl-C stops between writes, never mid-record."""

    name = "local"

    def launch(self, tasks, execute, on_record, on_start=None) -> None:
        for task in tasks:
            if on_start is not None:
                on_start(task)
            on_record(execute(task))


@hookimpl
def register_launchers(register) -> None:
    register(LocalLauncher)
