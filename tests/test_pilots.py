"""The CPU pilots of the paper's tables (configs/experiment/pilot_table*.yaml): every pilot row lands on its
own paper row, and one pilot runs end to end (sweep -> eval_pilot -> make_table) at toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evf_sam.config  # noqa: F401  (registers the schemas)
from evf_sam.paper_numbers import REFER_SPLITS
from evf_sam.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PILOTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("pilot_table[0-9].yaml"))
# variants of a table's pilot (same rows, another recipe): pilot_table<N>_<what>.yaml
PILOT_VARIANTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("pilot_table[0-9]_*.yaml"))


def _load(name: str):
    return load_script(name)


def _rows(experiment: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        base = compose("train", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        (key, spec), = dict(base.hydra.sweeper.params).items()
        if spec.strip() == "glob(*)":
            values = sorted(p.stem for p in (CONFIGS / key.lstrip("+")).glob("*.yaml"))
        else:
            values = [v.strip() for v in spec.split(",")]
        return base, [compose("train", overrides=[f"+experiment={experiment}", f"{key}={v}"]) for v in values]


def test_every_table_but_2_has_a_pilot():
    # Tab. 2 compares published methods (no configuration of ours but the main run)
    assert PILOTS == ["pilot_table1", "pilot_table3", "pilot_table4", "pilot_table5", "pilot_table6", "pilot_table7"]


# The paper rows of each pilot (every row the paper has that a tiny model can stand for)
PILOT_ROWS = {
    "table1": ["Tab. 1, row 1", "Tab. 1, row 2", "Tab. 1, row 3", "Tab. 1, row 4"],
    "table3": ["Tab. 3, row 1", "Tab. 3, row 10", "Tab. 3, row 11", "Tab. 3, row 12", "Tab. 3, row 13",
               "Tab. 3, row 2", "Tab. 3, row 7", "Tab. 3, row 8", "Tab. 3, row 9"],
    "table6": ["Tab. 6, row 1", "Tab. 6, row 2", "Tab. 6, row 3", "Tab. 6, row 4"],
    "table7": ["Tab. 7, row 1", "Tab. 7, row 2", "Tab. 7, row 4", "Tab. 7, row 5", "hustvl/EVF-SAM README"],
}


@pytest.mark.parametrize("experiment", PILOTS + PILOT_VARIANTS)
def test_pilot_rows_are_distinct_paper_rows_on_tiny_models(experiment):
    from omegaconf import OmegaConf

    from evf_sam.config import typed
    from evf_sam.paper_numbers import paper_row
    from evf_sam.run_axes import axes_from_config

    base, rows = _rows(experiment)
    table = base.paper_table
    assert experiment in (f"pilot_{table}", *(v for v in PILOT_VARIANTS if v.startswith(f"pilot_{table}_")))
    assert len(rows) >= 2
    sources, dirs = [], set()
    for cfg in rows:
        axes = axes_from_config(OmegaConf.to_container(cfg, resolve=True))
        assert axes["pilot"] and axes["encoder"] in ("beit3_tiny", "clip_tiny", "vilt_tiny")
        assert cfg.model.encoder == cfg.encoder.name
        row = paper_row(table, axes)
        assert row is not None, axes
        sources.append(row.source)
        dirs.add(cfg.run_dir)
        model = typed(cfg.model)
        assert model.sam_variant in ("tiny", "efficient_sam_tiny", "sam2_tiny") and model.make_tiny_tokenizer
    assert len(set(sources)) == len(rows) == len(dirs)  # one paper row and one run dir per pilot row
    if table in PILOT_ROWS:
        assert sorted(sources) == PILOT_ROWS[table]
    if table == "table3":
        (l12,) = [cfg for cfg in rows if cfg.fusion.name == "early_l12"]
        assert l12.fusion.fused_layers == 1  # L1-L12 of 24 layers, scaled to the 2-layer tiny BEiT-3


def test_pilot_table3_colour_is_pilot_table3_on_colour_data_from_a_pretrained_sam():
    """The Tab. 3 variant keeps every row's model and optimiser and changes only what its header says:
    colour-only expressions over repeating colours in their own data root, 10,000 training images, a
    pre-trained SAM, 32 x 3,000 samples, its own run and sweep directories."""
    from omegaconf import OmegaConf

    base, rows = _rows("pilot_table3")
    variant, vrows = _rows("pilot_table3_colour")
    assert len(rows) == len(vrows) and variant.paper_table == base.paper_table == "table3"
    assert variant.hydra.sweep.dir != base.hydra.sweep.dir
    for a, b in zip(rows, vrows):
        a, b = OmegaConf.to_container(a, resolve=True), OmegaConf.to_container(b, resolve=True)
        assert b["fusion"] == a["fusion"] and b["encoder"] == a["encoder"] and b["optim"] == a["optim"]
        assert b["model"] == {**a["model"], "sam_checkpoint": "runs/pilot_sam/sam.pth"}
        assert a["run_dir"].startswith("runs/pilot_table3/") and b["run_dir"].startswith("runs/pilot_table3_colour/")
        assert b["run_dir"].split("/")[-1] == a["run_dir"].split("/")[-1] and b["data"]["root"] != a["data"]["root"]
        assert b["data"]["synthetic"] == {**a["data"]["synthetic"], "num_train": 10000, "expression_types": ["colour"]}
        assert b["data"]["synthetic"]["repeat_colours"] in (None, True)
        assert b["data"]["synthetic"]["difficulty"] == "grounded"
        assert b["trainer"]["micro_batch_size"] * b["trainer"]["total_steps"] == 96_000
        for group, changed in (("trainer", {"micro_batch_size", "total_steps"}),
                               ("data", {"root", "embedding_cache", "synthetic"})):
            assert {k: v for k, v in b[group].items() if k not in changed} == \
                {k: v for k, v in a[group].items() if k not in changed}


def test_pilot_table3_colour_frozen_is_the_colour_pilot_with_the_sam_decoder_frozen():
    """The frozen variant is pilot_table3_colour, row for row, but for what trains (the encoder and the
    projector; SAM's prompt encoder and mask decoder stay the pre-trained ones) and where its runs go."""
    from fnmatch import fnmatch

    from omegaconf import OmegaConf

    colour, rows = _rows("pilot_table3_colour")
    frozen, frows = _rows("pilot_table3_colour_frozen")
    assert frozen.paper_table == "table3" and frozen.hydra.sweep.dir != colour.hydra.sweep.dir
    assert len(rows) == len(frows)
    for a, b in zip(rows, frows):
        a, b = OmegaConf.to_container(a, resolve=True), OmegaConf.to_container(b, resolve=True)
        assert a["trainable"]["name"] == "enc_proj_prompt_mask" and b["trainable"]["name"] == "enc_proj"
        for name in ("sam.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
                     "sam.prompt_encoder.no_mask_embed.weight", "sam.image_encoder.patch_embed.proj.weight"):
            assert any(fnmatch(name, g) for g in a["trainable"]["params"]) == (not name.startswith("sam.image"))
            assert not any(fnmatch(name, g) for g in b["trainable"]["params"])
        for name in ("encoder.model.encoder.layers.0.self_attn.q_proj.A.weight", "projector.fc1.weight"):
            assert any(fnmatch(name, g) for g in b["trainable"]["params"])
        assert a["run_dir"].startswith("runs/pilot_table3_colour/")
        assert b["run_dir"] == a["run_dir"].replace("runs/pilot_table3_colour/", "runs/pilot_table3_colour_frozen/")
        assert b["name"] != a["name"] or a["name"].startswith(("pilot_table3_clip", "pilot_table3_vilt"))
        same = {"trainable", "run_dir", "name", "pilot_runs"}
        assert {k: v for k, v in b.items() if k not in same} == {k: v for k, v in a.items() if k not in same}


@pytest.mark.slow
def test_pilot_table1_sweep_eval_and_table_end_to_end(tmp_path, capsys):
    """`train.py +experiment=pilot_table1` (the two BEiT-3 rows, 3 steps, 8 toy images) -> eval_pilot.py on
    each run -> make_table.py: the paper's Tab. 1 rows with our numbers, the baselines and the pilot note."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "+experiment=pilot_table1", f"data.root={data}",
           "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.num_test=2",
           "data.synthetic.image_size=48", "data.val.max_images=2", "trainer.total_steps=3",
           "trainer.micro_batch_size=2", "trainer.log_every=1", "data.num_workers=0",
           f"run_dir={runs}/${{fusion.name}}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
           "+experiment/pilot_table1_rows=beit3_tiny_early,beit3_tiny_text"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(d.name for d in runs.iterdir()) == ["early", "text"]
    for fusion in ("early", "text"):
        res = json.loads((runs / fusion / "results.json").read_text())
        assert res["finished"] and res["step"] == 3
        # the trainer labels the row it lands on
        assert res["axes"]["paper_table"] == "table1" and res["axes"]["fusion"] == fusion
        assert res["axes"]["encoder"] == "beit3_tiny" and res["axes"]["pilot"] is True
    eval_pilot = _load("eval_pilot")
    for fusion in ("early", "text"):
        assert eval_pilot.main([str(runs / fusion), "--max-images", "2"]) == 0
    capsys.readouterr()
    make_table = _load("make_table")
    assert make_table.main([str(runs / f / "pilot_eval") for f in ("early", "text")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("### Tab. 1 - text-only vs multimodal prompt encoders (RefCOCO testA)")
    assert "PILOT runs" in out and "encoder: beit3_tiny" in out
    lines = [x for x in out.splitlines() if x.startswith("|")]
    ours = {}
    for fusion in ("early", "text"):
        res = json.loads((runs / fusion / "pilot_eval" / "results.json").read_text())
        ours[fusion] = f"{100 * res['refcoco|unc|testA']['ciou']:.1f}"
    text_row = next(x for x in lines if "| BEiT-3, text |" in x)
    early_row = next(x for x in lines if "| BEiT-3, text + image (early fusion) |" in x)
    assert f"| {ours['text']} | 65.1 |" in text_row and f"| {ours['early']} | 83.7 |" in early_row
    assert any("text-blind baseline: union" in x for x in lines)


@pytest.mark.slow
def test_pilot_table6_generates_its_data_and_reports_ade20k_val_end_to_end(tmp_path, capsys):
    """`train.py +experiment=pilot_table6` (rows 1 and 4: RES only, + ADE20K + Mapillary; 3 steps, toy data
    generated on first use: synthetic REFER + ADE20K / Mapillary trees) -> eval_pilot.py (eight splits + ADE20K
    val) -> make_table.py: the Tab. 6 pilot with an ADE20K val number per row beside the paper's. (Rows 2 and 3
    differ only in extra_data rates: test_pilot_rows_are_distinct_paper_rows_on_tiny_models.)"""
    import numpy as np
    from PIL import Image

    from evf_sam.data.semantic import ADE20K_CLASSES
    from evf_sam.tokenizer import load_tokenizer, semantic_token_id

    data, runs = tmp_path / "data", tmp_path / "runs"
    rows = ["res", "res_ade20k_mapillary"]
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "+experiment=pilot_table6", f"data.root={data}",
           "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.num_test=2",
           "data.synthetic.image_size=48", "data.synthetic_semantic.num_train=4", "data.synthetic_semantic.num_val=2",
           "data.synthetic_semantic.image_size=48", "data.val.max_images=1", "data.val_semantic.max_images=1",
           "trainer.total_steps=3", "trainer.micro_batch_size=2", "trainer.log_every=1", "data.num_workers=0",
           f"run_dir={runs}/${{extra_data.name}}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
           f"extra_data={','.join(rows)}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(d.name for d in runs.iterdir()) == rows
    # the semantic trees were generated into the data root, in the release layouts
    labels = sorted((data / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))
    assert len(labels) == 2 and len(list((data / "ADEChallengeData2016" / "images" / "training").glob("*.jpg"))) == 4
    assert len(list((data / "mapillary" / "training" / "images").glob("*.jpg"))) == 4
    for row in rows:
        res = json.loads((runs / row / "results.json").read_text())
        assert res["finished"] and res["step"] == 3 and res["axes"]["extra_data"] == row
        # the [semantic] token only where semantic data trains (ADE20K val asks every row with it, as official)
        tok = load_tokenizer(runs / row / "final")
        assert (semantic_token_id(tok) is not None) == (row != "res")
        assert res["ade20k|semantic|val"]["n_expressions"] > 0  # validated during training too
    eval_pilot = _load("eval_pilot")
    for row in rows:
        assert eval_pilot.main([str(runs / row), "--max-images", "1"]) == 0
    # ADE20K val as the official protocol: one expression per class present, "other" pixels background
    raw = [np.asarray(Image.open(f)) for f in labels[:1]]  # --max-images 1
    n_expr = sum(len(np.unique(r[r > 0])) for r in raw)
    union = sum(int((r > 0).sum()) for r in raw) / sum(len(np.unique(r[r > 0])) * r.size for r in raw)
    assert {ADE20K_CLASSES[v - 1] for r in raw for v in np.unique(r)} <= {"sky", "floor", "ball", "box", "tent"}
    ours = {}
    for row in rows:
        res = json.loads((runs / row / "pilot_eval" / "results.json").read_text())
        ade = res["ade20k|semantic|val"]
        assert ade["n_expressions"] == n_expr and ade["n_images"] == 1 and 0.0 <= ade["ciou"] <= 1.0
        assert res["baselines"]["union"]["ade20k|semantic|val"]["ciou"] == pytest.approx(union)
        assert [k for k in res if "|" in k] == [*REFER_SPLITS, "ade20k|semantic|val"]
        ours[row] = f"{100 * ade['ciou']:.1f}"
    capsys.readouterr()
    make_table = _load("make_table")
    assert make_table.main([str(runs / r / "pilot_eval") for r in rows]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("### Tab. 6 - extra semantic-segmentation data")
    lines = [x for x in out.splitlines() if x.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("ADE20K val")
    for row, label, paper in (("res", "RefCOCO/+/g only", "54.2"), ("res_ade20k_mapillary", "+ ADE20K + Mapillary",
                                                                    "76.1")):
        cells = {c[2]: c for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[2:])
                 if c[0] == row and c[1] == label}
        assert cells["ours"][col] == ours[row] and cells["paper"][col] == paper


TOY = ["data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.num_test=2",
       "data.synthetic.image_size=48", "data.val.max_images=2", "trainer.micro_batch_size=2", "data.num_workers=0",
       "trainer.val_at_end=false"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, row", [("pilot_table1", "clip_tiny_late"),
                                             ("pilot_table7", "vilt_tiny_sam_tiny")])
def test_tiny_clip_and_vilt_rows_train_export_and_reload(tmp_path, experiment, row):
    """A CLIP / ViLT pilot row trains from scratch with the tokenizer it makes in its run dir; RUN_DIR/final
    (what eval_pilot.py loads) holds that tokenizer and reloads to the trained weights: identical logits."""
    import torch
    from hydra import compose, initialize_config_dir

    from evf_sam import EvfSam
    from evf_sam.engine.build import build_trainer
    from evf_sam.models.encoders import load_encoder_tokenizer, tokenize_for_encoder
    from evf_sam.testing import tiny_inputs

    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={experiment}", f"+experiment/{experiment}_rows={row}",
                                          f"data.root={tmp_path / 'data'}", *TOY, "trainer.total_steps=3",
                                          f"run_dir={run}", "data.embedding_cache=null"])
    encoder = cfg.encoder.name
    trainer = build_trainer(cfg)
    init = {n: p.detach().clone() for n, p in trainer.module.named_parameters() if p.requires_grad}
    trainer.fit()
    res = json.loads((run / "results.json").read_text())
    assert res["finished"] and res["step"] == 3 and res["axes"]["encoder"] == encoder
    trained = trainer.module.eval()
    assert any(not torch.equal(init[n], p) for n, p in trained.named_parameters() if n.startswith("encoder."))

    final = run / "final"
    again = EvfSam.from_pretrained(final).eval()
    assert again.config.encoder == encoder and again.config.fusion == trained.config.fusion
    tok = load_encoder_tokenizer(encoder, final)
    assert len(tok) == len(load_encoder_tokenizer(encoder, run / "tokenizer"))
    ids, pad = tokenize_for_encoder(encoder, tok, ["the red circle on the left", "the second shape from the right"],
                                    again.max_text_len)
    assert (~pad).sum(1).tolist() == [8, 8]  # start, 6 words, end: each word of the run's sentences is one token
    x = tiny_inputs(again, n_images=2, n_prompts=2)
    out = []
    for model in (trained, again):
        torch.manual_seed(0)  # ViLT's visual_embed draws its patch order (torch.multinomial), as the original ViLT
        with torch.no_grad():
            out.append(model(x["sam_images"], x["beit_images"], ids, pad, x["image_index"])[0])
    assert torch.equal(out[0], out[1]) and out[0].abs().sum() > 0
    state = again.state_dict()
    assert all(torch.equal(p, state[n]) for n, p in trained.state_dict().items())


def _pretraining_toy_data(tmp_path: Path) -> list[str]:
    """Overrides for the pilot pre-training scripts' tests: 4 + 2 + 2 synthetic images of 48 px in tmp_path."""
    return [f"data.root={tmp_path / 'data'}", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
            "data.synthetic.num_test=2", "data.synthetic.image_size=48"]


