"""Lays finished runs out as one of the paper's tables, our number beside the published one and the difference.

    python scripts/make_table.py [--table table3] [--metric ciou] [--spread std|minmax] [--by-type] [--csv] \
        RUN_DIR_OR_RESULTS_JSON...

Input: each run's ``results.json`` (a run directory or the file), as written by training, by
scripts/eval_refcoco.py or by scripts/eval_pilot.py::

    {"refcoco|unc|testA": {"ciou": 0.741, "giou": ..., ...}, ...,     # one entry per evaluated split
     "axes": {"encoder": "beit3_large", "fusion": "early", "feature": "image_cls", "trainable": ...,
              "sam": "vit_h", "extra_data": "res", "fused_layers": null, "data": ..., "seed": 0,
              "paper_table": "table3", "pilot": false},              # what labels the run's row
     "config": {...}, "checkpoint": "...",
     "train_config": {...},                                            # evaluation runs: the checkpoint's training config
     "baselines": {"union": {split: {...}}, "empty": {...}},           # optional: text-blind answers
     "by_type": {"model" | "union" | "empty": {type: {...}}}}          # optional: per expression type

A run's row is found from its axes (evf_sam/run_axes.py: ``axes`` first, else the training config
under ``config``, else the training run / config.json of the evaluated ``checkpoint``) on the axes
that tell the table's rows apart (evf_sam/paper_numbers.py). Only keys shaped ``dataset|split_by|split``
are splits (``best``, ``final``, ... are not). The table comes from ``--table`` or the runs' paper_table.

Layout: Tables 1, 3, 4, 5 (one number, RefCOCO testA): one line per paper row, ``ours | paper | Δ``.
Tables 2, 6, 7 (the eight splits, AVG = their mean; Tab. 6 adds ADE20K val in cIoU): per paper row a
``paper`` line, an ``ours`` line per matching run group and a ``Δ`` line; Table 2 lists the other
methods' published rows first. Runs that differ only in seed form one group: ``mean ± std`` (sample
std; ``--spread minmax``: ``mean [min, max]``) with the number of seeds. The paper reports cIoU
only: with another ``--metric`` (giou, miou, pr@0.5, ...) there is no paper column. ``--by-type``
prints the per-expression-type breakdown of runs evaluated by scripts/eval_pilot.py instead.
Values are printed in percent. Exit status 2 with a message when the runs cannot make the table.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.paper_numbers import (  # noqa: E402
    AXES, PAPER, REFER_SPLITS, TABLES, PaperRow, PaperTable, paper_row, split_mean)
from evf_sam.run_axes import read_run_axes  # noqa: E402

DATASET_NAMES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "refclef": "RefCLEF",
                 "ade20k": "ADE20K", "mapillary": "Mapillary"}
# Our module prefixes that a Tab. 4 row switches on or off (SAM image encoder: always frozen).
TRAINABLE_COLUMNS = (("MM enc.", "encoder.x"), ("prompt enc.", "sam.prompt_encoder.x"),
                     ("mask dec.", "sam.mask_decoder.x"))
GROUP_AXES = AXES + ("fused_layers", "data")  # runs equal on all of these (seed aside) are one group
DASH = "–"


class TableError(Exception):
    """The runs cannot make the requested table (message says why and what to do)."""


@dataclass
class Run:
    path: str
    results: dict
    axes: dict[str, Any]
    origin: str  # where the axes came from

    def value(self, split: str, metric: str) -> float | None:
        m = self.results.get(split)
        v = m.get(metric) if isinstance(m, dict) else None
        return None if v is None else _pct(float(v))


@dataclass
class Group:
    axes: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def values(self, split: str, metric: str) -> list[float]:
        if split == "AVG":
            out = []
            for r in self.runs:
                vals = {s: r.value(s, metric) for s in REFER_SPLITS}
                avg = split_mean({s: v for s, v in vals.items() if v is not None})
                if avg is not None:
                    out.append(avg)
            return out
        return [v for v in (r.value(split, metric) for r in self.runs) if v is not None]


def is_split(key: str, value: Any) -> bool:
    return isinstance(value, dict) and len(str(key).split("|")) == 3 and all(str(key).split("|"))


def _pct(v: float) -> float:
    return 100.0 * v if abs(v) <= 1.0 else v


def split_title(split: str) -> str:
    """"refcoco+|unc|testA" -> "RefCOCO+ testA"."""
    parts = split.split("|")
    return f"{DATASET_NAMES.get(parts[0], parts[0])} {parts[-1]}" if len(parts) == 3 else split


def _fmt(v: float | None) -> str:
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _fmt_delta(v: float | None) -> str:
    return DASH if v is None else f"{v:+.1f}"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _spread(xs: list[float], how: str) -> str:
    """"m" for one value; "m ± s" (sample std) or "m [lo, hi]" for several."""
    if not xs:
        return DASH
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.1f}"
    if how == "minmax":
        return f"{m:.1f} [{min(xs):.1f}, {max(xs):.1f}]"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.1f} ± {sd:.1f}"


def _mark(on: bool) -> str:
    return "✓" if on else "✗"


# -- loading ----------------------------------------------------------------------------------------

def load_run(path: Path) -> Run:
    f = path / "results.json" if path.is_dir() else path
    data = json.loads(f.read_text())
    axes, origin = read_run_axes(data, f)
    return Run(path=str(f), results=data, axes=axes, origin=origin)


# training-config keys that differ between seeds of one row without making it another row
_PER_RUN_KEYS = ("seed", "run_dir", "name", "resume", "hydra", "logger")


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def _recipe(run: Run) -> dict[str, str]:
    """The run's training config flattened, without per-run keys; paths inside its run dir made relative."""
    cfg = run.results.get("config")
    if not (isinstance(cfg, dict) and "trainer" in cfg):
        cfg = run.results.get("train_config")  # an evaluation run: its checkpoint's training config
    if not (isinstance(cfg, dict) and "trainer" in cfg):
        return {}
    run_dir = str(cfg.get("run_dir") or "\0")
    flat = _flat({k: v for k, v in cfg.items() if k not in _PER_RUN_KEYS})
    return {k: v.replace(run_dir, "<run_dir>") for k, v in flat.items()}


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with the same axes and the same training recipe but for the seed form one group; groups with
    the same axes but another recipe get ``variant`` (the config keys where they differ)."""
    groups: dict[tuple, Group] = {}
    recipes: dict[tuple, dict[str, str]] = {}
    for r in runs:
        recipe = _recipe(r)
        key = tuple(str(r.axes.get(a)) for a in GROUP_AXES) + (json.dumps(recipe, sort_keys=True),)
        if key not in groups:
            groups[key] = Group(axes={a: r.axes.get(a) for a in GROUP_AXES})
            recipes[key] = recipe
        groups[key].runs.append(r)
    by_axes: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_axes.setdefault(key[:-1], []).append(key)
    for keys in by_axes.values():
        if len(keys) < 2:
            continue
        common = set.intersection(*(set(recipes[k].items()) for k in keys))
        for k in keys:
            diff = sorted(f"{name}={value}" for name, value in recipes[k].items() if (name, value) not in common)
            groups[k].axes["variant"] = "; ".join(diff) or "(no training config)"
    return list(groups.values())


def normalise_metric(metric: str, runs: list[Run], splits: list[str]) -> str:
    """The results.json key of ``metric`` (case-insensitive); TableError if no run has it on ``splits``."""
    found: dict[str, set[str]] = {}
    for r in runs:
        for s, m in r.results.items():
            if is_split(s, m):
                for k, v in m.items():
                    if isinstance(v, (int, float)) and not k.startswith("n_"):
                        found.setdefault(k, set()).add(s)
    key = next((k for k in found if k.lower() == metric.lower()), metric.lower())
    if not any(s in splits for s in found.get(key, ())):
        where = ", ".join(split_title(s) for s in splits)
        if key in found:  # e.g. training runs, validated on RefCOCO val only
            other = ", ".join(sorted(split_title(s) for s in found[key]))
            raise TableError(f"the runs have {key} on {other} only, not on this table's split(s) {where}: evaluate "
                             "them there (scripts/eval_refcoco.py; pilots: scripts/eval_pilot.py) and pass the "
                             "evaluation's results.json")
        have = ", ".join(f"{k} ({len(v)} split{'s' * (len(v) > 1)})" for k, v in sorted(found.items()))
        raise TableError(f"no run has metric {metric!r} on {where}. Metrics in these runs: {have or 'none'}. "
                         f"(mIoU exists only for semantic splits such as ADE20K val; the paper reports cIoU.)")
    return key


# -- tables -----------------------------------------------------------------------------------------

def _label_cells(axes: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    out = []
    for a in names:
        v = axes.get(a)
        if a == "fusion" and v == "early_l12" and axes.get("fused_layers") not in (None, 12):
            v = f"early_l12 (L1-L{axes['fused_layers']})"  # scaled to a shallower pilot encoder
        out.append(DASH if v is None else str(v))
    if out and axes.get("variant"):  # same axes, another recipe: say how it differs
        out[-1] += f" [{axes['variant']}]"
    return out


def _mark_other_axes(groups: list[Group], shown: tuple[str, ...]) -> None:
    """Groups that look the same on the table's axes but differ on another (e.g. fusion in Tab. 2) say how
    in ``variant``."""
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        buckets.setdefault(tuple(str(g.axes.get(a)) for a in shown), []).append(g)
    for same in buckets.values():
        others = [a for a in GROUP_AXES if a not in shown and len({str(g.axes.get(a)) for g in same}) > 1]
        for g in same:
            extra = [f"{a}={g.axes.get(a)}" for a in others]
            if extra:
                g.axes["variant"] = "; ".join(extra + ([g.axes["variant"]] if g.axes.get("variant") else []))


def _row_groups(spec: PaperTable, groups: list[Group]) -> tuple[dict[int, list[Group]], list[Group]]:
    _mark_other_axes(groups, spec.axes)
    matched: dict[int, list[Group]] = {}
    unmatched = []
    for g in groups:
        row = paper_row(spec.key, g.axes)
        if row is None:
            unmatched.append(g)
        else:
            matched.setdefault(spec.rows.index(row), []).append(g)
    return matched, unmatched


def _describe_runs(runs: list[Run]) -> str:
    enc = sorted({str(r.axes.get("encoder")) for r in runs})
    sam = sorted({str(r.axes.get("sam")) for r in runs})
    pilot = any(r.axes.get("pilot") for r in runs)
    text = f"{len(runs)} run(s); encoder: {', '.join(enc)}; SAM: {', '.join(sam)}"
    if pilot:
        text += ("; PILOT runs (tiny models, synthetic data): the paper's numbers are for orientation only, "
                 "the figures to compare are the rows among themselves and the text-blind baselines")
    return text


def _baseline_runs(runs: list[Run]) -> dict[str, dict[str, float]]:
    """answer -> split -> percent, from the runs' "baselines" (the first run that has each split)."""
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        for answer, per_split in (r.results.get("baselines") or {}).items():
            for s, m in per_split.items():
                if isinstance(m, dict) and "ciou" in m:
                    out.setdefault(answer, {}).setdefault(s, m)
    return out


