"""Training / evaluation / checkpoint reliability (issue 12): nothing lost, nothing half-written, nothing
executed, every failure one line that names the key or file.

Tables of cases: Hydra-level errors of the scripts, evaluation inputs checked before the model loads,
damaged checkpoints that resume falls back past, files that must not be unpickled with code. Training
runs are tiny (model=tiny, data=random, a few steps) and share one base run per module."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data=random", "trainer=tiny", "logger=none", "data.num_images=16", "optim.warmup_steps=1",
        "optim.lr=1e-3", "trainer.val_at_end=false", "trainer.log_every=1"]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "EVF_SAM_DEBUG", "MASTER_PORT", "MASTER_ADDR"):  # in-process evals set them
        env.pop(k, None)
    env.update(extra)
    return env


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=_env(**env), timeout=600, cwd=ROOT)


def _one_line_error(p: subprocess.CompletedProcess, prog: str) -> str:
    """The single error line of a failed script run (asserts: exit 1, one line, no traceback)."""
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(errors) == 1, p.stderr
    assert "EVF_SAM_DEBUG=1" in errors[0]
    return errors[0]


# -- Hydra-level and config errors: one line naming the key / option, exit 1 ----------------------------

HYDRA_CASES = [
    # (script, override, words the line must contain)
    ("train.py", "trainer.total_steps=abc", ["trainer.total_steps", "'abc'", "Integer"]),
    ("train.py", "trainer.nosuch_key=1", ["unknown config key trainer.nosuch_key"]),
    ("train.py", "model=nosuch", ["model/nosuch", "evf_sam_base", "tiny"]),
    ("train.py", "trainer.total_steps=[", ["cannot parse the override", "trainer.total_steps=["]),
    ("train.py", "optim.lr=fast", ["optim.lr", "'fast'"]),
    ("eval_refcoco.py", "nosuch=1", ["unknown config key nosuch"]),
    ("eval_refcoco.py", "batch_size=abc", ["batch_size", "'abc'", "Integer"]),  # configs/eval.yaml's schema
    ("eval_refcoco.py", "max_images=many", ["max_images", "'many'", "Integer"]),
    ("eval_refcoco.py", "save_masks=maybe", ["save_masks", "'maybe'", "bool"]),
    ("eval_refcoco.py", "splits=[refcoco|val]", ["'refcoco|val'", "dataset|split_by|split"]),
    ("eval_refcoco.py", "precision=fp64", ["precision", "fp64"]),
    ("eval_refcoco.py", "data.root=/nonexistent_evf", ["/nonexistent_evf/refer_seg", "data/README.md"]),
]


@pytest.mark.parametrize("script,override,words", HYDRA_CASES, ids=[f"{s}:{o}" for s, o, _ in HYDRA_CASES])
def test_script_errors_are_one_line(script, override, words, tmp_path):
    p = _script(script, override, f"hydra.run.dir={tmp_path / 'hydra'}")
    line = _one_line_error(p, script)
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "hydra").exists() or not any((tmp_path / "hydra").rglob("results.json"))


def test_debug_env_shows_traceback(tmp_path):
    p = _script("train.py", "trainer.total_steps=abc", EVF_SAM_DEBUG="1")
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "trainer.total_steps" in p.stderr


def test_train_script_does_not_force_hydra_full_error():
    text = (ROOT / "scripts" / "train.py").read_text()
    assert "HYDRA_FULL_ERROR" not in text  # the one-line reporting (evf_sam.engine.errors) decides


# -- nothing is unpickled with the power to run code ------------------------------------------------------

class _Payload:
    """A pickle that, when loaded with weights_only=False, creates ``path`` (what an attacker's code would do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _crafted(path: Path, witness: Path) -> Path:
    torch.save({"python": _Payload(witness), "torch": torch.zeros(3)}, path)
    return path


def test_every_torch_load_in_the_project_is_weights_only():
    """An AST scan: each torch.load(...) call in evf_sam/ and scripts/ passes weights_only=True."""
    unsafe = []
    for f in [*sorted((ROOT / "evf_sam").rglob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    unsafe.append(f"{f.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "pickle" \
                    and "refer.py" not in f.name:  # REFER refs pickles: restricted unpickler, owned by data/refer.py
                unsafe.append(f"{f.relative_to(ROOT)}:{node.lineno} (pickle.load)")
    assert not unsafe, unsafe


def test_safe_torch_load_refuses_pickled_code_and_names_the_file(tmp_path):
    from evf_sam.engine.checkpointing import CheckpointError, safe_torch_load

    witness = tmp_path / "PWNED"
    f = _crafted(tmp_path / "rng_rank0.pt", witness)
    with pytest.raises(CheckpointError, match="refused to unpickle") as e:
        safe_torch_load(f)
    assert str(f) in str(e.value) and len(str(e.value).splitlines()) == 1
    assert "add_safe_globals" not in str(e.value)  # never advise allow-listing what the attacker needs
    assert not witness.exists()
    # the same file through the DeepSpeed engine's loader once hardened
    from evf_sam.engine.checkpointing import harden_deepspeed_loading

    class _Engine:
        class checkpoint_engine:  # stands in for DeepSpeed's TorchCheckpointEngine instance
            @staticmethod
            def load(path, map_location=None):
                return torch.load(path, map_location=map_location, weights_only=False)

    eng = _Engine()
    harden_deepspeed_loading(eng)
    with pytest.raises(CheckpointError, match="refused"):
        eng.checkpoint_engine.load(str(f), map_location="cpu")
    assert not witness.exists()
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.arange(4.0)}}, good)
    assert torch.equal(eng.checkpoint_engine.load(str(good))["module"]["w"], torch.arange(4.0))


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_safe_torch_load_damaged_file_names_it(tmp_path, damage):
    from evf_sam.engine.checkpointing import CheckpointError, safe_torch_load
    from evf_sam.engine.state import rng_state

    f = tmp_path / "rng_rank0.pt"
    torch.save(rng_state(), f)
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00not a torch file" * 9}[damage])
    with pytest.raises(CheckpointError) as e:
        safe_torch_load(f)
    msg = str(e.value)
    assert msg.startswith(str(f)) and ("truncated or corrupted" in msg or "corrupted" in msg)
    assert "Errno" not in msg


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    from evf_sam.engine.state import rng_state, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    f = tmp_path / "rng.pt"
    torch.save(rng_state(), f)
    expect = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(torch.load(f, weights_only=True))  # plain weights_only: no allow-list needed
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expect


# -- checkpoint records and verification (unit) -----------------------------------------------------------

def test_verify_files_names_missing_truncated_and_changed(tmp_path):
    from evf_sam.engine.checkpointing import file_record, verify_files

    d = tmp_path / "step_00000002"
    d.mkdir()
    for name in ("a.pt", "b.pt", "c.pt"):
        (d / name).write_bytes(name.encode() * 100)
    files = {n: file_record(d / n) for n in ("a.pt", "b.pt", "c.pt")}
    assert files["a.pt"]["size"] == 400 and len(files["a.pt"]["sha256"]) == 64
    assert verify_files(d, files) == []
    (d / "a.pt").write_bytes(b"a.pt" * 50)                          # truncated
    (d / "b.pt").write_bytes(b"B.pt" + b"b.pt" * 99)                # same size, other bytes
    (d / "c.pt").unlink()                                           # missing
    problems = verify_files(d, files)
    assert problems == [f"{d / 'a.pt'}: 200 bytes, 400 when written (truncated or replaced)",
                        f"{d / 'b.pt'}: SHA-256 differs from the one recorded when it was written (corrupted)",
                        f"{d / 'c.pt'}: missing"]


def _fake_tag(ckpt_dir: Path, step: int) -> Path:
    """A tag dir as Checkpointer.save leaves it (files + a complete marker with their records)."""
    from dataclasses import asdict

    from evf_sam.engine.checkpointing import file_record
    from evf_sam.engine.state import TrainState, rng_state

    d = ckpt_dir / f"step_{step:08d}"
    d.mkdir(parents=True)
    torch.save({"module": {"w": torch.full((4,), float(step))}}, d / "mp_rank_00_model_states.pt")
    torch.save(rng_state(), d / "rng_rank0.pt")
    (d / "trainer_state.json").write_text(json.dumps(asdict(TrainState(step=step))))
    files = {p.name: file_record(p) for p in sorted(d.iterdir())}
    (d / "complete").write_text(json.dumps({"step": step, "world_size": 1, "files": files}))
    return d


class _FakeEngine:
    """What Checkpointer.resume needs of a DeepSpeed engine: load_checkpoint through checkpoint_engine.load."""

    def __init__(self):
        self.checkpoint_engine = type("CE", (), {"load": staticmethod(lambda p, map_location=None: None)})()
        self.loaded = []

    def load_checkpoint(self, load_dir, tag, **kw):
        from dataclasses import asdict

        from evf_sam.engine.state import TrainState

        states = self.checkpoint_engine.load(str(Path(load_dir) / tag / "mp_rank_00_model_states.pt"))
        self.loaded.append((tag, states["module"]["w"][0].item()))
        return str(Path(load_dir) / tag), {"trainer_state": asdict(TrainState(step=int(tag[5:])))}


def test_resume_falls_back_past_a_damaged_checkpoint_and_marks_it_rejected(tmp_path, caplog):
    from evf_sam.engine.checkpointing import Checkpointer

    ck = tmp_path / "checkpoints"
    _fake_tag(ck, 1), _fake_tag(ck, 2), _fake_tag(ck, 3)
    (ck / "latest").write_text("step_00000003")
    _truncate(ck / "step_00000003" / "rng_rank0.pt")
    _flip_byte(ck / "step_00000002" / "mp_rank_00_model_states.pt")
    engine = _FakeEngine()
    with caplog.at_level("WARNING"):
        state, path = Checkpointer(ck, rank=0, world_size=1, keep_last=0).resume(engine, "auto", seed=0)
    assert state.step == 1 and path == ck / "step_00000001" and engine.loaded == [("step_00000001", 1.0)]
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warned) == 2
    assert warned[0].startswith("checkpoint step_00000003 is damaged: ") and "rng_rank0.pt" in warned[0]
    assert "step_00000002" in warned[1] and "mp_rank_00_model_states.pt: SHA-256 differs" in warned[1]
    for step in (2, 3):
        d = ck / f"step_0000000{step}"
        assert not (d / "complete").exists() and (d / "mp_rank_00_model_states.pt").exists()  # files kept
        assert json.loads((d / "rejected").read_text())["problems"][0].startswith(str(d))
    assert (ck / "latest").read_text() == "step_00000001"
    # the rejected ones are not candidates any more; the next resume goes straight to step 1
    caplog.clear()
    assert Checkpointer(ck, rank=0, world_size=1, keep_last=0).resume(_FakeEngine(), "auto", seed=0)[0].step == 1
    assert not [r for r in caplog.records if "is damaged" in r.getMessage()]


