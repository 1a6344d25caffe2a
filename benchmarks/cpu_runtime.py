"""What the CPU runtime settings buy (issue 17): the allocator, and OpenMP's wait policy under load.

Each arm trains the same cell in a fresh process (the allocator and the wait policy are fixed when
a process starts) with ``tlbench.training.engine.train_cell``; the figure is the record's
``train_img_per_s`` (warm-up steps excluded), with the process's user and system CPU seconds.
Arms alternate, ``--repeats`` rounds, and the median is reported.

(a) allocator, quiet machine, 2 threads: ``off`` (glibc defaults), ``glibc`` (tunables), ``jemalloc``,
    ``tcmalloc`` (the latter two where installed: ``apt install libjemalloc2 libtcmalloc-minimal4``).
(b) threads with one competing busy process (a Python loop on one core): 1 thread, 2 threads with
    OpenMP's default spin-then-sleep waits (300,000 spins), with shorter spins (``GOMP_SPINCOUNT``
    10,000 and 50,000), with ``OMP_WAIT_POLICY=PASSIVE`` and ``ACTIVE``; then the 2-thread arms on
    the quiet machine (best allocator installed).
(c) ``pair``: two identical training processes at once, each arm's setting in both (1 thread, default
    waits, ``PASSIVE``): the figure is each process's img/s.

    python benchmarks/cpu_runtime.py --data-root ../shared/datasets --steps 4 --warmup 2 --repeats 1 \\
        --json benchmarks/out/cpu_runtime.json
    python benchmarks/cpu_runtime.py --data-root ../shared/datasets --parts threads --steps 8 --warmup 2 --repeats 2
    python benchmarks/cpu_runtime.py --data-root ../shared/datasets --parts pair --steps 4 --warmup 1 --repeats 1

Default cell: Office-31 amazon->webcam, tf_efficientnet_lite0 (random weights: speed does not
depend on them), 224 px, ``dann``, 32 + 32 images a step. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUR_VARS = (
    "LD_PRELOAD",
    "GLIBC_TUNABLES",
    "MALLOC_CONF",
    "OMP_WAIT_POLICY",
    "OMP_NUM_THREADS",
    "GOMP_SPINCOUNT",
    "TLBENCH_CPU_RUNTIME",
    "_TLBENCH_CPU_RUNTIME_APPLIED",
    "_TLBENCH_BUSY_CORES_AT_START",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", type=Path, default=None, help="folder holding office31/ (default ../shared/datasets)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--strategy", default="dann")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="measured steps per arm (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="rounds of every arm, alternating")
    p.add_argument("--parts", default="allocator,threads", help="comma-separated: allocator, threads, pair")
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    """One measurement in this process: train the cell, print its figures as one JSON line."""
    import torch
    from bench_common import default_data_root, make_cell, make_recipe, run_engine_cell

    from tlbench.data.cache import default_cache_dir
    from tlbench.plugins.registry import get_registry
    from tlbench.runtime import describe_runtime

    registry = get_registry()
    recipe = make_recipe(
        steps=args.steps + args.warmup,
        timing_warmup_steps=args.warmup,
        batch_size=args.batch_size,
        image_size=args.image_size,
        log_every=1000,
        source_holdout=0.0,
    )
    cell = make_cell(
        dataset="office31",
        dataset_options={},
        source="amazon",
        target="webcam",
        backbone=args.backbone,
        weights="random",
        strategy=args.strategy,
        recipe=recipe,
        registry=registry,
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    record = run_engine_cell(
        cell,
        device="cpu",
        cache_dir=default_cache_dir(),
        registry=registry,
        data_root=args.data_root or default_data_root(),
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "train_img_per_s": record.train_img_per_s,
                "wall_s": time.perf_counter() - t0,
                "user_s": after.ru_utime - before.ru_utime,
                "sys_s": after.ru_stime - before.ru_stime,
                "max_rss_mb": after.ru_maxrss / 1024,
                "threads": torch.get_num_threads(),
                **describe_runtime(),
            }
        )
    )


def arm_env(allocator: str, *, threads: int, wait: str | None, spincount: int | None = None) -> dict[str, str] | None:
    """The child's environment for one arm (tlbench's own re-exec bypassed); None if not installed."""
    from tlbench.runtime import JEMALLOC_CONF, find_library, settings

    env = {k: v for k, v in os.environ.items() if k not in OUR_VARS}
    env["OMP_NUM_THREADS"] = str(threads)
    env["_TLBENCH_CPU_RUNTIME_APPLIED"] = "1"
    if wait:
        env["OMP_WAIT_POLICY"] = wait
    if spincount is not None:
        env["GOMP_SPINCOUNT"] = str(spincount)
    if allocator in ("jemalloc", "tcmalloc"):
        library = find_library(allocator)
        if library is None:
            return None
        env["LD_PRELOAD"] = library
        if allocator == "jemalloc":
            env["MALLOC_CONF"] = JEMALLOC_CONF
    elif allocator == "glibc":
        env["GLIBC_TUNABLES"] = settings({"TLBENCH_CPU_RUNTIME": "glibc"})["GLIBC_TUNABLES"]
    return env


def measure(args, env: dict[str, str]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--backbone",
        args.backbone,
        "--strategy",
        args.strategy,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.data_root:
        cmd += ["--data-root", str(args.data_root)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"arm failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_process() -> subprocess.Popen:
    """A competing process that keeps one core busy (pure Python, no threads)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_arms(args, arms: dict[str, dict[str, str]], *, competing: bool) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, env in arms.items():
            rival = busy_process() if competing else None
            try:
                runs[name].append(measure(args, env))
            finally:
                if rival is not None:
                    rival.kill()
                    rival.wait()
            last = runs[name][-1]
            print(
                f"{name:32s} {last['train_img_per_s']:7.1f} img/s  user {last['user_s']:6.1f} s  "
                f"sys {last['sys_s']:5.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return summarise(runs)


def run_pairs(args, arms: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Each arm as two identical processes started together; every process's figures."""
    from concurrent.futures import ThreadPoolExecutor

    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, env in arms.items():
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda _: measure(args, env), range(2)))
            runs[name] += both
            figures = ", ".join(f"{r['train_img_per_s']:.1f}" for r in both)
            print(f"{name:32s} {figures} img/s (two at once)", file=sys.stderr, flush=True)
    return summarise(runs)


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    return {
        name: {
            "img_per_s_median": statistics.median(r["train_img_per_s"] for r in rs),
            "sys_s_median": statistics.median(r["sys_s"] for r in rs),
            "user_s_median": statistics.median(r["user_s"] for r in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    from bench_common import write_json

    from tlbench.training.measure import processor_model

    parts = set(args.parts.split(","))
    result: dict = {
        "processor": processor_model(),
        "cpu_count": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if "allocator" in parts:
        arms = {f"{a}, 2 threads": arm_env(a, threads=2, wait=None) for a in ("off", "glibc", "jemalloc", "tcmalloc")}
        arms = {k: v for k, v in arms.items() if v is not None}
        result["allocator"] = run_arms(args, arms, competing=False)
        base = result["allocator"]["off, 2 threads"]["img_per_s_median"]
        for figures in result["allocator"].values():
            figures["speedup_vs_off"] = figures["img_per_s_median"] / base
    if "threads" in parts:
        allocator = "jemalloc" if arm_env("jemalloc", threads=1, wait=None) else "glibc"
        two = {
            "2 threads, default waits": arm_env(allocator, threads=2, wait=None),
            "2 threads, GOMP_SPINCOUNT=10000": arm_env(allocator, threads=2, wait=None, spincount=10000),
            "2 threads, GOMP_SPINCOUNT=50000": arm_env(allocator, threads=2, wait=None, spincount=50000),
            "2 threads, OMP_WAIT_POLICY=PASSIVE": arm_env(allocator, threads=2, wait="PASSIVE"),
            "2 threads, OMP_WAIT_POLICY=ACTIVE": arm_env(allocator, threads=2, wait="ACTIVE"),
        }
        result["threads_allocator"] = allocator
        result["threads_competing"] = run_arms(
            args, {"1 thread": arm_env(allocator, threads=1, wait=None), **two}, competing=True
        )
        result["threads_quiet"] = run_arms(args, two, competing=False)
    if "pair" in parts:
        allocator = "jemalloc" if arm_env("jemalloc", threads=1, wait=None) else "glibc"
        result["pair"] = run_pairs(
            args,
            {
                "1 thread": arm_env(allocator, threads=1, wait=None),
                "2 threads, default waits": arm_env(allocator, threads=2, wait=None),
                "2 threads, OMP_WAIT_POLICY=PASSIVE": arm_env(allocator, threads=2, wait="PASSIVE"),
            },
        )
    summary = {
        part: {name: round(f["img_per_s_median"], 1) for name, f in result[part].items()}
        for part in ("allocator", "threads_competing", "threads_quiet", "pair")
        if part in result
    }
    print(json.dumps(summary, indent=2))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
