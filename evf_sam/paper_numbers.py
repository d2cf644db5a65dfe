"""The ablation tables of the EVF-SAM paper (arXiv 2406.20076), as `scripts/make_table.py` lays them out.

Each table names the ablation axes that label its rows (config-group names under configs/), the
evaluation splits of its columns, and per row the published number for each split.

STATUS OF THE NUMBERS: not transcribed yet. The environment this file was written in could not read
the tables' contents (only the paper's abstract was reachable), so every ``paper`` value is ``None``
and `make_table.py` prints "–" in the paper column. Do not fill them from memory: copy them from the
paper (cite version and table number in the row's comment), e.g. ``paper={"refcoco|unc|val": 82.1}``.
The row sets below follow the ablation axes this codebase implements; check them against the paper's
tables when transcribing, and add or drop rows to match.

What IS filled in: Tab. 7's ``reference`` / ``params``, from the official release's model zoo
(hustvl/EVF-SAM README, "Weights" table): EVF-SAM 83.7 / 1.32B, EVF-SAM2 83.6 / 898M,
EVF-Effi-SAM-L 83.5 / 700M, EVF-Effi-SAM-B 80.0 / 232M. The README calls the score "Reference
Score" without naming metric or split; `make_table.py` prints it in its own column, never as a
split's number. The parameter counts are checked against our models in tests/test_sam_backends.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPER = "EVF-SAM: Early Vision-Language Fusion for Text-Prompted Segment Anything Model, arXiv 2406.20076"

# Column order for every table: the paper's RefCOCO/+/g evaluation splits (cIoU).
REFER_SPLITS = (
    "refcoco|unc|val", "refcoco|unc|testA", "refcoco|unc|testB",
    "refcoco+|unc|val", "refcoco+|unc|testA", "refcoco+|unc|testB",
    "refcocog|umd|val", "refcocog|umd|test",
)


@dataclass(frozen=True)
class PaperRow:
    axes: dict[str, str]  # axis -> value, e.g. {"encoder": "clip_large", "fusion": "text"}
    label: str  # the paper's wording of the row
    paper: dict[str, float] | None = None  # split -> published cIoU (percent); None = not transcribed
    # Official release model zoo (hustvl/EVF-SAM README, "Weights" table): its "Reference Score" (the
    # README does not say which metric / split) and parameter count. None where the zoo has no such model.
    reference: float | None = None
    params: str | None = None


@dataclass(frozen=True)
class PaperTable:
    key: str  # "table1" = configs/experiment/table1.yaml
    title: str
    axes: tuple[str, ...]  # row-label columns, in order
    splits: tuple[str, ...] = REFER_SPLITS
    metric: str = "ciou"
    rows: tuple[PaperRow, ...] = field(default_factory=tuple)


TABLES: dict[str, PaperTable] = {
    # Tab. 1: which prompt encoder. Text-only vs multimodal prompts, late vs early fusion.
    "table1": PaperTable(
        key="table1",
        title="Tab. 1 - prompt encoders (text vs multimodal prompts)",
        axes=("encoder", "fusion"),
        rows=(
            PaperRow({"encoder": "clip_large", "fusion": "text"}, "CLIP ViT-L/14, text prompt"),
            PaperRow({"encoder": "clip_large", "fusion": "late"}, "CLIP ViT-L/14, multimodal, late fusion"),
            PaperRow({"encoder": "clip_huge", "fusion": "text"}, "OpenCLIP ViT-H/14, text prompt"),
            PaperRow({"encoder": "clip_huge", "fusion": "late"}, "OpenCLIP ViT-H/14, multimodal, late fusion"),
            PaperRow({"encoder": "vilt", "fusion": "early"}, "ViLT, multimodal, early fusion"),
            PaperRow({"encoder": "beit3_large", "fusion": "text"}, "BEiT-3-L, text prompt"),
            PaperRow({"encoder": "beit3_large", "fusion": "early"}, "BEiT-3-L, multimodal, early fusion"),
        ),
    ),
    # Tab. 3: fusion mechanism inside BEiT-3-L.
    "table3": PaperTable(
        key="table3",
        title="Tab. 3 - fusion (BEiT-3-L)",
        axes=("fusion",),
        rows=(
            PaperRow({"fusion": "text"}, "text only"),
            PaperRow({"fusion": "late"}, "late fusion"),
            PaperRow({"fusion": "early_l12"}, "early fusion (L1-L12)"),
            PaperRow({"fusion": "early"}, "early fusion (all layers)"),
        ),
    ),
    # Tab. 4: trainable modules; the SAM image encoder is always frozen.
    "table4": PaperTable(
        key="table4",
        title="Tab. 4 - trainable modules (SAM image encoder frozen)",
        axes=("trainable",),
        rows=(
            PaperRow({"trainable": "proj_prompt_mask"}, "encoder frozen; prompt encoder + mask decoder trained"),
            PaperRow({"trainable": "enc_proj"}, "encoder trained; prompt encoder + mask decoder frozen"),
            PaperRow({"trainable": "enc_proj_mask"}, "encoder + mask decoder trained; prompt encoder frozen"),
            PaperRow({"trainable": "enc_proj_prompt_mask"}, "encoder + prompt encoder + mask decoder trained"),
        ),
    ),
    # Tab. 5: which encoder output becomes the prompt.
    "table5": PaperTable(
        key="table5",
        title="Tab. 5 - prompt feature (BEiT-3-L, early fusion)",
        axes=("feature",),
        rows=(
            PaperRow({"feature": "image_cls"}, "image [CLS]"),
            PaperRow({"feature": "text_cls"}, "text [CLS]"),
            PaperRow({"feature": "image_avg"}, "average of image tokens"),
            PaperRow({"feature": "concat"}, "text [CLS] + image [CLS]"),
        ),
    ),
    # Tab. 6: extra semantic-segmentation training data ("[semantic] <class>" expressions); rows are
    # the extra_data config group. Columns: RefCOCO val and ADE20K val (+ its mIoU).
    "table6": PaperTable(
        key="table6",
        title="Tab. 6 - extra semantic data (ADE20K, Mapillary Vistas)",
        axes=("extra_data",),
        splits=("refcoco|unc|val", "ade20k|semantic|val"),
        rows=(
            PaperRow({"extra_data": "res"}, "RES data only"),
            PaperRow({"extra_data": "res_ade20k"}, "RES + ADE20K"),
            PaperRow({"extra_data": "res_ade20k_mapillary"}, "RES + ADE20K + Mapillary Vistas"),
        ),
    ),
    # Tab. 7: which SAM (prompted by the same early-fusion BEiT-3). Rows = the official model zoo.
    "table7": PaperTable(
        key="table7",
        title="Tab. 7 - SAM variants (BEiT-3 early fusion)",
        axes=("sam", "encoder"),
        rows=(
            PaperRow({"sam": "vit_h", "encoder": "beit3_large"}, "SAM-H + BEiT-3-L (EVF-SAM)",
                     reference=83.7, params="1.32B"),
            PaperRow({"sam": "vit_h", "encoder": "beit3_base"}, "SAM-H + BEiT-3-B (EVF-SAM base)"),
            PaperRow({"sam": "efficient_sam_s", "encoder": "beit3_large"}, "EfficientSAM-S + BEiT-3-L (EVF-Effi-SAM-L)",
                     reference=83.5, params="700M"),
            PaperRow({"sam": "efficient_sam_t", "encoder": "beit3_base"}, "EfficientSAM-T + BEiT-3-B (EVF-Effi-SAM-B)",
                     reference=80.0, params="232M"),
            PaperRow({"sam": "sam2_hiera_l", "encoder": "beit3_large"}, "SAM-2-L + BEiT-3-L (EVF-SAM2, SAM-2 frozen)",
                     reference=83.6, params="898M"),
        ),
    ),
}


def paper_row(table: str, axes: dict[str, str]) -> PaperRow | None:
    """The row of ``table`` whose axis values all match ``axes`` (extra keys in ``axes`` are ignored)."""
    for row in TABLES[table].rows:
        if all(axes.get(k) == v for k, v in row.axes.items()):
            return row
    return None