def _assert_pilot_rows_start_from(encoder_pth: Path, tokenizer_dir: Path, vocab_size: int, rows: list[str],
                                  tmp_path: Path, data_overrides: list[str]) -> None:
    """Each Tab. 3 pilot row built with model.encoder_checkpoint=<encoder_pth> + model.tokenizer=<tokenizer_dir>
    has that fusion, a tokenizer of ``vocab_size`` and exactly the .pth's ``beit3.*`` weights."""
    import torch
    from hydra import compose, initialize_config_dir

    from evf_sam.config import typed
    from evf_sam.engine.build import build_model_and_tokenizer

    saved = torch.load(encoder_pth, weights_only=True)["model"]
    for row in rows:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=["+experiment=pilot_table3", f"+experiment/pilot_table3_rows={row}",
                                              *data_overrides, f"model.encoder_checkpoint={encoder_pth}",
                                              f"model.tokenizer={tokenizer_dir}", "model.make_tiny_tokenizer=false",
                                              f"+model.encoder_overrides.vocab_size={vocab_size}"])
        model, tok, _ = build_model_and_tokenizer(typed(cfg.model), tmp_path / f"run_{row}")
        assert model.encoder.fusion == row and len(tok) == vocab_size
        mine = model.encoder.state_dict()
        assert set(mine) == {k[len("beit3."):] for k in saved}
        assert all(torch.equal(mine[k[len("beit3."):]], v) for k, v in saved.items())


