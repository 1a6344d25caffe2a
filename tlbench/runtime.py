"""The CPU process settings tlbench applies before torch loads: a caching allocator and passive OpenMP waits.

Why (issue 17, measured in benchmarks/RESULTS.md):

- **The allocator.** PyTorch's CPU allocator keeps no cache: every activation of a training step
  is a ``posix_memalign`` and a ``free``. glibc serves blocks above its mmap threshold (128 KiB,
  rising with what is freed up to 32 MiB) with a fresh ``mmap`` and returns them with ``munmap``,
  so every step maps hundreds of MB anew and the kernel zeroes each page on its first touch:
  system time, not arithmetic (19 million page faults in 6 steps of a 224 px Lite0 ``dann`` cell,
  85 s of system time against 94 s of user time). A caching allocator keeps freed memory mapped for the next step.
  PyTorch's CPU performance tuning guide recommends jemalloc or tcmalloc through ``LD_PRELOAD``
  (as its own launcher ``torch.backends.xeon.run_cpu`` does); where neither is installed,
  glibc's own tunables (no fresh mmaps, no trimming) keep the memory in the heap for reuse.
- **Threads that wait.** torch's CPU build runs its intra-op threads on GNU OpenMP, whose idle
  threads spin (300,000 times) before they sleep. On an idle machine the spin pays: a waiting thread
  starts the next operator at once instead of being woken, and a 224 px Lite0 ``dann`` step ran
  5-15 % faster than with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once). With as many
  threads as cores and other busy processes, a spinning thread can take the core its partner needs
  (reported as steps many times slower on these 2-core VMs). So the wait policy follows the machine
  at start (:func:`busy_cores`): libgomp's default when the other processes keep less than half a
  core busy, ``PASSIVE`` otherwise. Either way the numbers are the same; only the time differs.

Both must be in the environment when the process starts (the dynamic loader reads
``LD_PRELOAD`` and ``GLIBC_TUNABLES``; libgomp reads ``OMP_WAIT_POLICY`` when torch loads it), so
the ``tlbench`` command re-executes itself once with them set (:func:`reexec_with_settings`), and
every worker a launcher starts (processes, Ray, Slurm) inherits them. Settings the user made
(an ``LD_PRELOAD``, ``GLIBC_TUNABLES``, ``OMP_WAIT_POLICY``) are never overridden. One switch
turns it all off: ``TLBENCH_CPU_RUNTIME=off``. Every record says what its process ran with
(:func:`describe_runtime`, read from the process itself, not from what was intended).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

#: the switch: auto (the default: jemalloc, else tcmalloc, else glibc's defaults and a hint), jemalloc,
#: tcmalloc, glibc (its tunables: faster than its defaults, at up to twice the peak memory), off
SWITCH = "TLBENCH_CPU_RUNTIME"
#: set in the re-executed process, so it does not re-execute again
APPLIED = "_TLBENCH_CPU_RUNTIME_APPLIED"
#: the other processes' busy cores measured at start, for the records (:func:`describe_runtime`)
BUSY_AT_START = "_TLBENCH_BUSY_CORES_AT_START"
#: at or above this many cores kept busy by other processes, OpenMP's threads wait passively
BUSY_CORES = 0.5
#: how long the start samples the machine's load
LOAD_SAMPLE_S = 0.25
CHOICES = ("auto", "jemalloc", "tcmalloc", "glibc", "off")

#: jemalloc keeping every freed page for reuse (no decay). Not the PyTorch guide's settings
#: (``oversize_threshold:1,background_thread:true,...``): measured on a 2-core VM they ran a 224 px
#: Lite0 ``dann`` step slower than glibc's defaults (5.3 against 9.3 img/s, more system time), jemalloc's
#: own defaults slower still (32.6 M page faults against glibc's 19.0 M); these gave 14.3 img/s and
#: 2.0 M (benchmarks/RESULTS.md)
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: glibc without a caching allocator installed: no block from a fresh mmap (``mmap_max=0``: every
#: block from the heap, where freed memory is reused; glibc still maps when the heap cannot grow)
#: and freed heap memory never trimmed back to the kernel. The mmap threshold alone does not do
#: it: glibc caps it at 32 MiB, and a 224 px step's activations are larger. Opt-in only: the heap
#: fragments, and the peak memory of a 224 px Lite0 ``dann`` cell rose from 7.1 to 13.0 GB.
GLIBC_MALLOC = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(2**62)}
LIBRARIES = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc_minimal"}


def choice(environ: Mapping[str, str] = os.environ) -> str:
    """The switch's value; an unknown one is an error that lists the valid ones."""
    value = environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        from tlbench.errors import UserError

        raise UserError(f"{SWITCH}={value!r}: use one of {', '.join(CHOICES)}")
    return value


def find_library(allocator: str) -> str | None:
    """The soname of ``jemalloc``'s or ``tcmalloc``'s shared library on this machine, or None; the
    dynamic loader resolves a bare soname in ``LD_PRELOAD`` on its own search path.

    (Debian/Ubuntu: ``apt install libjemalloc2`` or ``libtcmalloc-minimal4``.)
    """
    return ctypes.util.find_library(LIBRARIES[allocator])


