"""TLlib's own scripts for the standard baselines on the digits, on tlbench's very images (issue 34).

    python benchmarks/peer_tllib_digits.py /path/to/Transfer-Learning-Library
        [--methods erm,dann,dan,cdan,bsp,jan,mcc,mdd,afn,mcd,adda] [--pairs mnist->usps,usps->mnist]
        [--seeds 0] [--epochs 1] [--data-root ../shared/datasets] [--json out.json] [--keep DIR]
    python benchmarks/peer_tllib_digits.py side-by-side out.json results/digits_tllib

You need a TLlib checkout (``git clone https://github.com/thuml/Transfer-Learning-Library``; measured at
commit c4aa59e); no TLlib code is in this repository. Its ``tllib/`` and DA example are copied into a
temporary folder and fixed there for torch 2.x / numpy 2 exactly as ``benchmarks/peer_tllib.py`` does
(its ``prepare_tllib``), and TLlib's own requirements must be importable (``pip install numba
prettytable webcolors``).

Each run is the method's own ``<method>.sh`` "# Digits" line for the pair (LeNet from scratch at
28 px, batch 128 a domain, 2,500 iterations an epoch, lr 0.01, its own trade-offs), with the seed
and the log folder replaced and ``--epochs`` appended (default 1: the first epoch, the slice
``suites/digits_tllib.yaml`` runs in tlbench). The data are tlbench's, written in TLlib's digits
layout (``<root>/<MNIST|USPS>/image_list/*_train.txt``, ``*_test.txt`` and PNG files, so its
downloads are skipped): the images tlbench's cells train on, after tlbench's decoding and resizing
to 28 px, so both libraries read the same pixels. MNIST's training list is tlbench's source training
split of ``mnist5k.npz`` (4,500 images; the 500 it holds out for source accuracy are left out);
USPS's training and test lists are both all 9,298 images (tlbench's target: every image unlabelled
for training, every image scored). Going the other way round (USPS→MNIST) the same holds with the
roles swapped.

TLlib reports two numbers: ``test_acc1`` after its best epoch on the target labels (its ``val`` set is
the target test set) and, per epoch, `` * Acc@1``; with ``--epochs 1`` there is one epoch, so the
best is the last. Both go into the JSON, with each run's wall time and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_tllib import EXAMPLE, prepare_tllib  # noqa: E402  (benchmarks/ is not a package)

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "digits_tllib.yaml"
TLLIB_DOMAIN = {"mnist": "MNIST", "usps": "USPS"}
METHODS = ("erm", "dann", "dan", "cdan", "bsp", "jan", "mcc", "mdd", "afn", "mcd", "adda")
TEST_ACC = re.compile(r"test_acc1 = ([0-9.]+)")
EPOCH_ACC = re.compile(r" \* Acc@1 ([0-9.]+)")


def digits_line(example: Path, method: str, pair: str) -> list[str]:
    """The method's ``.sh`` "# Digits" command for ``pair`` (``mnist->usps``), as an argument list
    without the ``python <method>.py`` prefix and the data root."""
    src, tgt = (TLLIB_DOMAIN[d] for d in pair.split("->"))
    text = (example / f"{method}.sh").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if f"-d Digits -s {src} -t {tgt} " in line and f"{method}.py" in line:
            args = shlex.split(line.split(f"{method}.py", 1)[1])
            return args[1:]  # args[0] is the data root of the script (data/digits)
    raise SystemExit(f"{example / (method + '.sh')} has no '# Digits' line for {src} -> {tgt}")


def with_run_args(args: list[str], seed: int, log: Path, epochs: int) -> list[str]:
    """``args`` with the seed and the log folder replaced and ``--epochs`` set."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--seed", "--log", "--epochs"):
            skip = True
            continue
        out.append(a)
    return [*out, "--seed", str(seed), "--log", str(log), "--epochs", str(epochs)]


def tlbench_domains(data_root: Path, pair: str):
    """The source training split and the target of ``pair`` exactly as tlbench's cells load them."""
    from tlbench.plugins.registry import get_registry
    from tlbench.spec.cell import CellTask
    from tlbench.spec.loading import load_suite
    from tlbench.spec.plan import plan
    from tlbench.training.setup import load_cell_data

    registry = get_registry()
    suite = load_suite(SUITE, pairs=[pair], strategies=["source_only"], seeds=[0], data_root=str(data_root))
    cell = plan(suite, registry, check_data=False).cells[0]
    data = load_cell_data(cell, CellTask(cell=cell, out_dir="", data_root=str(data_root), cache_dir=None), registry)
    return data.source_train, data.target


def write_domain(root: Path, name: str, train, test) -> None:
    """``root/<name>/`` in TLlib's digits layout: grey PNGs and the two image lists."""
    from PIL import Image

    folder = root / name
    images_dir = f"{name.lower()}_train_image"  # the folder whose presence tells TLlib not to download
    (folder / "image_list").mkdir(parents=True, exist_ok=True)
    (folder / images_dir).mkdir(exist_ok=True)
    for split, domain in (("train", train), ("test", test)):
        lines = []
        images = domain.images.numpy()  # N x 3 x H x W uint8, grey in every channel
        for i, (image, label) in enumerate(zip(images, domain.labels.tolist(), strict=True)):
            path = f"{images_dir}/{split}_{i:05d}.png"
            Image.fromarray(np.ascontiguousarray(image[0])).save(folder / path)
            lines.append(f"{path} {label}")
        (folder / "image_list" / f"{name.lower()}_{split}.txt").write_text("\n".join(lines) + "\n")