def test_older_checkpoints_without_records_resume_unverified_with_a_warning(tmp_path, caplog):
    """Markers written before the sizes / hashes existed, and RNG files with numpy's state as an ndarray."""
    import random

    import numpy as np

    from evf_sam.engine.checkpointing import Checkpointer

    ck = tmp_path / "checkpoints"
    d = _fake_tag(ck, 4)
    (d / "complete").write_text(json.dumps({"step": 4, "world_size": 1}))  # the old marker
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               d / "rng_rank0.pt")  # the old RNG layout (numpy's key as an ndarray)
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        state, path = Checkpointer(ck, rank=0, world_size=1, keep_last=0).resume(_FakeEngine(), "auto", seed=0)
    assert state.step == 4 and path == d
    assert any("no file sizes / hashes" in r.getMessage() for r in caplog.records)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


# -- metrics.jsonl: one line per step after resumes (unit) ------------------------------------------------

def test_rewind_keeps_records_before_the_checkpoint(tmp_path):
    from evf_sam.config import LoggerConfig
    from evf_sam.engine.run_logging import RunLogger

    lines = [{"type": "train", "step": s, "loss": float(s)} for s in range(1, 6)]
    lines.insert(2, {"type": "val", "step": 2, "split": "v", "ciou": 0.5})  # validation at step 2, before its save
    lines.append({"type": "val", "step": 5, "split": "v", "ciou": 0.6})
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"type": "train", "step": 6, "lo'  # a cut last line
    (tmp_path / "metrics.jsonl").write_text(text)
    log = RunLogger(tmp_path, rank=0, logger=LoggerConfig(name="none"), run_name="r")
    log.rewind(2, final_step=6)
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:3]
    log.start()
    for s in range(3, 7):
        log.log({"type": "train", "step": s, "loss": float(s)})
    log.rewind(4, final_step=6)  # a second crash after step 6, resumed from step 4
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == [1, 2, 3, 4]
    log.rewind(0, final_step=6)  # resume=none / no checkpoint: the run starts over
    assert (tmp_path / "metrics.jsonl").read_text() == ""


