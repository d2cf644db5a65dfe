"""Checkpoints: the one place where the official EVF-SAM names are translated, both ways. This module
sits above the model (it builds `EvfSam` to load into); `EvfSam.from_pretrained` / `save_pretrained`
delegate here.

    ours                 official EVF-SAM checkpoint
    sam.*                visual_model.*
    encoder.*            mm_extractor.beit3.*
    projector.fc1.*      text_hidden_fcs.0.0.*
    projector.fc2.*      text_hidden_fcs.0.2.*
    sam.memory_encoder.fuser.layers.{i}.gamma   visual_model.memory_encoder.fuser.layers.{i}.weight
                         (SAM-2 only: the official EVF-SAM2 vendors SAM-2 with this layer scale renamed)

An official directory (what a user downloads as "evf-sam"):

    config.json                      {"architectures": ["EvfSamModel"], "model_type": "evf",
                                      "sam_scale": "huge", "mm_extractor_scale": "large",
                                      "hidden_size": 1024, "out_dim": 256, "torch_dtype": "float16", ...}
    pytorch_model.bin | model.safetensors | pytorch_model.bin.index.json (+ shards) |
    model.safetensors.index.json (+ shards)
    sentencepiece.bpe.model, tokenizer_config.json, special_tokens_map.json [, added_tokens.json]
    (CLIP / ViLT ablation encoders: vocab.json + merges.txt / vocab.txt instead of sentencepiece.bpe.model)

Every load is strict: missing tensors, unexpected tensors and shape mismatches raise
`StateDictMismatchError` naming each tensor by its name in the file (official names), and a
config.json that disagrees with its weights (e.g. ``mm_extractor_scale: "large"`` next to
BEiT-3-Base weights) raises `ValueError` saying what each side says. Our own fields (``sam_variant``,
``encoder``, ``encoder_overrides``, ``multimask_output``; ``sam_stability_fallback`` when set; the
ablation axes ``fusion``, ``feature``, ``fused_layers``, ``encoder_path`` for non-official encoders)
are written next to the official ones; they are how tiny models (``sam_variant: "tiny"``) and
ablation points round-trip. File formats: ../shared/reference/FORMATS.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from evf_sam.atomic import default_dir_mode
from evf_sam.models.beit3 import BEIT3_CONFIGS
from evf_sam.models.efficient_sam import OFFICIAL_SAM_SCALE
from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam
from evf_sam.models.sam import PIXEL_MEAN, PIXEL_STD, SAM_CONFIGS
from evf_sam.models.sam_backends import sam_family
from evf_sam.models.state_dict import (  # noqa: F401  (StateDictMismatchError: public here too)
    CheckpointFileError,
    StateDictMismatchError,
    check_state_dict,
    load_safetensors_file,
    load_torch_file,
    load_state_dict_strict,
    short_list,
)

__all__ = [
    "ARCHITECTURES",
    "ENCODER_SCALES",
    "LEAF_NAME_MAP",
    "NAME_MAP",
    "SAM_SCALES",
    "CheckpointFileError",
    "StateDictMismatchError",
    "TOKENIZER_FILES",
    "TOKENIZER_KIND_FILES",
    "WEIGHT_FILES",
    "check_state_dict",
    "config_from_official",
    "from_official_name",
    "from_official_state_dict",
    "load_pretrained",
    "load_state_dict_strict",
    "official_config",
    "official_state_dict",
    "read_official_config",
    "read_official_weights",
    "save_pretrained",
    "to_official_name",
    "to_official_state_dict",
    "write_checkpoint_dir",
]

logger = logging.getLogger(__name__)

# ours prefix -> official prefix (the table in docs/DESIGN.md)
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("sam.", "visual_model."),
    ("encoder.", "mm_extractor.beit3."),
    ("projector.fc1.", "text_hidden_fcs.0.0."),
    ("projector.fc2.", "text_hidden_fcs.0.2."),
)
# Single tensors named differently inside a prefix, checked before NAME_MAP. The official
# EVF-SAM2 vendors SAM-2 with the memory encoder's layer scale renamed from `gamma` to `weight`
# (hustvl/EVF-SAM model/segment_anything_2/sam2/modeling/memory_encoder.py, CXBlock: transformers 4's
# loader rewrites keys containing "gamma"); Meta's sam2 package, which we build on, calls it `gamma`.
_FUSER_SCALE = r"memory_encoder\.fuser\.layers\.(\d+)\."
LEAF_NAME_MAP: tuple[tuple[re.Pattern, str, re.Pattern, str], ...] = (
    # (ours, -> official, official, -> ours)
    (re.compile(r"sam\." + _FUSER_SCALE + r"gamma$"), r"visual_model.memory_encoder.fuser.layers.\1.weight",
     re.compile(r"visual_model\." + _FUSER_SCALE + r"weight$"), r"sam.memory_encoder.fuser.layers.\1.gamma"),
)
# official config.json values <-> our registry names
SAM_SCALES: dict[str, str] = {"huge": "vit_h", "large": "vit_l", "base": "vit_b"}
# official "architectures" -> its "sam_scale" table (hustvl/EVF-SAM model/evf_sam.py, evf_effisam.py,
# evf_sam2.py: EfficientSAM "small"/"tiny" = vits/vitt, SAM-2 "large"/"tiny" = sam2_hiera_l/t)
ARCHITECTURES: dict[str, dict[str, str]] = {
    "EvfSamModel": SAM_SCALES,
    "EvfEffiSamModel": OFFICIAL_SAM_SCALE,
    "EvfSam2Model": {"large": "sam2_hiera_l", "tiny": "sam2_hiera_t"},
}
_FAMILY_ARCHITECTURE = {"sam": "EvfSamModel", "efficient_sam": "EvfEffiSamModel", "sam2": "EvfSam2Model"}
ENCODER_SCALES: dict[str, str] = {"large": "beit3_large", "base": "beit3_base"}

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, BIN_FILE, SAFETENSORS_INDEX, BIN_INDEX)  # in order of preference
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.json",
                   "vocab.json", "merges.txt",  # CLIP byte-level BPE (Tab. 1 / 3 / 7 CLIP rows)
                   "vocab.txt")  # ViLT (BERT WordPiece)
# The files that make a tokenizer directory, per encoder kind (`encoders.encoder_kind`): BEiT-3
# sentencepiece, CLIP byte-level BPE, ViLT WordPiece.
TOKENIZER_KIND_FILES: dict[str, tuple[str, ...]] = {"beit3": ("sentencepiece.bpe.model",),
                                                    "clip": ("vocab.json", "merges.txt"), "vilt": ("vocab.txt",)}
# Non-persistent `Sam` buffers (constants); official files do not have them, some exports do.
_CONSTANT_KEYS = ("visual_model.pixel_mean", "visual_model.pixel_std")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------
# Names


def to_official_name(name: str) -> str:
    """``sam.mask_decoder.iou_token.weight`` -> ``visual_model.mask_decoder.iou_token.weight``."""
    for pat, repl, _, _ in LEAF_NAME_MAP:
        if pat.match(name):
            return pat.sub(repl, name)
    for ours, official in NAME_MAP:
        if name.startswith(ours):
            return official + name[len(ours):]
    raise ValueError(f"parameter {name!r} has no official EVF-SAM name (known prefixes: "
                     f"{', '.join(o for o, _ in NAME_MAP)})")


def from_official_name(name: str) -> str | None:
    """``text_hidden_fcs.0.2.bias`` -> ``projector.fc2.bias``; None for a name outside the table."""
    for _, _, pat, repl in LEAF_NAME_MAP:
        if pat.match(name):
            return pat.sub(repl, name)
    for ours, official in NAME_MAP:
        if name.startswith(official):
            return ours + name[len(official):]
    return None


def to_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {to_official_name(k): v for k, v in state.items()}


def from_official_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """-> (our state dict, official names outside the table, i.e. unexpected tensors)."""
    ours, unknown = {}, []
    for k, v in state.items():
        n = from_official_name(k)
        if n is None:
            unknown.append(k)
        else:
            ours[n] = v
    return ours, unknown


# ---------------------------------------------------------------------------------------------
# Reading an official directory


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"EVF-SAM checkpoint directory not found: {str(path)!r} (expected a directory "
                                f"with {CONFIG_FILE} and one of {', '.join(WEIGHT_FILES)})")
    if not path.is_dir():
        raise FileNotFoundError(f"EVF-SAM checkpoint path {str(path)!r} is not a directory (expected a directory "
                                f"with {CONFIG_FILE} and one of {', '.join(WEIGHT_FILES)})")


def read_official_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict."""
    path = Path(path)
    _check_dir(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{str(f)!r} not found: an EVF-SAM checkpoint directory needs {CONFIG_FILE} "
                                f"(architectures EvfSamModel, sam_scale, mm_extractor_scale, ...)")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFileError(f, f"not valid JSON ({e})", _CONFIG_FIX) from None
    if not isinstance(cfg, dict):
        raise CheckpointFileError(f, f"holds a JSON {_json_kind(cfg)}, not an object", _CONFIG_FIX)
    nulls = [k for k in _NON_NULL_KEYS if k in cfg and cfg[k] is None]
    if nulls:
        raise CheckpointFileError(f, f"{', '.join(map(repr, nulls))} {'is' if len(nulls) == 1 else 'are'} null",
                                  f"remove the key(s) or set a value ({_CONFIG_FIX})")
    return cfg