def _baseline_value(m: dict, metric: str) -> float | None:
    v = m.get(metric)
    return None if v is None else _pct(float(v))


def single_split_table(spec: PaperTable, runs: list[Run], metric: str, spread: str) -> tuple[list[str], list[list[str]]]:
    split = spec.splits[0]
    with_paper = metric == "ciou"
    groups = group_runs(runs)
    matched, unmatched = _row_groups(spec, groups)
    seeds = any(len(g.runs) > 1 for g in groups)
    trainable = spec.key == "table4"
    header = list(spec.axes) + (["MM enc.", "prompt enc.", "mask dec."] if trainable else []) + ["paper row"]
    header += ([f"ours ({split_title(split)})", "paper", "Δ"] if with_paper else [f"ours ({split_title(split)})"])
    header += ["seeds"] if seeds else []
    rows = []

    def marks(g: Group | None) -> list[str]:
        if not trainable:
            return []
        if g is None:
            return [DASH] * 3
        res = g.runs[0].results
        cfg = res.get("config") if isinstance(res.get("config"), dict) and "trainer" in res["config"] \
            else res.get("train_config") or {}
        globs = (cfg.get("trainable") or {}).get("params") or []
        if not globs:
            return [DASH] * 3
        return [_mark(any(fnmatch.fnmatchcase(n, p) for p in globs)) for _, n in TRAINABLE_COLUMNS]

    def line(axes_cells, g, label, prow: PaperRow | None):
        vals = g.values(split, metric) if g is not None else []
        ours = _mean(vals)
        paper = prow.paper.get(split) if prow is not None else None
        cells = axes_cells + marks(g) + [label, _spread(vals, spread) if g is not None else DASH]
        if with_paper:
            cells += [_fmt(paper), _fmt_delta(ours - paper if ours is not None and paper is not None else None)]
        cells += [str(len(vals)) if g is not None else DASH] if seeds else []
        return cells

    for i, prow in enumerate(spec.rows):
        if prow.kind == "zoo":
            continue
        label = prow.label + (f" [{prow.note}]" if prow.kind == "reference" and prow.note else "")
        gs = matched.get(i, [])
        if not gs:
            cells = [DASH] * len(spec.axes) if prow.kind == "reference" else _label_cells(prow.axes, spec.axes)
            rows.append(line(cells, None, label, prow))
        for g in gs:
            rows.append(line(_label_cells(g.axes, spec.axes), g, label, prow))
    for g in unmatched:
        rows.append(line(_label_cells(g.axes, spec.axes), g, "(not a paper row)", None))
    for answer, per_split in _baseline_runs(runs).items():
        if split in per_split:
            v = _baseline_value(per_split[split], metric)
            cells = [DASH] * len(spec.axes) + ([DASH] * 3 if trainable else []) + \
                [f"text-blind baseline: {answer}", _fmt(v)] + ([DASH, DASH] if with_paper else []) + \
                ([DASH] if seeds else [])
            rows.append(cells)
    return header, rows


