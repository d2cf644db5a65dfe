"""The published numbers of the EVF-SAM paper (arXiv 2406.20076), Tables 1-7, as `scripts/make_table.py`
lays them out beside ours.

Source: the paper's Tables 1-7, transcribed in ``shared/reference/PAPER_TABLES.md`` (cIoU in percent;
tests/test_paper_numbers.py checks this file against it whenever it is present). Tables 1, 3, 4 and 5
report one number, RefCOCO testA ("Unless specified, we mainly report the cIoU on testA of RefCOCO");
Tables 2, 6 and 7 report the eight RefCOCO-family splits and (2, 7) their plain mean, AVG; Table 6 adds
ADE20K val, also in cIoU (zero-shot where ADE20K was not trained on).

Each `PaperRow` cites its table and row (``source``) and spells out the row's configuration on every
axis of this codebase (``axes``: encoder / fusion / feature / trainable / sam / extra_data, config-group
names under configs/); the table's own ``axes`` say which of them tell its rows apart, and a run lands
on the row whose values on those axes it shares. Rows of other methods (Tab. 2 peers, Tab. 1's LLaVA
figure quoted from LISA-7B) have ``kind="peer"`` / ``"reference"``: no configuration of ours, no run.
Tab. 7 also lists the official release's model zoo (hustvl/EVF-SAM README "Weights" table): its
"Reference Score" (metric and split unstated there) and parameter count, in ``zoo_score`` /
``zoo_params``, and the two zoo models the paper's table lacks as ``kind="zoo"`` rows.

Row axes whose config group does not exist yet are listed in `PENDING_CONFIG_GROUPS` (to be added
with the paper-recipe config work; tests/test_make_table.py keeps that list exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAPER = "EVF-SAM: Early Vision-Language Fusion for Text-Prompted Segment Anything Model, arXiv 2406.20076"

# The paper's eight RefCOCO-family evaluation splits, in Table 2's column order.
REFER_SPLITS: tuple[str, ...] = (
    "refcoco|unc|val", "refcoco|unc|testA", "refcoco|unc|testB",
    "refcoco+|unc|val", "refcoco+|unc|testA", "refcoco+|unc|testB",
    "refcocog|umd|val", "refcocog|umd|test",
)
TESTA = "refcoco|unc|testA"  # the split of every single-number table (1, 3, 4, 5)
ADE20K_VAL = "ade20k|semantic|val"  # Tab. 6's last column (cIoU)

# Every axis a row is described on (config groups under configs/), in display order.
AXES: tuple[str, ...] = ("encoder", "fusion", "feature", "trainable", "sam", "extra_data")

# The paper's main run (Tab. 2's EVF-SAM, Tab. 4's last row, Tab. 6's first, Tab. 7's last): BEiT-3-L
# early fusion in all layers, image [CLS] prompt, multimodal encoder + prompt encoder + mask decoder
# trained, SAM ViT-H, RefCOCO/+/g only.
MAIN: dict[str, str] = {"encoder": "beit3_large", "fusion": "early", "feature": "image_cls",
                        "trainable": "enc_proj_prompt_mask", "sam": "vit_h", "extra_data": "res"}
# The feature each fusion uses unless a table varies it (configs/feature/auto.yaml).
FUSION_FEATURE: dict[str, str] = {"text": "text_cls", "late": "concat", "early": "image_cls",
                                  "early_l12": "image_cls"}

# Row axis values that have no configs/<axis>/<value>.yaml yet.
PENDING_CONFIG_GROUPS: frozenset[tuple[str, str]] = frozenset()

# Tiny test/pilot models stand for the full-size ones whose rows they pilot (layer counts scaled).
PILOT_STANDS_FOR: dict[str, dict[str, str]] = {
    "encoder": {"beit3_tiny": "beit3_large", "clip_tiny": "clip_large", "vilt_tiny": "vilt"},
    "sam": {"tiny": "vit_h", "efficient_sam_tiny": "efficient_sam_s", "sam2_tiny": "sam2_hiera_l"},
}


@dataclass(frozen=True)
class PaperRow:
    label: str  # the paper's wording of the row
    source: str  # "Tab. 3, row 10": where the numbers are printed
    paper: dict[str, float] = field(default_factory=dict)  # split -> published cIoU (%); absent = "–"
    axes: dict[str, str] = field(default_factory=dict)  # axis -> config-group value (empty for peers)
    kind: str = "paper"  # paper (a row we can run) | peer (Tab. 2 other methods) | reference | zoo
    avg: float | None = None  # published AVG over the eight splits (Tab. 2, 7)
    params: str | None = None  # the paper's parameter-count column (Tab. 1 caption, Tab. 3, Tab. 7)
    foundation: str | None = None  # Tab. 2: foundation model
    uses_sam: bool | None = None  # Tab. 2: whether SAM is used
    data: str | None = None  # Tab. 2: training data
    note: str | None = None
    zoo_score: float | None = None  # official model zoo "Reference Score" (hustvl/EVF-SAM README)
    zoo_params: str | None = None  # official model zoo parameter count


@dataclass(frozen=True)
class PaperTable:
    key: str  # "table3" = configs/experiment/table3.yaml
    title: str
    axes: tuple[str, ...]  # the axes that tell this table's rows apart (row-label columns)
    splits: tuple[str, ...] = (TESTA,)
    rows: tuple[PaperRow, ...] = ()
    has_avg: bool = False  # the paper prints AVG (mean of the eight splits)
    note: str = ""


def _row(label: str, source: str, paper: dict[str, float], **axes_and_fields: Any) -> PaperRow:
    """A row of ours: unspecified axes are the main run's; feature follows the fusion unless given."""
    fields = {k: axes_and_fields.pop(k) for k in list(axes_and_fields) if k not in AXES}
    axes = {**MAIN, **axes_and_fields}
    if "feature" not in axes_and_fields:
        axes["feature"] = FUSION_FEATURE[axes["fusion"]]
    return PaperRow(label=label, source=source, paper=paper, axes=axes, **fields)


