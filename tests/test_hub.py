"""Checkpoints by hub id (evf_sam/hub.py): a locally built cache in huggingface_hub's layout, used
offline; the hub is never contacted (HF_HUB_OFFLINE=1, or an endpoint on a closed loopback port)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evf_sam.cli import main
from evf_sam.hub import CheckpointNotFoundError, checkpoint_patterns, hub_cache_dir, is_hub_id, resolve_checkpoint
from evf_sam.models.evf_sam import EvfSam
from evf_sam.predictor import EvfSamPredictor
from evf_sam.testing import build_tiny_model, make_tokenizer

REPO = "Owner/evf-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROMPTS = ["the big red circle on the left", "a small blue square"]


def put_in_hub_cache(cache: Path, repo_id: str, src: Path, commit: str = COMMIT) -> Path:
    """Lays ``src``'s files out as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file>
    symlinked to the blob, refs/main = the commit (no newline). Returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tok_dir):
    """Two tiny checkpoints with different weights: (seed 0 dir, seed 1 dir)."""
    root = tmp_path_factory.mktemp("ckpts")
    return tuple(build_tiny_model(seed=s).save_pretrained(root / f"seed{s}", tok_dir) for s in (0, 1))


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME (cache = HF_HOME/hub), offline, no other hub variables."""
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes: connections are refused


def _first_param(model: EvfSam) -> torch.Tensor:
    return model.projector.fc1.weight.detach().float()


def test_hub_id_syntax():
    assert is_hub_id("YxZhang/evf-sam2") and is_hub_id("a.b/c_d-1")
    for s in ("evf-sam", "path/to/evf-sam", "/abs/dir", "./x/y", "~/x", "a/../b", "a/", "/a", "a/b.git"):
        assert not is_hub_id(s), s


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    assert hub_cache_dir() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"


def test_weight_format_chosen_once():
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "sentencepiece.bpe.model", "README.md"]
    assert checkpoint_patterns(both) == ["*.json", "*.model", "merges.txt", "vocab.txt", "*.safetensors"]
    assert checkpoint_patterns(["config.json", "pytorch_model-00001-of-00002.bin"])[-1] == "*.bin"


def test_offline_cached_id_loads(hf_home, checkpoints):
    snap = put_in_hub_cache(hf_home / "hub", REPO, checkpoints[0])
    assert resolve_checkpoint(REPO) == snap
    model = EvfSam.from_pretrained(REPO)
    assert model.source_dir == snap
    torch.testing.assert_close(_first_param(model), _first_param(EvfSam.from_pretrained(checkpoints[0])), rtol=0, atol=0)
    assert not torch.equal(_first_param(model), _first_param(EvfSam.from_pretrained(checkpoints[1])))

    image = np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8)
    by_id = EvfSamPredictor.from_pretrained(REPO)(image, PROMPTS)  # tokenizer from the snapshot too
    by_dir = EvfSamPredictor.from_pretrained(checkpoints[0])(image, PROMPTS)
    assert torch.equal(by_id.masks, by_dir.masks) and torch.equal(by_id.logits, by_dir.logits)


def test_local_directory_wins_over_cached_id(hf_home, checkpoints, tmp_path, monkeypatch):
    put_in_hub_cache(hf_home / "hub", REPO, checkpoints[1])
    local = tmp_path / "work" / REPO
    shutil.copytree(checkpoints[0], local)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_checkpoint(REPO) == Path(REPO)
    assert torch.equal(_first_param(EvfSam.from_pretrained(REPO)), _first_param(EvfSam.from_pretrained(checkpoints[0])))


def test_unreachable_hub_falls_back_to_cache(hf_home, checkpoints, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    snap = put_in_hub_cache(hf_home / "hub", REPO, checkpoints[0])
    assert resolve_checkpoint(REPO) == snap


def test_not_cached_offline_error(hf_home):
    with pytest.raises(CheckpointNotFoundError) as e:
        EvfSam.from_pretrained("Owner/not-there")
    msg = str(e.value)
    for part in ("'Owner/not-there'", str(hf_home / "hub"), "HF_HUB_OFFLINE", "hf download Owner/not-there",
                 "local checkpoint directory"):
        assert part in msg, msg
    assert isinstance(e.value, FileNotFoundError)


def test_not_cached_unreachable_error(hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(CheckpointNotFoundError, match="could not provide it") as e:
        resolve_checkpoint("Owner/not-there")
    assert str(hf_home / "hub") in str(e.value)


def test_non_id_missing_path_is_a_plain_not_found(hf_home, tmp_path):
    missing = tmp_path / "no" / "such" / "ckpt"
    assert resolve_checkpoint(missing) == missing
    with pytest.raises(FileNotFoundError, match="not found") as e:
        EvfSam.from_pretrained(missing)
    assert not isinstance(e.value, CheckpointNotFoundError)


def test_cli_accepts_hub_id(hf_home, checkpoints, tmp_path, capsys):
    put_in_hub_cache(hf_home / "hub", REPO, checkpoints[0])
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image)
    args = ["predict", "--image", str(image), "--prompt", PROMPTS[0], "--device", "cpu"]
    assert main([*args, "--checkpoint", REPO, "--output", str(tmp_path / "out")]) == 0
    assert main([*args, "--checkpoint", str(checkpoints[0]), "--output", str(tmp_path / "ref")]) == 0
    got = sorted(p.name for p in (tmp_path / "out").glob("*_mask.png"))
    assert got and got == sorted(p.name for p in (tmp_path / "ref").glob("*_mask.png"))
    assert all((tmp_path / "out" / n).read_bytes() == (tmp_path / "ref" / n).read_bytes() for n in got)

    capsys.readouterr()
    assert main([*args, "--checkpoint", "Owner/not-there", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evf-sam: error: ") and "\n" not in err and "'Owner/not-there'" in err, err
    assert not (tmp_path / "bad").exists()


def test_model_loading_does_not_import_gradio():
    """evf_sam.models, the predictor and the renderer never pull in gradio (the demo's extra)."""
    code = ("import sys, evf_sam.models.evf_sam, evf_sam.predictor, evf_sam.visualize\n"
            "from evf_sam.hub import resolve_checkpoint\n"
            "resolve_checkpoint('.')\n"
            "assert 'gradio' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
