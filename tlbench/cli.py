"""The ``tlbench`` command line.

Exit codes: 0 every cell ok, 1 some cell failed or diverged, 2 bad input (one clear line; the
traceback only with ``--debug``), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (which takes Ctrl-C's path).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import cast

from tlbench.errors import Terminated, UserError
from tlbench.listing import KIND_ALIASES, list_command, one_line, plugins_command, quoted
from tlbench.spec.write_errors import DISK_FULL, RUN_AGAIN, check_name_lengths, reported_write_errors, write_failure

#: where ``tlbench run`` writes without ``--out``: a user's own runs, never the committed ``results/``
DEFAULT_RUNS = Path("runs")


def _csv(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more comma-separated names")
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 0,1,2")
    return seeds


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where help is, not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tlbench", description="Benchmark transfer-learning strategies.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--strict-plugins", action="store_true", help="a plugin that fails to load is fatal")
    # the two global flags are accepted after any subcommand too (tlbench list --strict-plugins ...)
    # cast: typeshed types add_parser's parents as the subparsers' own class (_Parser here), though argparse
    # only copies a parent's arguments, from any ArgumentParser
    common = cast(_Parser, argparse.ArgumentParser(add_help=False))
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "--strict-plugins", action="store_true", default=argparse.SUPPRESS, help="a plugin that fails to load is fatal"
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a suite", parents=[common])
    run.add_argument("suite", type=Path, help="a suite file, or a shipped suite's name (tlbench list suites)")
    run.add_argument("--out", help="output directory (default runs/<suite name>: yours, never the committed results/)")
    run.add_argument("--data-root", help="data root (default: the suite's, then $TLBENCH_DATA_ROOT)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--launcher", help="launcher name (default: the suite's, else local)")
    run.add_argument("--ray-address", help="launcher ray: the cluster to join, e.g. 'auto' or 'HOST:6379'")
    run.add_argument("--backbones", type=_csv)
    run.add_argument("--strategies", type=_csv)
    run.add_argument("--pairs", type=_csv, help="e.g. 'A->W,W->A'")
    run.add_argument("--tasks", type=_csv, help="protocol finetune: e.g. 'amazon,webcam'")
    run.add_argument("--seeds", type=_seeds)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    run.add_argument("--cache", help="decoded-image cache (default $TLBENCH_CACHE or ~/.cache/tlbench)")
    run.add_argument("--force", action="store_true", help="rerun cells that are already done")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the number of cells (and, from the records of "
        "similar finished cells, an estimate of the time) without running anything",
    )
    run.add_argument(
        "--keep-stale",
        action="store_true",
        help="keep finished cells whose strategy, dataset or shift code changed since they ran",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--tracker",
        dest="trackers",
        action="append",
        default=[],
        metavar="NAME",
        help="also send every finished cell to this tracker (tensorboard, mlflow, ...); repeatable",
    )

    rep = sub.add_parser("report", help="write leaderboards from one or more results directories", parents=[common])
    rep.add_argument("dirs", type=Path, nargs="+")
    rep.add_argument("--out", help="where to write (default: the first directory)")
    rep.add_argument("--formats", type=_csv, help="report formats (default: all registered)")
    rep.add_argument(
        "--selection",
        help="re-select the main table's parameters and checkpoints from the stored "
        "checkpoint evaluations: last or a validator (tlbench list validators); default: the suite's",
    )

    cur = sub.add_parser("curves", help="print (or plot) the training curves of finished cells", parents=[common])
    cur.add_argument("dirs", type=Path, nargs="+", help="results directories")
    cur.add_argument("--cells", help="shell-style wildcard on a cell's description or id, e.g. '*dann*seed=0'")
    cur.add_argument("--metric", help="only these metrics (a wildcard, e.g. 'lr/*'); default: all")
    cur.add_argument("--png", type=Path, help="draw to this PNG file instead of printing tables")

    ls = sub.add_parser("list", help="list registered names", parents=[common])
    ls.add_argument("kind", choices=sorted(set(KIND_ALIASES) | {"backbones", "backbone_providers", "suites"}))
    ls.add_argument("pattern", nargs="?", help="shell-style wildcard, e.g. 'resnet*'")
    ls.add_argument("--pretrained", action="store_true", help="backbones: only those with pretrained weights")

    sub.add_parser(
        "plugins", help="every plugin with its version, the names it registers, and failures", parents=[common]
    )

    data = sub.add_parser("data", help="data utilities", parents=[common])
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="decode a suite's domains into the cache ahead of a run", parents=[common])
    prep.add_argument("suite", type=Path, help="a suite file, or a shipped suite's name")
    prep.add_argument("--data-root")
    prep.add_argument("--cache")
    prep.add_argument("--pairs", type=_csv)
    return p


def given_folder(text: str | None, flag: str, variable: str, otherwise: str) -> Path | None:
    """The folder ``flag`` names; None when not given. An empty one (``--out "$OUT"`` with ``OUT`` unset) is
    refused: as a path it would be the current folder, and everything would be written there."""
    if text is None:
        return None
    if not text.strip():
        raise UserError(
            f'{flag} is empty (an unset variable in {flag} "${variable}"?); give a folder, or leave {flag} out '
            f"to {otherwise}"
        )
    return Path(text)


def subcommand(argv: list[str]) -> str | None:
    """The subcommand's name: the first argument that is not an option (the top-level options are flags)."""
    return next((a for a in argv if not a.startswith("-")), None)


