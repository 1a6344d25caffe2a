"""Writing reports: the leaderboard of one or several results directories in every reporter's format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlbench.errors import UserError
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.reporting.selection import LAST, StoredCandidates, read_checkpoint_tables, select
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir, evaluation_files, load_records, read_evaluations
from tlbench.spec.summary import SuiteSummary, merge_summaries
from tlbench.spec.write_errors import PLACE_ERRORS, reported_write_errors


def write_reports(
    out_dir: Path,
    records: list[CellRecord],
    suite: SuiteSummary | Mapping[str, Any] | None,
    formats: list[str] | None = None,
    registry: Any = None,
    *,
    evaluations: dict[str, Path] | None = None,
    selection: str | None = None,
    stored_checkpoints: StoredCandidates | None = None,
) -> list[Path]:
    """Build the leaderboard and let every reporter (or those in ``formats``) write into ``out_dir``.

    The main table's (parameters, checkpoint) come from ``selection`` (default: the suite's, else
    ``last``), scored on the stored checkpoint ``evaluations`` (cell id -> file), else on a cell's rows of
    the folder's earlier ``checkpoints.csv`` (``stored_checkpoints``). Reporters run in a
    fixed order: by their ``order`` attribute, then by name, so a reporter whose files another uses
    (plots, for the HTML page) runs first.
    """
    if registry is None:
        from tlbench.plugins.registry import get_registry

        registry = get_registry()
    names = list(dict.fromkeys(formats)) if formats else registry.resolvable("reporter")
    reporters = [registry.get("reporter", n) for n in names]  # an unknown name fails before any work
    reporters = sorted(zip(names, reporters), key=lambda nr: (getattr(nr[1], "order", 0), nr[0]))
    files = evaluations or {}
    suite = suite if isinstance(suite, SuiteSummary) else SuiteSummary.from_dict(dict(suite or {}))
    rule = selection or suite.selection or LAST
    # every validator by its bare name, and the rule's own when it is qualified (tlbench:entropy)
    qualified = [rule] if ":" in rule else []
    validators = {n: registry.get("validator", n)() for n in registry.resolvable("validator") + qualified}
    chosen = select(
        records,
        rule,
        validators,
        lambda cell_id: read_evaluations(files[cell_id]) if cell_id in files else None,
        stored_checkpoints,
    )
    board = build_leaderboard(records, suite, selection=chosen)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"report folder {out_dir} is a file, not a folder; give another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"report folder {out_dir} cannot be created ({exc.strerror}); give another --out") from None
    for _, cls in reporters:
        reporter = cls() if isinstance(cls, type) else cls
        with reported_write_errors(f"report folder {out_dir}", elsewhere="give another --out", only=PLACE_ERRORS):
            board.written.extend(Path(p) for p in reporter.write(board, out_dir))
    return list(board.written)


def report_dirs(
    dirs: list[Path],
    out: Path | None,
    formats: list[str] | None = None,
    registry: Any = None,
    selection: str | None = None,
) -> list[Path]:
    """Report on one or several results directories, merged (``tlbench report DIR [DIR...]``).

    Only finished cells (their ``record.json``) are read, so a run still going can be reported on.
    The suite is the first ``suite.json`` found; the reference rows are the union of all. ``selection``
    re-selects from the stored checkpoint evaluations (``tlbench report --selection NAME``).
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise UserError("tlbench report: give at least one results directory")
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: no such results directory (expected the --out folder of a tlbench run)")
    if out is None:
        if len(dirs) > 1:
            raise UserError(f"merging {len(dirs)} results directories needs an output folder (--out DIR)")
        out = dirs[0]
    records = load_records(dirs, curves=True)
    if not records:
        raise UserError(
            f"no finished cells in {', '.join(map(str, dirs))} "
            "(no cells/*/record.json yet); run the suite first or wait for a cell to finish"
        )
    suite = merge_summaries([ResultsDir(d).read_suite() for d in dirs])
    return write_reports(
        Path(out),
        records,
        suite,
        formats,
        registry,
        evaluations=evaluation_files(dirs),
        selection=selection,
        stored_checkpoints=read_checkpoint_tables(dirs),
    )