_CONFIG_FIX = ('config.json must be a JSON object such as {"architectures": ["EvfSamModel"], "model_type": "evf", '
               '"sam_scale": "huge", "mm_extractor_scale": "large", ...}; restore it from the checkpoint\'s source')
# keys whose value we read and for which null means nothing (absent keys take their defaults)
_NON_NULL_KEYS = ("architectures", "model_type", "sam_scale", "mm_extractor_scale", "sam_variant", "encoder",
                  "fusion", "hidden_size", "out_dim")

_REDOWNLOAD_INDEX = "re-download the index together with its shards"


def _json_kind(x: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(x), type(x).__name__)


def _load_file(f: Path) -> dict[str, Tensor]:
    if f.name.endswith(".safetensors"):
        return load_safetensors_file(f)
    obj = load_torch_file(f, mmap=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f, f"expected a state dict, got a {type(obj).__name__}",
                                  "save the model's state_dict() (or use EvfSam.save_pretrained)")
    return dict(obj)


def read_official_weights(path: str | Path) -> tuple[dict[str, Tensor], Path]:
    """All tensors of a checkpoint directory (official names) and the file they came from.

    Looks for, in this order: ``model.safetensors``, ``pytorch_model.bin``,
    ``model.safetensors.index.json``, ``pytorch_model.bin.index.json`` (sharded; every shard named
    in ``weight_map`` must exist and hold the tensors the index assigns to it). Pickles are read
    with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    _check_dir(path)
    for name in WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return _load_file(f), f
        try:
            index = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointFileError(f, f"not valid JSON ({e})", _REDOWNLOAD_INDEX) from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointFileError(f, "has no weight_map object", _REDOWNLOAD_INDEX)
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sf = path / shard
            if not sf.is_file():
                raise FileNotFoundError(f"shard {str(sf)!r} named in {str(f)!r} not found")
            part = _load_file(sf)
            want = sorted(k for k, v in weight_map.items() if v == shard)
            absent = [k for k in want if k not in part]
            if absent:
                raise StateDictMismatchError(f"shard {str(sf)!r}", absent, [], [])
            state.update({k: part[k] for k in want})
        return state, f
    raise FileNotFoundError(f"no weights in {str(path)!r}: expected one of {', '.join(WEIGHT_FILES)}")


def config_from_official(cfg: Mapping[str, Any], *, source: str = CONFIG_FILE) -> EvfSamConfig:
    """Maps an official (or our extended) config.json to an `EvfSamConfig`."""
    archs = list(cfg.get("architectures") or [])
    known = [a for a in archs if a in ARCHITECTURES]
    if archs and not known:
        raise ValueError(f"{source}: architectures={archs}; expected one of "
                         f"{', '.join(repr([a]) for a in ARCHITECTURES)}")
    sam_scales = ARCHITECTURES[known[0] if known else "EvfSamModel"]
    if cfg.get("model_type", "evf") != "evf":
        raise ValueError(f"{source}: model_type={cfg.get('model_type')!r}; expected 'evf'")

    def pick(ours_key: str, official_key: str, table: dict[str, str]) -> str:
        ours, official = cfg.get(ours_key), cfg.get(official_key)
        if ours is None and official is None:
            raise ValueError(f"{source}: neither {official_key!r} nor {ours_key!r} is set")
        if ours is None:
            if official not in table:
                raise ValueError(f"{source}: {official_key}={official!r} is not one of "
                                 f"{', '.join(map(repr, table))}")
            return table[official]
        if official in table and table[official] != ours:
            raise ValueError(f"{source}: {official_key}={official!r} (= {table[official]}) disagrees with "
                             f"{ours_key}={ours!r}")
        return ours

    sam_variant = pick("sam_variant", "sam_scale", sam_scales)
    if known:
        if _FAMILY_ARCHITECTURE.get(sam_family(sam_variant)) != known[0]:
            raise ValueError(f"{source}: architectures={archs} but sam_variant={sam_variant!r} is a "
                             f"{sam_family(sam_variant)} model ({_FAMILY_ARCHITECTURE[sam_family(sam_variant)]})")
    encoder = pick("encoder", "mm_extractor_scale", ENCODER_SCALES)
    return EvfSamConfig(
        sam_variant=sam_variant,
        encoder=encoder,
        encoder_overrides=dict(cfg.get("encoder_overrides") or {}),
        out_dim=None,  # derived from SAM; config.json's out_dim is checked against model and weights
        multimask_output=cfg.get("multimask_output"),  # absent from official files: the family's official choice
        sam_stability_fallback=cfg.get("sam_stability_fallback"),
        # Ablation axes: absent from official files, whose defaults they are.
        fusion=cfg.get("fusion", "early"),
        feature=cfg.get("feature"),
        fused_layers=cfg.get("fused_layers"),
        encoder_path=cfg.get("encoder_path"),
    )


def _variant_hint(guess: list[str], scales: Mapping[str, str], key: str) -> str:
    """" (looks like vit_b, sam_scale='base')" for the first registry entry the weights match."""
    if not guess:
        return ""
    official = {v: k for k, v in scales.items()}.get(guess[0])
    return f" (looks like {guess[0]}" + (f", {key}={official!r}" if official else "") + ")"


def _weights_vs_config(model: EvfSam, state: Mapping[str, Tensor], cfg: Mapping[str, Any],
                       config: EvfSamConfig, source: str) -> None:
    """Raises ValueError when config.json describes another architecture than the weights hold."""

    def dim(name: str, i: int) -> int | None:
        t = state.get(name)
        return int(t.shape[i]) if t is not None and t.dim() > i else None

    def count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = [int(m.group(1)) for k in state if (m := pat.match(k))]
        return max(idx) + 1 if idx else 0

    problems = []
    enc_cfg = model.encoder.config if model.encoder.kind == "beit3" else None  # mm_extractor_scale names a BEiT-3
    w_dim = dim("mm_extractor.beit3.vision_embed.proj.weight", 0)
    w_depth = count("mm_extractor.beit3.encoder.layers.")
    if enc_cfg is not None and w_dim is not None and (w_dim, w_depth) != (enc_cfg.embed_dim, enc_cfg.depth):
        guess = [n for n, c in BEIT3_CONFIGS.items() if (c.embed_dim, c.depth) == (w_dim, w_depth)]
        hint = _variant_hint(guess, ENCODER_SCALES, "mm_extractor_scale")
        problems.append(
            f"mm_extractor_scale={cfg.get('mm_extractor_scale')!r} -> {config.encoder} (embed_dim "
            f"{enc_cfg.embed_dim}, {enc_cfg.depth} layers), but the weights have embed_dim {w_dim}, "
            f"{w_depth} layers{hint}"
        )
    if "hidden_size" in cfg and w_dim is not None and int(cfg["hidden_size"]) != w_dim:
        problems.append(f"hidden_size={cfg['hidden_size']}, but the BEiT-3 weights have embed_dim {w_dim}")
    s_dim = dim("visual_model.image_encoder.patch_embed.proj.weight", 0)
    s_depth = count("visual_model.image_encoder.blocks.")
    want = None
    if sam_family(config.sam_variant) == "sam":  # sam_scale names a segment-anything ViT: check its size
        arch = SAM_CONFIGS[config.sam_variant]
        want = (arch.encoder_embed_dim, arch.encoder_depth)
    if want is not None and s_dim is not None and (s_dim, s_depth) != want:
        guess = [n for n, a in SAM_CONFIGS.items() if (a.encoder_embed_dim, a.encoder_depth) == (s_dim, s_depth)]
        hint = _variant_hint(guess, SAM_SCALES, "sam_scale")
        problems.append(
            f"sam_scale={cfg.get('sam_scale')!r} -> {config.sam_variant} (image encoder width {want[0]}, "
            f"{want[1]} blocks), but the weights have width {s_dim}, {s_depth} blocks{hint}"
        )
    o_dim = dim("text_hidden_fcs.0.2.weight", 0)
    if "out_dim" in cfg and o_dim is not None and int(cfg["out_dim"]) != o_dim:
        problems.append(f"out_dim={cfg['out_dim']}, but text_hidden_fcs.0.2.weight has {o_dim} output rows")
    if problems:
        raise ValueError(f"{source} disagrees with the weights:\n  " + "\n  ".join(problems))


def _hidden_size(model: EvfSam) -> int:
    """config.json's ``hidden_size``: BEiT-3's width (= the projector input for the official
    image-[CLS] feature; a concatenated feature is wider). For CLIP / ViLT ablation points, which
    have no official file, it has always been the projector input (the encoder's feature width)."""
    enc = model.encoder
    return int(enc.width) if enc.kind == "beit3" else int(enc.feature_dim)


def _check_config_vs_model(model: EvfSam, cfg: Mapping[str, Any], source: str) -> None:
    problems = []
    if "hidden_size" in cfg and int(cfg["hidden_size"]) != _hidden_size(model):
        problems.append(f"hidden_size={cfg['hidden_size']}, but {model.config.encoder} has width "
                        f"{_hidden_size(model)}")
    if "out_dim" in cfg and int(cfg["out_dim"]) != model.projector.out_dim:
        problems.append(f"out_dim={cfg['out_dim']}, but SAM {model.config.sam_variant} has prompt dim "
                        f"{model.projector.out_dim}")
    if problems:
        raise ValueError(f"{source} is inconsistent:\n  " + "\n  ".join(problems))


def load_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> EvfSam:
    """Builds the model config.json describes and loads its weights strictly (see module docstring).

    The model is built on the ``meta`` device (no random init, no double memory) and adopts the
    file's tensors cast to ``dtype`` on ``device``. Returned in eval mode, SAM image encoder frozen.
    """
    path = Path(path)
    cfg = read_official_config(path)
    source = str(path / CONFIG_FILE)
    config = config_from_official(cfg, source=source)
    official, weights_file = read_official_weights(path)
    for k in _CONSTANT_KEYS:
        official.pop(k, None)
    with torch.device("meta"):
        model = build_evf_sam(config)
    _weights_vs_config(model, official, cfg, config, source)
    _check_config_vs_model(model, cfg, source)
    state, unknown = from_official_state_dict(official)
    check_state_dict(model.state_dict(), state, what=f"weights {str(weights_file)!r}", display=to_official_name,
                     extra_unexpected=unknown)
    state = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    _materialise_meta(model, device, dtype)
    model.sam.image_encoder.requires_grad_(False)
    return model.eval()


def _materialise_meta(model: nn.Module, device: str | torch.device, dtype: torch.dtype) -> None:
    """Non-persistent buffers (``sam.pixel_mean`` / ``pixel_std``, the CLIP / ViLT embeddings'
    ``position_ids`` and ViLT's ``token_type_ids``) are not in the files: rebuild them.
    (EfficientSAM and SAM-2 have no non-persistent buffers; every buffer of theirs is in the file.)"""
    consts = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD}
    for mod_name, mod in model.named_modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None:
                continue
            if buf.is_meta:
                if name in consts:
                    buf = torch.tensor(consts[name], dtype=torch.float32).view(-1, 1, 1)
                elif name == "position_ids":
                    # transformers' text/vision embeddings (CLIP, ViLT) register ``arange(max_positions)``
                    # as a non-persistent buffer, so save_pretrained never writes it.
                    buf = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                elif name == "token_type_ids":  # ViLT's BERT text embeddings: zeros, also non-persistent
                    buf = torch.zeros(buf.shape, dtype=torch.long)
                else:
                    raise RuntimeError(f"buffer {mod_name}.{name} is neither in the checkpoint nor a known constant")
            mod._buffers[name] = buf.to(device=device, dtype=dtype if buf.is_floating_point() else None)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters left uninitialised: {short_list(leftover)}")


