"""The trainer end to end on CPU: DeepSpeed ZeRO-2 (gloo), 1 and 2 processes, resume, freezing, NaN
handling, missing data. Tiny model, tiny data, a few steps; every run is a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=random", "trainer=tiny", "logger=none", "data.num_images=16",
        "optim.warmup_steps=1", "optim.lr=1e-3"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    return env


def _train(run_dir: Path, *overrides: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    base = [a for a in TINY if not (a.startswith("data.") and any(o.startswith("data=") for o in overrides))]
    args = [*base, f"run_dir={run_dir}", *overrides]
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / "scripts/train.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + os.getpid() % 1000), str(ROOT / "scripts/train.py"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"train failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def _losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["type"] == "train"}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_zero2_checkpoint_and_export(tmp_path):
    run = tmp_path / "run"
    # validation batch 1: evaluate() is then bit-identical at any world size (checked against final/ below)
    _train(run, "data=synthetic", f"data.root={tmp_path / 'syn'}", "data.synthetic.num_train=16",
           "data.synthetic.num_val=4", "data.synthetic.num_test=4", "data.synthetic.image_size=64",
           "data.num_workers=0", "trainer.total_steps=3", "trainer.ckpt_every=2", "data.val.batch_size=1", nproc=2)
    ck = run / "checkpoints"
    assert (ck / "latest").read_text() == "step_00000003"
    for tag in ("step_00000002", "step_00000003"):
        d = ck / tag
        assert (d / "complete").is_file()
        assert sorted(p.name for p in d.glob("zero_pp_rank_*_optim_states.pt")) == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
        assert (d / "rng_rank0.pt").is_file() and (d / "rng_rank1.pt").is_file()
    assert json.loads((d / "trainer_state.json").read_text())["samples"] == 3 * 2 * 2
    assert (run / "config.yaml").is_file() and (run / "config_resolved.yaml").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] and results["final"] == str(run / "final")
    val = results["refcoco|unc|val"]  # evaluate() on the synthetic val split, reduced over both ranks
    assert 0.0 <= val["ciou"] <= 1.0 and 0.0 <= val["giou"] <= 1.0 and val["n_images"] == 4
    # metrics.jsonl: one train record per step (rank 0 only), then the final validation, which is what
    # results.json reports
    records = _records(run)
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3]
    assert all(r["loss"] is not None and not r["skipped"] for r in records if r["type"] == "train")
    vals = [r for r in records if r["type"] == "val"]
    assert [r["step"] for r in vals] == [3] and vals[0]["split"] == "refcoco|unc|val"
    assert {k: v for k, v in vals[0].items() if k not in ("type", "step", "time", "elapsed_s")} == val
    assert results["step"] == 3 and results["samples"] == 3 * 2 * 2
    assert results["best"] == {"step": 3, "ciou": val["ciou"], "path": str(run / "best")}

    from evf_sam.models.evf_sam import EvfSam

    model = EvfSam.from_pretrained(run / "final")
    assert (run / "final" / "sentencepiece.bpe.model").is_file()
    from safetensors.torch import load_file

    exported = load_file(run / "final" / "model.safetensors")
    states = torch.load(ck / "step_00000003" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert torch.equal(model.projector.fc1.weight, states["projector.fc1.weight"].float())
    assert "text_hidden_fcs.0.0.weight" in exported
    import numpy as np

    from evf_sam.predictor import EvfSamPredictor

    pred = EvfSamPredictor.from_pretrained(run / "final")
    pred.set_image(np.zeros((40, 50, 3), dtype=np.uint8))
    out = pred.predict(["the big red circle on the left"])
    assert out.masks.shape == (1, 40, 50)

    # the exported model, reloaded, reproduces the validation numbers the run logged, exactly
    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine.evaluate import evaluate
    from evf_sam.tokenizer import load_tokenizer

    ds = build_eval_dataset(tmp_path / "syn", "refcoco", "unc", "val", sam_size=model.sam_image_size,
                            beit_size=model.beit_image_size, resize_mode=model.resize_mode)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training processes (OMP_NUM_THREADS=1)
    try:
        again = evaluate(model, load_tokenizer(run / "final"), ds, batch_size=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert {k: float(v) for k, v in again.items()} == {k: v for k, v in val.items() if k != "split"}


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    steps = ["trainer.total_steps=6", "trainer.ckpt_every=2", "trainer.grad_accum=2"]
    full = tmp_path / "full"
    _train(full, *steps)
    part = tmp_path / "part"
    _train(part, *steps, "trainer.max_steps_this_run=3")
    assert (part / "checkpoints" / "latest").read_text() == "step_00000003"
    assert not (part / "results.json").exists()
    # a crash mid-save: a later tag dir without the `complete` marker must be ignored
    (part / "checkpoints" / "step_00000005").mkdir()
    p = _train(part, *steps)
    assert "resumed from" in p.stdout and "step_00000003" in p.stdout
    a, b = _losses(full), _losses(part)
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))
    for s in range(4, 7):
        assert abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(a[s])), (s, a[s], b[s])
    lr = lambda d: {json.loads(x)["step"]: json.loads(x)["lr"] for x in (d / "metrics.jsonl").read_text().splitlines()
                    if json.loads(x)["type"] == "train"}
    assert lr(full) == lr(part)


@pytest.mark.slow
def test_embedding_cache_same_losses(tmp_path):
    steps = ["trainer.total_steps=3", "trainer.ckpt_every=-1", "trainer.val_at_end=false"]
    plain = tmp_path / "plain"
    _train(plain, *steps)
    cached = tmp_path / "cached"
    cache = tmp_path / "cache"
    # float32 storage: equal up to float32 round-off of the batched encoder (tolerance 1e-5 relative)
    exact = ["data.embedding_cache_dtype=float32", "data.embedding_cache_encoder=model",
             "data.embedding_cache_precision=fp32"]
    p = _train(cached, *steps, f"data.embedding_cache={cache}", *exact)
    assert "embedding cache: building" in p.stdout
    a, b = _losses(plain), _losses(cached)
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), (s, a[s], b[s])
    p = _train(tmp_path / "cached2", *steps, f"data.embedding_cache={cache}", *exact)
    assert "embedding cache: reusing" in p.stdout
    # the default (fast encoder in bf16, float16 storage): within 1e-3 relative of the on-the-fly losses
    _train(tmp_path / "f16", *steps, f"data.embedding_cache={tmp_path / 'cache16'}")
    c = _losses(tmp_path / "f16")
    for s in a:
        assert abs(a[s] - c[s]) <= 1e-3 * abs(a[s]), (s, a[s], c[s])


_INPROC = textwrap.dedent("""
    import json, sys, torch
    from hydra import compose, initialize_config_dir
    from evf_sam.engine.build import build_trainer
    with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
        cfg = compose("train", overrides=json.loads(sys.argv[2]))
    t = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in t.module.named_parameters()}
    mode = sys.argv[3]
    try:
        t.fit()
        err = None
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    after = dict(t.module.named_parameters())
    out = {"err": err, "changed": {n: not torch.equal(before[n], after[n].detach()) for n in before},
           "requires_grad": {n: p.requires_grad for n, p in after.items()},
           "image_encoder_training": t.module.sam.image_encoder.training}
    print("RESULT " + json.dumps(out))
