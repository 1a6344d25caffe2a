"""Whether a leaderboard's numbers come from one machine and one code: what differs among the records
behind it (the device string, tlbench's or torch's version, a strategy's, dataset's or shift's code),
said in one line under every report's header, so a table never mixes them silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from tlbench.spec.record import CellRecord

NOT_RECORDED = "not recorded"
HEADLINE = "Cells from different code or machines"


def mixed_origins(records: Iterable[CellRecord]) -> str:
    """One line naming each thing that differs among the scored records, with how many cells each
    value has (most first), e.g. ``Cells from different code or machines: 2 devices: cpu (AMD EPYC …)
    (40), cpu (Intel Xeon …) (8).``; "" when they all agree. Failed cells have no number to mix."""
    scored = [r for r in records if r.scored]
    parts = []
    for what, values in _origins(scored):
        counts = Counter(values)
        if len(counts) > 1:
            listed = ", ".join(f"{value} ({n})" for value, n in counts.most_common())
            parts.append(f"{what.replace('{n}', str(len(counts)))}: {listed}")
    return f"{HEADLINE}: {'; '.join(parts)}." if parts else ""


def _origins(records: list[CellRecord]) -> Iterator[tuple[str, list[str]]]:
    """(what, with ``{n}`` for the number of distinct values; one value per record) for every origin
    a number depends on: a strategy's code is compared among the cells of its row label."""
    yield "{n} devices", [r.device or NOT_RECORDED for r in records]
    yield "{n} tlbench versions", [r.tlbench_version or NOT_RECORDED for r in records]
    yield "{n} torch versions", [r.torch_version or NOT_RECORDED for r in records]
    codes: dict[tuple[str, str], list[str]] = {}
    for r in records:
        prov = _provenance(r)
        codes.setdefault(("strategy", r.strategy), []).append(_code(prov.get("strategy")))
        codes.setdefault(("dataset", r.dataset), []).append(_code(prov.get("dataset")))
        for name, shift in sorted((prov.get("shifts") or {}).items()):
            codes.setdefault(("shift", name), []).append(_code(shift))
    for (kind, name), values in codes.items():
        yield f"{kind} {name!r} in {{n}} code versions", values


def _provenance(record: CellRecord) -> dict:
    prov = record.extra.get("provenance") if isinstance(record.extra, dict) else None
    return prov if isinstance(prov, dict) else {}


def _code(prov) -> str:
    """A plugin's code as a reader can compare it: distribution, version and the source digest's start."""
    if not isinstance(prov, dict) or not prov.get("source_sha256"):
        return NOT_RECORDED
    made_by = " ".join(str(prov[k]) for k in ("distribution", "version") if prov.get(k))
    return f"{made_by} source {str(prov['source_sha256'])[:8]}".strip()