@pytest.mark.slow
def test_pretrained_pilot_encoder_is_what_fine_tuning_starts_from(tmp_path):
    """scripts/pretrain_pilot_encoder.py writes a BEiT-3 .pth + tokenizer; a pilot built with
    model.encoder_checkpoint / model.tokenizer starts from exactly those weights, whatever its fusion."""
    import torch

    toy = _pretraining_toy_data(tmp_path)
    pre = _load("pretrain_pilot_encoder")
    out = tmp_path / "pt"
    out.mkdir()
    s = pre.pretrain(out, ["+experiment=pilot_base", *toy], steps=2, batch_size=2, lr=1e-3, seed=0, log_every=1,
                     cls_mlm=True)
    assert s["steps"] == 2 and s["cls_mlm"]
    assert set(s["final"]) == {"mlm", "itm", "mlm_acc", "itm_acc", "cls_mlm", "cls_mlm_acc"}
    saved = torch.load(out / "encoder.pth", weights_only=True)["model"]
    assert saved and all(k.startswith("beit3.") for k in saved)
    _assert_pilot_rows_start_from(out / "encoder.pth", out / "tokenizer", s["vocab_size"], ["text"], tmp_path, toy)


def test_pretraining_itm_negatives_are_half_and_show_another_image():
    """Image-text matching in scripts/pretrain_pilot_encoder.py: with k expressions per image, half of
    the expressions (not ~1/4, as when a neighbour of the same image was taken as the negative) see an
    image that is not their own; the others see their own image."""
    import torch

    pre = _load("pretrain_pilot_encoder")
    image_index = torch.arange(16).repeat_interleave(2)  # 16 images, 2 expressions each (sentences_per_image)
    seen, match = pre.itm_pairs(image_index, 16, torch.Generator().manual_seed(0))
    assert int((match == 0).sum()) == 16
    assert torch.equal(seen[match == 1], image_index[match == 1])
    assert bool((seen[match == 0] != image_index[match == 0]).all())
    assert int(seen.min()) >= 0 and int(seen.max()) < 16