# -- evaluation: inputs checked before the model, results per split, re-run skips -----------------------

@pytest.fixture(scope="module")
def eval_env(tmp_path_factory):
    from evf_sam.data.synthetic import make_synthetic_refer, synthetic_sentences
    from evf_sam.testing import build_tiny_model, write_official_checkpoint
    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    tmp = tmp_path_factory.mktemp("reliab_eval")
    make_synthetic_refer(tmp / "data", seed=2, num_train=1, num_val=2, num_test=2, image_size=40)
    tok_dir = train_sentencepiece(synthetic_sentences(), tmp / "tok", vocab_size=64)
    model = build_tiny_model(seed=0, vocab_size=len(load_tokenizer(tok_dir)))
    ckpt = write_official_checkpoint(tmp / "ckpt", model, tok_dir, dtype=torch.float32)
    return {"tmp": tmp, "root": tmp / "data", "ckpt": ckpt}


def _eval_cfg(env, out: Path, splits, **kw):
    from evf_sam.engine.evaluate import eval_config

    return eval_config(checkpoint=str(env["ckpt"]), output_dir=str(out), splits=list(splits), device="cpu",
                       progress=False, data={"root": str(kw.pop("root", env["root"])), "num_workers": 0}, **kw)


@pytest.fixture
def model_loads(monkeypatch):
    """Counts EvfSam.from_pretrained calls (a model load) made by the evaluation."""
    from evf_sam.models.evf_sam import EvfSam

    calls = []
    real = EvfSam.from_pretrained.__func__

    def counting(cls, *a, **k):
        calls.append(a[0] if a else k)
        return real(cls, *a, **k)

    monkeypatch.setattr(EvfSam, "from_pretrained", classmethod(counting))
    return calls