def entry() -> None:
    """The ``tlbench`` command: start again once with the CPU runtime settings in the environment
    (:mod:`tlbench.runtime`; ``TLBENCH_CPU_RUNTIME=off`` to skip), then run :func:`main`."""
    from tlbench.runtime import reexec_with_settings

    try:
        reexec_with_settings(list(sys.orig_argv[1:]), trains=subcommand(sys.argv[1:]) == "run")
    except UserError as exc:
        print(f"tlbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        _folder_flags(args)
        _keep_writes_in_cache(args)
        with _one_line_warnings():
            return _dispatch(args)
    except UserError as exc:
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]  # a message quoting a library's may span lines
        print(f"tlbench: error: {one_line(first)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug or exc.errno not in DISK_FULL:
            raise
        print(f"tlbench: error: {_disk_full(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print(
            "tlbench: stopped by SIGTERM; finished cells are recorded, run the same command to resume", file=sys.stderr
        )
        return 143
    except KeyboardInterrupt:
        print("tlbench: interrupted; finished cells are recorded, run the same command to resume", file=sys.stderr)
        return 130


def _disk_full(exc: OSError) -> str:
    """A full disk met by a write that did not name its place itself (:mod:`tlbench.spec.write_errors`
    names those): the file, when the error knows it."""
    if exc.filename:
        return str(write_failure(exc, f"writing {exc.filename}", elsewhere=""))
    return f"no space left on the device ({exc.strerror}); free some space, then {RUN_AGAIN}"


def _folder_flags(args) -> None:
    """``--out`` and ``--cache`` as paths, an empty one refused first (:func:`given_folder`), then every
    path given on the command line held to its file system's name lengths (:func:`_path_lengths`)."""
    if getattr(args, "out", None) is not None:
        where = "the first directory" if args.command == "report" else "runs/<suite name>"
        args.out = given_folder(args.out, "--out", "OUT", f"write to {where}")
    if getattr(args, "cache", None) is not None:
        args.cache = given_folder(args.cache, "--cache", "CACHE", "use $TLBENCH_CACHE or ~/.cache/tlbench")
    _path_lengths(args)


#: the command line's paths (attribute, how an error calls it); ``dirs`` is a list of them
PATH_ARGUMENTS = (
    ("suite", "suite file"),
    ("dirs", "results directory"),
    ("out", "--out"),
    ("cache", "--cache"),
    ("data_root", "--data-root"),
    ("png", "--png"),
)


def _path_lengths(args) -> None:
    """A path with a name longer than its file system takes is one line now: Python's checks of it
    (``exists()``, ``is_dir()``) would raise instead of answering, as a traceback."""
    for attribute, flag in PATH_ARGUMENTS:
        given = getattr(args, attribute, None)
        for path in given if isinstance(given, list) else [given]:
            if path is not None:
                check_name_lengths(Path(path), flag)


def _keep_writes_in_cache(args) -> None:
    """Point the libraries' caches into tlbench's (:func:`tlbench.data.cache.point_tool_caches_into`),
    the cache folder created now. Not for ``run``: the runner does it once the suite is valid, so a
    refused suite leaves no cache folder behind."""
    from tlbench.data.cache import default_cache_dir, point_tool_caches_into, usable_cache_dir

    if args.command == "run":
        return
    given = getattr(args, "cache", None)
    point_tool_caches_into(
        usable_cache_dir(
            Path(given).expanduser() if given else default_cache_dir(), "--cache" if given else "the cache folder"
        )
    )


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings (a skipped image, a rebuilt cache file, a broken plugin) as one line each on stderr."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"tlbench: warning: {one_line(str(message))}", file=sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _dispatch(args) -> int:
    from tlbench.plugins.registry import get_registry

    registry = get_registry(strict=args.strict_plugins)
    failures = registry.failures()
    if args.command != "plugins":  # ``tlbench plugins`` shows them itself
        for plugin, error in failures:
            print(f"tlbench: warning: plugin {quoted(plugin)} skipped: {one_line(error)}", file=sys.stderr)
        for clash in registry.clashes():  # a name two plugins registered: which one a bare name means
            print(f"tlbench: warning: {one_line(clash)}", file=sys.stderr)
    if args.command == "run":
        return _run(args, registry)
    if args.command == "report":
        from tlbench.reporting.write import report_dirs

        files = report_dirs(args.dirs, args.out, args.formats, selection=args.selection)
        for f in files:
            print(f)
        return 0
    if args.command == "curves":
        return _curves(args)
    if args.command == "list":
        return list_command(args.kind, args.pattern, registry, pretrained=args.pretrained)
    if args.command == "plugins":
        return plugins_command(registry)
    if args.command == "data":
        return _prepare(args, registry)
    raise AssertionError(args.command)


def _run(args, registry) -> int:
    from tlbench.matrix.runner import RunOptions, run_suite, stop_on_sigterm
    from tlbench.spec.loading import load_suite
    from tlbench.spec.shipped import resolve_suite

    suite = load_suite(
        resolve_suite(args.suite),
        overrides=args.overrides,
        backbones=args.backbones,
        strategies=args.strategies,
        pairs=args.pairs,
        tasks=args.tasks,
        seeds=args.seeds,
        data_root=args.data_root,
    )
    out = args.out or DEFAULT_RUNS / suite.name
    if args.dry_run:
        from tlbench.matrix.estimate import estimate
        from tlbench.spec.plan import plan
        from tlbench.spec.store import ResultsDir

        for line in estimate(plan(suite, registry).cells, ResultsDir(out), force=args.force).lines():
            print(line)
        return 0
    launcher_options = {"address": args.ray_address} if args.ray_address else {}
    options = RunOptions(
        out_dir=out,
        device=args.device,
        launcher=args.launcher,
        force=args.force,
        quiet=args.quiet,
        debug=args.debug,
        strict_plugins=args.strict_plugins,
        cache_dir=args.cache,
        launcher_options=launcher_options,
        trackers=args.trackers,
        keep_stale=args.keep_stale,
        before_training=lambda: _hint_missing_allocator(args.device),
    )
    with stop_on_sigterm():
        summary = run_suite(suite, options, registry)
    ran = len(summary.records)
    print(f"{summary.total} cells: {ran} run, {summary.skipped} already done, {len(summary.failures)} failed")
    for r in summary.failures:
        first = r.error.splitlines()[0] if r.error else ""
        print(f"  {r.status}: {r.backbone} {r.label} {r.column} seed={r.seed}: {first}")
    board = next((f for f in summary.report_files if f.name == "leaderboard.md"), None)
    print(f"results: {out / 'results.csv'}")
    if board:
        print(f"leaderboard: {board}")
    return summary.exit_code


def _hint_missing_allocator(device: str) -> None:
    """The ``tlbench`` command on a CPU without jemalloc or tcmalloc: one warning saying what to install,
    once the suite is valid and cells are about to train (bad input gets its one error line only)."""
    from tlbench import runtime

    if not os.environ.get(runtime.APPLIED) or device == "cuda":
        return  # main() called in-process (tests, notebooks): nothing was applied, nothing to hint
    hint = runtime.missing_allocator_hint()
    if hint and (device == "cpu" or not _cuda_available()):
        print(f"tlbench: warning: {hint}", file=sys.stderr)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _curves(args) -> int:
    from tlbench.data.files import atomic_write_bytes
    from tlbench.reporting.curves import curves_png, curves_text, metric_names, select_cells

    records = select_cells(args.dirs, args.cells)
    metrics = metric_names(records, args.metric)
    if args.png:
        if args.png.is_dir():
            raise UserError(f"--png {args.png}: is a folder; give a file name such as curves.png")
        image = curves_png(records, metrics)
        with reported_write_errors(f"--png {args.png}", elsewhere="give --png a file in a folder you can write"):
            atomic_write_bytes(args.png, image)
        print(f"{len(records)} cell(s), {len(metrics)} metric(s): {args.png}")
        return 0
    sys.stdout.write(curves_text(records, metrics))
    return 0


def _prepare(args, registry) -> int:
    """Decode every domain at every stored size the suite's cells read (a backbone's own recipe or a
    swept size included), so the run starts from the cache."""
    from tlbench.data.cache import default_cache_dir, load_domain
    from tlbench.spec.loading import load_suite
    from tlbench.spec.plan import plan
    from tlbench.spec.shipped import resolve_suite

    suite = load_suite(resolve_suite(args.suite), pairs=args.pairs, data_root=args.data_root)
    run_plan = plan(suite, registry)
    cache = args.cache or default_cache_dir()
    wanted = sorted(
        {
            (spec, cell.recipe.stored_size, cell.shift_seed)
            for cell in run_plan.cells
            for spec in (cell.source, cell.target)
        }
    )
    for spec, size, shift_seed in wanted:
        try:
            dom = load_domain(run_plan.dataset, spec, size, cache_dir=cache, shift_seed=shift_seed, registry=registry)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a dataset plugin raises is one line, as under run
            first = (str(exc).splitlines() or [""])[0]
            raise UserError(
                f"dataset {suite.dataset!r}: domain {spec!r} cannot be loaded ({type(exc).__name__}: {first})"
            ) from exc
        print(f"{spec}: {len(dom)} images, {len(dom.classes)} classes, {size}px -> {cache}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
