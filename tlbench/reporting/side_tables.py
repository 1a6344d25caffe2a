"""The leaderboard's tables beside accuracy: what each row cost, the published reference rows, and the
environment the records came from."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from tlbench.reporting import stats
from tlbench.reporting.ranking import AVG
from tlbench.spec.record import CellRecord
from tlbench.spec.suite import Reference


def _mode(values: list[float]) -> Any:
    if not values:
        return pd.NA
    counts = pd.Series(values).value_counts()
    return int(max(v for v, c in counts.items() if c == counts.max()))


def costs(acc: pd.DataFrame, records: list[CellRecord]) -> pd.DataFrame:
    out = []
    for _, row in acc.iterrows():
        recs = [r for r in records if (r.backbone, r.label) == (row["backbone"], row["strategy"])]
        ok = [r for r in recs if r.status == "ok"]

        def values(attr: str, pool: list[CellRecord]) -> list[float]:
            return [float(getattr(r, attr)) for r in pool if stats.finite_number(getattr(r, attr))]

        train, ev, mem, wall = (
            values("train_img_per_s", ok),
            values("eval_img_per_s", ok),
            values("peak_mem_mb", ok),
            values("wall_s", recs),
        )
        out.append(
            {
                "backbone": row["backbone"],
                "strategy": row["strategy"],
                "cells_ok": len(ok),
                "cells_failed": sum(r.status not in ("ok", "diverged") for r in recs),
                "cells_diverged": sum(r.status == "diverged" for r in recs),
                "train_img_per_s": sum(train) / len(train) if train else math.nan,
                "eval_img_per_s": sum(ev) / len(ev) if ev else math.nan,
                "peak_mem_mb": max(mem) if mem else math.nan,
                "wall_s_total": sum(wall) if wall else math.nan,
                "wall_s_mean": sum(wall) / len(wall) if wall else math.nan,
                "trainable_params": _mode(values("trainable_params", ok or recs)),
                "total_params": _mode(values("total_params", ok or recs)),
            }
        )
    df = pd.DataFrame(
        out,
        columns=[
            "backbone",
            "strategy",
            "cells_ok",
            "cells_failed",
            "cells_diverged",
            "train_img_per_s",
            "eval_img_per_s",
            "peak_mem_mb",
            "wall_s_total",
            "wall_s_mean",
            "trainable_params",
            "total_params",
        ],
    )
    for c in ("train_img_per_s", "eval_img_per_s", "peak_mem_mb", "wall_s_total", "wall_s_mean"):
        df[c] = df[c].astype("float64")
    for c in ("trainable_params", "total_params"):
        df[c] = df[c].astype("Int64")
    return df


def references(refs: list[Reference], pairs: list[str]) -> pd.DataFrame:
    """Published rows; Avg is the source's own number, else the mean when it covers every pair."""
    out = []
    for ref in refs:
        acc = {str(k): float(v) for k, v in ref.acc.items() if stats.finite_number(v)}
        row: dict[str, Any] = {
            "backbone": ref.backbone,
            "strategy": ref.strategy,
            "source": ref.source + (f"; weights: {ref.weights}" if ref.weights else ""),
        }
        for p in pairs:
            row[f"{p} mean"] = acc.get(p, math.nan)
        if stats.finite_number(ref.avg):
            row[f"{AVG} mean"], row["avg_published"] = float(ref.avg), True
        elif pairs and all(p in acc for p in pairs):
            row[f"{AVG} mean"], row["avg_published"] = sum(acc[p] for p in pairs) / len(pairs), False
        else:
            row[f"{AVG} mean"], row["avg_published"] = math.nan, False
        out.append(row)
    cols = ["backbone", "strategy", "source", *[f"{c} mean" for c in [*pairs, AVG]], "avg_published"]
    df = pd.DataFrame(out, columns=cols)
    for c in [*pairs, AVG]:
        df[f"{c} mean"] = df[f"{c} mean"].astype("float64")
    df["avg_published"] = df["avg_published"].astype(bool)
    return df


def common(values: Iterable[str]) -> str:
    seen = list(dict.fromkeys(v for v in values if v))
    return ", ".join(seen)


def environment(records: list[CellRecord], date: str | None) -> dict[str, str]:
    def seen(values: Iterable[Any]) -> str:
        return common(str(v) for v in values if v) or "not recorded"

    return {
        "device": seen(r.device for r in records),
        "torch": seen(r.torch_version for r in records),
        "timm": seen(r.extra.get("timm_version") for r in records if isinstance(r.extra, dict)),
        "tlbench": seen(r.tlbench_version for r in records),
        "report date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