SEVEN = ["refcoco|unc|val", "refcoco|unc|testA", "refcoco|unc|testB", "refcoco+|unc|val", "refcoco+|unc|testA",
         "refcoco+|unc|testB", "refcocog|umd|val"]


def _break_root(env, tmp: Path, what: str) -> Path:
    root = tmp / "data"
    shutil.copytree(env["root"], root)
    refer = root / "refer_seg"
    if what == "refs":
        (refer / "refcocog" / "refs(umd).p").unlink()
    elif what == "image":
        from evf_sam.data.refer import ReferDataset

        r = ReferDataset(root, "refcocog", "umd")
        image_id = next(ref["image_id"] for ref in r.refs if ref["split"] == "test")
        r.image_path(image_id).unlink()
    return root


EVAL_INPUT_CASES = [
    # (case, the 8th split or what is broken, words the error must contain)
    ("8th split does not exist", "refcocog|umd|testC", ["refcocog|umd has no split 'testC'", "refs(umd).p",
                                                         "['train', 'val', 'test']"]),
    ("8th split malformed", "refcocog|test", ["'refcocog|test'", "dataset|split_by|split"]),
    ("8th split's refs file missing", "refs", ["refs(umd).p"]),
    ("a split's image missing", "image", ["images are missing", ".jpg", "data/README.md"]),
    ("checkpoint missing", "checkpoint", ["no_such_ckpt"]),
]


