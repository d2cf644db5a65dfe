"""The quickstart really learns grounding: cIoU well above every answer that ignores the text.

Runs ``scripts/quickstart.py`` end to end (synthetic REFER data, tiny EVF-SAM trained from scratch
with DeepSpeed ZeRO-2 on CPU, evaluation, predictor demo): a few minutes on 2 cores.

Measured on this configuration (seed 0, 2 CPU cores; see README "Quickstart"): the union of all
objects scores cIoU ~0.31 on the synthetic refcoco val split and the untrained model ~0.04.
Thresholds: trained cIoU must beat the union baseline by 0.15 absolute and the untrained model
by 0.3 on both evaluated splits.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_learns_grounding(tmp_path):
    out, data = tmp_path / "run", tmp_path / "syn"
    cmd = [sys.executable, str(REPO / "scripts" / "quickstart.py"), "--out", str(out), "--data", str(data),
           "trainer.progress_bar=false"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    table = "\n".join(line for line in p.stdout.splitlines() if line.startswith("|"))
    print(table)  # shown with -s / on failure: trained vs untrained vs text-blind baselines
    for split, res in summary["results"].items():
        trained, untrained = res["trained"]["ciou"], res["untrained"]["ciou"]
        union, empty = res["union"]["ciou"], res["empty"]["ciou"]
        assert res["trained"]["n_expressions"] == res["union"]["n_expressions"] > 100, split
        assert empty == 0.0
        assert 0.2 < union < 0.45, f"{split}: the synthetic task changed (union baseline {union:.3f})"
        assert trained > union + 0.15, f"{split}: trained cIoU {trained:.3f} vs union baseline {union:.3f}\n{table}"
        assert trained > untrained + 0.3, f"{split}: trained {trained:.3f} vs untrained {untrained:.3f}\n{table}"
    # the artefacts a user is pointed at exist and load
    assert (out / "final" / "config.json").is_file() and (out / "results.json").is_file()
    assert len(summary["demo"]) >= 2 and all(Path(d["overlay"]).is_file() for d in summary["demo"])


# Measured (seed 0, 2 CPU cores, the command below): grefcoco|unc|val cIoU 0.432 / gIoU 0.444 vs union
# 0.362 / 0.374 and empty 0.000 / 0.226; N-acc 0.060, T-acc 1.000 (0.424 / 0.431 with one thread and no
# loader worker). Half the smaller measured margin:
GREF_MARGIN = 0.03


@pytest.mark.slow
def test_quickstart_grefcoco_learns(tmp_path):
    """``scripts/quickstart.py --grefcoco``: the tiny model trained with the synthetic gRefCOCO look-alike
    in the mix beats both text-blind answers on grefcoco|unc|val in cIoU and gIoU (thresholds and
    measured numbers: README "Quickstart"); N-acc / T-acc are printed beside theirs."""
    out, data = tmp_path / "run", tmp_path / "syn"
    # the README command as is: 276 s on a quiet 2-core machine (OMP_NUM_THREADS=1 data.num_workers=0
    # took ~8 min there; it only helps on a machine loaded by other jobs)
    cmd = [sys.executable, str(REPO / "scripts" / "quickstart.py"), "--grefcoco", "--out", str(out), "--data",
           str(data), "trainer.progress_bar=false"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    table = "\n".join(line for line in p.stdout.splitlines() if line.startswith("|"))
    print(table)  # cIoU, gIoU, N-acc, T-acc: trained vs untrained vs the two baselines
    res = summary["results"]["grefcoco|unc|val"]
    trained, union, empty = res["trained"], res["union"], res["empty"]
    assert trained["n_expressions"] == union["n_expressions"] > 100 and trained["n_no_target"] > 30
    # the baselines' accuracies are fixed by construction: they are why N-acc and T-acc go together
    assert (empty["n_acc"], empty["t_acc"], union["n_acc"], union["t_acc"]) == (1.0, 0.0, 0.0, 1.0)
    assert empty["ciou"] == 0.0
    assert trained["ciou"] > union["ciou"] + GREF_MARGIN, table
    assert trained["giou"] > max(union["giou"], empty["giou"]) + GREF_MARGIN, table
    assert trained["t_acc"] > 0.5, table  # N-acc is printed, not asserted: the tiny model rarely predicts empty
