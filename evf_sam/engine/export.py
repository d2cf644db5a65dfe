"""A training checkpoint as an inference directory (`EvfSam.from_pretrained`, the predictor, the CLI,
scripts/eval_refcoco.py).

    out = export_checkpoint("runs/evf_sam", step=5000, output="exports/evf_sam_5k")   # step=None: the newest
    # scripts/export.py runs/evf_sam --step 5000 --output exports/evf_sam_5k

The model is rebuilt as the run built it, from its ``config_resolved.yaml`` (``model`` and ``trainable``
groups; no SAM / BEiT-3 weight files are read), and takes its tensors strictly from the DeepSpeed
model-states file of ``checkpoints/step_N`` (every parameter and buffer, in the training dtype), read
with ``torch.load(weights_only=True)`` after the file's size and SHA-256 match the tag's ``complete``
marker. ``save_pretrained`` writes it with the run's tokenizer, exactly as the trainer writes
``final/``: exporting the final step reproduces ``final/`` byte for byte.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evf_sam.engine.checkpointing import (CheckpointError, checkpoint_tag, complete_checkpoints, read_marker,
                                          safe_torch_load, verify_files)

__all__ = ["MODEL_STATES", "export_checkpoint", "find_checkpoint"]

logger = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file of the full module state (ZeRO-1/2)


def find_checkpoint(run_dir: str | Path, step: int | str | None = None) -> Path:
    """The complete tag dir of ``step`` (an int, ``"latest"`` or None: the newest) under ``run_dir/checkpoints``."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    done = complete_checkpoints(ckpt_dir)
    steps = sorted(int(d.name[5:]) for d in done)
    if step is None or str(step) == "latest":
        if not done:
            raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint (a run writes one every trainer.ckpt_every "
                                    f"steps and at its end)")
        return done[0]
    try:
        tag = checkpoint_tag(int(step))
    except ValueError:
        raise ValueError(f"step must be an integer or 'latest', got {step!r}") from None
    d = ckpt_dir / tag
    if d not in done:
        raise FileNotFoundError(f"{d}: no complete checkpoint of step {int(step)}; complete ones: "
                                f"{', '.join(map(str, steps)) or 'none'}")
    return d


def _model_states(tag_dir: Path) -> dict:
    """The module state dict of a tag, its file checked against the marker first."""
    f = tag_dir / MODEL_STATES
    files = read_marker(tag_dir).get("files")
    if files is None:
        logger.warning("%s has no file hashes (written by an older version): %s is not verified", tag_dir, f.name)
    else:
        if f.name not in files:
            raise CheckpointError(f"{tag_dir / 'complete'}: lists no {f.name} (not a ZeRO-1/2 checkpoint of this "
                                  f"trainer)")
        problems = verify_files(tag_dir, {f.name: files[f.name]})
        if problems:
            raise CheckpointError(f"damaged checkpoint: {problems[0]}")
    states = safe_torch_load(f, map_location="cpu")
    if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
        raise CheckpointError(f"{f}: no 'module' state dict (not a DeepSpeed model-states file)")
    return states["module"]


def export_checkpoint(run_dir: str | Path, *, step: int | str | None = None, output: str | Path | None = None,
                      overwrite: bool = False) -> Path:
    """Writes the checkpoint of ``step`` (None / "latest": the newest complete one) of a training run as an
    EVF-SAM directory at ``output`` (default ``run_dir/exports/step_N``); returns it.

    Errors name what is missing: the run's config, its tokenizer, the checkpoint (with the complete
    steps), a tensor the architecture expects or does not know (strict), an existing ``output``
    (``overwrite=True`` replaces an EVF-SAM directory)."""
    from omegaconf import OmegaConf

    from evf_sam.config import ModelConfig, TrainableConfig, typed
    from evf_sam.engine.build import build_model_and_tokenizer, set_trainable
    from evf_sam.models.state_dict import check_state_dict

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config_resolved.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not found ({run_dir} is not a training run directory of "
                                f"scripts/train.py)")
    tag = find_checkpoint(run_dir, step)
    out = Path(output) if output is not None else run_dir / "exports" / tag.name
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it or choose another "
                              f"--output")
    cfg = OmegaConf.load(cfg_file)
    model_cfg, trainable = typed(cfg.model, ModelConfig), typed(cfg.trainable, TrainableConfig)
    tok_dir = Path(model_cfg.tokenizer) if model_cfg.tokenizer else run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"{tok_dir}: the run's tokenizer directory is missing "
                                f"({'model.tokenizer' if model_cfg.tokenizer else 'written by the run'})")
    states = _model_states(tag)
    model, _, tok_dir = build_model_and_tokenizer(model_cfg, run_dir, pretrained=False)
    set_trainable(model, trainable.params)
    check_state_dict(model.state_dict(), states, what=f"{tag / MODEL_STATES} (module)")
    model.load_state_dict(states, strict=True, assign=True)  # assign: the training dtype, as final/ has it
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    logger.info("exported %s (step %d) to %s", tag, int(tag.name[5:]), out)
    return out