def _user_allocator(environ: Mapping[str, str]) -> bool:
    """The user chose the allocator already: a preloaded library or a malloc tunable of their own."""
    return bool(environ.get("LD_PRELOAD", "").strip()) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the text of ``/proc/stat``: idle and iowait are idle;
    steal (time the hypervisor gave another guest) counts as busy; guest time is inside user time."""
    fields = [int(v) for v in stat.splitlines()[0].split()[1:9]]
    total = sum(fields)
    return total - fields[3] - fields[4], total


def busy_cores(sample_s: float = LOAD_SAMPLE_S, read_stat=lambda: Path("/proc/stat").read_text()) -> float | None:
    """How many cores the machine's other processes keep busy, sampled over ``sample_s`` seconds
    while this process sleeps; None where ``/proc/stat`` cannot be read."""
    try:
        busy0, total0 = cpu_times(read_stat())
        time.sleep(sample_s)
        busy1, total1 = cpu_times(read_stat())
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def _user_wait_policy(environ: Mapping[str, str]) -> bool:
    """The user chose how OpenMP's threads wait."""
    return "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ


def settings(environ: Mapping[str, str] = os.environ, *, machine_busy: bool = False) -> dict[str, str]:
    """The environment variables to add for the switch's choice; empty when off or off Linux.

    ``machine_busy``: other processes keep cores busy (:func:`busy_cores`), so OpenMP's threads
    wait passively instead of spinning. What the user set is kept: an existing ``LD_PRELOAD`` or
    malloc tunable means the allocator is the user's choice, an existing ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` the wait policy.
    """
    wanted = choice(environ)
    if wanted == "off" or not sys.platform.startswith("linux"):
        return {}
    out: dict[str, str] = {}
    if machine_busy and not _user_wait_policy(environ):
        out["OMP_WAIT_POLICY"] = "PASSIVE"
    if _user_allocator(environ):
        return out
    if wanted == "glibc":
        return {**out, "GLIBC_TUNABLES": _with_glibc_tunables(environ.get("GLIBC_TUNABLES", ""))}
    for allocator in ("jemalloc", "tcmalloc") if wanted == "auto" else (wanted,):
        library = find_library(allocator)
        if library:
            out["LD_PRELOAD"] = library
            if allocator == "jemalloc" and "MALLOC_CONF" not in environ:
                out["MALLOC_CONF"] = JEMALLOC_CONF
            return out
        if wanted != "auto":
            from tlbench.errors import UserError

            raise UserError(
                f"{SWITCH}={wanted}: no {allocator} library found; install it (Debian: apt install "
                f"{'libjemalloc2' if allocator == 'jemalloc' else 'libtcmalloc-minimal4'}) or use "
                f"{SWITCH}=auto"
            )
    return out  # auto without a caching allocator: glibc's defaults (see missing_allocator_hint)


def _with_glibc_tunables(existing: str) -> str:
    tunables = ":".join(f"{k}={v}" for k, v in GLIBC_MALLOC.items())
    return f"{existing}:{tunables}" if existing else tunables


def missing_allocator_hint(environ: Mapping[str, str] = os.environ) -> str | None:
    """One line for a user whose CPU runs would be faster with a caching allocator installed."""
    if (
        choice(environ) != "auto"
        or not sys.platform.startswith("linux")
        or _user_allocator(environ)
        or "LD_PRELOAD" in settings(environ)
    ):
        return None
    return (
        "no caching allocator found, so CPU training steps spend much of their time in the kernel (about 2x "
        "slower at 224 px): apt install libjemalloc2 (or libtcmalloc-minimal4), or set "
        f"{SWITCH}=glibc (faster, up to twice the memory); {SWITCH}=off silences this"
    )


def reexec_with_settings(argv: list[str], *, trains: bool = True) -> None:
    """Start this command again with :func:`settings` in its environment, once; returns when
    there is nothing to set, when it already ran, or where the process cannot be re-executed.

    ``trains``: the command trains (``tlbench run``), so the machine's load is sampled to choose
    OpenMP's waits; the other commands do not wait for it.
    """
    if os.environ.get(APPLIED) or "torch" in sys.modules:
        return
    busy = None
    if trains and choice() != "off" and not _user_wait_policy(os.environ):
        busy = busy_cores()
    extra = settings(machine_busy=busy is not None and busy >= BUSY_CORES)
    os.environ[APPLIED] = "1"
    if busy is not None:
        os.environ[BUSY_AT_START] = f"{busy:.2f}"
    if not extra:
        return
    os.environ.update(extra)
    try:
        os.execv(sys.executable, [sys.executable, *argv])
    except OSError:  # no re-exec possible: OMP_WAIT_POLICY still applies, torch has not loaded yet
        pass


def describe_runtime() -> dict[str, str]:
    """What this process runs with, read from the process: the allocator mapped into it (and its
    settings), and OpenMP's wait policy."""
    allocator = "glibc"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            allocator = name
            break
    out = {"allocator": allocator}
    if allocator == "jemalloc" and os.environ.get("MALLOC_CONF"):
        out["allocator_settings"] = os.environ["MALLOC_CONF"]
    if allocator == "glibc":
        tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t.startswith("glibc.malloc.")]
        out["allocator_settings"] = ":".join(tunables) or "defaults"
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default")
    if os.environ.get(BUSY_AT_START):
        out["busy_cores_at_start"] = os.environ[BUSY_AT_START]
    return out
