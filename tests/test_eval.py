"""Evaluation: dataset grouping / sharding, world-size invariance (2-process gloo), the script end to end."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evf_sam.data.eval_dataset import build_eval_dataset
from evf_sam.data.refer import PAPER_SPLITS, refer_dir
from evf_sam.data.synthetic import make_synthetic_refer, synthetic_sentences
from evf_sam.engine.evaluate import evaluate, format_paper_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic data (5 val images: an odd number), a tokenizer trained on its sentences, a tiny
    random model and its official-format fp32 checkpoint."""
    from evf_sam.testing import build_tiny_model, write_official_checkpoint
    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    tmp = tmp_path_factory.mktemp("eval")
    make_synthetic_refer(tmp / "data", seed=1, num_train=2, num_val=5, num_test=3, image_size=64)
    tok_dir = train_sentencepiece(synthetic_sentences(), tmp / "tok", vocab_size=64)
    tok = load_tokenizer(tok_dir)
    model = build_tiny_model(seed=0, vocab_size=len(tok))
    ckpt = write_official_checkpoint(tmp / "ckpt", model, tok_dir, dtype=torch.float32)
    return {"tmp": tmp, "root": tmp / "data", "tok": tok, "tok_dir": tok_dir, "model": model, "ckpt": ckpt}


def _count(root: Path, dataset: str, split_by: str, split: str) -> tuple[int, int]:
    """(sentences, images) of a split, counted straight from the refs file (our own pickle)."""
    with open(refer_dir(root) / dataset / f"refs({split_by}).p", "rb") as f:
        refs = [r for r in pickle.load(f) if r["split"] == split]
    return sum(len(r["sentences"]) for r in refs), len({r["image_id"] for r in refs})


def _ds(env, split="val", dataset="refcoco", split_by="unc"):
    m = env["model"]
    return build_eval_dataset(env["root"], dataset, split_by, split, sam_size=m.sam_image_size,
                              beit_size=m.beit_image_size)


