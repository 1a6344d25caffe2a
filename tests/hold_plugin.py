"""A test plugin, loaded in a ``tlbench run`` subprocess through ``$TLBENCH_PLUGINS``, that makes
"one cell recorded, another in flight" a state a test can wait for instead of racing it.

With ``$TLBENCH_TEST_HOLD_DIR`` set, every cell writes ``<dir>/<cell id>.started`` as it starts;
from the second cell of the process on, it then waits while ``<dir>/hold`` exists. A test that
creates ``hold`` before starting the run therefore finds the first cell recorded and the second
started and waiting, for as long as it likes (to kill the run, or to try a second run on the same
output directory), and deleting ``hold`` lets the run go on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tlbench import hookimpl

HOLD_DIR_ENV = "TLBENCH_TEST_HOLD_DIR"
_started = 0


@hookimpl
def before_cell(cell) -> None:
    global _started
    folder = os.environ.get(HOLD_DIR_ENV)
    if not folder:
        return
    _started += 1
    (Path(folder) / f"{cell.id}.started").write_text(cell.describe())
    while _started >= 2 and (Path(folder) / "hold").exists():
        time.sleep(0.05)
