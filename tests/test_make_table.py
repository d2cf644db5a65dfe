"""scripts/make_table.py on fabricated results.json files: exact layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_table():
    spec = importlib.util.spec_from_file_location("make_table", ROOT / "scripts" / "make_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics(ciou: float) -> dict:
    return {"ciou": ciou, "giou": ciou - 0.01, "pr@0.5": 0.8, "pr@0.6": 0.7, "pr@0.7": 0.6, "pr@0.8": 0.5,
            "pr@0.9": 0.2, "n_expressions": 10, "n_images": 4}


def _run(root: Path, name: str, config: dict, scores: dict[str, float]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    data = {split: _metrics(v) for split, v in scores.items()}
    data.update(config=config, checkpoint=str(d / "ckpt"))
    (d / "results.json").write_text(json.dumps(data))
    return d


def _cfg(fusion: str, mode: str, fused=None, feature=None, feature_name="auto", table="table3",
         trainable="enc_proj_prompt_mask", params=("encoder.*", "projector.*", "sam.prompt_encoder.*",
                                                   "sam.mask_decoder.*")):
    return {"paper_table": table, "encoder": {"name": "beit3_large", "pretrained": None, "tokenizer": None},
            "fusion": {"name": fusion, "mode": mode, "fused_layers": fused},
            "feature": {"name": feature_name, "value": feature},
            "trainable": {"name": trainable, "params": list(params)}}


def test_table3_markdown_exact(make_table, tmp_path, capsys):
    # given out of order: the paper's row order wins
    early = _run(tmp_path, "2", _cfg("early", "early"), {"refcoco|unc|val": 0.7512, "refcocog|umd|val": 0.70})
    text = _run(tmp_path, "0", _cfg("text", "text"), {"refcoco|unc|val": 0.6049, "refcocog|umd|val": 0.55})
    l12 = _run(tmp_path, "1", _cfg("early_l12", "early_k", fused=12), {"refcoco|unc|val": 0.73})
    assert make_table.main([str(early), str(text), str(l12)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "### Tab. 3 - fusion (BEiT-3-L): ciou (%), ours vs paper (arXiv 2406.20076)",
        "",
        "| fusion | RefCOCO val | paper | RefCOCOg val | paper |",
        "|---|---|---|---|---|",
        "| text | 60.5 | – | 55.0 | – |",
        "| early_l12 | 73.0 | – | – | – |",
        "| early | 75.1 | – | 70.0 | – |",
    ]


def test_table4_csv_exact_with_trainable_marks(make_table, tmp_path, capsys):
    a = _run(tmp_path, "a", _cfg("early", "early", feature="image_cls", feature_name="image_cls", table="table4",
                                  trainable="enc_proj", params=("encoder.*", "projector.*")),
             {"refcoco|unc|val": 0.70, "refcoco+|unc|testA": 0.6})
    b = _run(tmp_path, "b", _cfg("early", "early", feature="image_cls", feature_name="image_cls", table="table4",
                                  trainable="proj_prompt_mask",
                                  params=("projector.*", "sam.prompt_encoder.*", "sam.mask_decoder.*")),
             {"refcoco|unc|val": 0.655})
    assert make_table.main(["--csv", str(a / "results.json"), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "trainable,MM enc.,prompt enc.,mask dec.,RefCOCO val,paper,RefCOCO+ testA,paper",
        "proj_prompt_mask,✗,✓,✓,65.5,,,",
        "enc_proj,✓,✗,✗,70.0,,60.0,",
    ]


def test_paper_numbers_fill_the_paper_column(make_table, tmp_path, capsys, monkeypatch):
    import dataclasses

    from evf_sam import paper_numbers

    t5 = paper_numbers.TABLES["table5"]
    rows = tuple(dataclasses.replace(r, paper={"refcoco|unc|val": 80.0}) if r.axes["feature"] == "concat" else r
                 for r in t5.rows)
    monkeypatch.setitem(make_table.TABLES, "table5", dataclasses.replace(t5, rows=rows))
    r = _run(tmp_path, "r", _cfg("early", "early", feature="concat", feature_name="concat", table="table5"),
             {"refcoco|unc|val": 0.781})
    assert make_table.main(["--table", "table5", "--metric", "ciou", str(r)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| concat | 78.1 | 80.0 |"


def test_generic_layout_and_unfinished_runs(make_table, tmp_path, capsys):
    cfg = _cfg("late", "late", table=None)
    r = _run(tmp_path, "r", cfg, {"refcocog|umd|test": 0.5})
    (tmp_path / "unfinished").mkdir()
    assert make_table.main([str(r), str(tmp_path / "unfinished"), "--metric", "giou"]) == 0
    out = capsys.readouterr()
    assert "unfinished" in out.err
    assert out.out.splitlines() == [
        "### Runs: giou (%)",
        "",
        "| encoder | fusion | feature | trainable | MM enc. | prompt enc. | mask dec. | RefCOCOg test |",
        "|---|---|---|---|---|---|---|---|",
        "| beit3_large | late | concat | enc_proj_prompt_mask | ✓ | ✓ | ✓ | 49.0 |",
    ]


def test_every_paper_table_row_names_existing_config_groups():
    from evf_sam.paper_numbers import TABLES

    for table in TABLES.values():
        assert (ROOT / "configs" / "experiment" / f"{table.key}.yaml").is_file()
        for row in table.rows:
            for axis, value in row.axes.items():
                assert (ROOT / "configs" / axis / f"{value}.yaml").is_file(), (table.key, axis, value)


def test_table6_layout_with_ade20k_miou_column(make_table, tmp_path, capsys):
    runs = []
    for i, (row, ref, ade, miou) in enumerate([("res_ade20k_mapillary", 0.801, 0.402, 0.455), ("res", 0.81, 0.101, None)]):
        cfg = {**_cfg("early", "early", table="table6"), "extra_data": {"name": row, "rates": {}},
               "data": {"name": "refer_mix_semantic"}}
        d = _run(tmp_path, str(i), cfg, {"refcoco|unc|val": ref, "ade20k|semantic|val": ade})
        if miou is not None:
            data = json.loads((d / "results.json").read_text())
            data["ade20k|semantic|val"]["miou"] = miou
            (d / "results.json").write_text(json.dumps(data))
        runs.append(str(d))
    assert make_table.main(runs) == 0
    assert capsys.readouterr().out.splitlines() == [
        "### Tab. 6 - extra semantic data (ADE20K, Mapillary Vistas): ciou (%), ours vs paper (arXiv 2406.20076)",
        "",
        "| extra_data | RefCOCO val | paper | ADE20K val | paper | ADE20K val mIoU |",
        "|---|---|---|---|---|---|",
        "| res | 81.0 | – | 10.1 | – | – |",
        "| res_ade20k_mapillary | 80.1 | – | 40.2 | – | 45.5 |",
    ]


def test_table7_layout_with_the_official_model_zoo_columns(make_table, tmp_path, capsys):
    runs = []
    for i, (sam, enc, v) in enumerate([("sam2_hiera_l", "beit3_large", 0.83), ("efficient_sam_t", "beit3_base", 0.79),
                                       ("vit_h", "beit3_base", 0.8)]):
        cfg = {**_cfg("early", "early", table="table7"), "sam": {"name": sam, "variant": sam}}
        cfg["encoder"]["name"] = enc
        runs.append(str(_run(tmp_path, str(i), cfg, {"refcoco|unc|testA": v})))
    assert make_table.main(["--csv", *runs]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "sam,encoder,release params,release ref. score,RefCOCO testA,paper",
        "vit_h,beit3_base,,,80.0,",
        "efficient_sam_t,beit3_base,232M,80.0,79.0,",
        "sam2_hiera_l,beit3_large,898M,83.6,83.0,",
    ]
