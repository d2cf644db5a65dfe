"""The ablation-axis values that label a run's row in the paper's tables (``results.json["axes"]``).

    axes = axes_from_config(OmegaConf.to_container(cfg, resolve=True))   # a training run's config
    axes = axes_from_model_config(json.load(open("final/config.json")))   # an exported checkpoint
    axes, origin = read_run_axes(json.load(open("results.json")), results_path)

Axes (config-group names under configs/): encoder, fusion, fused_layers, feature, trainable, sam,
extra_data; plus data (the data config's name), seed, paper_table and pilot (True for tiny encoders or
synthetic data). A value that cannot be known is None.

`read_run_axes` takes, in order: ``results["axes"]`` (what the trainer and the evaluation script
should write); a training config under ``results["config"]``; for an evaluation run, the training
run of its checkpoint (``<run_dir>/config_resolved.yaml`` next to ``<run_dir>/final``) or else the
checkpoint's own ``config.json`` (model axes only: encoder, fusion, fused_layers, feature, sam).
No torch import: scripts/make_table.py runs without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["AXIS_KEYS", "axes_from_config", "axes_from_model_config", "checkpoint_labels", "read_run_axes"]

AXIS_KEYS: tuple[str, ...] = ("encoder", "fusion", "fused_layers", "feature", "trainable", "sam", "extra_data",
                              "data", "seed", "paper_table", "pilot")
# The feature each fusion mode uses when the config leaves it to the fusion (configs/feature/auto.yaml;
# mirrors evf_sam.models.features.FUSION_FEATURES).
_MODE_FEATURE = {"text": "text_cls", "late": "concat", "early": "image_cls", "early_k": "image_cls"}
_TINY_ENCODERS = ("beit3_tiny", "clip_tiny", "vilt_tiny")


def _get(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pilot(encoder: Any, data: Any) -> bool:
    return encoder in _TINY_ENCODERS or str(data or "").startswith("synthetic")


def axes_from_config(cfg: dict) -> dict[str, Any]:
    """Axes of a resolved training config (configs/train.yaml: groups first, then the model node)."""
    # the model node is what was built (model=tiny fixes encoder and SAM whatever the groups say)
    encoder = _get(cfg, "model.encoder") or _get(cfg, "encoder.name")
    mode = _get(cfg, "fusion.mode") or _get(cfg, "model.fusion")
    fusion = _get(cfg, "fusion.name") or ("early_l12" if mode == "early_k" else mode)
    fused = _get(cfg, "fusion.fused_layers")
    if fused is None:
        fused = _get(cfg, "model.fused_layers")
    feature = _get(cfg, "feature.value") or _get(cfg, "model.feature") or _MODE_FEATURE.get(mode)
    data = _get(cfg, "data.name")
    extra = _get(cfg, "extra_data.name")
    if extra is None and _get(cfg, "data.kind") == "refer" and not _get(cfg, "data.semantic"):
        extra = "res"  # no semantic-segmentation source in the mix: Tab. 6's first row
    seed = _get(cfg, "seed")
    return {"encoder": encoder, "fusion": fusion, "fused_layers": fused, "feature": feature,
            "trainable": _get(cfg, "trainable.name"), "sam": _get(cfg, "model.sam_variant") or _get(cfg, "sam.name"),
            "extra_data": extra, "data": data, "seed": seed, "paper_table": _get(cfg, "paper_table"),
            "pilot": _pilot(encoder, data)}


def axes_from_model_config(mc: dict) -> dict[str, Any]:
    """Model axes of a checkpoint's config.json (EvfSamConfig fields, possibly under "evf_sam")."""
    mc = mc.get("evf_sam", mc) if isinstance(mc.get("evf_sam"), dict) else mc
    mode = mc.get("fusion", "early")
    encoder = mc.get("encoder")
    return {"encoder": encoder, "fusion": "early_l12" if mode == "early_k" else mode,
            "fused_layers": mc.get("fused_layers"), "feature": mc.get("feature") or _MODE_FEATURE.get(mode),
            "trainable": None, "sam": mc.get("sam_variant"), "extra_data": None, "data": None, "seed": None,
            "paper_table": None, "pilot": _pilot(encoder, None)}


def _is_train_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and "trainer" in cfg


def _checkpoint_axes(ckpt: Path) -> tuple[dict[str, Any], str] | None:
    run_cfg = ckpt.parent / "config_resolved.yaml"  # <run_dir>/final -> <run_dir>/config_resolved.yaml
    if run_cfg.is_file():
        import yaml

        cfg = yaml.safe_load(run_cfg.read_text())
        if _is_train_config(cfg):
            return axes_from_config(cfg), f"training run {run_cfg}"
    mc = ckpt / "config.json"
    if mc.is_file():
        return axes_from_model_config(json.loads(mc.read_text())), f"checkpoint {mc}"
    return None


def read_run_axes(results: dict, path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """(axes, where they came from) for one results.json; missing axes are None ("none" origin)."""
    empty = {k: None for k in AXIS_KEYS}
    if isinstance(results.get("axes"), dict):
        return {**empty, **results["axes"]}, "results.json axes"
    cfg = results.get("config")
    if _is_train_config(cfg):
        return {**empty, **axes_from_config(cfg)}, "results.json config"
    ckpt = (cfg or {}).get("checkpoint") if isinstance(cfg, dict) else None
    ckpt = ckpt or results.get("checkpoint")
    if ckpt:
        p = Path(str(ckpt))
        if not p.is_absolute() and path is not None and not p.exists():
            p = Path(path).parent / p
        found = _checkpoint_axes(p)
        if found is not None:
            axes, origin = found
            return {**empty, **axes}, origin
    return empty, "none"


def checkpoint_labels(ckpt: str | Path) -> dict[str, Any]:
    """What an evaluation's results.json carries to label its row: ``{"axes": ..., "train_config": ...}``
    from the training run of ``ckpt`` (``<run_dir>/config_resolved.yaml``), else ``{"axes": ...}`` from
    the checkpoint's config.json (model axes only), else ``{}``."""
    ckpt = Path(ckpt)
    run_cfg = ckpt.parent / "config_resolved.yaml"
    if run_cfg.is_file():
        import yaml

        cfg = yaml.safe_load(run_cfg.read_text())
        if _is_train_config(cfg):
            return {"axes": axes_from_config(cfg), "train_config": cfg}
    found = _checkpoint_axes(ckpt)
    return {"axes": found[0]} if found is not None else {}