@pytest.mark.slow
def test_pretrained_pilot_sam_is_what_fine_tuning_starts_from(tmp_path):
    """scripts/pretrain_pilot_sam.py writes a segment-anything state dict (strict load into the tiny SAM); a pilot
    built with model.sam_checkpoint starts from exactly those SAM weights, whatever its fusion."""
    import torch
    from hydra import compose, initialize_config_dir

    from evf_sam.config import typed
    from evf_sam.engine.build import build_model_and_tokenizer
    from evf_sam.models.sam import build_sam

    toy = _pretraining_toy_data(tmp_path)
    pre = _load("pretrain_pilot_sam")
    out = tmp_path / "pt"
    out.mkdir()
    s = pre.pretrain(out, ["+experiment=pilot_base", *toy], steps=2, batch_size=2, lr=1e-3, seed=0, log_every=1)
    assert s["steps"] == 2 and s["sam_variant"] == "tiny"
    assert set(s["final"]) == {"loss", "bce", "dice", "ciou"} and 0.0 <= s["final"]["ciou"] <= 1.0
    saved = torch.load(out / "sam.pth", weights_only=True)
    assert json.loads((out / "pretrain.json").read_text())["steps"] == 2
    assert set(saved) == set(build_sam("tiny").state_dict())
    build_sam("tiny", checkpoint=out / "sam.pth")  # strict load

    for row in ("text", "early"):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=["+experiment=pilot_table3", f"+experiment/pilot_table3_rows={row}", *toy,
                                              f"model.sam_checkpoint={out / 'sam.pth'}"])
        model, _, _ = build_model_and_tokenizer(typed(cfg.model), tmp_path / f"run_{row}")
        mine = model.sam.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in saved.items())

    with pytest.raises(ValueError, match="model.sam_checkpoint"):
        pre.pretrain(tmp_path / "again", ["+experiment=pilot_base", *toy, f"model.sam_checkpoint={out / 'sam.pth'}"],
                     steps=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="not a segment-anything SAM"):
        pre.pretrain(tmp_path / "again", ["+experiment=pilot_base", *toy, "model.sam_variant=efficient_sam_tiny"],
                     steps=1, batch_size=2, lr=1e-3, seed=0)


