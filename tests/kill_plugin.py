"""A test plugin, loaded in workers through ``$TLBENCH_PLUGINS``: a cell that starts while a kill
token is waiting kills its own worker with SIGKILL, the way the out-of-memory killer would.

Tokens are files in the folder named by ``$TLBENCH_TEST_KILL_DIR``; each is taken (unlinked) by
exactly one cell, so a test that puts N tokens there gets exactly N worker deaths.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tlbench import hookimpl

KILL_DIR_ENV = "TLBENCH_TEST_KILL_DIR"


@hookimpl
def before_cell(cell) -> None:
    folder = os.environ.get(KILL_DIR_ENV)
    if not folder or not Path(folder).is_dir():
        return
    for token in sorted(Path(folder).iterdir()):
        try:
            token.unlink()  # only one process wins a token
        except FileNotFoundError:
            continue
        os.kill(os.getpid(), signal.SIGKILL)
