"""scripts/make_table.py on fabricated results.json files: exact layout, paper numbers and differences,
pilot seeds, metrics, row labels of training and evaluation runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evf_sam.paper_numbers import PENDING_CONFIG_GROUPS, REFER_SPLITS, TABLES
from evf_sam.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_table():
    return load_script("make_table")


def _metrics(ciou: float) -> dict:
    return {"ciou": ciou, "giou": ciou - 0.01, "pr@0.5": 0.8, "n_expressions": 10, "n_images": 4}


def _write(d: Path, data: dict) -> Path:
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(data))
    return d


def _train_cfg(fusion="early", mode="early", fused=None, encoder="beit3_large", model_encoder=None, sam="vit_h",
               trainable="enc_proj_prompt_mask", params=("encoder.*", "projector.*", "sam.*prompt_encoder.*",
                                                         "sam.*mask_decoder.*"), table="table3", seed=42,
               extra_data=None, data="refer_mix"):
    """A resolved training config as the trainer stores it under results.json["config"]."""
    cfg = {"paper_table": table, "seed": seed, "trainer": {"total_steps": 10},
           "model": {"encoder": model_encoder or encoder, "fusion": mode, "fused_layers": fused, "feature": None,
                     "sam_variant": sam},
           "encoder": {"name": encoder}, "fusion": {"name": fusion, "mode": mode, "fused_layers": fused},
           "feature": {"name": "auto", "value": None}, "sam": {"name": sam, "variant": sam},
           "trainable": {"name": trainable, "params": list(params)}, "data": {"name": data, "kind": "refer"}}
    if extra_data is not None:
        cfg["extra_data"] = {"name": extra_data}
    return cfg


def _train_run(root: Path, name: str, scores: dict[str, float], **cfg) -> Path:
    data = {s: _metrics(v) for s, v in scores.items()}
    # the trainer's extra keys: none of them is a split
    data.update(step=10, finished=True, final=str(root / name / "final"), best={"step": 5, "ciou": 0.9, "path": "x"},
                samples=80, config=_train_cfg(**cfg), checkpoint=str(root / name / "final"))
    return _write(root / name, data)


def _table_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("|")]


def test_table3_lists_the_papers_13_rows_with_ours_paper_and_difference(make_table, tmp_path, capsys):
    testa = "refcoco|unc|testA"
    early = _train_run(tmp_path, "e", {testa: 0.8012, "refcoco|unc|val": 0.7})
    text = _train_run(tmp_path, "t", {testa: 0.6049}, fusion="text", mode="text")
    clip = _train_run(tmp_path, "c", {testa: 0.6}, fusion="late", mode="late", encoder="clip_large")
    assert make_table.main([str(early), str(text), str(clip)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("### Tab. 3 - multimodal encoder and fusion (RefCOCO testA): ciou (%), ours vs paper "
                                   "(arXiv 2406.20076)")
    assert "BEiT-3-L)" not in out.splitlines()[0]
    assert "_3 run(s); encoder: beit3_large, clip_large; SAM: vit_h_" in out
    lines = _table_lines(out)
    assert lines[0] == "| encoder | fusion | paper row | ours (RefCOCO testA) | paper | Δ |"
    assert len(lines) == 2 + 13  # no "best" / "final" column or row; one line per paper row
    assert lines[2] == "| clip_large | text | CLIP-Large †, text | – | 63.4 | – |"
    assert lines[3] == "| clip_large | late | CLIP-Large †, late (concat) | 60.0 | 67.9 | -7.9 |"
    assert lines[11] == "| beit3_large | text | BEiT-3-Large, text | 60.5 | 65.1 | -4.6 |"
    assert lines[13] == "| beit3_large | early_l12 | BEiT-3-Large, early (L1-L12) | – | 82.2 | – |"
    assert lines[14] == "| beit3_large | early | BEiT-3-Large, early (L1-L24) | 80.1 | 83.7 | -3.6 |"


def test_pilot_seeds_print_mean_and_spread_beside_the_baselines(make_table, tmp_path, capsys):
    testa = "refcoco|unc|testA"
    runs = []
    for fusion, values in (("text", (0.40, 0.42, 0.47)), ("early", (0.50, 0.52, 0.54))):
        for seed, v in enumerate(values):
            d = _train_run(tmp_path, f"{fusion}{seed}", {testa: v}, fusion=fusion, mode=fusion, seed=seed,
                           encoder="beit3_large", model_encoder="beit3_tiny", sam="tiny", data="synthetic_grounded")
            data = json.loads((d / "results.json").read_text())
            data["baselines"] = {"union": {testa: _metrics(0.3123)}, "empty": {testa: _metrics(0.0)}}
            (d / "results.json").write_text(json.dumps(data))
            runs.append(str(d))
    early_l1 = _train_run(tmp_path, "l1", {testa: 0.45}, fusion="early_l12", mode="early_k", fused=1,
                          model_encoder="beit3_tiny", sam="tiny", data="synthetic_grounded")
    assert make_table.main([*runs, str(early_l1)]) == 0
    out = capsys.readouterr().out
    assert "PILOT runs (tiny models, synthetic data)" in out and "mean ± sample std over seeds" in out
    lines = _table_lines(out)
    assert lines[0] == "| encoder | fusion | paper row | ours (RefCOCO testA) | paper | Δ | seeds |"
    # text: mean 43.0, sample std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = 3.6
    assert lines[11] == "| beit3_tiny | text | BEiT-3-Large, text | 43.0 ± 3.6 | 65.1 | -22.1 | 3 |"
    assert lines[13] == "| beit3_tiny | early_l12 (L1-L1) | BEiT-3-Large, early (L1-L12) | 45.0 | 82.2 | -37.2 | 1 |"
    assert lines[14] == "| beit3_tiny | early | BEiT-3-Large, early (L1-L24) | 52.0 ± 2.0 | 83.7 | -31.7 | 3 |"
    assert lines[15:] == ["| – | – | text-blind baseline: union | 31.2 | – | – | – |",
                          "| – | – | text-blind baseline: empty | 0.0 | – | – | – |"]
    assert make_table.main(["--spread", "minmax", *runs]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[11] == "| beit3_tiny | text | BEiT-3-Large, text | 43.0 [40.0, 47.0] | 65.1 | -22.1 | 3 |"


def test_metric_that_no_run_has_is_an_error_not_an_empty_table(make_table, tmp_path, capsys):
    r = _train_run(tmp_path, "r", {"refcoco|unc|testA": 0.5})
    assert make_table.main(["--metric", "mIoU", str(r)]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert "no run has metric 'mIoU' on RefCOCO testA" in err.err and "ciou (1 split)" in err.err
    assert make_table.main(["--metric", "GIoU", str(r)]) == 0  # case-insensitive; the paper has no gIoU column
    out = capsys.readouterr().out
    assert "giou (%), ours only (the paper reports cIoU)" in out
    assert _table_lines(out)[14] == "| beit3_large | early | BEiT-3-Large, early (L1-L24) | 49.0 |"


def test_table6_eight_splits_and_ade20k_in_ciou(make_table, tmp_path, capsys):
    scores = {s: 0.5 for s in REFER_SPLITS}
    a = _train_run(tmp_path, "a", {**scores, "ade20k|semantic|val": 0.402}, table="table6",
                   extra_data="res_ade20k_mapillary", data="refer_mix_semantic")
    data = json.loads((a / "results.json").read_text())
    data["ade20k|semantic|val"]["miou"] = 0.455
    (a / "results.json").write_text(json.dumps(data))
    assert make_table.main([str(a)]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[0] == ("| extra_data | paper row | row | RefCOCO val | RefCOCO testA | RefCOCO testB | RefCOCO+ val | "
                        "RefCOCO+ testA | RefCOCO+ testB | RefCOCOg val | RefCOCOg test | ADE20K val | ADE20K val mIoU |")
    assert lines[2] == ("| res | RefCOCO/+/g only | paper | 82.1 | 83.7 | 80.0 | 75.2 | 78.3 | 70.1 | 76.8 | 77.4 | 54.2 | – |")
    assert lines[-3] == ("| res_ade20k_mapillary | + ADE20K + Mapillary | paper | 81.8 | 83.4 | 79.7 | 75.6 | 78.0 | 70.7 | "
                         "75.8 | 76.9 | 76.1 | – |")
    assert lines[-2] == ("| res_ade20k_mapillary | + ADE20K + Mapillary | ours | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | "
                         "50.0 | 50.0 | 40.2 | 45.5 |")
    assert lines[-1] == ("| res_ade20k_mapillary | + ADE20K + Mapillary | Δ | -31.8 | -33.4 | -29.7 | -25.6 | -28.0 | "
                         "-20.7 | -25.8 | -26.9 | -35.9 | – |")
    assert len(lines) == 2 + 4 + 2  # four paper rows, ours + Δ under the matching one
    assert make_table.main(["--metric", "miou", str(a)]) == 0  # mIoU where it exists: ADE20K val, no paper column
    lines = _table_lines(capsys.readouterr().out)
    assert lines[-1].endswith("| ours | – | – | – | – | – | – | – | – | 45.5 |")


def test_table2_is_a_comparison_with_the_published_methods(make_table, tmp_path, capsys):
    r = _train_run(tmp_path, "r", {s: 0.7 + 0.01 * i for i, s in enumerate(REFER_SPLITS)}, table="table2")
    assert make_table.main([str(r)]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[0] == ("| method | foundation model | SAM | data | row | RefCOCO val | RefCOCO testA | RefCOCO testB | "
                        "RefCOCO+ val | RefCOCO+ testA | RefCOCO+ testB | RefCOCOg val | RefCOCOg test | AVG |")
    assert lines[2] == "| LAVT | BERT-B (104M) | no | RC, gRC | paper | 72.7 | 75.8 | 68.8 | 62.1 | 68.4 | 55.1 | – | – | – |"
    assert [ln.split(" | ")[0][2:] for ln in lines[2:12]] == [
        "LAVT", "PolyFormer-L", "UNINEXT-H", "UniLSeg-100", "UniRef++-L", "LISA", "PixelLM", "GLaMM", "u-LLaVA", "PSALM"]
    assert lines[12] == ("| EVF-SAM | BEiT-3 (0.7B) | yes | RC | paper | 82.1 | 83.7 | 80.0 | 75.2 | 78.3 | 70.1 | 76.8 | "
                         "77.4 | 78.0 |")
    assert lines[13] == ("| ours: beit3_large + vit_h | beit3_large | vit_h | refer_mix | ours | 70.0 | 71.0 | 72.0 | "
                         "73.0 | 74.0 | 75.0 | 76.0 | 77.0 | 73.5 |")
    assert lines[14].startswith("| ours: beit3_large + vit_h | beit3_large | vit_h | refer_mix | Δ | -12.1 | -12.7 |")
    assert lines[14].endswith("| -0.4 | -4.5 |")


def test_table7_paper_rows_and_model_zoo_rows(make_table, tmp_path, capsys):
    r = _train_run(tmp_path, "r", {"refcoco|unc|testA": 0.83}, table="table7", sam="efficient_sam_s",
                   trainable="enc_proj_mask")
    assert make_table.main(["--csv", str(r)]) == 0
    import csv

    out = capsys.readouterr().out
    rows = out.splitlines()
    assert rows[0] == ("encoder,fusion,sam,paper row,row,RefCOCO val,RefCOCO testA,RefCOCO testB,RefCOCO+ val,"
                       "RefCOCO+ testA,RefCOCO+ testB,RefCOCOg val,RefCOCOg test,AVG,zoo params,zoo score")
    labels = [row[3] for row in csv.reader(rows[1:])]
    assert labels == ["CLIP-Large (text) + SAM-ViT-H", "ViLT + SAM-ViT-H", "BEiT-3-Base + SAM-ViT-H",
                      "BEiT-3-Large + EfficientSAM-S", "BEiT-3-Large + EfficientSAM-S", "BEiT-3-Large + EfficientSAM-S",
                      "BEiT-3-Large + SAM-ViT-H", "EVF-Effi-SAM-B: BEiT-3-Base + EfficientSAM-T (model zoo)",
                      "EVF-SAM2: BEiT-3-Large + SAM-2-L, SAM-2 frozen (model zoo)"]
    assert rows[4].endswith(",paper,82.5,83.5,80.4,75.4,77.9,70.2,76.1,77.1,77.9,700M,83.5")
    assert rows[5].endswith(",ours,,83.0,,,,,,,,,")
    assert rows[6].endswith(",Δ,,-0.5,,,,,,,,,")
    assert rows[8].endswith(",model zoo,,,,,,,,,,232M,80.0")


def test_eval_runs_are_labelled_by_the_axes_of_their_checkpoint(make_table, tmp_path, capsys):
    """eval_refcoco.py writes its own config (checkpoint, splits); the row comes from the training run of the
    checkpoint, or from the checkpoint's config.json, or from an explicit "axes"."""
    import yaml

    testa = "refcoco|unc|testA"
    run = tmp_path / "train_run"
    (run / "final").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(_train_cfg(fusion="late", mode="late")))
    ev1 = _write(tmp_path / "ev1", {testa: _metrics(0.69), "config": {"checkpoint": str(run / "final"),
                                                                      "splits": [testa]}, "checkpoint": "x"})
    ckpt = tmp_path / "official"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"encoder": "beit3_large", "fusion": "text", "sam_variant": "vit_h"}))
    ev2 = _write(tmp_path / "ev2", {testa: _metrics(0.64), "config": {"checkpoint": str(ckpt)}})
    ev3 = _write(tmp_path / "ev3", {testa: _metrics(0.83), "config": {"checkpoint": "/nowhere"},
                                    "axes": {"encoder": "beit3_large", "fusion": "early", "sam": "vit_h"}})
    ev4 = _write(tmp_path / "ev4", {testa: _metrics(0.1), "config": {"checkpoint": "/nowhere"}})
    assert make_table.main(["--table", "table3", str(ev1), str(ev2), str(ev3), str(ev4)]) == 0
    out = capsys.readouterr()
    assert "no axes for " + str(ev4 / "results.json") in out.err
    lines = _table_lines(out.out)
    assert lines[11] == "| beit3_large | text | BEiT-3-Large, text | 64.0 | 65.1 | -1.1 |"
    assert lines[12] == "| beit3_large | late | BEiT-3-Large, late (concat) | 69.0 | 69.6 | -0.6 |"
    assert lines[14] == "| beit3_large | early | BEiT-3-Large, early (L1-L24) | 83.0 | 83.7 | -0.7 |"
    assert lines[15] == "| – | – | (not a paper row) | 10.0 | – | – |"
    assert "final" not in out.out


