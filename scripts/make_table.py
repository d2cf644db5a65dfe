"""Lays finished runs out as one of the paper's ablation tables, next to the published numbers.

    python scripts/make_table.py [--table table3] [--metric ciou] [--csv] RUN_DIR_OR_RESULTS_JSON...

Each run contributes ``results.json`` (written by evaluation):

    {"refcoco|unc|val": {"ciou": 0.741, "giou": ..., "pr@0.5": ..., "n_expressions": ..., "n_images": ...},
     ..., "config": {<resolved Hydra config>}, "checkpoint": "..."}

A row per run, labelled by the run's ablation-axis values read from its config (config groups
encoder / fusion / feature / trainable, see configs/), one column per evaluation split with the
paper's number beside it (evf_sam/paper_numbers.py; "–" where not transcribed). Tab. 7 adds the
official release's parameter count and "Reference Score" (its model zoo; metric unstated there). Metrics stored as
fractions are printed in percent, like the paper. The table is taken from ``--table`` or else from
the runs' ``paper_table`` config key (set by configs/experiment/tableN.yaml).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.paper_numbers import PAPER, REFER_SPLITS, TABLES, paper_row  # noqa: E402

AXES = ("encoder", "fusion", "feature", "trainable")  # default row labels when no --table is known
DATASET_NAMES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "refclef": "RefCLEF",
                 "ade20k": "ADE20K"}
# Our module prefixes that a Tab. 4 row switches on or off (SAM image encoder: always frozen).
TRAINABLE_COLUMNS = (("MM enc.", "encoder.x"), ("prompt enc.", "sam.prompt_encoder.x"),
                     ("mask dec.", "sam.mask_decoder.x"))
# Default feature of each fusion (mirrors evf_sam.models.features.FUSION_FEATURES; no torch import here).
FUSION_DEFAULT_FEATURE = {"text": "text_cls", "late": "concat", "early": "image_cls", "early_k": "image_cls"}
DASH = "–"


def _get(cfg: dict, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def axis_values(cfg: dict) -> dict[str, str | None]:
    """Ablation-axis values of a run from its resolved config (groups first, then the model node)."""
    encoder = _get(cfg, "encoder.name") or _get(cfg, "model.encoder")
    fusion = _get(cfg, "fusion.name") or _get(cfg, "model.fusion")
    mode = _get(cfg, "fusion.mode") or _get(cfg, "model.fusion")
    feature = _get(cfg, "feature.value") if _get(cfg, "feature") is not None else _get(cfg, "model.feature")
    if feature is None and mode is not None:
        feature = FUSION_DEFAULT_FEATURE.get(mode)
    trainable = _get(cfg, "trainable.name")
    sam = _get(cfg, "sam.name") or _get(cfg, "model.sam_variant")
    data = _get(cfg, "data.name")
    return {"encoder": encoder, "fusion": fusion, "feature": feature, "trainable": trainable, "sam": sam,
            "data": data, "extra_data": _get(cfg, "extra_data.name")}


def load_run(path: Path) -> dict:
    f = path / "results.json" if path.is_dir() else path
    data = json.loads(f.read_text())
    data["_path"] = str(f)
    return data


def split_title(split: str) -> str:
    """"refcoco+|unc|testA" -> "RefCOCO+ testA"."""
    parts = split.split("|")
    return f"{DATASET_NAMES.get(parts[0], parts[0])} {parts[-1]}" if len(parts) >= 2 else split


def _pct(v: float | None) -> float | None:
    if v is None:
        return None
    return 100.0 * v if abs(v) <= 1.0 else float(v)


def _fmt(v: float | None) -> str:
    return DASH if v is None else f"{v:.1f}"


def _mark(on: bool) -> str:
    return "✓" if on else "✗"


def build_rows(runs: list[dict], table: str | None, metric: str) -> tuple[list[str], list[list[str]], str]:
    """-> header, rows (strings), title."""
    spec = TABLES.get(table) if table else None
    axes = list(spec.axes) if spec else list(AXES)
    extra = [name for name, _ in TRAINABLE_COLUMNS] if "trainable" in axes else []
    present = {k for r in runs for k, v in r.items() if isinstance(v, dict) and metric in v}
    splits = [s for s in REFER_SPLITS if s in present] + sorted(present - set(REFER_SPLITS))
    zoo = bool(spec) and any(r.reference is not None or r.params is not None for r in spec.rows)
    header = axes + extra + (["release params", "release ref. score"] if zoo else [])
    for s in splits:
        header += [split_title(s)] + (["paper"] if spec else [])
    # semantic splits (Tab. 6, ADE20K val) also report mIoU over classes: one more column each
    miou_splits = [s for s in splits if any(isinstance(r.get(s), dict) and "miou" in r[s] for r in runs)]
    header += [f"{split_title(s)} mIoU" for s in miou_splits]

    ordered = []
    for i, run in enumerate(runs):
        values = axis_values(run.get("config") or {})
        row = paper_row(table, values) if spec else None
        rank = spec.rows.index(row) if row is not None else len(spec.rows) if spec else 0
        ordered.append((rank, i, run, values, row))
    ordered.sort(key=lambda t: (t[0], t[1]))

    rows = []
    for _, _, run, values, prow in ordered:
        cells = [str(values.get(a) or DASH) for a in axes]
        if extra:
            globs = _get(run.get("config") or {}, "trainable.params") or []
            cells += [_mark(any(fnmatch.fnmatchcase(name, g) for g in globs)) for _, name in TRAINABLE_COLUMNS]
        if zoo:
            cells += [prow.params or DASH if prow is not None else DASH,
                      _fmt(prow.reference) if prow is not None else DASH]
        for s in splits:
            ours = _pct(run.get(s, {}).get(metric)) if isinstance(run.get(s), dict) else None
            cells.append(_fmt(ours))
            if spec:
                cells.append(_fmt(prow.paper.get(s) if prow is not None and prow.paper else None))
        cells += [_fmt(_pct(run[s].get("miou"))) if isinstance(run.get(s), dict) else DASH for s in miou_splits]
        rows.append(cells)
    title = f"{spec.title}: {metric} (%), ours vs paper ({PAPER.split(',')[-1].strip()})" if spec \
        else f"Runs: {metric} (%)"
    return header, rows, title


def render_markdown(header: list[str], rows: list[list[str]], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--metric", default="ciou", help="metric key in results.json (ciou, giou, pr@0.5, ...)")
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
        return 1
    table = args.table
    if table is None:
        found = {(r.get("config") or {}).get("paper_table") for r in runs} - {None}
        if len(found) > 1:
            print(f"runs come from different tables {sorted(found)}; pass --table", file=sys.stderr)
            return 1
        table = found.pop() if found else None
        if table is not None and table not in TABLES:
            table = None
    header, rows, title = build_rows(runs, table, args.metric)
    sys.stdout.write(render_csv(header, rows) if args.csv else render_markdown(header, rows, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