def _splits(*values: float | None) -> dict[str, float]:
    """The eight splits' numbers in Table 2's order; None = not reported."""
    if len(values) != len(REFER_SPLITS):
        raise ValueError(f"expected {len(REFER_SPLITS)} values, got {len(values)}")
    return {s: float(v) for s, v in zip(REFER_SPLITS, values) if v is not None}


def _testa(v: float) -> dict[str, float]:
    return {TESTA: float(v)}


_MAIN_SPLITS = _splits(82.1, 83.7, 80.0, 75.2, 78.3, 70.1, 76.8, 77.4)  # Tab. 2 EVF-SAM = Tab. 6 row 1 = Tab. 7 row 5


TABLES: dict[str, PaperTable] = {
    "table1": PaperTable(
        key="table1",
        title="Tab. 1 - text-only vs multimodal prompt encoders (RefCOCO testA)",
        axes=("encoder", "fusion"),
        note="Parameter counts from the caption (CLIP-L 428M, BEiT-3-L 673M); the CLIP rows are Tab. 3's OpenAI "
             "CLIP-Large rows; the LLaVA number is LISA-7B's, quoted (no run of ours).",
        rows=(
            _row("CLIP, text", "Tab. 1, row 1", _testa(63.4), encoder="clip_large", fusion="text"),
            _row("CLIP, text + image", "Tab. 1, row 2", _testa(67.9), encoder="clip_large", fusion="late",
                 params="428M"),
            _row("BEiT-3, text", "Tab. 1, row 3", _testa(65.1), fusion="text"),
            _row("BEiT-3, text + image (early fusion)", "Tab. 1, row 4", _testa(83.7), params="673M"),
            PaperRow("LLaVA, text + image (LISA-7B)", "Tab. 1, row 5", _testa(79.1), kind="reference",
                     note="number taken from LISA-7B"),
        ),
    ),
    "table2": PaperTable(
        key="table2",
        title="Tab. 2 - comparison with published methods (eight splits)",
        axes=("encoder", "sam"),
        splits=REFER_SPLITS,
        has_avg=True,
        note="Data: C COCO, RC RefCOCO family, O365 Objects365, V video seg., A ADE20K, CS COCO-Stuff, "
             "PL PACO-LVIS, PP PASCAL-Part, G GranD, VOC VOC2010, M MUSE, gRC gRefCOCO, CI COCO-Interactive, "
             "F FSS-1000, SA SA-1B.",
        rows=(
            PaperRow("LAVT", "Tab. 2, row 1", _splits(72.7, 75.8, 68.8, 62.1, 68.4, 55.1, None, None), kind="peer",
                     foundation="BERT-B (104M)", uses_sam=False, data="RC, gRC"),
            PaperRow("PolyFormer-L", "Tab. 2, row 2", _splits(76.9, 78.5, 74.8, 72.2, 75.7, 66.7, 71.2, 71.2),
                     kind="peer", avg=73.4, foundation="BERT-B (104M)", uses_sam=False, data="RC, gRC"),
            PaperRow("UNINEXT-H", "Tab. 2, row 3", _splits(82.2, 83.4, 81.3, 72.5, 76.4, 66.2, 74.4, 76.4),
                     kind="peer", avg=76.6, foundation="BERT-B (104M)", uses_sam=False, data="O365, C, RC, V"),
            PaperRow("UniLSeg-100", "Tab. 2, row 4", _splits(81.7, 83.2, 79.9, 73.2, 78.3, 68.2, None, None),
                     kind="peer", foundation="CLIP-B (63M)", uses_sam=False, data="SA, RC, gRC"),
            PaperRow("UniRef++-L", "Tab. 2, row 5", _splits(79.1, 82.1, 77.5, 68.4, 74.0, 61.5, 71.4, 72.8),
                     kind="peer", avg=73.4, foundation="BERT-B (104M)", uses_sam=False, data="RC, F, V"),
            PaperRow("LISA", "Tab. 2, row 6", _splits(74.1, 76.5, 71.1, 62.4, 67.4, 56.5, 66.4, 68.5),
                     kind="peer", avg=67.9, foundation="Vicuna-7B", uses_sam=True, data="A, CS, RC, PL, PP"),
            PaperRow("PixelLM", "Tab. 2, row 7", _splits(73.0, 76.5, 68.2, 66.3, 71.7, 58.3, 69.3, 70.5),
                     kind="peer", avg=69.2, foundation="LLaMA2-13B", uses_sam=False, data="A, CS, RC, PL, M"),
            PaperRow("GLaMM", "Tab. 2, row 8", _splits(79.5, 83.2, 76.9, 72.6, 78.7, 64.6, 74.2, 74.9),
                     kind="peer", avg=75.6, foundation="Vicuna-7B", uses_sam=True, data="G, RC"),
            PaperRow("u-LLaVA", "Tab. 2, row 9", _splits(80.4, 82.7, 77.8, 72.2, 76.6, 66.8, 74.8, 75.6),
                     kind="peer", avg=75.9, foundation="Vicuna-7B", uses_sam=True, data="A, CS, RC, PL, VOC"),
            PaperRow("PSALM", "Tab. 2, row 10", _splits(83.6, 84.7, 81.6, 72.9, 75.5, 70.1, 73.8, 74.4),
                     kind="peer", avg=77.1, foundation="Phi-1.5 (1.3B)", uses_sam=False, data="C, RC, CI"),
            _row("EVF-SAM", "Tab. 2, row 11", _MAIN_SPLITS, avg=78.0, foundation="BEiT-3 (0.7B)", uses_sam=True,
                 data="RC"),
        ),
    ),
    "table3": PaperTable(
        key="table3",
        title="Tab. 3 - multimodal encoder and fusion (RefCOCO testA)",
        axes=("encoder", "fusion"),
        note="† OpenAI weights (clip_large), ‡ OpenCLIP weights (clip_large_openclip, clip_huge). BEiT-3-L has 24 "
             "layers; early (L1-L12) fuses in the first 12 (a 2-layer pilot encoder: layer 1).",
        rows=(
            _row("CLIP-Large †, text", "Tab. 3, row 1", _testa(63.4), encoder="clip_large", fusion="text",
                 params="123M"),
            _row("CLIP-Large †, late (concat)", "Tab. 3, row 2", _testa(67.9), encoder="clip_large", fusion="late",
                 params="428M"),
            _row("CLIP-Large ‡, text", "Tab. 3, row 3", _testa(63.2), encoder="clip_large_openclip", fusion="text",
                 params="123M"),
            _row("CLIP-Large ‡, late (concat)", "Tab. 3, row 4", _testa(67.8), encoder="clip_large_openclip",
                 fusion="late", params="428M"),
            _row("CLIP-Huge ‡, text", "Tab. 3, row 5", _testa(64.2), encoder="clip_huge", fusion="text",
                 params="302M"),
            _row("CLIP-Huge ‡, late (concat)", "Tab. 3, row 6", _testa(68.2), encoder="clip_huge", fusion="late",
                 params="986M"),
            _row("ViLT, text", "Tab. 3, row 7", _testa(63.0), encoder="vilt", fusion="text", params="133M"),
            _row("ViLT, late (concat)", "Tab. 3, row 8", _testa(64.0), encoder="vilt", fusion="late", params="136M"),
            _row("ViLT, early", "Tab. 3, row 9", _testa(75.3), encoder="vilt", fusion="early", params="136M"),
            _row("BEiT-3-Large, text", "Tab. 3, row 10", _testa(65.1), fusion="text", params="370M"),
            _row("BEiT-3-Large, late (concat)", "Tab. 3, row 11", _testa(69.6), fusion="late", params="673M"),
            _row("BEiT-3-Large, early (L1-L12)", "Tab. 3, row 12", _testa(82.2), fusion="early_l12", params="673M"),
            _row("BEiT-3-Large, early (L1-L24)", "Tab. 3, row 13", _testa(83.7), fusion="early", params="673M"),
        ),
    ),
    "table4": PaperTable(
        key="table4",
        title="Tab. 4 - trainable modules, SAM image encoder frozen (RefCOCO testA)",
        axes=("trainable",),
        note="The projector is new and always trained; the last row is the main configuration.",
        rows=(
            _row("encoder ✗, prompt encoder ✗, mask decoder ✓", "Tab. 4, row 1", _testa(21.2), trainable="proj_mask"),
            _row("encoder ✓, prompt encoder ✗, mask decoder ✗", "Tab. 4, row 2", _testa(82.9), trainable="enc_proj"),
            _row("encoder ✓, prompt encoder ✗, mask decoder ✓", "Tab. 4, row 3", _testa(83.3),
                 trainable="enc_proj_mask"),
            _row("encoder ✓, prompt encoder ✓, mask decoder ✓", "Tab. 4, row 4", _testa(83.7),
                 trainable="enc_proj_prompt_mask"),
        ),
    ),
    "table5": PaperTable(
        key="table5",
        title="Tab. 5 - which encoder output prompts SAM (RefCOCO testA)",
        axes=("feature",),
        note="BEiT-3-L early fusion; concat = text [CLS] ⊕ image [CLS] (as in late fusion).",
        rows=(
            _row("text [CLS]", "Tab. 5, row 1", _testa(83.5), feature="text_cls"),
            _row("image [CLS]", "Tab. 5, row 2", _testa(83.7), feature="image_cls"),
            _row("image AvgPool", "Tab. 5, row 3", _testa(83.5), feature="image_avg"),
            _row("text [CLS] + image [CLS], concat", "Tab. 5, row 4", _testa(83.2), feature="concat"),
        ),
    ),
    "table6": PaperTable(
        key="table6",
        title="Tab. 6 - extra semantic-segmentation data (eight splits + ADE20K val, cIoU)",
        axes=("extra_data",),
        splits=REFER_SPLITS + (ADE20K_VAL,),
        note="ADE20K val in cIoU (not mIoU); * = zero-shot (ADE20K not in training).",
        rows=(
            _row("RefCOCO/+/g only", "Tab. 6, row 1", {**_MAIN_SPLITS, ADE20K_VAL: 54.2}, extra_data="res",
                 note="ADE20K val zero-shot"),
            _row("+ ADE20K", "Tab. 6, row 2", {**_splits(81.7, 83.6, 80.3, 75.4, 78.4, 71.3, 75.5, 77.6),
                                               ADE20K_VAL: 75.9}, extra_data="res_ade20k"),
            _row("+ Mapillary", "Tab. 6, row 3", {**_splits(81.9, 83.5, 80.3, 75.1, 78.0, 70.8, 75.3, 77.4),
                                                  ADE20K_VAL: 59.6}, extra_data="res_mapillary",
                 note="ADE20K val zero-shot"),
            _row("+ ADE20K + Mapillary", "Tab. 6, row 4", {**_splits(81.8, 83.4, 79.7, 75.6, 78.0, 70.7, 75.8, 76.9),
                                                           ADE20K_VAL: 76.1}, extra_data="res_ade20k_mapillary"),
        ),
    ),
    "table7": PaperTable(
        key="table7",
        title="Tab. 7 - foundation models: multimodal encoder and SAM (eight splits)",
        axes=("encoder", "fusion", "sam"),
        splits=REFER_SPLITS,
        has_avg=True,
        note="CLIP-Large: its text encoder only. zoo rows: the official release's model zoo (hustvl/EVF-SAM "
             "README), not in the paper's table; its 'Reference Score' names no metric or split.",
        rows=(
            _row("CLIP-Large (text) + SAM-ViT-H", "Tab. 7, row 1",
                 _splits(61.0, 63.4, 59.9, 43.1, 45.9, 40.6, 48.9, 49.6), avg=51.6, params="1.08B",
                 encoder="clip_large", fusion="text"),
            _row("ViLT + SAM-ViT-H", "Tab. 7, row 2", _splits(73.9, 75.3, 70.9, 61.1, 64.4, 55.2, 65.1, 66.8),
                 avg=66.6, params="783M", encoder="vilt"),
            _row("BEiT-3-Base + SAM-ViT-H", "Tab. 7, row 3", _splits(78.9, 80.6, 75.3, 69.8, 74.2, 63.0, 71.6, 72.9),
                 avg=73.3, params="863M", encoder="beit3_base"),
            _row("BEiT-3-Large + EfficientSAM-S", "Tab. 7, row 4",
                 _splits(82.5, 83.5, 80.4, 75.4, 77.9, 70.2, 76.1, 77.1), avg=77.9, params="700M",
                 sam="efficient_sam_s", zoo_score=83.5, zoo_params="700M"),
            _row("BEiT-3-Large + SAM-ViT-H", "Tab. 7, row 5", _MAIN_SPLITS, avg=78.0, params="1.32B",
                 zoo_score=83.7, zoo_params="1.32B"),
            _row("EVF-Effi-SAM-B: BEiT-3-Base + EfficientSAM-T (model zoo)", "hustvl/EVF-SAM README", {},
                 kind="zoo", encoder="beit3_base", sam="efficient_sam_t", zoo_score=80.0, zoo_params="232M"),
            _row("EVF-SAM2: BEiT-3-Large + SAM-2-L, SAM-2 frozen (model zoo)", "hustvl/EVF-SAM README", {},
                 kind="zoo", sam="sam2_hiera_l", zoo_score=83.6, zoo_params="898M"),
        ),
    ),
}


def match_axes(run_axes: dict[str, Any]) -> dict[str, Any]:
    """A run's axes as matched against paper rows: a tiny pilot model stands for its full-size one."""
    out = dict(run_axes)
    for axis, stands in PILOT_STANDS_FOR.items():
        if out.get(axis) in stands:
            out[axis] = stands[out[axis]]
    return out


def paper_row(table: str, axes: dict[str, Any]) -> PaperRow | None:
    """The row of ``table`` (kind paper / zoo) whose values on the table's axes equal ``axes``'s."""
    spec = TABLES[table]
    axes = match_axes(axes)
    for row in spec.rows:
        if row.kind in ("paper", "zoo") and all(axes.get(a) == row.axes.get(a) for a in spec.axes):
            return row
    return None


def split_mean(values: dict[str, float]) -> float | None:
    """AVG as the paper computes it: the plain mean of the eight splits (None unless all are present)."""
    if not all(s in values for s in REFER_SPLITS):
        return None
    return sum(values[s] for s in REFER_SPLITS) / len(REFER_SPLITS)
