"""Training curves from metrics.jsonl: loss, BCE, Dice, learning rate, samples/s and validation cIoU
against the step, as one PNG (matplotlib's Agg canvas; no pyplot, no global backend change).

    out = plot_run(run_dir)                    # run_dir/plots/curves.png (written at the end of training)
    out = plot_runs([run_a, run_b], "sweep.png")   # the rows of a sweep: one line per run in every panel
    out.path, out.series                       # the PNG, and the arrays drawn: {panel: {label: (steps, values)}}
    records = read_metrics(run_dir)            # the records of metrics.jsonl

``series`` is read back from the figure's lines, so it is what the PNG shows. A skipped (NaN) step has
no loss: its value is NaN and the line has a gap there. scripts/plot_runs.py is the command line.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evf_sam.atomic import atomic_write_bytes

__all__ = ["FIGSIZE", "DPI", "PANELS", "PlotResult", "find_runs", "plot_run", "plot_runs", "read_metrics"]

# (panel title, record type, record key); the PNG is FIGSIZE * DPI pixels
PANELS: tuple[tuple[str, str, str], ...] = (
    ("loss", "train", "loss"), ("BCE", "train", "bce"), ("Dice", "train", "dice"),
    ("learning rate", "train", "lr"), ("samples/s", "train", "samples_per_s"), ("validation cIoU", "val", "ciou"),
)
FIGSIZE = (15.0, 8.0)
DPI = 100


@dataclass
class PlotResult:
    path: Path
    series: dict[str, dict[str, tuple[list[float], list[float]]]]  # panel -> line label -> (steps, values)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (lines that do not parse are skipped)."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: not found (is {run_dir} a training run directory?)")
    out = []
    for line in f.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories: each path that has metrics.jsonl, else its subdirectories that do (a sweep's
    directory, e.g. runs/table3 or multirun/<name>), sorted."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            runs.append(p)
            continue
        found = sorted(d.parent for d in p.glob("*/metrics.jsonl")) if p.is_dir() else []
        if not found:
            raise FileNotFoundError(f"{p}: no metrics.jsonl in it or in its subdirectories (pass training run dirs)")
        runs += found
    return runs


def _value(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _lines(records: list[dict[str, Any]], kind: str, key: str) -> dict[str, tuple[list[float], list[float]]]:
    """{split or "": (steps, values)} of one panel, in step order."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        if r.get("type", "train") != kind or not isinstance(r.get("step"), int) or key not in r:
            continue
        xs, ys = out.setdefault(str(r.get("split", "")) if kind == "val" else "", ([], []))
        xs.append(float(r["step"]))
        ys.append(_value(r[key]))
    for label, (xs, ys) in out.items():
        order = sorted(range(len(xs)), key=xs.__getitem__)
        out[label] = ([xs[i] for i in order], [ys[i] for i in order])
    return out


def _labels(runs: Sequence[Path]) -> list[str]:
    """Run names for the legend: the directory names, or longer paths where names repeat."""
    names = [p.name or str(p) for p in runs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in runs]


def plot_runs(run_dirs: Sequence[str | Path], output: str | Path, *, title: str | None = None) -> PlotResult:
    """One figure of `PANELS` with a line per run (and per validation split) in each; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ValueError("plot_runs: no run directory given")
    labels = _labels(runs)
    records = [read_metrics(r) for r in runs]
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for ax, (panel, kind, key) in zip(axes, PANELS):
        for run_label, recs in zip(labels, records):
            for split, (xs, ys) in _lines(recs, kind, key).items():
                label = " ".join(x for x in ((run_label if len(runs) > 1 else ""), split) if x) or run_label
                ax.plot(xs, ys, marker="o" if kind == "val" or len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if ax.lines and (len(runs) > 1 or kind == "val"):
            ax.legend(fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="grey")
        series[panel] = {ln.get_label(): ([float(x) for x in ln.get_xdata()], [float(y) for y in ln.get_ydata()])
                         for ln in ax.lines}
    fig.suptitle(title or (labels[0] if len(runs) == 1 else f"{len(runs)} runs"))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    output = Path(output)
    atomic_write_bytes(output, buf.getvalue())
    return PlotResult(path=output, series=series)


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> PlotResult:
    """`plot_runs` of one run into ``run_dir/plots/curves.png`` (or ``output``)."""
    run_dir = Path(run_dir)
    return plot_runs([run_dir], output or run_dir / "plots" / "curves.png", title=str(run_dir))
