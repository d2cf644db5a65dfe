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