def test_eval_dataset_groups_and_shards(env):
    ds = _ds(env)
    n_sent, n_img = _count(env["root"], "refcoco", "unc", "val")
    assert len(ds) == n_img == 5 and ds.num_expressions == n_sent
    item = ds[0]
    h, w = item.original_size
    assert item.gt_masks.shape == (len(item.sentences), h, w) and item.gt_masks.dtype == torch.bool
    assert item.sam_image.shape == (3, env["model"].sam_image_size, env["model"].sam_image_size)
    assert all(s == s.strip().lower() for s in item.sentences)
    shards = [ds.shard(r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [3, 2]  # no padding
    ids = [e[0] for s in shards for e in s.entries]
    assert sorted(ids) == [e[0] for e in ds.entries] and len(set(ids)) == len(ids)
    assert len(ds.subset(2)) == 2
    with pytest.raises(ValueError, match="testC"):
        _ds(env, split="testC")


def _worker(rank: int, world: int, port: int, env_paths: dict, out: str) -> None:
    import torch.distributed as dist

    from evf_sam.models.evf_sam import EvfSam
    from evf_sam.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = EvfSam.from_pretrained(env_paths["ckpt"])
        tok = load_tokenizer(env_paths["tok_dir"])
        ds = build_eval_dataset(env_paths["root"], "refcoco", "unc", "val", sam_size=model.sam_image_size,
                                beit_size=model.beit_image_size)
        m = evaluate(model, tok, ds, device="cpu", progress=False)
        if rank == 0:
            Path(out).write_text(json.dumps(m))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_world_size_invariance(env):
    import socket

    import torch.multiprocessing as mp

    from evf_sam.models.evf_sam import EvfSam

    model = EvfSam.from_pretrained(env["ckpt"])
    one = evaluate(model, env["tok"], _ds(env), device="cpu", progress=False)
    assert one["n_images"] == 5 and one["n_expressions"] == _count(env["root"], "refcoco", "unc", "val")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = env["tmp"] / "two.json"
    paths = {k: str(env[k]) for k in ("ckpt", "tok_dir", "root")}
    mp.spawn(_worker, args=(2, port, paths, str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two == one  # exactly: integer sums, fixed-point IoU sum, per-image forward


def test_paper_table_layout():
    res = {"refcoco|unc|val": {"ciou": 0.5, "giou": 0.25}, "refcocog|umd|test": {"ciou": 0.7, "giou": 0.75}}
    t = format_paper_table(res, "ciou", "m").splitlines()
    assert t[0].startswith("| ciou | RefCOCO val | RefCOCO testA | RefCOCO testB | RefCOCO+ val")
    assert t[0].endswith("RefCOCOg val | RefCOCOg test | AVG |")
    assert t[2] == "| m | 50.0 | - | - | - | - | - | - | 70.0 | 60.0 (2/8) |"
    full = {s: {"ciou": 0.5} for s in PAPER_SPLITS}
    assert format_paper_table(full, "ciou").splitlines()[2].endswith("| 50.0 |")


@pytest.mark.slow
def test_eval_script_end_to_end(env):
    out = env["tmp"] / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "eval_refcoco.py"), f"checkpoint={env['ckpt']}",
           f"data.root={env['root']}", f"output_dir={out}", "data.num_workers=0", "progress=false",
           "splits=[refcoco|unc|val,refcocog|umd|test]", "save_masks=true", f"hydra.run.dir={env['tmp'] / 'hydra'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "| ciou | RefCOCO val" in p.stdout and "| giou | RefCOCO val" in p.stdout
    res = json.loads((out / "results.json").read_text())
    labels = ("config", "checkpoint", "eval_settings", "axes", "train_config")
    splits = {k: v for k, v in res.items() if k not in labels}  # make_table.py's layout
    assert set(splits) == {"refcoco|unc|val", "refcocog|umd|test"}
    assert res["checkpoint"] == str(env["ckpt"]) and res["config"]["data"]["root"] == str(env["root"])
    for name in splits:
        d, b, s = name.split("|")
        n_sent, n_img = _count(env["root"], d, b, s)
        m = splits[name]
        assert m["n_expressions"] == n_sent and m["n_images"] == n_img
        assert set(m) >= {"ciou", "giou", "pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9"}
        assert len(list((out / "masks" / name.replace("|", "_")).glob("*.png"))) == n_sent
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["split"] for r in rows] == ["refcoco|unc|val", "refcocog|umd|test"]
    assert (out / "config_resolved.yaml").is_file() and (out / "results.md").is_file()
    # the script's numbers are the in-process evaluation's (fp32 checkpoint of the same model)
    direct = evaluate(env["model"], env["tok"], _ds(env), device="cpu", progress=False)
    assert splits["refcoco|unc|val"] == direct


@pytest.mark.slow
def test_eval_script_torchrun_matches_single_process(env):
    """scripts/eval_refcoco.py under torchrun (2 gloo ranks, 5 images) writes the 1-process numbers."""
    import socket

    args = [f"checkpoint={env['ckpt']}", f"data.root={env['root']}", "splits=[refcoco|unc|val]", "device=cpu",
            "data.num_workers=0", "progress=false", "batch_size=1",  # bit-identical across world sizes at 1
            f"hydra.run.dir={env['tmp'] / 'hydra_tr'}"]
    script = str(REPO / "scripts" / "eval_refcoco.py")
    run_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    run_env["OMP_NUM_THREADS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = {}
    for nproc in (1, 2):
        run = env["tmp"] / f"tr{nproc}"
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        p = subprocess.run([*launcher, script, *args, f"output_dir={run}"], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=run_env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out[nproc] = json.loads((run / "results.json").read_text())["refcoco|unc|val"]
    assert out[1] == out[2] and out[1]["n_images"] == 5


@pytest.mark.slow
def test_eval_script_ade20k_semantic_split(env):
    """scripts/eval_refcoco.py on ade20k|semantic|val (paper Tab. 6) writes cIoU / gIoU / mIoU that equal the
    in-process evaluation of the same dataset; with semantic_prefix=auto a tokenizer without [semantic] gets
    bare class names."""
    from evf_sam.data.eval_dataset import SemanticEvalDataset
    from evf_sam.data.semantic import build_semantic_reader
    from evf_sam.data.synthetic_semantic import make_tiny_semantic

    sem_root = env["tmp"] / "sem"
    make_tiny_semantic(sem_root, num_train=1, num_val=3, size=40)
    out = env["tmp"] / "run_sem"
    cmd = [sys.executable, str(REPO / "scripts" / "eval_refcoco.py"), f"checkpoint={env['ckpt']}",
           f"data.root={env['root']}", f"data.semantic_root={sem_root}", f"output_dir={out}", "data.num_workers=0",
           "progress=false", "splits=[ade20k|semantic|val]", "semantic_prefix=auto",
           f"hydra.run.dir={env['tmp'] / 'hydra_sem'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ade20k|semantic|val: cIoU" in p.stdout and "mIoU" in p.stdout
    res = json.loads((out / "results.json").read_text())["ade20k|semantic|val"]
    m = env["model"]
    ds = SemanticEvalDataset(build_semantic_reader("ade20k", sem_root, "validation"), sam_size=m.sam_image_size,
                             beit_size=m.beit_image_size, prefix="")
    assert all(not s.startswith("[semantic]") for s in ds[0].sentences)
    direct = evaluate(m, env["tok"], ds, device="cpu", progress=False)
    assert res == direct and 0.0 <= res["miou"] <= 1.0 and res["n_images"] == len(ds)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[0]["split"] == "ade20k|semantic|val" and float(rows[0]["miou"]) == pytest.approx(res["miou"])
    bad = subprocess.run([*cmd[:-1], "splits=[ade20k|semantic|testA]", f"hydra.run.dir={env['tmp'] / 'h2'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "ade20k|semantic|val" in bad.stderr