@pytest.mark.parametrize("case,broken,words", EVAL_INPUT_CASES, ids=[c[0] for c in EVAL_INPUT_CASES])
def test_eval_checks_all_inputs_before_loading_the_model(eval_env, tmp_path, model_loads, case, broken, words):
    from evf_sam.engine.evaluate import run_eval_from_config

    splits, kw = [*SEVEN, "refcocog|umd|test"], {}
    if broken in ("refs", "image"):
        kw["root"] = _break_root(eval_env, tmp_path, broken)
    elif broken == "checkpoint":
        cfg_ckpt = tmp_path / "no_such_ckpt"
    else:
        splits[-1] = broken
    out = tmp_path / "out"
    cfg = _eval_cfg(eval_env, out, splits, **kw)
    if broken == "checkpoint":
        cfg.checkpoint = str(cfg_ckpt)
    with pytest.raises((ValueError, FileNotFoundError, OSError)) as e:
        run_eval_from_config(cfg)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert model_loads == []                      # nothing evaluated, so nothing of seven splits is thrown away
    assert not (out / "results.json").exists()


def test_interrupted_eval_keeps_finished_splits_and_rerun_skips_them(eval_env, tmp_path, monkeypatch, model_loads):
    import evf_sam.engine.evaluate as E

    splits = ["refcoco|unc|val", "refcoco+|unc|testA", "refcocog|umd|test"]
    out = tmp_path / "out"
    real, calls = E.evaluate, []

    def interrupted(model, tok, ds, **kw):
        calls.append(ds)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl+C / a kill during the second split
        return real(model, tok, ds, **kw)

    monkeypatch.setattr(E, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        E.run_eval_from_config(_eval_cfg(eval_env, out, splits))
    first = json.loads((out / "results.json").read_text())
    assert [k for k in first if "|" in k] == ["refcoco|unc|val"]
    assert (out / "results.csv").read_text().count("\n") == 2  # header + the finished split
    assert not list(out.glob(".*tmp*")) and not list(out.glob("*.tmp"))  # no half-written file left

    evaluated = []
    monkeypatch.setattr(E, "evaluate", lambda m, t, ds, **kw: evaluated.append(ds) or real(m, t, ds, **kw))
    res = E.run_eval_from_config(_eval_cfg(eval_env, out, splits))
    assert len(evaluated) == 2                              # only the two unfinished splits
    assert res["refcoco|unc|val"] == first["refcoco|unc|val"]
    full = json.loads((out / "results.json").read_text())
    assert [k for k in full if "|" in k] == splits and all(full[s] == res[s] for s in splits)

    evaluated.clear()
    n_loads = len(model_loads)
    assert E.run_eval_from_config(_eval_cfg(eval_env, out, splits)) == res
    assert evaluated == [] and len(model_loads) == n_loads  # everything done: the model is not even loaded

    E.run_eval_from_config(_eval_cfg(eval_env, out, splits, overwrite=True))
    assert len(evaluated) == 3                              # overwrite=true redoes every split
    assert json.loads((out / "results.json").read_text())["refcocog|umd|test"] == res["refcocog|umd|test"]

    # results of other settings in the same output_dir are never mixed in silently
    with pytest.raises(ValueError, match="max_images was None, now 1.*overwrite=true"):
        E.run_eval_from_config(_eval_cfg(eval_env, out, splits, max_images=1))


def test_eval_script_error_names_split_and_keeps_nothing_half_written(eval_env, tmp_path):
    out = tmp_path / "out"
    p = _script("eval_refcoco.py", f"checkpoint={eval_env['ckpt']}", f"data.root={eval_env['root']}",
                f"output_dir={out}", "splits=[refcoco|unc|val,refcocog|umd|testC]", "data.num_workers=0",
                f"hydra.run.dir={tmp_path / 'hydra'}")
    line = _one_line_error(p, "eval_refcoco.py")
    assert "testC" in line
    assert not (out / "results.json").exists()


# -- training: resume, damaged checkpoints, NaN console ---------------------------------------------------

def _train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    p = _script("train.py", *TINY, f"run_dir={run_dir}", *overrides)
    if check and p.returncode != 0:
        raise AssertionError(f"train failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


STEPS = ["trainer.total_steps=4", "trainer.ckpt_every=1", "trainer.keep_last=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step run stopped after step 3, with checkpoints 1, 2, 3; its losses are the reference for the
    steps a resumed copy trains again (an uninterrupted run's equality: tests/test_train.py)."""
    tmp = tmp_path_factory.mktemp("reliab_train")
    _train(tmp / "part", *STEPS, "trainer.max_steps_this_run=3")
    ref = {r["step"]: r["loss"] for r in _train_records(tmp / "part")}
    assert sorted(ref) == [1, 2, 3]
    return {"tmp": tmp, "ref": ref}


def _copy_part(runs, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["tmp"] / "part", run)
    # copied config / .hydra name the original run_dir only as an override; the command line sets run_dir
    return run


def _tag(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def _assert_one_line_per_step_and_same_losses(run: Path, ref: dict[int, float]) -> None:
    recs = _train_records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs[:3]:  # step 3 was trained again after the fall-back: the same loss as the first time
        assert abs(r["loss"] - ref[r["step"]]) <= 1e-6 * max(1.0, abs(ref[r["step"]])), (r, ref)
    assert math.isfinite(recs[3]["loss"])


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


DAMAGE_CASES = [
    # (case, file in step_3, damage, words of the warning)
    ("model states truncated", "mp_rank_00_model_states.pt", _truncate, ["truncated or replaced"]),
    ("rng file truncated", "rng_rank0.pt", _truncate, ["truncated or replaced"]),
]  # a changed byte (SHA-256) and a missing file: test_resume_falls_back_past_a_damaged_checkpoint_..., unit-level


@pytest.mark.slow
@pytest.mark.parametrize("case,name,damage,words", DAMAGE_CASES, ids=[c[0] for c in DAMAGE_CASES])
def test_damaged_checkpoint_falls_back_with_a_warning(runs, tmp_path, case, name, damage, words):
    run = _copy_part(runs, tmp_path)
    damage(_tag(run, 3) / name)
    p = _train(run, *STEPS)
    warn = [ln for ln in p.stdout.splitlines() if "is damaged" in ln]
    assert len(warn) == 1 and "step_00000003" in warn[0] and name in warn[0], p.stdout[-3000:]
    for w in words:
        assert w in warn[0]
    assert "falls back to the previous complete checkpoint" in warn[0]
    assert f"resumed from {_tag(run, 2)}" in p.stdout
    # step 3 was trained again and its checkpoint rewritten (the rejected one replaced): it verifies now
    from evf_sam.engine.checkpointing import read_marker, verify_files

    assert verify_files(_tag(run, 3), read_marker(_tag(run, 3))["files"]) == []
    _assert_one_line_per_step_and_same_losses(run, runs["ref"])
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"


@pytest.mark.slow
def test_metrics_one_line_per_step_after_repeated_resumes(runs, tmp_path):
    run = _copy_part(runs, tmp_path)
    # crash 1: during the save of step 3 (its marker never written) -> resume from 2, steps 3.. logged again
    (_tag(run, 3) / "complete").unlink()
    p = _train(run, *STEPS, "trainer.max_steps_this_run=1")
    assert f"resumed from {_tag(run, 2)}" in p.stdout
    assert [r["step"] for r in _train_records(run)] == [1, 2, 3]
    # crash 2: the same again, then to the end
    (_tag(run, 3) / "complete").unlink()
    _train(run, *STEPS)
    _assert_one_line_per_step_and_same_losses(run, runs["ref"])
    times = [r["elapsed_s"] for r in _train_records(run)]
    assert times == sorted(times)  # the run's clock carries over resumes


@pytest.mark.slow
def test_no_usable_checkpoint_is_one_line_naming_the_files(runs, tmp_path):
    run = _copy_part(runs, tmp_path)
    for step in (1, 2, 3):
        _truncate(_tag(run, step) / "mp_rank_00_model_states.pt")
    p = _train(run, *STEPS, check=False)
    line = _one_line_error(p, "train.py")
    assert "no usable checkpoint" in line and "resume=none" in line
    for step in (1, 2, 3):
        assert f"step_0000000{step}: " in line
    assert "mp_rank_00_model_states.pt" in line
    assert _train_records(run) and [r["step"] for r in _train_records(run)] == [1, 2, 3]  # nothing rewritten


@pytest.mark.slow
def test_explicit_resume_of_a_damaged_checkpoint_names_the_file(runs, tmp_path):
    run = _copy_part(runs, tmp_path)
    _truncate(_tag(run, 2) / "rng_rank0.pt")
    p = _train(run, *STEPS, f"resume={_tag(run, 2)}", check=False)
    line = _one_line_error(p, "train.py")
    assert "damaged checkpoint" in line and str(_tag(run, 2) / "rng_rank0.pt") in line


def _match_marker(tag: Path, name: str) -> None:
    """Rewrites the tag's marker so that the (replaced) file passes the size / hash check: an attacker
    who can write checkpoint files can write the marker too; the load itself must still refuse code."""
    from evf_sam.engine.checkpointing import file_record

    marker = json.loads((tag / "complete").read_text())
    marker["files"][name] = file_record(tag / name)
    (tag / "complete").write_text(json.dumps(marker))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_crafted_checkpoint_file_is_refused_without_running_it(runs, tmp_path, name):
    run = _copy_part(runs, tmp_path)
    witness = tmp_path / "PWNED"
    tag = _tag(run, 3)
    if name == "rng_rank0.pt":
        _crafted(tag / name, witness)
    else:  # DeepSpeed's model states with one object that runs code on unpickling
        states = torch.load(tag / name, weights_only=False)  # the test's own file, written by the base run
        states["evil"] = _Payload(witness)
        torch.save(states, tag / name)
    _match_marker(tag, name)
    p = _train(run, *STEPS, check=False)
    line = _one_line_error(p, "train.py")
    assert str(tag / name) in line and "refused to unpickle" in line and "add_safe_globals" not in line
    assert not witness.exists()


@pytest.mark.slow
def test_skipped_nan_step_is_not_shown_as_loss_zero(tmp_path):
    p = _train(tmp_path / "run", "trainer.total_steps=2", "trainer.ckpt_every=-1", "trainer.max_nonfinite_steps=5",
               "trainer.loss.bce_weight=nan")
    step_lines = [ln for ln in p.stdout.splitlines() if "step 1/2" in ln or "step 2/2" in ln]
    assert len(step_lines) == 2, p.stdout[-3000:]
    for ln in step_lines:
        assert "skipped (non-finite loss)" in ln and "0.0000" not in ln
    assert "loss 0.0000" not in p.stdout
    recs = _train_records(tmp_path / "run")
    assert [r["skipped"] for r in recs] == [True, True]