def prepare_digits(data_root: Path, work: Path, pair: str) -> Path:
    """A TLlib digits root for ``pair``: the source's training list is tlbench's training split (its
    test list the same: TLlib never reads it for the source), the target's both lists every image."""
    root = work / f"digits_{pair.replace('->', '2')}"
    source, target = tlbench_domains(data_root, pair)
    src, tgt = (TLLIB_DOMAIN[d] for d in pair.split("->"))
    write_domain(root, src, source, source)
    write_domain(root, tgt, target, target)
    return root


def run_one(example: Path, root: Path, method: str, pair: str, seed: int, epochs: int, log: Path) -> dict:
    args = with_run_args(digits_line(example, method, pair), seed, log, epochs)
    cmd = [sys.executable, "tlbench_peer_boot.py", f"{method}.py", str(root), *args]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(example.parents[2])}
    proc = subprocess.run(cmd, cwd=example, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    result = result_from_log(log, method, pair, seed, proc.stdout + proc.stderr)
    command = shlex.join(["python", f"{method}.py", "<root>", *args])
    result.update(wall_s=round(wall, 1), exit_code=proc.returncode, command=command)
    return result


def result_from_log(log: Path, method: str, pair: str, seed: int, output: str = "") -> dict:
    """A run's accuracies from TLlib's own log (``<log>/train-*.txt``, which its logger writes as it
    prints: the process's stdout lost its last lines, and its exit code was non-zero, after a
    finished run on 2026-12-07), else from its output."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(log.glob("train-*.txt"))) or output
    test = TEST_ACC.findall(text)
    if not test:
        tail = "\n".join((output or text).splitlines()[-15:])
        return {"method": method, "pair": pair, "seed": seed, "status": "failed", "error": tail}
    epoch_acc = [float(a) for a in EPOCH_ACC.findall(text)]
    return {
        "method": method,
        "pair": pair,
        "seed": seed,
        "status": "ok",
        "test_acc1": float(test[-1]),
        "epoch_acc1": epoch_acc,
    }


#: TLlib's script for each tlbench strategy of suites/digits_tllib.yaml (the rest share their name)
TLBENCH_NAME = {"erm": "source_only", "dan": "mmd"}


def side_by_side(tllib_json: Path, tlbench_dir: Path) -> str:
    """A markdown table: each method and pair, tlbench's mean ± std over its seeds (last step) beside
    TLlib's (its test_acc1), with the seeds each has."""
    import statistics

    from tlbench.spec.store import ResultsDir

    def summary(values: list[float]) -> str:
        if not values:
            return "—"
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread} (n={len(values)})"

    ours: dict[tuple[str, str], list[float]] = {}
    for r in ResultsDir(tlbench_dir).records():
        if r.status == "ok" and r.target_acc is not None:
            ours.setdefault((r.strategy, f"{r.source}->{r.target}"), []).append(r.target_acc)
    theirs: dict[tuple[str, str], list[float]] = {}
    for line in tllib_json.read_text().splitlines():
        run = json.loads(line)
        if run["status"] == "ok":
            name = TLBENCH_NAME.get(run["method"], run["method"])
            theirs.setdefault((name, run["pair"]), []).append(run["test_acc1"])
    rows = ["| strategy | pair | tlbench | TLlib | tlbench − TLlib |", "|---|---|---|---|---|"]
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, []), theirs.get(key, [])
        gap = f"{statistics.mean(a) - statistics.mean(b):+.1f}" if a and b else "—"
        rows.append(f"| {key[0]} | {key[1]} | {summary(a)} | {summary(b)} | {gap} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["side-by-side"]:
        q = argparse.ArgumentParser(prog="peer_tllib_digits.py side-by-side")
        q.add_argument("tllib_json", type=Path, help="the --json file of TLlib's runs")
        q.add_argument("tlbench_dir", type=Path, help="tlbench's results folder (results/digits_tllib)")
        a = q.parse_args(argv[1:])
        print(side_by_side(a.tllib_json, a.tlbench_dir))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", type=Path, help="a TLlib checkout (git clone of thuml/Transfer-Learning-Library)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"TLlib scripts to run (default: {','.join(METHODS)})")
    p.add_argument("--pairs", default="mnist->usps,usps->mnist")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=1, help="TLlib epochs of 2,500 iterations (default 1)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    p.add_argument("--json", type=Path, help="write every run's result here (appended to, run by run)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; TLlib's digits scripts here: {', '.join(METHODS)}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="tlbench_tllib_digits_"))
    work.mkdir(parents=True, exist_ok=True)
    example = work / EXAMPLE if (work / EXAMPLE).is_dir() else prepare_tllib(args.checkout, work)
    machine = {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results = []
    for pair in args.pairs.split(","):
        root = prepare_digits(args.data_root, work, pair)
        for method in methods:
            for seed in (int(s) for s in args.seeds.split(",")):
                r = run_one(
                    example,
                    root,
                    method,
                    pair,
                    seed,
                    args.epochs,
                    work / "logs" / f"{method}_{pair.replace('->', '2')}_{seed}",
                )
                r.update(machine=machine, epochs=args.epochs, tllib_commit=_commit(args.checkout))
                results.append(r)
                shown = f"{r['test_acc1']:.1f}" if r["status"] == "ok" else "FAILED"
                print(f"{method:6s} {pair:13s} seed {seed}: {shown}  ({r['wall_s']:.0f} s)", flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
