"""Checkpoints by name: a local directory, or a Hugging Face hub id fetched into the standard cache.

    resolve_checkpoint("runs/x/final")        # an existing local path: returned as is, always
    resolve_checkpoint("YxZhang/evf-sam2")    # hub id: downloaded once, then read from the cache

`EvfSam.from_pretrained`, `EvfSamPredictor.from_pretrained` and ``evf-sam --checkpoint`` go through
`resolve_checkpoint`. A string that names an existing path is a local checkpoint, even when it
also reads as ``owner/name``. Otherwise an ``owner/name`` string is a hub id:

- online: the checkpoint's files (config, weights in one format, tokenizer) are downloaded with
  ``huggingface_hub.snapshot_download`` into the hub cache (``HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), once: later calls find them there;
- offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached: the cached snapshot of the
  default branch (``models--owner--name/refs/main`` -> ``snapshots/<commit>``) is used;
- neither: `CheckpointNotFoundError` naming the id, the cache directory and what to do.

Environment variables are read at call time (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``, ``HF_HOME``,
``HF_ENDPOINT``), so setting them after import works. Nothing here imports gradio or torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

__all__ = ["CheckpointNotFoundError", "OFFICIAL_CHECKPOINTS", "checkpoint_patterns", "hub_cache_dir", "is_hub_id",
           "resolve_checkpoint"]

# The official release's hub repositories (hustvl/EVF-SAM README, "Weights"). The EVF-Effi-SAM
# checkpoints are listed there without a hub link.
OFFICIAL_CHECKPOINTS = ("YxZhang/evf-sam", "YxZhang/evf-sam2", "YxZhang/evf-sam-multitask",
                        "YxZhang/evf-sam2-multitask")

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE = {"1", "on", "yes", "true"}


class CheckpointNotFoundError(FileNotFoundError):
    """Neither a local checkpoint directory nor a hub id that could be downloaded or found cached."""


def is_hub_id(s: str) -> bool:
    """``owner/name`` with hub-legal characters (no leading ``/``, ``.`` or ``~``, one slash, no ``..``)."""
    return bool(_HUB_ID.fullmatch(s)) and ".." not in s and not s.endswith(".git")


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v else None


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub computes it, from the environment now."""
    cache = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = _env("HF_HOME") or os.path.join(_env("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return (_env("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE


# Files a checkpoint directory needs: config.json, weights (+ index), tokenizer files
# (sentencepiece.bpe.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
# added_tokens.json, CLIP's vocab.json / merges.txt).
_FILE_PATTERNS = ("*.json", "*.model", "merges.txt", "vocab.txt")
_WEIGHT_PATTERNS = {"safetensors": "*.safetensors", "bin": "*.bin"}


def checkpoint_patterns(files: Iterable[str]) -> list[str]:
    """snapshot_download ``allow_patterns`` for a repository holding ``files``: the config and
    tokenizer files, and the weights in one format (safetensors when present, else .bin), so a
    repository that ships both is downloaded once, not twice."""
    files = list(files)
    weights = "safetensors" if any(f.endswith(".safetensors") for f in files) else "bin"
    return [*_FILE_PATTERNS, _WEIGHT_PATTERNS[weights]]


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """The local directory of a checkpoint given as a path or a hub id (see the module docstring).

    A string that is neither an existing path nor an ``owner/name`` id is returned as a Path, so
    the loader's own "not found" error names it.
    """
    s = os.fspath(path_or_id)
    local = Path(s).expanduser()
    if local.exists() or not is_hub_id(s):
        return local
    return _from_hub(s)


def _short(e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise CheckpointNotFoundError(
            f"checkpoint {repo_id!r} is not a local directory, and huggingface_hub (needed for hub ids) is not "
            f"installed: pip install huggingface_hub, or pass a local checkpoint directory") from None
    cache = hub_cache_dir()
    endpoint = _env("HF_ENDPOINT")
    if _offline():
        reason = "offline mode (HF_HUB_OFFLINE is set), so the hub was not asked"
    else:
        try:
            # model_info fails at once without a network (list_repo_files retries for ~25 s)
            files = [f.rfilename for f in HfApi(endpoint=endpoint).model_info(repo_id, timeout=30).siblings or []]
            return Path(snapshot_download(repo_id, cache_dir=cache, endpoint=endpoint,
                                          allow_patterns=checkpoint_patterns(files)))
        except Exception as e:  # no network, hub down, unknown or private repository, interrupted download
            reason = f"the hub could not provide it ({_short(e)})"
    try:
        # Only config.json must be there: a snapshot downloaded with other patterns is still usable,
        # and a partial one fails in the loader with a message naming the missing file.
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=["config.json"]))
    except Exception:
        pass
    raise CheckpointNotFoundError(
        f"checkpoint {repo_id!r} is not a local directory, and as a Hugging Face hub id it is not in the hub cache "
        f"{str(cache)!r} and could not be downloaded: {reason}. Download it once with network access "
        f"(`hf download {repo_id}`, or any evf-sam command with this id; HF_HUB_CACHE / HF_HOME choose the cache), "
        f"then it also works offline; or pass the path of a local checkpoint directory")
