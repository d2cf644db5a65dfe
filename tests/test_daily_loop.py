"""The daily loop (issue 14): a checkpoint exported to an inference directory, evaluation at the end of
training, training curves as PNG (per run and across a sweep), timestamps in metrics.jsonl, console
logs that keep the tqdm bar whole and libraries' chatter in the log file, the scripts' --help.

One tiny training run on synthetic REFER data (3 steps, checkpoints at 2 and 3, evaluation at the end)
is shared by the module."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
END_SPLITS = ["refcoco|unc|val", "refcocog|umd|test"]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "EVF_SAM_DEBUG", "MASTER_PORT", "MASTER_ADDR"):  # in-process evals set them
        env.pop(k, None)
    env.update(extra)
    return env


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=_env(), timeout=600, cwd=ROOT)


def _train_args(tmp: Path, run: Path, *extra: str) -> list[str]:
    return ["model=tiny", "trainer=tiny", "logger=none", "data=synthetic", f"data.root={tmp / 'syn'}",
            "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.num_test=2",
            "data.synthetic.image_size=48", "data.num_workers=0", "data.val.batch_size=1", "optim.warmup_steps=1",
            "trainer.total_steps=3", "trainer.ckpt_every=2", "trainer.keep_last=0", "trainer.log_every=1",
            f"run_dir={run}", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daily")
    run = tmp / "run"
    p = _script("train.py", *_train_args(tmp, run, f"trainer.eval_at_end=[{','.join(END_SPLITS)}]",
                                          "+trainer.eval_overrides.max_images=1"))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return {"tmp": tmp, "run": run, "stdout": p.stdout, "stderr": p.stderr}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- export: checkpoints/step_N -> inference directory --------------------------------------------------

@pytest.mark.slow
def test_export_any_step_to_an_inference_directory(run, tmp_path):
    from safetensors.torch import load_file

    from evf_sam.engine.export import export_checkpoint
    from evf_sam.models.evf_sam import EvfSam

    r = run["run"]
    out = tmp_path / "step2"
    p = _script("export.py", str(r), "--step", "2", "--output", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(out)
    model = EvfSam.from_pretrained(out)
    states = torch.load(r / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt", weights_only=True,
                        map_location="cpu")["module"]
    ours = model.state_dict()
    assert set(states) <= set(ours)
    for name, t in states.items():
        assert torch.equal(ours[name], t.to(ours[name].dtype)), name
    # step 2 is not the final weights; exporting step 3 (the last) reproduces final/ exactly
    final = load_file(r / "final" / "model.safetensors")
    assert any(not torch.equal(final[k], v) for k, v in load_file(out / "model.safetensors").items())
    out3 = export_checkpoint(r, step="latest", output=tmp_path / "step3")
    assert (out3 / "model.safetensors").read_bytes() == (r / "final" / "model.safetensors").read_bytes()
    assert json.loads((out3 / "config.json").read_text()) == json.loads((r / "final" / "config.json").read_text())
    assert sorted(p.name for p in out3.iterdir()) == sorted(p.name for p in (r / "final").iterdir())
    # the default output directory
    assert export_checkpoint(r, step=2) == r / "exports" / "step_00000002"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no such step", "output exists", "not a run dir", "damaged"])
def test_export_errors_name_the_problem(run, tmp_path, case):
    import shutil

    r = run["run"]
    args = [str(r), "--step", "2", "--output", str(tmp_path / "out")]
    if case == "no such step":
        args[2] = "7"
        words = ["step_00000007", "complete ones: 2, 3"]
    elif case == "output exists":
        (tmp_path / "out").mkdir()
        words = [str(tmp_path / "out"), "--overwrite"]
    elif case == "not a run dir":
        args[0] = str(tmp_path)
        words = ["config_resolved.yaml", "not a training run directory"]
    else:
        copy = tmp_path / "run"
        shutil.copytree(r, copy, ignore=shutil.ignore_patterns("eval", "exports", "best"))
        f = copy / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt"
        f.write_bytes(f.read_bytes()[:100])
        args[0] = str(copy)
        words = [str(f), "truncated or replaced"]
    p = _script("export.py", *args)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("export.py: error:")]
    assert len(line) == 1, p.stderr
    for w in words:
        assert w in line[0], (w, line[0])
    if case != "output exists":
        assert not (tmp_path / "out").exists()


# -- evaluation at the end of training -------------------------------------------------------------------

@pytest.mark.slow
def test_eval_at_end_writes_the_eval_script_results(run, tmp_path):
    from evf_sam.engine.evaluate import eval_config, run_eval_from_config

    r = run["run"]
    res = json.loads((r / "eval" / "results.json").read_text())
    assert [k for k in res if "|" in k] == END_SPLITS
    assert res["checkpoint"] == str(r / "final") and res["eval_settings"]["max_images"] == 1
    # the same numbers as the evaluation script's code on final/, run separately
    cfg = eval_config(checkpoint=str(r / "final"), output_dir=str(tmp_path / "e"), splits=END_SPLITS, device="cpu",
                      progress=False, max_images=1, data={"root": str(run["tmp"] / "syn"), "num_workers": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training process (OMP_NUM_THREADS=1)
    try:
        again = run_eval_from_config(cfg)
    finally:
        torch.set_num_threads(threads)
    for s in END_SPLITS:
        assert again[s] == res[s], s
    evals = [x for x in _records(r) if x["type"] == "eval"]
    assert [x["split"] for x in evals] == END_SPLITS and evals[0]["ciou"] == res[END_SPLITS[0]]["ciou"]
    assert json.loads((r / "results.json").read_text())["eval"] == str(r / "eval")
    assert "evaluating" in run["stdout"] and "refcocog|umd|test: cIoU" in run["stdout"]


@pytest.mark.slow
def test_eval_at_end_bad_split_fails_before_training(run, tmp_path):
    p = _script("train.py", *_train_args(run["tmp"], tmp_path / "r2", "trainer.eval_at_end=[refcoco|unc|testC]"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(line) == 1 and "testC" in line[0], p.stderr
    assert "parameters (trainable" not in p.stdout and not (tmp_path / "r2" / "checkpoints").exists()


def test_eval_at_end_paper_alias_and_unknown_override():
    from types import SimpleNamespace

    from evf_sam.data.refer import PAPER_SPLITS
    from evf_sam.engine.build import build_end_eval
    from evf_sam.engine.evaluate import expand_splits

    assert expand_splits(["paper"]) == list(PAPER_SPLITS) and len(PAPER_SPLITS) == 8
    assert expand_splits(["refcoco|unc|val", "paper"]) == list(PAPER_SPLITS)
    t = SimpleNamespace(eval_at_end=["paper"], eval_overrides={"max_imgs": 3}, device="cpu", progress_bar=False)
    with pytest.raises(ValueError, match=r"trainer.eval_overrides: unknown key\(s\) \['max_imgs'\]"):
        build_end_eval(t, SimpleNamespace(root="/x", kind="refer_mix", num_workers=0), run_dir=Path("/tmp/r"))
    t.eval_overrides = {}
    with pytest.raises(ValueError, match="needs REFER data with a root"):
        build_end_eval(t, SimpleNamespace(kind="random", num_workers=0), run_dir=Path("/tmp/r"))


# -- plots and timestamps --------------------------------------------------------------------------------

@pytest.mark.slow
def test_plots_written_at_end_of_training_show_the_logged_values(run):
    from PIL import Image

    from evf_sam.engine.plots import DPI, FIGSIZE, plot_run

    r = run["run"]
    png = r / "plots" / "curves.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    result = plot_run(r, r / "plots" / "again.png")
    train = [x for x in _records(r) if x["type"] == "train"]
    for panel, key in (("loss", "loss"), ("BCE", "bce"), ("Dice", "dice"), ("learning rate", "lr")):
        (xs, ys), = result.series[panel].values()
        assert xs == [1.0, 2.0, 3.0] and ys == [x[key] for x in train], panel
    val = [x for x in _records(r) if x["type"] == "val"]
    assert result.series["validation cIoU"] == {"refcoco|unc|val": ([3.0], [val[-1]["ciou"]])}


@pytest.mark.slow
def test_metrics_records_have_timestamps(run):
    recs = _records(run["run"])
    assert {x["type"] for x in recs} == {"train", "val", "eval"}
    times = [datetime.fromisoformat(x["time"]) for x in recs]
    assert all(t.tzinfo is not None for t in times) and times == sorted(times)
    elapsed = [x["elapsed_s"] for x in recs]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


def _fake_run(d: Path, losses: list[float | None], ciou: float) -> Path:
    d.mkdir(parents=True)
    lines = [{"type": "train", "step": i + 1, "loss": v, "bce": v, "dice": 0.5, "lr": 1e-4 * (i + 1),
              "samples_per_s": 3.0} for i, v in enumerate(losses)]
    lines.append({"type": "val", "step": len(losses), "split": "refcoco|unc|val", "ciou": ciou})
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{cut")
    return d


def test_plot_runs_script_across_the_rows_of_a_sweep(tmp_path):
    from PIL import Image

    from evf_sam.engine.plots import find_runs, plot_runs

    sweep = tmp_path / "table3"
    _fake_run(sweep / "row_a", [1.0, 0.8, 0.5], 0.4)
    _fake_run(sweep / "row_b", [1.2, None, 0.7], 0.3)  # step 2 skipped (NaN): no loss
    p = _script("plot_runs.py", str(sweep))
    assert p.returncode == 0, p.stderr
    assert (sweep / "curves.png").is_file() and "2 runs" in p.stdout
    with Image.open(sweep / "curves.png") as im:
        assert im.format == "PNG"
    runs = find_runs([sweep])
    assert [r.name for r in runs] == ["row_a", "row_b"]
    res = plot_runs(runs, tmp_path / "s.png")
    assert res.series["loss"]["row_a"] == ([1.0, 2.0, 3.0], [1.0, 0.8, 0.5])
    xs, ys = res.series["loss"]["row_b"]
    assert xs == [1.0, 2.0, 3.0] and ys[0] == 1.2 and math.isnan(ys[1]) and ys[2] == 0.7
    assert res.series["validation cIoU"] == {"row_a refcoco|unc|val": ([3.0], [0.4]),
                                             "row_b refcoco|unc|val": ([3.0], [0.3])}
    # one run: into its plots/ directory; not a run: one line naming it
    p = _script("plot_runs.py", str(sweep / "row_a"))
    assert p.returncode == 0 and (sweep / "row_a" / "plots" / "curves.png").is_file()
    p = _script("plot_runs.py", str(tmp_path / "nothing"))
    assert p.returncode == 1 and "nothing: no metrics.jsonl" in p.stderr and "Traceback" not in p.stderr


# -- logs ------------------------------------------------------------------------------------------------

@pytest.fixture
def clean_logging():
    root = logging.getLogger()
    level = root.level
    yield
    from evf_sam.engine.run_logging import _install

    _install([], level)
    logging.captureWarnings(False)


def test_log_lines_do_not_break_the_progress_bar(clean_logging):
    from tqdm import tqdm

    from evf_sam.engine.run_logging import _TqdmConsoleHandler

    stream = io.StringIO()
    handler = _TqdmConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("evf_sam.test_bar")
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=10, file=stream, ascii=True, mininterval=0, desc="train") as bar:
            bar.update(3)
            log.warning("step 3: a message")
            bar.update(3)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    hit = [ln for ln in lines if "step 3: a message" in ln]
    # what is visible of the line (after the last carriage return) is the message alone, not bar + message
    assert len(hit) == 1 and hit[0].split("\r")[-1] == "step 3: a message", repr(stream.getvalue())
    after = stream.getvalue().split("step 3: a message")[1]
    assert "6/10" in after  # the bar is drawn again below the message


def test_library_chatter_and_rank1_warnings_stay_in_the_log_file(tmp_path, capsys, clean_logging):
    from evf_sam.engine.run_logging import prints_to_log, setup_logging

    setup_logging(tmp_path, rank=0)
    logging.getLogger("evf_sam.engine.trainer").info("step 1/3 | ours")
    logging.getLogger("DeepSpeed").warning("[WARNING] async_io requires the dev libaio .so object")
    with prints_to_log("deepspeed"):
        print("Installed CUDA version 12.1 does not match the version torch was compiled with; op build chatter")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("CUDA_HOME environment variable is not set", UserWarning)
    logging.getLogger("somelib").error("a library error")
    out = capsys.readouterr()
    log = (tmp_path / "train.log").read_text()
    assert "step 1/3 | ours" in out.out and "a library error" in out.out
    for chatter in ("async_io", "op build chatter", "CUDA_HOME"):
        assert chatter not in out.out and chatter not in out.err, chatter
        assert chatter in log, chatter
    assert "step 1/3 | ours" in log

    setup_logging(tmp_path, rank=1)
    logging.getLogger("evf_sam.engine.trainer").warning("rank 1 warning")
    logging.getLogger("evf_sam.engine.trainer").error("rank 1 error")
    out = capsys.readouterr()
    assert "rank 1 warning" not in out.out + out.err and "rank 1 error" in out.err
    rank1 = (tmp_path / "train.rank1.log").read_text()
    assert "rank 1 warning" in rank1 and "rank 1 error" in rank1


@pytest.mark.slow
def test_training_console_has_no_deepspeed_chatter(run):
    console = run["stdout"] + run["stderr"]
    log = (run["run"] / "train.log").read_text()
    for word in ("[WARNING]", "ds_accelerator", "CUDA_HOME", "DeepSpeed info", "[INFO]"):
        assert word not in console, (word, console[-3000:])
    assert "step 3/3" in console and "step 3/3" in log
    assert "deepspeed" in log.lower()  # what DeepSpeed said is kept in the log file


# -- --help ----------------------------------------------------------------------------------------------

def test_train_help_shows_examples_and_its_groups():
    p = _script("train.py", "--help")
    assert p.returncode == 0
    out = p.stdout
    assert "== Examples ==" in out and "torchrun --nproc_per_node 4 scripts/train.py" in out
    assert "scripts/export.py RUN_DIR" in out and "scripts/plot_runs.py RUN_DIR" in out
    groups = out.split("== Config groups (group=option) ==")[1].split("\n\n")[0]
    names = [ln.split(":")[0] for ln in groups.strip().splitlines()]
    for g in ("model", "data", "trainer", "optim", "sam", "encoder", "fusion", "trainable"):
        assert g in names, g
    assert not any(n.startswith("hydra") for n in names)  # Hydra's own groups are not this script's
    assert "$APP_CONFIG_GROUPS" not in out and "Powered by Hydra" not in out


def test_eval_help_shows_examples_and_only_its_config():
    p = _script("eval_refcoco.py", "--help")
    assert p.returncode == 0
    out = p.stdout
    assert "== Examples ==" in out and "scripts/eval_refcoco.py run=runs/evf_sam" in out
    assert "overwrite: false" in out and "splits:" in out
    for train_only in ("Config groups", "trainer:", "optim:", "hydra/launcher", "Powered by Hydra"):
        assert train_only not in out, train_only
