"""The schema of the Hydra configurations: training (configs/train.yaml and its groups) and evaluation
(configs/eval.yaml: `EvalConfig`).

Every option file of a group extends its group's schema (a dataclass below, registered in Hydra's
ConfigStore as ``schema/<group>``)::

    # configs/trainer/default.yaml
    defaults:
      - /schema/trainer@_here_
      - _self_
    micro_batch_size: 16
    ...

so composing the config checks every key and type: ``trainer.total_steps=abc`` or a misspelt key in an
experiment file fails while Hydra composes, naming the key. Register the schemas before composing:
``import evf_sam.config`` (scripts/train.py and tests/conftest.py do).

Defaults live in one place each: the value a YAML option file sets (with its comment there). The
schemas give types only (``MISSING``), except for keys only some options or entries set, whose
default is here and nowhere else: `SyntheticConfig`'s knobs (None: the generator's own default), a
REFER source's ``split``, the validation split's ``empty_area`` (gRefCOCO only), a semantic source's
``root`` / ``version``, and the semantic-data keys of `ReferDataConfig` (off unless
configs/data/refer_mix_semantic.yaml sets them).

The code reads typed objects: ``typed(cfg.trainer)`` is a `TrainerConfig` instance (interpolations
resolved; a key added with ``+group.key=...`` that the schema lacks is an error there).

    trainer = typed(cfg.trainer)     # TrainerConfig
    data = typed(cfg.data)           # ReferDataConfig | RandomDataConfig
    resolved(cfg)                    # plain dict, interpolations resolved (results.json, wandb)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING

__all__ = ["DataConfig", "DeepSpeedConfig", "EncoderConfig", "EvalConfig", "EvalDataConfig", "ExtraDataConfig", "FeatureConfig", "FusionConfig",
           "LoggerConfig", "LossConfig", "MODEL_BUILD_KEYS", "ModelConfig", "OptimConfig", "RandomDataConfig",
           "RandomValConfig", "ReferDataConfig", "ReferSourceConfig", "ReferValConfig", "RunConfig", "SamConfig",
           "SemanticSourceConfig", "SemanticValConfig", "SyntheticConfig", "TrainableConfig", "TrainerConfig",
           "WandbLoggerConfig", "register_schemas", "resolved", "typed"]

# NB: `from __future__ import annotations` turns annotations into strings; OmegaConf resolves them with
# typing.get_type_hints, so the typing names above must stay importable from this module.


# -- model and the ablation axes (configs/model, sam, encoder, fusion, feature, trainable, extra_data) ---

@dataclass
class ModelConfig:
    """configs/model/*.yaml: `EvfSamConfig`'s fields under their names (passed through by name; most
    interpolate the axis groups) + `MODEL_BUILD_KEYS` (weights, tokenizer, how to build)."""

    name: str = MISSING
    sam_variant: str = MISSING  # ${sam.variant}
    encoder: str = MISSING  # ${encoder.name}: must equal it (the encoder group is the one place to choose it)
    fusion: str = MISSING  # ${fusion.mode}
    fused_layers: Optional[int] = MISSING  # ${fusion.fused_layers}
    feature: Optional[str] = MISSING  # ${feature.value}
    encoder_path: Optional[str] = MISSING  # CLIP / ViLT transformers directory
    encoder_overrides: Dict[str, Any] = MISSING  # BEiT3Config / encoder field overrides
    multimask_output: Optional[bool] = MISSING  # None: the family's official choice (best of 3 for SAM-2)
    sam_stability_fallback: Optional[bool] = MISSING
    sam_checkpoint: Optional[str] = MISSING
    encoder_checkpoint: Optional[str] = MISSING
    init_from: Optional[str] = MISSING
    random_init: bool = MISSING  # true: a full-size SAM / BEiT-3 without weights trains from random init
    tokenizer: Optional[str] = MISSING
    make_tiny_tokenizer: bool = MISSING
    tiny_vocab_size: int = MISSING
    grad_checkpointing: bool = MISSING


MODEL_BUILD_KEYS = ("name", "sam_checkpoint", "encoder_checkpoint", "init_from", "random_init", "tokenizer",
                    "make_tiny_tokenizer", "tiny_vocab_size", "grad_checkpointing")


@dataclass
class SamConfig:
    name: str = MISSING
    variant: str = MISSING  # models.sam_backends.SAM_VARIANTS
    checkpoint: Optional[str] = MISSING


@dataclass
class EncoderConfig:
    name: str = MISSING  # models.encoders: beit3_large | beit3_base | beit3_tiny | clip_large | clip_huge | vilt
    pretrained: Optional[str] = MISSING
    tokenizer: Optional[str] = MISSING


@dataclass
class FusionConfig:
    name: str = MISSING
    mode: str = MISSING  # text | late | early | early_k
    fused_layers: Optional[int] = MISSING


@dataclass
class FeatureConfig:
    name: str = MISSING
    value: Optional[str] = MISSING  # None: the fusion's own feature


@dataclass
class TrainableConfig:
    name: str = MISSING
    params: List[str] = MISSING  # fnmatch globs over parameter names


@dataclass
class ExtraDataConfig:
    name: str = MISSING
    rates: Dict[str, float] = MISSING  # semantic source name -> rate


# -- data (configs/data) ---------------------------------------------------------------------------

@dataclass
class ReferSourceConfig:
    dataset: str = MISSING  # refcoco | refcoco+ | refcocog | refclef | grefcoco
    split_by: str = MISSING
    rate: float = MISSING  # relative; 0 drops the source
    split: str = "train"


@dataclass
class ReferValConfig:
    dataset: str = MISSING
    split_by: str = MISSING
    split: str = MISSING
    max_images: Optional[int] = MISSING  # None: the whole split
    batch_size: int = MISSING
    empty_area: float = 0.0  # gRefCOCO val only: a prediction with area <= this fraction of the image is empty


@dataclass
class SemanticSourceConfig:
    dataset: str = MISSING  # ade20k | mapillary
    split: str = MISSING  # training | validation
    rate: float = MISSING
    root: Optional[str] = None  # None: data.semantic_root, else data.root
    version: str = "auto"  # Mapillary Vistas: v2.0 | v1.2 | auto (v2.0 if present, else v1.2)


@dataclass
class SemanticValConfig:
    dataset: str = MISSING
    split: str = MISSING
    max_images: Optional[int] = MISSING
    batch_size: int = MISSING
    prefix: Optional[str] = MISSING  # "auto" | a string | None (the bare class name)
    ignore_unlabeled: bool = MISSING
    root: Optional[str] = None  # None: data.semantic_root, else data.root
    version: str = "auto"  # Mapillary Vistas only


@dataclass
class SyntheticConfig:
    """Arguments of `data.synthetic.make_synthetic_refer` (None: its default); ``generate`` switches it on."""

    generate: Optional[bool] = None
    seed: Optional[int] = None
    num_train: Optional[int] = None
    num_val: Optional[int] = None
    num_test: Optional[int] = None
    image_size: Optional[int] = None
    min_objects: Optional[int] = None
    max_objects: Optional[int] = None
    sentences_per_ref: Optional[int] = None
    colours: Optional[List[str]] = None
    shapes: Optional[List[str]] = None
    difficulty: Optional[str] = None  # easy | colour_only | hard | grounded
    expression_types: Optional[List[str]] = None  # "grounded" only: the subset of EXPRESSION_TYPES
    repeat_colours: Optional[bool] = None  # "grounded" only; False: distinct colours per image
    grefcoco: Optional[bool] = None  # also write refer_seg/grefcoco (multi- / no-target expressions)
    force: Optional[bool] = None


@dataclass
class SyntheticSemanticConfig:
    """Arguments of `data.synthetic_semantic.make_synthetic_semantic` (None: its default); ``generate``
    writes synthetic ADE20K / Mapillary trees into ``data.semantic_root`` (else ``data.root``) on first use."""

    generate: Optional[bool] = None
    seed: Optional[int] = None
    num_train: Optional[int] = None
    num_val: Optional[int] = None
    image_size: Optional[int] = None
    force: Optional[bool] = None


@dataclass
class DataConfig:
    """Keys every data option has."""

    name: str = MISSING
    kind: str = MISSING  # refer | random
    sentences_per_image: int = MISSING
    max_text_len: Optional[int] = MISSING  # None: the encoder's text position table
    num_workers: int = MISSING
    embedding_cache: Optional[str] = MISSING  # a directory: cache the frozen SAM image embeddings there
    embedding_cache_dtype: str = MISSING  # storage: float16 | bfloat16 | float32
    embedding_cache_encoder: str = MISSING  # fast (FastImageEncoderViT on the same weights) | model
    embedding_cache_precision: str = MISSING  # bf16 | fp32
    embedding_cache_batch_size: int = MISSING


@dataclass
class ReferDataConfig(DataConfig):
    """configs/data/refer_mix.yaml and the options extending it (refcoco, synthetic, refer_mix_semantic)."""

    root: str = MISSING
    sources: Dict[str, ReferSourceConfig] = MISSING
    exclude_eval_images: bool = MISSING  # drop training images of RefCOCO-family val/test splits (count logged)
    val: Optional[ReferValConfig] = MISSING
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # semantic-segmentation sources (paper Tab. 6): off unless refer_mix_semantic.yaml sets them
    semantic_root: Optional[str] = None
    semantic_sources: Dict[str, Optional[SemanticSourceConfig]] = field(default_factory=dict)  # null: dropped
    classes_per_image: Optional[int] = None  # classes per sampled semantic image (required with semantic_sources)
    semantic_prefix: Optional[str] = None  # None: tokenizer.SEMANTIC_PREFIX ("[semantic] ")
    val_semantic: Optional[SemanticValConfig] = None
    synthetic_semantic: SyntheticSemanticConfig = field(default_factory=SyntheticSemanticConfig)  # Tab. 6 pilot


@dataclass
class RandomValConfig:
    num_images: int = MISSING
    batch_size: int = MISSING


@dataclass
class RandomDataConfig(DataConfig):
    """configs/data/random.yaml: random tensors, no files."""

    num_images: int = MISSING
    val: Optional[RandomValConfig] = MISSING


# -- optimisation, DeepSpeed, logging, the loop (configs/optim, deepspeed, logger, trainer) ------------

@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    schedule: str = MISSING  # linear | cosine | constant
    warmup_steps: int = MISSING
    min_lr_ratio: float = MISSING


@dataclass
class DeepSpeedConfig:
    name: str = MISSING
    stage: int = MISSING
    overlap_comm: bool = MISSING
    contiguous_gradients: bool = MISSING
    reduce_scatter: bool = MISSING
    reduce_bucket_size: float = MISSING
    allgather_bucket_size: float = MISSING
    gradient_clipping: float = MISSING
    extra: Dict[str, Any] = MISSING  # merged into the DeepSpeed config dict verbatim


@dataclass
class LoggerConfig:
    name: str = MISSING  # none | wandb


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: Optional[str] = MISSING
    entity: Optional[str] = MISSING
    mode: Optional[str] = MISSING
    run_id: Optional[str] = MISSING


@dataclass
class LossConfig:
    bce_weight: float = MISSING
    dice_weight: float = MISSING


@dataclass
class TrainerConfig:
    name: str = MISSING
    engine: str = MISSING  # deepspeed
    device: str = MISSING  # auto | cuda | cpu
    precision: str = MISSING  # auto | bf16 | fp16 | fp32
    micro_batch_size: int = MISSING
    grad_accum: int = MISSING
    total_steps: int = MISSING
    max_steps_this_run: Optional[int] = MISSING
    log_every: int = MISSING
    progress_bar: bool = MISSING
    ckpt_every: int = MISSING
    keep_last: int = MISSING
    val_every: int = MISSING
    val_at_end: bool = MISSING
    best_metric: str = MISSING
    max_nonfinite_steps: int = MISSING
    loss: LossConfig = MISSING
    eval_at_end: List[str] = MISSING  # splits to evaluate final/ on ("paper": the 8 of Tab. 2)
    eval_overrides: Dict[str, Any] = MISSING  # configs/eval.yaml keys for eval_at_end


@dataclass
class RunConfig:
    """The top-level keys of configs/train.yaml (checked by `typed`, not by a schema: experiments add
    top-level keys of their own, e.g. ``paper_table``, ``weights``)."""

    name: str = MISSING
    seed: int = MISSING
    run_dir: str = MISSING
    resume: Optional[str] = MISSING  # auto | none (or null) | a checkpoint tag directory


# -- evaluation (configs/eval.yaml, scripts/eval_refcoco.py) ------------------------------------------------------


@dataclass
class EvalDataConfig:
    root: Optional[str] = MISSING
    semantic_root: Optional[str] = MISSING
    num_workers: int = MISSING


@dataclass
class EvalConfig:
    """The keys of configs/eval.yaml (its comments say what each does)."""

    checkpoint: Optional[str] = MISSING
    run: Optional[str] = MISSING
    tokenizer: Optional[str] = MISSING
    data: EvalDataConfig = MISSING
    splits: Any = MISSING  # a list of dataset|split_by|split names, or "paper"
    precision: str = MISSING
    device: str = MISSING
    max_images: Optional[int] = MISSING
    batch_size: int = MISSING
    max_text_len: Optional[int] = MISSING
    save_masks: bool = MISSING
    progress: bool = MISSING
    output_dir: Optional[str] = MISSING
    overwrite: bool = MISSING
    semantic_prefix: Optional[str] = MISSING
    semantic_ignore_unlabeled: bool = MISSING
    empty_area: float = MISSING


SCHEMAS: dict[str, type] = {
    "model": ModelConfig, "sam": SamConfig, "encoder": EncoderConfig, "fusion": FusionConfig,
    "feature": FeatureConfig, "trainable": TrainableConfig, "extra_data": ExtraDataConfig,
    "refer_data": ReferDataConfig, "random_data": RandomDataConfig, "optim": OptimConfig,
    "deepspeed": DeepSpeedConfig, "logger": LoggerConfig, "wandb_logger": WandbLoggerConfig,
    "trainer": TrainerConfig, "eval": EvalConfig,
}


def register_schemas() -> None:
    """Stores every schema as ``schema/<name>`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(group="schema", name=name, node=node)


register_schemas()


def typed(node: Any, schema: type | None = None) -> Any:
    """A composed config node as its schema's dataclass instance (interpolations resolved).

    ``schema``: for nodes without one (the top level: `RunConfig`). Raises ValueError naming a key
    the schema does not know (``+trainer.foo=1`` adds one; OmegaConf would drop it silently) and
    OmegaConf's MissingMandatoryValue naming a required key that has no value.
    """
    from omegaconf import OmegaConf

    if schema is not None:
        node = OmegaConf.merge(OmegaConf.structured(schema),
                               {f.name: node[f.name] for f in dataclasses.fields(schema) if f.name in node})
    _check_keys(node)
    return OmegaConf.to_object(node)


def _check_keys(node: Any, path: str = "") -> None:
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        unknown = [k for k in node.keys() if k not in known]
        if unknown:
            where = path or node._get_full_key(None) or "the config"
            raise ValueError(f"{where}: unknown key(s) {unknown} for {schema.__name__} (known: {sorted(known)})")
    for k in node.keys():
        child = node._get_node(k)
        _check_keys(child, f"{node._get_full_key(k)}")


def resolved(node: Any) -> dict:
    """A config node as a plain container, interpolations resolved (``{}`` for None)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


TypedData = Union[ReferDataConfig, RandomDataConfig]