""")


def _inproc(run_dir: Path, mode: str, *overrides: str) -> dict:
    ov = [*TINY, f"run_dir={run_dir}", "trainer.ckpt_every=-1", "trainer.val_at_end=false", *overrides]
    p = subprocess.run([sys.executable, "-c", _INPROC, str(ROOT / "configs"), json.dumps(ov), mode],
                       capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, f"{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return {**json.loads(line[0][7:]), "stdout": p.stdout}


@pytest.mark.slow
def test_frozen_stay_bit_identical_trainable_move(tmp_path):
    r = _inproc(tmp_path / "run", "fit", "trainer.total_steps=2", "trainable=enc_proj")
    assert r["err"] is None, r["err"]
    for n, changed in r["changed"].items():
        trainable = n.startswith(("encoder.", "projector."))
        assert r["requires_grad"][n] == trainable, n
        if not trainable:
            assert not changed, f"frozen {n} changed"
    moved = [n for n, c in r["changed"].items() if c]
    assert any(n.startswith("encoder.") for n in moved) and any(n.startswith("projector.") for n in moved)
    assert not r["image_encoder_training"]
    assert "sam.image_encoder" in r["stdout"] and "trainable" in r["stdout"]  # the parameter table


@pytest.mark.slow
def test_nan_loss_skips_steps_then_stops(tmp_path):
    r = _inproc(tmp_path / "run", "fit", "trainer.total_steps=5", "trainer.max_nonfinite_steps=3",
                "trainer.loss.bce_weight=nan")
    assert r["err"] is not None and "NonFiniteLossError" in r["err"] and "3 steps in a row" in r["err"]
    assert not any(r["changed"].values()), "a NaN step must not change any weight"
    assert r["stdout"].count("optimizer step skipped") == 3


def test_missing_data_root_fails_before_model(tmp_path):
    p = _train(tmp_path / "run", "data=refer_mix", f"data.root={tmp_path / 'nodata'}", check=False)
    assert p.returncode != 0
    msg = p.stdout + p.stderr
    assert "data/README.md" in msg and "refs(unc).p" in msg and "instances.json" in msg
    assert "parameters (trainable" not in msg  # no model was built