def test_pilot_sam_pretraining_points_fall_inside_their_masks():
    """scripts/pretrain_pilot_sam.py samples one point per mask, uniformly over its pixels, as (x, y) = (column,
    row); a mask with no pixel is flagged so the loss leaves it out."""
    import torch

    pre = _load("pretrain_pilot_sam")
    masks = torch.zeros(3, 16, 16)
    masks[0, 2:5, 10:14] = 1  # rows 2-4, columns 10-13
    masks[1, 12, 3] = 1  # one pixel: row 12, column 3
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        pts, has = pre.sample_points(masks, gen)
        assert pts.shape == (3, 1, 2) and has.tolist() == [True, True, False]
        x, y = int(pts[0, 0, 0]), int(pts[0, 0, 1])
        assert masks[0, y, x] == 1
        seen.add((x, y))
        assert pts[1, 0].tolist() == [3.0, 12.0]
    assert len(seen) == 12  # every pixel of the 3 x 4 box is drawn


@pytest.mark.slow
def test_probe_encoder_read_with_a_pilot_tokenizer_is_what_a_pilot_row_starts_from(tmp_path):
    """scripts/probe_fusion.py --tokenizer / --save-encoder: the probe reads "the <colour> shape" with a
    sentencepiece tokenizer and writes a BEiT-3 .pth; a Tab. 3 pilot row built with model.encoder_checkpoint +
    model.tokenizer starts from exactly those weights, whatever its fusion."""
    import torch

    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    probe = _load("probe_fusion")
    tok_dir = train_sentencepiece([f"the {c} shape on the left" for c in probe.COLOURS] * 4 + ["the biggest one"],
                                  tmp_path / "tok", vocab_size=40)
    vocab = len(load_tokenizer(tok_dir))
    ckpt = tmp_path / "enc.pth"
    r = probe.run_probe("early", 0, steps=2, eval_scenes=10, tokenizer_dir=tok_dir, save_encoder=ckpt)
    assert r["vocab_size"] == vocab and r["tokenizer"] == str(tok_dir) and r["encoder_checkpoint"] == str(ckpt)
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert saved["beit3.text_embed.weight"].shape[0] == vocab
    _assert_pilot_rows_start_from(ckpt, tok_dir, vocab, ["text", "early"], tmp_path,
                                  [f"data.root={tmp_path / 'data'}"])