def multi_split_table(spec: PaperTable, runs: list[Run], metric: str, spread: str) -> tuple[list[str], list[list[str]]]:
    with_paper = metric == "ciou"
    splits = list(spec.splits)
    cols = splits + (["AVG"] if spec.has_avg else [])
    groups = group_runs(runs)
    matched, unmatched = _row_groups(spec, groups)
    seeds = any(len(g.runs) > 1 for g in groups)
    table2 = spec.key == "table2"
    zoo = any(r.zoo_score is not None for r in spec.rows)
    label_cols = ["method", "foundation model", "SAM", "data"] if table2 else list(spec.axes) + ["paper row"]
    header = label_cols + ["row"] + [split_title(c) if c != "AVG" else "AVG" for c in cols]
    miou_extra = spec.key == "table6" and metric == "ciou" and any(
        isinstance(r.results.get(s), dict) and "miou" in r.results[s] for r in runs for s in splits)
    header += [f"{split_title(splits[-1])} mIoU"] if miou_extra else []
    header += ["zoo params", "zoo score"] if zoo else []
    header += ["seeds"] if seeds else []
    rows = []

    def paper_values(prow: PaperRow) -> list[float | None]:
        return [prow.avg if c == "AVG" else prow.paper.get(c) for c in cols]

    def tail(g: Group | None, prow: PaperRow | None, kind: str) -> list[str]:
        out = []
        if miou_extra:
            vals = g.values(splits[-1], "miou") if g is not None and kind == "ours" else []
            out.append(_spread(vals, spread) if vals else DASH)
        if zoo:
            show = prow is not None and kind == "paper"
            out += [(prow.zoo_params or DASH) if show else DASH, _fmt(prow.zoo_score) if show else DASH]
        if seeds:
            out.append(str(len(g.runs)) if g is not None and kind == "ours" else DASH)
        return out

    def labels(prow: PaperRow | None, g: Group | None) -> list[str]:
        if table2:
            if g is None:
                return [prow.label, prow.foundation or DASH, DASH if prow.uses_sam is None else
                        ("yes" if prow.uses_sam else "no"), prow.data or DASH]
            variant = f" [{g.axes['variant']}]" if g.axes.get("variant") else ""
            return [f"ours: {g.axes.get('encoder')} + {g.axes.get('sam')}{variant}", str(g.axes.get("encoder")),
                    str(g.axes.get("sam")), str(g.axes.get("data") or DASH)]
        axes = g.axes if g is not None else (prow.axes if prow is not None else {})
        return _label_cells(axes, spec.axes) + [prow.label if prow is not None else "(not a paper row)"]

    for i, prow in enumerate(spec.rows):
        gs = matched.get(i, [])
        pv = paper_values(prow)
        if with_paper and (prow.paper or prow.kind != "zoo" or not gs):
            kind = "model zoo" if prow.kind == "zoo" else "paper"
            rows.append(labels(prow, None) + [kind] + [_fmt(v) for v in pv] + tail(None, prow, "paper"))
        for g in gs:
            vals = [g.values(c, metric) for c in cols]
            rows.append(labels(prow, g) + ["ours"] + [_spread(v, spread) for v in vals] + tail(g, prow, "ours"))
            if with_paper and prow.paper:
                deltas = [(_mean(v) - p) if v and p is not None else None for v, p in zip(vals, pv)]
                rows.append(labels(prow, g) + ["Δ"] + [_fmt_delta(d) for d in deltas] + tail(g, prow, "delta"))
    for g in unmatched:
        vals = [g.values(c, metric) for c in cols]
        rows.append(labels(None, g) + ["ours"] + [_spread(v, spread) for v in vals] + tail(g, None, "ours"))
    for answer, per_split in _baseline_runs(runs).items():
        vals = [_baseline_value(per_split[c], metric) if c in per_split else None for c in splits]
        avg = split_mean({c: v for c, v in zip(splits, vals) if v is not None}) if spec.has_avg else None
        lab = [f"text-blind baseline: {answer}"] + [DASH] * (len(label_cols) - 1)
        rows.append(lab + ["baseline"] + [_fmt(v) for v in vals] + ([_fmt(avg)] if spec.has_avg else []) +
                    [DASH] * (len(header) - len(label_cols) - 1 - len(cols)))
    return header, rows


