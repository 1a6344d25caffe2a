"""What this machine charges for memory: the first touch of a fresh page, and the first write to a page
shared with a forked child (copy-on-write), against a write to a page the process already owns (issue 17).

A training step that allocates without a cache pays the first price for every page of its activations
(PyTorch's CPU allocator on glibc malloc: TLlib as it ships); a process that forks loader workers pays the
second for every page it writes next (TLlib's DataLoader, started again at each epoch of each domain).
On bare metal both cost about a microsecond. On a VM whose freed memory goes back to its host (a virtio
balloon with free-page reporting) a fresh page can cost tens of microseconds, and the price moves with
the host: the peer comparison's TLlib figure moves with it (benchmarks/RESULTS.md). Run it next to a
peer comparison and record it with the figures (``benchmarks/peer_tllib.py`` does)::

    python benchmarks/page_costs.py [--mib 2048] [--json out.json]

The mapping should be of the size a training step touches (GBs): on the 2-core VM of 2026-12-03 a
512 MiB mapping cost 2.5-2.9 us a fresh page and 3.6 us a copy, a 2 GiB one 11.5 and 83 us.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import signal
import sys
import time


def _write_each_page(buf: mmap.mmap, size: int, page: int) -> float:
    t0 = time.perf_counter()
    for offset in range(0, size, page):
        buf[offset] = 1
    return time.perf_counter() - t0


def page_costs(mib: int = 2048) -> dict[str, float]:
    """Microseconds a page: first touch of fresh anonymous memory, the first write after ``fork`` (the child
    still holding the pages), and a write to an owned page (the loop's own cost, subtracted from the others)."""
    size, page = mib << 20, mmap.PAGESIZE
    pages = size // page
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        fresh = _write_each_page(buf, size, page)
        owned = _write_each_page(buf, size, page)
        child = os.fork()
        if child == 0:  # holds the pages shared until the parent has written them all
            time.sleep(3600)
            os._exit(0)
        try:
            shared = _write_each_page(buf, size, page)
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
    finally:
        buf.close()
    per_page = lambda seconds: 1e6 * seconds / pages
    return {
        "mib": mib,
        "page_bytes": page,
        "fresh_us_per_page": per_page(fresh - owned),
        "copy_on_write_us_per_page": per_page(shared - owned),
        "owned_us_per_page": per_page(owned),
    }


def describe(costs: dict[str, float]) -> str:
    return (
        f"a fresh page {costs['fresh_us_per_page']:.1f} us, a copy-on-write page "
        f"{costs['copy_on_write_us_per_page']:.1f} us, an owned page {costs['owned_us_per_page']:.2f} us "
        f"({costs['mib']} MiB of {costs['page_bytes']} B pages)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=2048, help="size of the mapping (default 2048 MiB)")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    costs = page_costs(args.mib)
    print(describe(costs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(costs, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
