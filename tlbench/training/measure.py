"""Honest measurements: device selection, synchronised timing, peak memory, environment."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when there is a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    from tlbench.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch; use --device auto or cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the processor's model with the thread count: figures differ between them."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({processor_model()}, {torch.get_num_threads()} threads)"


def processor_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return f"{value.strip()}, {platform.machine()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PeakMemory:
    """Peak memory of one cell: ``max_memory_allocated`` on GPU, peak resident set size on CPU.

    On Linux the process's peak RSS (VmHWM) is reset at the start of the cell by writing 5 to
    /proc/self/clear_refs, so each cell reports its own peak rather than the process's.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except Exception:  # noqa: BLE001 - no resource module here: memory is unknown, not an error
            return None


class Stopwatch:
    """Wall time between synchronised points (the device's queued work included), less the time
    spent inside :meth:`paused` blocks (work that is not what is being timed)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = 0.0
        self.excluded = 0.0
        self.running = False

    def start(self) -> None:
        synchronize(self.device)
        self.t0, self.excluded, self.running = time.perf_counter(), 0.0, True

    def stop(self) -> float:
        synchronize(self.device)
        self.running = False
        return time.perf_counter() - self.t0 - self.excluded

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the block's time out of the measurement (nothing to do before ``start``)."""
        if not self.running:
            yield
            return
        synchronize(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.excluded += time.perf_counter() - t


def peak_rss_supported() -> bool:
    return os.path.exists("/proc/self/status")
