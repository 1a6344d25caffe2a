"""Conformance check of reporter plugins, and sample records to test a reporter on."""

from __future__ import annotations

import tempfile as _tempfile
from collections.abc import Iterable
from pathlib import Path as _Path
from typing import Any

import torch

from tlbench.reporting.reporter import Reporter
from tlbench.testing.common import _call, _check_plugin_name, _require


# -- reporters -----------------------------------------------------------------------------------
def sample_records() -> list[Any]:
    """Cell records of a small finished run: 2 strategies × 2 pairs × 2 seeds, one failed and one
    diverged cell whose error texts hold characters that need escaping in most formats."""
    from tlbench.spec.record import CellRecord

    records: list[CellRecord] = []
    acc: float | None
    for s, strategy in enumerate(("source_only", "my_method")):
        for p, (source, target) in enumerate((("amazon", "webcam"), ("digits", "digits+rotate:3"))):
            for seed in (0, 1):
                i = len(records)
                status, error, acc = "ok", "", 60.0 + 10 * s + 5 * p + seed
                if (s, p, seed) == (1, 1, 1):
                    status, error, acc = (
                        "failed",
                        (
                            "Traceback (most recent call last):\n  ...\nValueError: "
                            "<b>bad</b> & 100% of x_1 | {y} $z$ #w"
                        ),
                        None,
                    )
                if (s, p, seed) == (0, 1, 0):
                    status, error, acc = "diverged", "loss became non-finite (nan) at step 3", None
                records.append(
                    CellRecord(
                        suite="conformance",
                        dataset="sample",
                        backbone="test_efficientnet",
                        strategy=strategy,
                        source=source,
                        target=target,
                        seed=seed,
                        status=status,
                        error=error,
                        target_acc=acc,
                        source_acc=None if acc is None else acc + 20,
                        train_img_per_s=100.0 + i,
                        eval_img_per_s=400.0 + i,
                        peak_mem_mb=50.0,
                        trainable_params=1000,
                        total_params=2000,
                        steps=10,
                        wall_s=1.5,
                        device="cpu",
                        torch_version=torch.__version__,
                        tlbench_version="0",
                        cell_id=f"{i:016x}",
                        started_at=f"2024-01-01T00:00:{i:02d}",
                    )
                )
    return records


def check_reporter(cls: type[Reporter], records: Iterable[Any] | None = None) -> None:
    """Check that reporter class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    Checks: metadata (``name``, a docstring or ``description``, an integer ``order``); for the
    leaderboard of ``records`` (default :func:`sample_records`, with a failed and a diverged cell)
    and for one of only its successful cells, ``write(board, out_dir)`` returns a list of the
    non-empty files it wrote, all inside ``out_dir``, and leaves no other file there; writing again
    into the same folder works and returns the same file names.
    """
    from tlbench.reporting.leaderboard import build_leaderboard

    who = getattr(cls, "__name__", repr(cls))
    _require(isinstance(cls, type) and issubclass(cls, Reporter), f"{cls!r} must be a subclass of tlbench.Reporter")
    _check_plugin_name(who, cls.name)
    _require(isinstance(cls.description, str), f"{who}.description must be a string")
    _require(
        bool(cls.description.strip() or (cls.__doc__ or "").strip()),
        f"{who} needs a description (one line for 'tlbench list reporters') or a docstring",
    )
    _require(isinstance(cls.order, int) and not isinstance(cls.order, bool), f"{who}.order must be an int")
    records = list(records) if records is not None else sample_records()
    suite = {"name": "conformance", "dataset": "sample"}
    boards = {"with failures": records, "all ok": [r for r in records if r.status == "ok"]}
    for label, recs in boards.items():
        with _tempfile.TemporaryDirectory(prefix="tlbench-report-") as tmp:
            out_dir = _Path(tmp) / "report"
            out_dir.mkdir()
            names = []
            for attempt in (1, 2):
                where = f"{who}.write (records {label}, write #{attempt})"
                board = build_leaderboard(recs, suite, date="2024-01-01 00:00 UTC")
                paths = _call(where, lambda: cls().write(board, out_dir))
                _require(
                    isinstance(paths, list) and bool(paths),
                    f"{where} must return the list of files it wrote, got {paths!r}",
                )
                resolved = []
                for p in paths:
                    _require(isinstance(p, (str, _Path)), f"{where} returned {p!r}, not a path")
                    p = _Path(p).resolve()
                    _require(p.is_file() and p.stat().st_size > 0, f"{where}: returned file {p} is missing or empty")
                    _require(out_dir.resolve() in p.parents, f"{where}: {p} is outside the output folder {out_dir}")
                    resolved.append(p)
                present = {f.resolve() for f in out_dir.rglob("*") if f.is_file()}
                extra = sorted(str(f) for f in present - set(resolved))
                _require(not extra, f"{where} left files it did not return: {extra[:3]}")
                names.append(sorted(p.name for p in resolved))
            _require(names[0] == names[1], f"{who}.write wrote {names[0]} then {names[1]} into the same folder")
