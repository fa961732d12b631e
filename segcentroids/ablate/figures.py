"""The table's figures, drawn with matplotlib's Agg canvas (`segcentroids.plots`):

- `table.png` / `table.svg`: one panel per metric, a row per table row: our mean with ± std error bars (std over
  seeds), the paper's number beside it (open diamond), the baseline rows in bold, each row's delta to its baseline
  written next to its point.
- `curves.png` / `curves.svg`: the runs' training curves (`metrics/curves.csv`, `RunRecorder`), one line per row,
  the mean over its seeds: the validation metric, the training loss and the learning rate against the step.

Every drawn point has an SVG id (`ours:<row slug>:<metric>`, `paper:<row slug>:<metric>`,
`curve:<panel>:<row slug>`) and the SVG keeps its text as text, so the figures can be checked without looking at
them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

from segcentroids.ablate.spec import slugify
from segcentroids.callbacks.run_recorder import read_curves
from segcentroids.plots import new_figure

FORMATS = ("png", "svg")
CURVE_PANELS = ("val/mIoU", "train/loss", "lr")  # lr: the first parameter group's `lr/<group>`


def _save(fig: Any, stem: Path) -> list[Path]:
    """Writes `<stem>.png` and `<stem>.svg` (text kept as text)."""
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "segcentroids"}):
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else {})
    return paths


# ------------------------------------------------------------------------------------------------ the table
def _row_label(line: dict, baseline: str) -> str:
    """`<row> (<runs>)`, and the row its deltas are against when that is not the table's baseline."""
    own = line.get("baseline", baseline)
    against = f"\n(Δ vs {own})" if own not in (baseline, line["row"]) else ""
    return f"{line['row']} ({line['runs']}){against}"


def _metric_panel(ax: Any, table: list[dict], metric: str, baselines: set[str]) -> None:
    """One metric: ours (mean ± std) per row, the paper's number beside it, the deltas written next to ours."""
    for y, line in enumerate(table):
        mean, std, delta = line[metric], line[f"{metric} std"], line[f"{metric} delta"]
        if mean is not None:
            bars = ax.errorbar(mean, y, xerr=std or 0.0, fmt="o", color="C0", capsize=3, label="ours (mean ± std)")
            bars[0].set_gid(f"ours:{slugify(line['row'])}:{metric}")
            if delta is not None and line["row"] not in baselines:
                ax.annotate(f"{delta:+.2f}", (mean, y), xytext=(0, 7), textcoords="offset points", ha="center",
                            fontsize=7, color="C0")
        paper = line[f"{metric} paper"]
        if paper is not None:
            (point,) = ax.plot(paper, y + 0.25, "D", mfc="none", color="C3", label="paper")
            point.set_gid(f"paper:{slugify(line['row'])}:{metric}")
    ax.set_title(metric)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(len(table) - 0.5, -0.7)


def _dedupe_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")


def table_figure(title: str, table: list[dict], metrics: list[str], baseline: str, out: Path) -> list[Path]:
    """`<out>/table.png` and `.svg`: one panel per metric (see the module's docstring); returns the paths."""
    baselines = {line.get("baseline", baseline) for line in table}
    fig = new_figure(1.5 + 3.2 * len(metrics), 1.2 + 0.45 * len(table))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _metric_panel(ax, table, metric, baselines)
        _dedupe_legend(ax)
    axes[0][0].set_yticks(range(len(table)), [_row_label(line, baseline) for line in table])
    for tick, line in zip(axes[0][0].get_yticklabels(), table):
        if line["row"] in baselines:
            tick.set_fontweight("bold")
    fig.suptitle(f"{title}\n(bold: baseline rows; numbers: Δ to the row's baseline)", fontsize=9)
    return _save(fig, out / "table")


# ----------------------------------------------------------------------------------------------- the curves
def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """Steps and the mean over the seeds that logged each step."""
    steps = sorted({step for curve in curves for step in curve})
    return steps, [statistics.fmean(c[s] for c in curves if s in c) for s in steps]


def _panel_key(panel: str, curves: dict[str, dict[int, float]]) -> str | None:
    """The curve a panel draws from one run's curves (`lr`: its first `lr/<group>`)."""
    if panel == "lr":
        return next((name for name in curves if name.startswith("lr/")), None)
    return panel if panel in curves else None


def row_curves(run_dirs: dict[str, list[Path]], panels: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """`{panel: {row: [per-seed curve]}}` read from the runs' `metrics/curves.csv`; rows without one left out."""
    drawn: dict[str, dict[str, list]] = {panel: {} for panel in panels}
    for row, dirs in run_dirs.items():
        for run_curves in map(read_curves, dirs):
            for panel in panels:
                key = _panel_key(panel, run_curves)
                if key is not None:
                    drawn[panel].setdefault(row, []).append(run_curves[key])
    return drawn


def curves_figure(title: str, run_dirs: dict[str, list[Path]], out: Path,
                  val_metric: str = "val/mIoU") -> list[Path]:
    """`<out>/curves.png` and `.svg`: the validation metric, training loss and learning rate against the step, one
    line per row (mean over its seeds); [] when no run recorded curves."""
    panels = (val_metric, *CURVE_PANELS[1:])
    drawn = row_curves(run_dirs, panels)
    if not any(drawn.values()):
        return []
    fig = new_figure(4.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (row, curves) in enumerate(drawn[panel].items()):
            steps, values = mean_curve(curves)
            (line,) = ax.plot(steps, values, marker="." if len(steps) < 30 else None, color=f"C{i % 10}",
                              label=f"{row}" + (f" (mean of {len(curves)})" if len(curves) > 1 else ""))
            line.set_gid(f"curve:{panel}:{slugify(row)}")
        ax.set_title(panel if panel != "lr" else "learning rate (first parameter group)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out / "curves")