def test_table4_marks_the_trained_modules(make_table, tmp_path, capsys):
    r = _train_run(tmp_path, "r", {"refcoco|unc|testA": 0.2}, table="table4", trainable="proj_mask",
                   params=("projector.*", "sam.*mask_decoder.*"))
    assert make_table.main([str(r)]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[0] == "| trainable | MM enc. | prompt enc. | mask dec. | paper row | ours (RefCOCO testA) | paper | Δ |"
    assert lines[2] == ("| proj_mask | ✗ | ✗ | ✓ | encoder ✗, prompt encoder ✗, mask decoder ✓ | 20.0 | 21.2 | -1.2 |")
    assert lines[5] == ("| enc_proj_prompt_mask | – | – | – | encoder ✓, prompt encoder ✓, mask decoder ✓ | – | 83.7 | – |")


def test_by_type_breakdown_of_pilot_evaluations(make_table, tmp_path, capsys):
    def by_type(model: dict[str, float]) -> dict:
        union = {"all": 0.31, "colour": 0.3, "ordinal": 0.33}
        return {"model": {t: _metrics(v) for t, v in model.items()},
                "union": {t: _metrics(v) for t, v in union.items()}, "empty": {t: _metrics(0.0) for t in union}}

    runs = []
    for seed, (a, c, o) in enumerate(((0.5, 0.8, 0.3), (0.6, 0.9, 0.4))):
        d = _train_run(tmp_path, f"s{seed}", {"refcoco|unc|val": a}, seed=seed, model_encoder="beit3_tiny", sam="tiny")
        data = json.loads((d / "results.json").read_text())
        data["by_type"] = by_type({"all": a, "colour": c, "ordinal": o})
        (d / "results.json").write_text(json.dumps(data))
        runs.append(str(d))
    assert make_table.main(["--by-type", *runs]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines == ["| fusion | encoder | row | all | colour | ordinal | seeds |", "|---|---|---|---|---|---|---|",
                     "| early | beit3_tiny | ours | 55.0 ± 7.1 | 85.0 ± 7.1 | 35.0 ± 7.1 | 2 |",
                     "| – | – | text-blind baseline: union | 31.0 | 30.0 | 33.0 | – |",
                     "| – | – | text-blind baseline: empty | 0.0 | 0.0 | 0.0 | – |",
                     "| – | – | expressions (per run) | 10 | 10 | 10 | – |"]
    plain = _train_run(tmp_path, "plain", {"refcoco|unc|val": 0.5})
    assert make_table.main(["--by-type", str(plain)]) == 2
    assert "scripts/eval_pilot.py" in capsys.readouterr().err


def test_generic_layout_and_unfinished_runs(make_table, tmp_path, capsys):
    r = _train_run(tmp_path, "r", {"refcocog|umd|test": 0.5}, fusion="late", mode="late", table=None)
    (tmp_path / "unfinished").mkdir()
    assert make_table.main([str(r), str(tmp_path / "unfinished"), "--metric", "giou"]) == 0
    out = capsys.readouterr()
    assert "unfinished" in out.err
    assert _table_lines(out.out) == [
        "| encoder | fusion | feature | trainable | sam | extra_data | RefCOCOg test |",
        "|---|---|---|---|---|---|---|",
        "| beit3_large | late | concat | enc_proj_prompt_mask | vit_h | res | 49.0 |",
    ]
    assert make_table.main([str(tmp_path / "unfinished")]) == 2


def test_every_paper_table_row_names_existing_config_groups():
    """Row axes name configs/<axis>/<value>.yaml; the ones still to be written are exactly PENDING_CONFIG_GROUPS."""
    missing = set()
    for table in TABLES.values():
        assert (ROOT / "configs" / "experiment" / f"{table.key}.yaml").is_file() or table.key == "table2"
        for row in table.rows:
            for axis, value in row.axes.items():
                if not (ROOT / "configs" / axis / f"{value}.yaml").is_file():
                    missing.add((axis, value))
    assert missing == set(PENDING_CONFIG_GROUPS)


def test_runs_with_another_recipe_are_not_seeds_of_one_row(make_table, tmp_path, capsys):
    testa = "refcoco|unc|testA"
    runs = []
    for name, seed, lr in (("a", 0, 1e-4), ("b", 1, 1e-4), ("c", 0, 3e-4)):
        d = _train_run(tmp_path, name, {testa: 0.5 + 0.1 * seed + lr * 100}, seed=seed)
        data = json.loads((d / "results.json").read_text())
        data["config"].update(optim={"lr": lr}, run_dir=str(d))
        data["config"]["model"]["tokenizer"] = str(d / "tokenizer")  # per-run path: not a recipe difference
        (d / "results.json").write_text(json.dumps(data))
        runs.append(str(d))
    assert make_table.main(runs) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[14] == "| beit3_large | early [optim.lr=0.0001] | BEiT-3-Large, early (L1-L24) | 56.0 ± 7.1 | 83.7 | -27.7 | 2 |"
    assert lines[15] == "| beit3_large | early [optim.lr=0.0003] | BEiT-3-Large, early (L1-L24) | 53.0 | 83.7 | -30.7 | 1 |"


def test_eval_runs_with_their_training_config_get_trainable_marks_and_recipe(make_table, tmp_path, capsys):
    """The fields an evaluation run should carry: "axes" (row label) and "train_config" (recipe, Tab. 4 marks)."""
    cfg = _train_cfg(trainable="enc_proj", params=("encoder.*", "projector.*"), table="table4")
    ev = _write(tmp_path / "ev", {"refcoco|unc|testA": _metrics(0.81), "config": {"checkpoint": "/gone"},
                                  "axes": {"encoder": "beit3_large", "fusion": "early", "trainable": "enc_proj"},
                                  "train_config": cfg})
    assert make_table.main(["--table", "table4", str(ev)]) == 0
    lines = _table_lines(capsys.readouterr().out)
    assert lines[3] == "| enc_proj | ✓ | ✗ | ✗ | encoder ✓, prompt encoder ✗, mask decoder ✗ | 81.0 | 82.9 | -1.9 |"


def test_rows_that_differ_off_the_tables_axes_say_how(make_table, tmp_path, capsys):
    """Tab. 2 rows are told apart by encoder + SAM: two fusions of the same pair get their fusion in the label."""
    scores = {s: 0.5 for s in REFER_SPLITS}
    a = _train_run(tmp_path, "a", scores, table="table2", fusion="text", mode="text")
    b = _train_run(tmp_path, "b", scores, table="table2")
    assert make_table.main([str(a), str(b)]) == 0
    labels = [ln.split(" | ")[0][2:] for ln in _table_lines(capsys.readouterr().out)[13:]]
    # an "ours" and a "Δ" line per group
    assert labels == ["ours: beit3_large + vit_h [fusion=text; feature=text_cls]"] * 2 + \
        ["ours: beit3_large + vit_h [fusion=early; feature=image_cls]"] * 2


def test_eval_results_carry_the_axes_and_training_config_of_their_checkpoint(make_table, tmp_path, capsys):
    """What eval_refcoco.py writes (engine.evaluate.write_results with run_axes.checkpoint_labels): the row's
    axes and the training config in results.json itself, so the table needs neither the training run nor
    the checkpoint any more; the markdown row is named by the training run, not "final"."""
    import shutil

    import yaml

    from evf_sam.engine.evaluate import write_results
    from evf_sam.run_axes import checkpoint_labels

    testa = "refcoco|unc|testA"
    run = tmp_path / "table4" / "proj_mask"
    (run / "final").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(_train_cfg(
        table="table4", trainable="proj_mask", params=("projector.*", "sam.*mask_decoder.*"))))
    labels = checkpoint_labels(run / "final")
    assert labels["axes"]["trainable"] == "proj_mask" and labels["axes"]["paper_table"] == "table4"
    assert labels["train_config"]["trainable"]["name"] == "proj_mask"
    assert checkpoint_labels(tmp_path / "nowhere") == {}
    out = tmp_path / "eval"
    write_results(out, {testa: _metrics(0.25)}, config={"checkpoint": str(run / "final")},
                  checkpoint=str(run / "final"), row_name="proj_mask/final", labels=labels)
    shutil.rmtree(run)  # the labels travel with the results
    saved = json.loads((out / "results.json").read_text())
    assert saved["axes"] == labels["axes"] and saved[testa]["ciou"] == 0.25
    assert make_table.main([str(out)]) == 0  # the table from the axes' paper_table
    lines = _table_lines(capsys.readouterr().out)
    assert lines[2] == "| proj_mask | ✗ | ✗ | ✓ | encoder ✗, prompt encoder ✗, mask decoder ✓ | 25.0 | 21.2 | +3.8 |"
