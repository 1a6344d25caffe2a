"""Where a registered name's code came from: the plugin, its distribution and version, a digest of
its module's source. Recorded with every cell, so a number names the code that produced it and a
finished cell whose code has changed since can be told apart (``tlbench run`` reports it stale).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any


def source_digest(obj: Any) -> str:
    """sha256 (first 16 hex digits) of the source file of the module that defines ``obj``'s class;
    "" when there is none to read (a class made at run time, a compiled module)."""
    cls = obj if isinstance(obj, type) else type(obj)
    try:
        path = inspect.getsourcefile(cls)
        data = Path(path).read_bytes() if path else b""
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(data).hexdigest()[:16] if data else ""


def provenance(registry, kind: str, name: str) -> dict[str, str]:
    """The plugin that registered ``name`` of ``kind``, its distribution and version, its source digest."""
    entry = registry.entry(kind, name)
    info = registry.plugins.get(entry.plugin)
    return {
        "plugin": entry.plugin,
        "distribution": (info.distribution if info else None) or "",
        "version": (info.version if info else None) or "",
        "source_sha256": source_digest(entry.obj),
    }
