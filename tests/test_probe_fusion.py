"""scripts/probe_fusion.py: the Tab. 3 fusion axis without SAM (a tiny BEiT-3 prompt pointing at the disc its
text names). Scenes, scoring and the table are checked exactly; one learning test shows that early fusion
finds the named disc and text-only cannot (README "CPU pilots" has the 3-seed figures). That a pilot row
starts from a probe's saved encoder: tests/test_pilots.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evf_sam.testing import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_fusion")


def test_scenes_name_the_one_disc_of_its_colour(probe):
    s = probe.make_scenes(np.random.default_rng(0), 200, 32)
    assert s["images"].shape == (200, 3, 32, 32) and s["images"].min() >= -1 and s["images"].max() <= 1
    assert set(s["count"].tolist()) == {2, 3, 4}
    names = list(probe.COLOURS)
    for i in range(200):
        k = int(s["count"][i])
        cols = s["colours"][i, :k]
        assert (cols == cols[0]).sum() == 1 and (s["colours"][i, k:] == -1).all()
        assert s["text_ids"][i].tolist() == [0, probe.WORD_IDS["the"], probe.WORD_IDS[names[cols[0]]],
                                             probe.WORD_IDS["shape"], 2]
        # the named disc's centre pixel shows its colour unless a later disc covers that point
        cx, cy = s["centres"][i, 0]
        covered = any(np.hypot(*(s["centres"][i, j] - (cx, cy))) <= s["radii"][i, j] + 1 for j in range(1, k))
        if not covered:
            px = (s["images"][i, :, int(cy), int(cx)] + 1) / 2
            assert np.allclose(px, probe.COLOURS[names[cols[0]]])
    # the colour the text names is spread over the four words
    assert len(set(s["text_ids"][:, 2].tolist())) == 4


def test_score_counts_hits_within_the_named_disc(probe):
    scenes = {"images": np.zeros((2, 3, 32, 32), np.float32),
              "centres": np.array([[[8, 8], [24, 24], [0, 0], [0, 0]], [[16, 16], [18, 16], [0, 0], [0, 0]]],
                                  np.float32),
              "radii": np.array([[4, 4, 0, 0], [5, 3, 0, 0]], np.float32), "count": np.array([2, 2])}
    got = probe.score(np.array([[8, 9], [30, 30]], np.float32), scenes)
    assert got["model"]["hit"] == 50.0
    assert math.isclose(got["model"]["dist"], (1 + math.hypot(14, 14)) / 2, rel_tol=1e-6)
    # image centre (16, 16): misses scene 0 (11.3 px away), is disc 0's centre in scene 1
    assert got["centre"]["hit"] == 50.0 and math.isclose(got["centre"]["dist"], math.hypot(8, 8) / 2, rel_tol=1e-6)
    # a random disc: scene 0 hits with disc 0 only (1/2); scene 1 with both (disc 1 is 2 px away, r = 5)
    assert got["object"]["hit"] == 75.0 and math.isclose(got["object"]["dist"], (math.hypot(16, 16) / 2 + 1) / 2,
                                                          rel_tol=1e-6)


def test_summary_is_mean_and_sample_std_in_table_3_order(probe):
    def run(fusion, seed, hit):
        return {"fusion": fusion, "seed": seed, "scores": {"model": {"hit": hit, "dist": 2.0},
                                                           "centre": {"hit": 10.0, "dist": 8.0},
                                                           "object": {"hit": 40.0, "dist": 7.0}}}

    lines = probe.summarise([run("early", 1, 60.0), run("text", 0, 12.0), run("early", 0, 40.0)]).splitlines()
    assert lines[2] == "| text | 12.0 | 2.00 | 0 |"
    assert lines[3] == "| early | 50.0 ± 14.1 | 2.00 ± 0.00 | 0, 1 |"
    assert lines[4:] == ["| text-blind: image centre | 10.0 | 8.00 | – |",
                         "| text-blind: a random disc | 40.0 | 7.00 | – |"]


def test_cli_writes_one_file_per_run_and_rejects_an_empty_dir(probe, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    assert probe.main([str(tmp_path / "p"), "--fusion", "late", "--seeds", "3", "--steps", "3", "--eval-scenes",
                       "20", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # --threads holds while the probe runs only
    r = json.loads((tmp_path / "p" / "late_s3.json").read_text())
    assert (r["fusion"], r["seed"], r["feature"], r["steps"]) == ("late", 3, "concat", 3)
    assert "| late |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        probe.main([str(tmp_path / "empty"), "--summary"])
    with pytest.raises(ValueError, match="fusion must be one of"):
        probe.run_probe("clip", 0, steps=1)


@pytest.mark.slow
def test_early_fusion_finds_the_named_disc_and_text_only_cannot(probe):
    """2,000 steps of 32 scenes, seed 0, about a minute: the early-fusion prompt points inside the named disc
    far more often than a text-blind pointer can (a random disc of the scene), the text-only prompt does no
    better than the image centre (it cannot know where the colour is)."""
    early = probe.run_probe("early", 0, steps=2000, eval_scenes=500, threads=1)["scores"]
    text = probe.run_probe("text", 0, steps=2000, eval_scenes=500, threads=1)["scores"]
    print(f"early {early['model']}, text {text['model']}, centre {early['centre']}, random disc {early['object']}")
    # measured (seed 0): early 65.4 % / 3.87 px, text 12.4 % / 8.89 px, random disc 41.6 % / 7.73 px
    assert early["model"]["hit"] > early["object"]["hit"] + 10 and early["model"]["hit"] > 3 * text["model"]["hit"]
    assert early["model"]["dist"] < 0.65 * early["object"]["dist"]
    assert text["model"]["hit"] < text["object"]["hit"] and text["model"]["dist"] > 0.9 * text["centre"]["dist"]

