"""``csv`` reporter: the leaderboard's tables as numbers, for pandas, spreadsheets and plots.

* ``leaderboard.csv`` — one row per backbone × strategy in Avg order (wide): ``rank`` (the position by
  Avg, equal Avgs sharing it; formerly 1 + the number of rows significantly better,
  which could list a row above others with higher Avgs), ``backbone``, ``strategy``, then per pair and
  ``Avg`` the columns ``<pair> mean``, ``<pair> std``, ``<pair> ci95``, ``<pair> n``, ``<pair> best``,
  ``<pair> status``, ``<pair> notes`` (footnote numbers, space separated), ``missing`` (pairs without
  a value, ``;`` separated), then ``group`` (significance letters: rows sharing one are not told apart;
  empty where untested) and ``reversal`` (the row's significance contradicts Avg order; the report's
  notes name the pair). The new columns come last, so readers by position keep working;
* ``leaderboard_oracle.csv`` — the oracle track (best checkpoint by target accuracy, as published
  tables select; it USES TARGET LABELS): the same rows and per-column fields as ``leaderboard.csv``
  (no ``rank``, ``group``, ``reversal``) and ``regret`` (oracle Avg minus the main table's Avg,
  points); headers only when the report has no oracle track. A file of its own, not rows of
  ``leaderboard.csv``, so every row there stays an honest result and one row per backbone × strategy;
* ``costs.csv`` — throughput, memory, wall time and parameters per row;
* ``references.csv`` — published numbers (never mixed into the leaderboard);
* ``failures.csv`` — every failed or diverged cell with its error text and footnote number;
* ``validators.csv`` — each validator's mean regret and rank correlation (``uses_target_labels``: the oracle);
* ``selection.csv`` — per strategy, pair and seed the chosen parameters and checkpoint;
* ``checkpoints.csv`` — every candidate checkpoint with its target accuracy and each validator's score
  (what ``validators.csv`` is computed from).

Every file is written even when it has no rows, so a later report never leaves a stale one. Every text
cell and header is passed through ``csv_safe``: a label or domain name such as ``=cmd|' /C calc'!A0`` is
written as ``'=cmd|' /C calc'!A0``, never as a formula a spreadsheet would run; numbers stay numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlbench import Leaderboard, Reporter, atomic_write_text, csv_safe, hookimpl


def leaderboard_frame(board: Leaderboard, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """``table`` (default: the accuracy table) with its tuples written as text."""
    df = (board.accuracy if table is None else table).copy()
    for c in board.columns:
        if board.col(c, "notes") in df:
            df[board.col(c, "notes")] = [" ".join(map(str, notes)) for notes in df[board.col(c, "notes")]]
    if "missing" in df:
        df["missing"] = [";".join(m) for m in df["missing"]]
    return df


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell and column name made formula-safe (``csv_safe``); numeric and boolean
    columns untouched, so they are written exactly as before."""
    df = df.rename(columns=csv_safe)
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        df = df.copy()
        for c in text:
            df[c] = df[c].map(csv_safe)
    return df


class CsvReporter(Reporter):
    name = "csv"
    description = "leaderboard.csv, costs.csv, references.csv, failures.csv: numbers for pandas"

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        tables = {
            "leaderboard.csv": leaderboard_frame(board),
            "leaderboard_oracle.csv": leaderboard_frame(board, board.oracle),
            "costs.csv": board.costs,
            "references.csv": board.references,
            "failures.csv": board.failures,
            "validators.csv": board.validators,
            "selection.csv": board.chosen,
            "checkpoints.csv": board.checkpoints,
        }
        paths = []
        for name, df in tables.items():
            path = out_dir / name
            atomic_write_text(path, safe_frame(df).to_csv(index=False, lineterminator="\n"))
            paths.append(path)
        return paths


@hookimpl
def register_reporters(register):
    register(CsvReporter)
