"""Finished cells whose code has changed: a record keeps the provenance of its strategy, dataset and
shifts (``extra.provenance``); a rerun compares it with what is installed now, so a number is never
silently reused after the code that produced it was edited.
"""

from __future__ import annotations

from tlbench.errors import UserError
from tlbench.plugins.provenance import provenance
from tlbench.spec.cell import Cell
from tlbench.spec.store import ResultsDir


def changed_names(recorded: object, cell: Cell, registry) -> list[str]:
    """The names (``strategy 'dann'``, ``shift 'invert'``...) whose installed source digest or version
    differs from the one recorded; a record without provenance (older tlbench) has none to compare."""
    if not isinstance(recorded, dict):
        return []
    wanted = [("strategy", cell.strategy, recorded.get("strategy")), ("dataset", cell.dataset, recorded.get("dataset"))]
    wanted += [("shift", name, prov) for name, prov in (recorded.get("shifts") or {}).items()]
    changed = []
    for kind, name, then in wanted:
        if not isinstance(then, dict):
            continue
        now = provenance(registry, kind, name)
        if (then.get("source_sha256"), then.get("version")) != (now["source_sha256"], now["version"]):
            changed.append(f"{kind} {name!r}")
    return changed


def stale_cells(cells: list[Cell], out: ResultsDir, registry) -> list[tuple[Cell, list[str]]]:
    """The finished (ok) cells of ``out`` whose code has changed since they ran."""
    stale = []
    for cell in cells:
        record = out.read_record(cell.id) if out.is_done(cell.id) else None
        if record is None or record.status != "ok":
            continue
        changed = changed_names(record.extra.get("provenance"), cell, registry)
        if changed:
            stale.append((cell, changed))
    return stale


def refuse_stale(stale: list[tuple[Cell, list[str]]]) -> None:
    """One line: how many finished cells came from other code, which names changed, what to do."""
    if not stale:
        return
    names = sorted({n for _, changed in stale for n in changed})
    cell, _ = stale[0]
    raise UserError(
        f"{len(stale)} finished cell(s) were computed by other code than is installed now "
        f"({', '.join(names)} changed; e.g. {cell.describe()}, cell {cell.id}); rerun them with "
        "--force, or keep their numbers with --keep-stale"
    )
