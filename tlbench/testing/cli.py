"""Run the ``tlbench`` command line inside a test, as a user would type it."""

from __future__ import annotations

from collections.abc import Sequence


def run_cli(args: Sequence[str], *, reload_plugins: bool = True) -> int:
    """``tlbench ARGS...`` in this process; returns the exit code (0 ok, 1 a cell failed, 2 bad input).

    With ``reload_plugins`` (the default) the plugin registry is rebuilt first, so plugins
    installed or named in ``$TLBENCH_PLUGINS`` after an earlier call are found, as in a new shell.
    Output goes to this process's stdout/stderr (pytest's ``capsys`` reads it).
    """
    from tlbench.cli import main
    from tlbench.plugins.registry import set_registry

    if reload_plugins:
        set_registry(None)
    return main([str(a) for a in args])
