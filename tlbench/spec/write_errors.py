"""Writing results: an OS error as one line that says where and what to do.

A full disk, a read-only or unwritable folder, a name the file system cannot hold: an OS error while
writing a file is the place's, the user's to fix, never tlbench's bug, so it ends the command with one
:class:`UserError` line (exit 2) that names the place, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from tlbench.errors import UserError

#: the disk (or the user's quota on it) is full
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: the errors of the place written to, whoever writes: full, read-only, not the user's, a name too long
PLACE_ERRORS = DISK_FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}

#: what a command that was writing can do once the disk has room again
RUN_AGAIN = "run the same command again"


def write_failure(exc: OSError, where: str, *, retry: str = RUN_AGAIN, elsewhere: str) -> UserError:
    """The one-line error for ``exc`` raised while writing ``where`` (a phrase such as ``--png x.png``):
    ``retry`` says what to do once a full disk has room, ``elsewhere`` what to do about a place that
    cannot be written (read-only, not the user's, a name too long, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in DISK_FULL:
        return UserError(f"{where}: no space left on the device ({reason}); free some space there, then {retry}")
    return UserError(f"{where}: cannot be written ({reason}); {elsewhere}")


@contextlib.contextmanager
def reported_write_errors(
    where: str, *, retry: str = RUN_AGAIN, elsewhere: str, only: frozenset[int] | None = None
) -> Iterator[None]:
    """Turn an OS error of the writes inside into :func:`write_failure`'s line; with ``only``, just
    the errors of those numbers (around a plugin's code, whose other OS errors are its own bugs)."""
    try:
        yield
    except OSError as exc:
        if only is not None and exc.errno not in only:
            raise
        raise write_failure(exc, where, retry=retry, elsewhere=elsewhere) from None


def check_name_lengths(path: Path, flag: str) -> None:
    """Refuse a path with a name (or a whole) longer than its file system takes, in one line.

    Python's ``Path.exists()`` and ``is_dir()`` raise on ENAMETOOLONG instead of answering, so such a
    path given as ``--out`` would otherwise end in a traceback at the first check made on it.
    """
    name_max, path_max = _name_limits(path)
    for name in Path(path).parts:
        size = len(os.fsencode(name))
        if size > name_max:
            shown = name if len(name) <= 40 else f"{name[:30]}..."
            raise UserError(
                f"{flag}: the name {shown!r} is {size} bytes long, longer than the {name_max} this file system "
                "takes; give a shorter one"
            )
    size = len(os.fsencode(str(Path(path).absolute())))
    if size >= path_max:
        raise UserError(
            f"{flag}: the path is {size} bytes long, and this file system takes paths of under {path_max} bytes; "
            "give a shorter one"
        )


def _name_limits(path: Path) -> tuple[int, int]:
    """The longest name and path the file system holding ``path`` (its nearest existing folder) takes."""
    folder = Path("/")
    for parent in reversed(Path(path).absolute().parents):
        try:
            if not parent.is_dir():
                break
        except OSError:  # the name too long itself, a loop of links: stop at the last good folder
            break
        folder = parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096