# ---------------------------------------------------------------------------------------------
# Writing


def official_state_dict(model: EvfSam, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Model tensors under official names, contiguous, on CPU, optionally cast (floating ones only)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[to_official_name(k)] = v.contiguous()
    return out


def official_config(model: EvfSam, torch_dtype: torch.dtype) -> dict[str, Any]:
    """config.json in the official schema, plus our fields (sam_variant, encoder, encoder_overrides, ...)."""
    import transformers

    c = model.config
    arch = _FAMILY_ARCHITECTURE[sam_family(c.sam_variant)]
    sam_scale = {v: k for k, v in ARCHITECTURES[arch].items()}.get(c.sam_variant, c.sam_variant)
    enc_scale = {v: k for k, v in ENCODER_SCALES.items()}.get(c.encoder, c.encoder)
    dtype_name = {v: k for k, v in _DTYPES.items()}[torch_dtype]
    cfg = {
        "architectures": [arch],
        "model_type": "evf",
        "sam_scale": sam_scale,
        "mm_extractor_scale": enc_scale,
        "hidden_size": _hidden_size(model),
        "out_dim": model.projector.out_dim,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "transformers_version": transformers.__version__,
    }
    ours = dataclasses.asdict(c)
    cfg.update({k: ours[k] for k in ("sam_variant", "encoder", "encoder_overrides", "multimask_output")})
    if c.sam_stability_fallback is not None:  # SAM-2 models whose mask decoder we trained
        cfg["sam_stability_fallback"] = c.sam_stability_fallback
    if not c.is_official_encoder():  # ablation points only; official exports keep the official schema
        cfg.update({k: ours[k] for k in ("fusion", "feature", "fused_layers", "encoder_path")})
    return cfg


def write_checkpoint_dir(path: str | Path, *, config: Mapping[str, Any], state: Mapping[str, Tensor],
                         tokenizer_dir: str | Path | None = None, fmt: str = "safetensors",
                         max_shard_tensors: int | None = None) -> Path:
    """Writes config.json + weights (+ tokenizer files) atomically: a temp dir next to ``path``, renamed.

    ``fmt``: "safetensors" (model.safetensors), "bin" (pytorch_model.bin), "sharded" (two or more
    pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json), "sharded_safetensors".
    An existing ``path`` is replaced only if it is empty or an EVF-SAM dir (has config.json).
    On error nothing is left behind and an existing ``path`` is untouched.
    """
    path = Path(path)
    if fmt not in ("safetensors", "bin", "sharded", "sharded_safetensors"):
        raise ValueError(f"fmt={fmt!r}; choose safetensors, bin, sharded or sharded_safetensors")
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).is_file())):
        raise FileExistsError(f"{str(path)!r} exists and is not an EVF-SAM checkpoint directory; refusing to "
                              f"replace it")
    tok_files: list[Path] = []
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        tok_files = [tokenizer_dir / n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
        if not any(all((tokenizer_dir / n).is_file() for n in kind) for kind in TOKENIZER_KIND_FILES.values()):
            raise FileNotFoundError(f"tokenizer dir {str(tokenizer_dir)!r} has no sentencepiece.bpe.model (BEiT-3), "
                                    f"vocab.json + merges.txt (CLIP) or vocab.txt (ViLT)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, default_dir_mode())  # mkdtemp makes 0700; the checkpoint is an ordinary directory
        (tmp / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2) + "\n")
        _write_weights(tmp, dict(state), fmt, max_shard_tensors)
        for f in tok_files:
            shutil.copy2(f, tmp / f.name)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_weights(d: Path, state: dict[str, Tensor], fmt: str, max_shard_tensors: int | None) -> None:
    from safetensors.torch import save_file

    def save(tensors: dict[str, Tensor], f: Path) -> None:
        if f.suffix == ".safetensors":
            save_file(tensors, str(f), metadata={"format": "pt"})
        else:
            torch.save(tensors, str(f))

    if fmt == "safetensors":
        save(state, d / SAFETENSORS_FILE)
        return
    if fmt == "bin":
        save(state, d / BIN_FILE)
        return
    names = list(state)
    per = max_shard_tensors or max(1, (len(names) + 1) // 2)
    chunks = [names[i:i + per] for i in range(0, len(names), per)]
    ext, index_name = (".safetensors", SAFETENSORS_INDEX) if fmt == "sharded_safetensors" else (".bin", BIN_INDEX)
    stem = "model" if ext == ".safetensors" else "pytorch_model"
    weight_map = {}
    for i, chunk in enumerate(chunks):
        fname = f"{stem}-{i + 1:05d}-of-{len(chunks):05d}{ext}"
        save({k: state[k] for k in chunk}, d / fname)
        weight_map.update({k: fname for k in chunk})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (d / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def save_pretrained(model: EvfSam, path: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """``model.safetensors`` (official names, the model's dtype) + config.json + tokenizer files, atomically."""
    dtypes = {p.dtype for p in model.parameters()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # mixed precision: save float32
    state = official_state_dict(model, dtype)
    if tokenizer_dir is None:
        logger.warning("save_pretrained(%s): no tokenizer_dir given; the directory will hold no tokenizer", path)
    return write_checkpoint_dir(path, config=official_config(model, dtype), state=state,
                                tokenizer_dir=tokenizer_dir, fmt="safetensors")
