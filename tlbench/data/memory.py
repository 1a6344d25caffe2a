"""The host's memory available now: what a dataset checks a file's declared size against, and what the
preflight checks a training step against, before either allocates it."""

from __future__ import annotations

from pathlib import Path


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available now (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
