"""Files written whole: atomic writes, and ``torch.save`` output with a sha256 sidecar that proves it whole.

Every file tlbench writes goes through :func:`atomic_write_bytes` (a temporary file in the same
folder, then a rename), so a kill at any moment leaves the old file or the new one, never half.

Checked files: every cache and checkpoint tlbench writes (decoded domains, frozen-backbone features, kd
teachers' weights) goes through here. Reading checks the digest before ``torch.load`` (with
``weights_only=True``: tensors and plain containers only, never code), so a truncated or
tampered file is detected, reported once, and rebuilt by the caller instead of being trusted.

CSV cells: :func:`csv_safe` is the one guard against formula injection for every CSV tlbench writes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from stat import S_ISREG
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: what a spreadsheet reads as the start of a formula in a CSV cell (OWASP, "CSV Injection")
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return gets a single quote in front (as OWASP recommends); anything else, numbers
    included (a negative accuracy, a NaN), is returned unchanged. Apply it to every text cell and header
    that comes from data (labels, domain names, error texts) before writing a CSV."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checked(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically, then its digest to ``<path>.sha256``."""
    import torch  # here, not at the top: atomic writes need no torch

    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    try:
        atomic_write_bytes(path, data)
        atomic_write_bytes(sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    finally:
        data.release()


def save_cached(path: Path, obj: Any) -> None:
    """:func:`save_checked` for a cache file: one that cannot be written (a read-only cache, a folder
    where the file should be) costs time, never the run; it is a warning, and recomputed next time."""
    try:
        save_checked(path, obj)
    except OSError as exc:
        warnings.warn(f"could not write cache file {path} ({exc.strerror or exc}); continuing without it", stacklevel=3)


def load_checked(path: Path) -> Any:
    """What :func:`save_checked` wrote; ``None`` when absent, and when truncated or tampered
    (with a warning), so the caller rebuilds it."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar(path).read_text().split()[0]:
            raise ValueError("sha256 does not match its sidecar (truncated or modified)")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it is not trusted
        warnings.warn(f"file {path} is unusable ({type(exc).__name__}: {exc}); rebuilding it", stacklevel=2)
        return None


def checked_file_ok(path: Path) -> bool:
    """Whether a file written by :func:`save_checked` is intact, without loading it."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sidecar(path).read_text().split()[0]
    except (OSError, IndexError):
        return False


class RefusedFile(ValueError):
    """A file :func:`read_regular` will not read: its message is the reason, a short clause."""


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, read only when it is a regular file of at most ``limit`` bytes.

    A FIFO would block the read forever and ``/dev/zero`` (or a link to it) would fill memory, so
    anything else is :class:`RefusedFile` ("not a regular file", "larger than N MiB"), found with
    ``stat`` before any ``open``; a missing file is :class:`FileNotFoundError` as usual. The file is
    opened without blocking and read at most ``limit + 1`` bytes, so one swapped in after the check
    is refused the same way.
    """
    info = os.stat(path)  # follows links; never blocks, unlike open() on a FIFO
    if not S_ISREG(info.st_mode):
        raise RefusedFile("not a regular file")
    too_large = RefusedFile(f"larger than {limit / 2**20:g} MiB")
    if info.st_size > limit:
        raise too_large
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RefusedFile("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


#: sha256 of files read but not written by tlbench (weights files), by (path, mtime, size)
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, computed once per process while its path, modification time
    and size stay the same: every cell's record names its weights file without rereading it each time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def checked_digest(path: Path) -> str:
    """The sha256 a file written by :func:`save_checked` declares (its identity in cache keys)."""
    return sidecar(Path(path)).read_text().split()[0]
