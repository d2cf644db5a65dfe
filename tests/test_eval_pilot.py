"""scripts/eval_pilot.py: a tiny model on grounded synthetic data, eight splits, per type, baselines, axes;
the results.json it writes is what make_table.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evf_sam.paper_numbers import REFER_SPLITS
from evf_sam.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return load_script(name)


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory):
    """A 'finished run': final/ holds a random tiny model + tokenizer, config_resolved.yaml a pilot config."""
    from evf_sam.data.synthetic import make_synthetic_refer
    from evf_sam.testing import build_tiny_model, make_tokenizer
    from evf_sam.tokenizer import load_tokenizer

    tmp = tmp_path_factory.mktemp("pilot")
    data = tmp / "data"
    make_synthetic_refer(data, seed=0, num_train=1, num_val=2, num_test=2, image_size=48, difficulty="grounded")
    tok_dir = make_tokenizer(tmp / "tok")
    model = build_tiny_model(seed=0, vocab_size=len(load_tokenizer(tok_dir)))
    run = tmp / "run"
    model.save_pretrained(run / "final", tokenizer_dir=tok_dir)
    cfg = {"seed": 3, "paper_table": "table3", "run_dir": str(run), "trainer": {"total_steps": 1},
           "model": {"encoder": "beit3_tiny", "fusion": "early", "fused_layers": None, "feature": None,
                     "sam_variant": "tiny"},
           "encoder": {"name": "beit3_large"}, "fusion": {"name": "early", "mode": "early", "fused_layers": None},
           "feature": {"name": "auto", "value": None}, "trainable": {"name": "enc_proj_mask", "params": []},
           "sam": {"name": "vit_h"}, "data": {"name": "synthetic_grounded", "kind": "refer", "root": str(data)}}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    return run, data


def test_eval_pilot_writes_splits_types_baselines_and_axes(pilot_run, capsys):
    from evf_sam.data.refer import parse_split_name
    from evf_sam.engine.baselines import trivial_baselines

    run, data = pilot_run
    eval_pilot = _load("eval_pilot")
    assert eval_pilot.main([str(run)]) == 0
    res = json.loads((run / "pilot_eval" / "results.json").read_text())
    assert [k for k in res if "|" in k] == list(REFER_SPLITS)
    n = 0
    for split in REFER_SPLITS:
        if split in ("refcoco|unc|val", "refcocog|umd|test"):  # the baselines are evf_sam.engine.baselines'
            base = trivial_baselines(data, *parse_split_name(split))
            assert res["baselines"]["union"][split] == pytest.approx(base["union"])
            assert res["baselines"]["empty"][split] == pytest.approx(base["empty"])
        assert 0.0 <= res[split]["ciou"] <= 1.0 and res[split]["n_expressions"] > 0
        n += res[split]["n_expressions"]
    by_type = res["by_type"]
    assert set(by_type) == {"model", "union", "empty"}
    assert by_type["model"]["all"]["n_expressions"] == n
    assert sum(m["n_expressions"] for t, m in by_type["model"].items() if t != "all") == n
    assert {"colour", "position"} <= set(by_type["model"])
    assert res["axes"]["encoder"] == "beit3_tiny" and res["axes"]["sam"] == "tiny" and res["axes"]["seed"] == 3
    assert res["axes"]["pilot"] is True and res["checkpoint"] == str(run / "final")
    assert "wrote" in capsys.readouterr().out

    make_table = _load("make_table")
    assert make_table.main([str(run / "pilot_eval")]) == 0
    out = capsys.readouterr().out
    early = [ln for ln in out.splitlines() if ln.startswith("| beit3_tiny | early |")]
    testa = 100 * res["refcoco|unc|testA"]["ciou"]
    assert early == [f"| beit3_tiny | early | BEiT-3-Large, early (L1-L24) | {testa:.1f} | 83.7 | {testa - 83.7:+.1f} |"]
    assert f"| – | – | text-blind baseline: union | {100 * res['baselines']['union']['refcoco|unc|testA']['ciou']:.1f} |" in out


def test_eval_pilot_needs_a_finished_run(tmp_path):
    eval_pilot = _load("eval_pilot")
    with pytest.raises(FileNotFoundError, match="finished"):
        eval_pilot.main([str(tmp_path)])
