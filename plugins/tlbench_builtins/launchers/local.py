"""The ``local`` launcher: every cell in this process, one after another (the default)."""

from __future__ import annotations

from tlbench import Launcher, hookimpl


class LocalLauncher(Launcher):
    """Runs cells in-process, in order; Ctrl-C stops between writes, never mid-record."""

    name = "local"

    def launch(self, tasks, execute, on_record) -> None:
        for task in tasks:
            on_record(execute(task))


@hookimpl
def register_launchers(register) -> None:
    register(LocalLauncher)