def generic_table(runs: list[Run], metric: str, spread: str) -> tuple[list[str], list[list[str]]]:
    """No paper table: one line per run group, every split the runs have (the eight first) + AVG."""
    present = {s for r in runs for s, m in r.results.items() if is_split(s, m) and metric in m}
    splits = [s for s in REFER_SPLITS if s in present] + sorted(present - set(REFER_SPLITS))
    avg = all(s in present for s in REFER_SPLITS)
    groups = group_runs(runs)
    seeds = any(len(g.runs) > 1 for g in groups)
    header = list(AXES) + [split_title(s) for s in splits] + (["AVG"] if avg else []) + (["seeds"] if seeds else [])
    rows = []
    for g in groups:
        cells = _label_cells(g.axes, AXES) + [_spread(g.values(s, metric), spread) for s in splits]
        cells += [_spread(g.values("AVG", metric), spread)] if avg else []
        cells += [str(len(g.runs))] if seeds else []
        rows.append(cells)
    return header, rows


def by_type_table(runs: list[Run], spread: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Per expression type (scripts/eval_pilot.py's "by_type", pooled over its splits), per run group,
    with the text-blind baselines on the same sentences."""
    have = [r for r in runs if isinstance(r.results.get("by_type"), dict)]
    if not have:
        raise TableError("--by-type needs runs evaluated by scripts/eval_pilot.py (results.json with 'by_type'); "
                         f"none of the {len(runs)} run(s) has it")
    types: list[str] = []
    for r in have:
        for t in r.results["by_type"].get("model", {}):
            if t not in types:
                types.append(t)
    types = (["all"] if "all" in types else []) + [t for t in types if t != "all"]
    groups = group_runs(have)
    header = ["fusion", "encoder", "row"] + types + ["seeds"]
    rows = []
    for g in groups:
        vals = [[_pct(float(r.results["by_type"]["model"][t][metric])) for r in g.runs
                 if t in r.results["by_type"].get("model", {})] for t in types]
        rows.append(_label_cells(g.axes, ("fusion", "encoder")) + ["ours"] + [_spread(v, spread) for v in vals] +
                    [str(len(g.runs))])
    first = have[0].results["by_type"]
    for answer in ("union", "empty"):
        if answer in first:
            vals = [_fmt(_pct(float(first[answer][t][metric]))) if t in first[answer] else DASH for t in types]
            rows.append([DASH, DASH, f"text-blind baseline: {answer}"] + vals + [DASH])
    n_expr = [str(first["model"][t].get("n_expressions", DASH)) if t in first.get("model", {}) else DASH
              for t in types]
    rows.append([DASH, DASH, "expressions (per run)"] + n_expr + [DASH])
    return header, rows


def build(runs: list[Run], table: str | None, metric: str, spread: str = "std",
          by_type: bool = False) -> tuple[list[str], list[list[str]], list[str]]:
    """-> header, rows, title lines."""
    spec = TABLES.get(table) if table else None
    if by_type:
        metric = metric.lower()
        header, rows = by_type_table(runs, spread, metric)
        what = spec.title if spec else "runs"
        return header, rows, [f"{what}: {metric} (%) per expression type, pooled over the evaluated splits",
                              _describe_runs(runs), _spread_note(spread)]
    splits = list(spec.splits) if spec else sorted({s for r in runs for s, m in r.results.items() if is_split(s, m)})
    metric = normalise_metric(metric, runs, splits)
    if spec is None:
        header, rows = generic_table(runs, metric, spread)
        title = f"Runs: {metric} (%)"
    else:
        make = single_split_table if len(spec.splits) == 1 else multi_split_table
        header, rows = make(spec, runs, metric, spread)
        paper = "ours vs paper" if metric == "ciou" else "ours only (the paper reports cIoU)"
        title = f"{spec.title}: {metric} (%), {paper} ({PAPER.split(',')[-1].strip()})"
    lines = [title, _describe_runs(runs), _spread_note(spread)]
    if spec is not None and spec.note:
        lines.append(spec.note)
    return header, rows, lines


def _spread_note(spread: str) -> str:
    return ("runs equal but for the seed are one row: mean ± sample std over seeds" if spread == "std"
            else "runs equal but for the seed are one row: mean [min, max] over seeds")


def render_markdown(header: list[str], rows: list[list[str]], lines: list[str]) -> str:
    out = [f"### {lines[0]}", ""] + [f"_{x}_" for x in lines[1:]] + ([""] if lines[1:] else [])
    out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if c == DASH else c for c in r] for r in rows])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (with results.json) or results.json files")
    ap.add_argument("--table", choices=sorted(TABLES), help="paper table layout (default: the runs' paper_table)")
    ap.add_argument("--metric", default="ciou", help="metric key in results.json (ciou, giou, miou, pr@0.5, ...)")
    ap.add_argument("--spread", choices=("std", "minmax"), default="std", help="spread over seeds of one row")
    ap.add_argument("--by-type", action="store_true", help="per expression type (runs from scripts/eval_pilot.py)")
    ap.add_argument("--csv", action="store_true", help="CSV instead of markdown")
    args = ap.parse_args(argv)

    runs = []
    for p in args.runs:
        f = p / "results.json" if p.is_dir() else p
        if not f.is_file():
            print(f"skipping {p}: no results.json (unfinished run?)", file=sys.stderr)
            continue
        runs.append(load_run(p))
    if not runs:
        print("no results.json found", file=sys.stderr)
        return 2
    unlabelled = [r.path for r in runs if r.origin == "none"]
    if unlabelled:
        print("warning: no axes for " + ", ".join(unlabelled) + " (results.json has neither 'axes' nor a training "
              "config, and its checkpoint's run is not found): their rows are labelled '–'", file=sys.stderr)
    table = args.table
    if table is None:
        found = {r.axes.get("paper_table") for r in runs} - {None}
        if len(found) > 1:
            print(f"runs come from different tables {sorted(found)}; pass --table", file=sys.stderr)
            return 2
        table = found.pop() if found else None
        if table is not None and table not in TABLES:
            table = None
    try:
        header, rows, lines = build(runs, table, args.metric, args.spread, args.by_type)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render_csv(header, rows) if args.csv else render_markdown(header, rows, lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
