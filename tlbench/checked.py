"""Files that prove they are whole: ``torch.save`` output written atomically with a sha256 sidecar.

Every cache and checkpoint tlbench writes (decoded domains, frozen-backbone features, kd
teachers' weights) goes through here. Reading checks the digest before ``torch.load`` (with
``weights_only=True``: tensors and plain containers only, never code), so a truncated or
tampered file is detected, reported once, and rebuilt by the caller instead of being trusted.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from tlbench.results import atomic_write_bytes


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checked(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically, then its digest to ``<path>.sha256``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    try:
        atomic_write_bytes(path, data)
        atomic_write_bytes(sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    finally:
        data.release()


def load_checked(path: Path) -> Any:
    """What :func:`save_checked` wrote; ``None`` when absent, and when truncated or tampered
    (with a warning), so the caller rebuilds it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar(path).read_text().split()[0]:
            raise ValueError("sha256 does not match its sidecar (truncated or modified)")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever is wrong with the file, it is not trusted
        warnings.warn(f"file {path} is unusable ({type(exc).__name__}: {exc}); rebuilding it", stacklevel=2)
        return None


def checked_file_ok(path: Path) -> bool:
    """Whether a file written by :func:`save_checked` is intact, without loading it."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sidecar(path).read_text().split()[0]
    except (OSError, IndexError):
        return False


def checked_digest(path: Path) -> str:
    """The sha256 a file written by :func:`save_checked` declares (its identity in cache keys)."""
    return sidecar(Path(path)).read_text().split()[0]
