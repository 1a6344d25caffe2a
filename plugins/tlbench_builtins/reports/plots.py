"""``plots`` reporter: ``accuracy_vs_throughput.png`` (training img/s), ``accuracy_vs_eval_throughput.png``
(evaluation img/s: the deployment trade-off), ``pair_accuracy.png`` and, for runs that
recorded training curves, ``curves_<backbone>_<strategy>.png`` (every metric per pair, mean and
min–max over seeds).

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas
directly: headless, and without ``pyplot`` there is no process-wide backend to switch, so loading
this plugin never changes the backend of a notebook or application that imports tlbench.
Runs before the other reporters (``order = -10``) so the HTML page can link the PNGs. Each PNG is
stored with a 256-colour palette: line plots lose nothing visible and the files shrink to about a
third (the committed reports' PNGs: 5.1 MiB as RGBA, 1.8 as palettes).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PIL import Image

from tlbench import Leaderboard, Reporter, atomic_write_bytes, hookimpl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(**kwargs) -> Figure:
    """A figure; matplotlib is imported here, when a report is drawn, never when the plugin loads:
    its configuration folder is fixed at import, and the runner points it into tlbench's cache only
    once the suite is valid (a refused suite leaves nothing behind, and nothing goes under $HOME)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _label(column: str) -> str:
    return column.replace("->", "→")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher x and higher y), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _png(fig: Figure) -> bytes:
    """The figure as a PNG with a 256-colour palette (median cut: deterministic, so reports rebuild byte for byte)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    palette = Image.open(rgba).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    palette.save(out, format="png", optimize=True)
    return out.getvalue()


def _no_data(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#555", transform=ax.transAxes)


def accuracy_vs_throughput(board: Leaderboard) -> bytes:
    """Avg accuracy against training img/s: what each strategy costs to train."""
    return _accuracy_vs(board, "train_img_per_s", "training")


def accuracy_vs_eval_throughput(board: Leaderboard) -> bytes:
    """Avg accuracy against evaluation img/s: the deployment trade-off (a kd student against its
    teacher, a small backbone against a large one; Hinton et al. 2015)."""
    return _accuracy_vs(board, "eval_img_per_s", "evaluation")


def _accuracy_vs(board: Leaderboard, cost: str, kind: str) -> bytes:
    merged = board.accuracy.merge(board.costs, on=["backbone", "strategy"], how="left")
    rows = [r for _, r in merged.iterrows() if _finite(r["Avg mean"]) and _finite(r[cost])]
    fig = _new_figure(figsize=(8.0, 5.5))
    ax = fig.add_subplot()
    if not rows:
        _no_data(ax, f"no row has both an Avg accuracy and an {kind} throughput yet")
        return _png(fig)
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    points = [(float(r[cost]), float(r["Avg mean"])) for r in rows]
    front = pareto_front(points)
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.plot(fx, fy, "-", color="#444", lw=1.2, zorder=1, drawstyle="steps-pre" if len(front) > 1 else "default")
    ax.scatter(
        fx,
        fy,
        s=190,
        facecolors="none",
        edgecolors="#444",
        linewidths=1.3,
        zorder=2,
        label="Pareto front (no row is both faster and more accurate)",
    )
    for (x, y), r in zip(points, rows):
        color = COLORS[strategies.index(r["strategy"]) % len(COLORS)]
        marker = MARKERS[backbones.index(r["backbone"]) % len(MARKERS)]
        ax.scatter([x], [y], s=60, color=color, marker=marker, zorder=3)
        ax.annotate(
            f"{r['backbone']} / {r['strategy']}",
            (x, y),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=8,
            color="#333",
        )
    handles, _ = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles += [Patch(color=COLORS[i % len(COLORS)], label=f"strategy: {name}") for i, name in enumerate(strategies)]
    handles += [
        ax.scatter([], [], color="#888", marker=MARKERS[i % len(MARKERS)], label=f"backbone: {name}")
        for i, name in enumerate(backbones)
    ]
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(f"{kind} throughput (images / s)")
    ax.set_ylabel("Avg target accuracy (%)")
    ax.set_title(f"{board.title}: accuracy vs {kind} throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def pair_accuracy(board: Leaderboard) -> bytes:
    acc = board.accuracy
    backbones = list(dict.fromkeys(acc["backbone"]))
    pairs = board.pairs
    strategies = list(dict.fromkeys(acc["strategy"]))
    width = max(6.0, 1.0 + 0.45 * max(1, len(strategies)) * (len(pairs) + 1))
    fig = _new_figure(figsize=(min(width, 24.0), 3.2 * max(1, len(backbones)) + 0.6))
    if acc.empty or not pairs:
        _no_data(fig.add_subplot(), "no finished cells yet")
        return _png(fig)
    axes = fig.subplots(len(backbones), 1, squeeze=False, sharey=True)[:, 0]
    bar = 0.8 / len(pairs)
    for ax, backbone in zip(axes, backbones):
        sub = acc[acc["backbone"] == backbone].set_index("strategy")
        for j, pair in enumerate(pairs):
            xs, heights, errs, missing = [], [], [], []
            for k, strategy in enumerate(strategies):
                x = k - 0.4 + bar * (j + 0.5)
                mean = sub[f"{pair} mean"].get(strategy) if strategy in sub.index else None
                if _finite(mean):
                    std = sub[f"{pair} std"].get(strategy)
                    xs.append(x)
                    heights.append(float(cast(float, mean)))  # _finite: not None
                    errs.append(float(std) if _finite(std) else 0.0)
                elif strategy in sub.index:
                    missing.append((x, str(sub[f"{pair} status"].get(strategy))))
            ax.bar(
                xs,
                heights,
                bar * 0.95,
                yerr=errs,
                capsize=3,
                color=COLORS[j % len(COLORS)],
                label=_label(pair),
                error_kw={"elinewidth": 1, "ecolor": "#333"},
            )
            for x, status in missing:
                ax.text(
                    x,
                    1,
                    status,
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="#777" if status == "missing" else "#b00",
                )
        for k, strategy in enumerate(strategies):
            if strategy not in sub.index:
                ax.text(k, 1, "not run", ha="center", va="bottom", fontsize=8, color="#777")
        ax.set_xticks(range(len(strategies)), strategies)
        ax.set_xlim(-0.6, len(strategies) - 0.4)
        ax.set_ylabel("target accuracy (%)")
        ax.set_title(str(backbone), fontsize=10, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_ylim(0, 100 if acc[[f"{p} mean" for p in pairs]].max().max() <= 100 else None)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="pair")
    fig.suptitle(f"{board.title}: target accuracy per pair (mean ± std over seeds)", fontsize=11)
    return _png(fig)


FIGURES = {
    "accuracy_vs_throughput.png": accuracy_vs_throughput,
    "accuracy_vs_eval_throughput.png": accuracy_vs_eval_throughput,
    "pair_accuracy.png": pair_accuracy,
}


def curve_figures(board: Leaderboard) -> dict[str, bytes]:
    """``curves_<backbone>_<strategy>.png`` for every row with curves: a panel per metric and pair."""
    frame = board.curves
    frame = frame[~frame["metric"].str.startswith("lr/")] if len(frame) else frame
    out = {}
    for (backbone, strategy), rows in frame.groupby(["backbone", "strategy"], sort=True):
        name = "curves_" + "_".join(re.sub(r"[^A-Za-z0-9._=-]+", "-", str(s)).strip("-") for s in (backbone, strategy))
        out[f"{name}.png"] = strategy_curves(board, str(backbone), str(strategy), rows)
    return out


def strategy_curves(board: Leaderboard, backbone: str, strategy: str, rows) -> bytes:
    """Rows: the strategy's metrics; columns: the pairs; a line: the mean over seeds at each logging
    step, with the band from the lowest to the highest seed."""
    metrics = sorted(rows["metric"].unique(), key=lambda m: (m != "loss", m))
    pairs = [p for p in board.pairs if p in set(rows["pair"])]
    fig = _new_figure(figsize=(3.0 * len(pairs) + 0.6, 1.9 * len(metrics) + 0.6), layout="constrained")
    axes = fig.subplots(len(metrics), len(pairs), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, pair in enumerate(pairs):
            ax = axes[i][j]
            sub = rows[(rows["metric"] == metric) & (rows["pair"] == pair)]
            if len(sub):
                stats = sub.groupby("step")["value"].agg(["mean", "min", "max", "count"])
                ax.plot(stats.index, stats["mean"], color=COLORS[0], lw=1.2)
                if (stats["count"] > 1).any():
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=COLORS[0], alpha=0.2, lw=0)
            else:
                _no_data(ax, "no curve")
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(_label(pair), fontsize=9)
            if j == 0:
                ax.set_ylabel(metric, fontsize=8)
    seeds = rows["seed"].nunique()
    fig.suptitle(f"{strategy} ({backbone}): training curves, mean and min–max over {seeds} seed(s)", fontsize=10)
    return _png(fig)


class PlotsReporter(Reporter):
    name = "plots"
    description = (
        "accuracy_vs_throughput.png and accuracy_vs_eval_throughput.png (with Pareto fronts), "
        "pair_accuracy.png, training curves"
    )
    order = -10  # the HTML page embeds these

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        figures = {name: draw(board) for name, draw in FIGURES.items()}
        figures.update(curve_figures(board))
        paths = []
        for name, png in figures.items():
            path = Path(out_dir) / name
            atomic_write_bytes(path, png)
            paths.append(path)
        return paths


@hookimpl
def register_reporters(register):
    register(PlotsReporter)
