"""A training run from its config: the parts, built in order, handed to the `Trainer`.

    results = train(cfg)                      # scripts/train.py (every rank): build_trainer(cfg).fit()
    trainer = build_trainer(cfg)              # the built parts, not yet trained
    model, tokenizer, tokenizer_dir = build_model_and_tokenizer(typed(cfg.model), run_dir)

``cfg`` is the composed Hydra config (configs/train.yaml); every group is turned into its typed schema
object (`evf_sam.config.typed`) first, and the builders read those. Order (each step fails before the
next, costlier one starts): typed config -> process group and run directory -> data files (checked or
generated) and the ``trainer.eval_at_end`` splits -> config.yaml / config_resolved.yaml -> seed ->
tokenizer and model -> trainable globs -> datasets, validation splits, embedding cache -> optimizer, LR
schedule, DeepSpeed (its prints and log records go to train.log only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from evf_sam.atomic import atomic_write_text
from evf_sam.config import MODEL_BUILD_KEYS, ModelConfig, RunConfig, resolved, typed
from evf_sam.data.batch import text_length
from evf_sam.engine import distributed as D
from evf_sam.engine.checkpointing import Checkpointer
from evf_sam.engine.deepspeed_config import build_deepspeed_config, resolve_precision
from evf_sam.engine.optim import apply_trainable, build_optimizer, build_scheduler, format_param_table
from evf_sam.engine.run_logging import RunLogger, prints_to_log, route_library_logs, setup_logging
from evf_sam.engine.state import seed_everything
from evf_sam.engine.trainer import Trainer
from evf_sam.models.sam_backends import sam_family
from evf_sam.precision import dtype_of

__all__ = ["build_end_eval", "build_model_and_tokenizer", "build_trainer", "set_trainable", "train"]

logger = logging.getLogger(__name__)



def train(cfg, *, config_yaml: str | None = None) -> dict[str, Any]:
    """Entry point of scripts/train.py (every rank)."""
    return build_trainer(cfg, config_yaml=config_yaml).fit()


def build_model_and_tokenizer(model: ModelConfig, run_dir: Path, *, tokenizer_sentences: Sequence[str] = (),
                              semantic_token: bool = False, pretrained: bool = True):
    """(EvfSam, tokenizer, tokenizer_dir) from the ``model`` group.

    Without ``model.tokenizer`` and with ``model.make_tiny_tokenizer`` a tiny tokenizer of the encoder's
    family is made into ``run_dir/tokenizer`` (rank 0, once) from `testing.TINY_SENTENCES` +
    ``tokenizer_sentences`` (`tiny_tokenizers.make_tiny_tokenizer`: BEiT-3 sentencepiece of
    ``model.tiny_vocab_size`` pieces, CLIP byte-level BPE, ViLT WordPiece); ``semantic_token`` adds
    ``[semantic]`` to it (BEiT-3).
    pretrained=False: the architecture only (no SAM / BEiT-3 weight files read; ``model.init_from``'s
    config.json alone), for weights that come from elsewhere (`export.export_checkpoint`).
    """
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.models.evf_sam import EvfSam

    tok_dir = model.tokenizer
    if tok_dir is None:
        if not model.make_tiny_tokenizer:
            raise ValueError(f"model.tokenizer is not set: point it at the tokenizer directory of encoder "
                             f"{model.encoder!r} (BEiT-3: sentencepiece.bpe.model, e.g. the official evf-sam "
                             f"checkpoint directory; CLIP / ViLT: its transformers directory)")
        from evf_sam.tiny_tokenizers import make_tiny_tokenizer, tokenizer_files_present

        tok_dir = Path(run_dir) / "tokenizer"
        if D.is_main() and not tokenizer_files_present(model.encoder, tok_dir):
            from evf_sam.testing import TINY_SENTENCES

            make_tiny_tokenizer(model.encoder, [*TINY_SENTENCES, *tokenizer_sentences], tok_dir,
                                vocab_size=model.tiny_vocab_size, semantic_token=semantic_token)
        D.barrier()
    tokenizer = load_encoder_tokenizer(model.encoder, tok_dir)
    if model.init_from and pretrained:
        evf_sam = EvfSam.from_pretrained(model.init_from)
        evf_sam.sam.image_encoder.requires_grad_(False)
    elif model.init_from:
        from evf_sam.models.checkpoint import config_from_official, read_official_config
        from evf_sam.models.evf_sam import build_evf_sam

        source = Path(model.init_from) / "config.json"
        evf_sam = build_evf_sam(config_from_official(read_official_config(model.init_from), source=str(source)))
        evf_sam.sam.image_encoder.requires_grad_(False)
    else:
        evf_sam = _build_model(model, tokenizer, pretrained=pretrained)
    if model.grad_checkpointing:
        if not hasattr(evf_sam.encoder, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing=true is not supported by encoder {model.encoder!r} "
                             f"(BEiT-3 only)")
        evf_sam.encoder.set_grad_checkpointing(True)
    return evf_sam, tokenizer, Path(tok_dir)


def evf_sam_config(model: ModelConfig, *, vocab_size: int | None = None):
    """The `EvfSamConfig` of the ``model`` group: its keys named like EvfSamConfig's fields, passed by name.

    vocab_size: the text embedding rows of a tiny tokenizer (`encoders.with_vocab_size`: BEiT-3 / ViLT
    ``encoder_overrides.vocab_size``, CLIP ``encoder_overrides.text_config.vocab_size``, unless set).
    """
    from evf_sam.models.encoders import with_vocab_size
    from evf_sam.models.evf_sam import EvfSamConfig

    architecture = {f.name for f in dataclasses.fields(EvfSamConfig)}
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    stray = sorted(k for k in values if k not in architecture and k not in MODEL_BUILD_KEYS)
    if stray:  # e.g. an EvfSamConfig field renamed without its config key
        raise ValueError(f"model.{stray[0]} is neither an EvfSamConfig field nor a build key {MODEL_BUILD_KEYS}")
    kwargs = {k: v for k, v in values.items() if k in architecture}
    kwargs["encoder_overrides"] = dict(kwargs["encoder_overrides"])
    if vocab_size is not None:
        kwargs["encoder_overrides"] = with_vocab_size(model.encoder, kwargs["encoder_overrides"], int(vocab_size))
    return EvfSamConfig(**kwargs)


def _build_model(model: ModelConfig, tokenizer, *, pretrained: bool = True):
    """A fresh EvfSam (SAM / BEiT-3 initialised from their .pth files if given and ``pretrained``)."""
    from evf_sam.models.evf_sam import build_evf_sam

    tiny_vocab = len(tokenizer) if model.make_tiny_tokenizer and model.tokenizer is None else None
    return build_evf_sam(evf_sam_config(model, vocab_size=tiny_vocab),
                         sam_checkpoint=model.sam_checkpoint if pretrained else None,
                         encoder_checkpoint=model.encoder_checkpoint if pretrained else None)


def set_trainable(model, globs: Sequence[str]) -> list[str]:
    """`optim.apply_trainable` + what follows from it for the model's config: a SAM-2 whose mask decoder
    trains has its eval-mode stability fallback off (recorded in the exported config.json)."""
    trained = apply_trainable(model, globs)
    if sam_family(model.config.sam_variant) == "sam2" and model.config.sam_stability_fallback is None \
            and any(n.startswith("sam.sam_mask_decoder.") for n in trained):
        model.set_sam_stability_fallback(False)
        logger.info("SAM-2 mask decoder trains: its eval-mode stability fallback (which would swap in the "
                    "unsupervised multimask outputs) is off; the exported config.json records it")
    return trained


def _is_tiny(name: str) -> bool:
    return name == "tiny" or name.endswith("_tiny")


def check_pretrained_weights(model: ModelConfig) -> None:
    """A full-size SAM or BEiT-3 trains from its official weights: without them (``model.sam_checkpoint`` /
    ``model.encoder_checkpoint`` null, no ``model.init_from``) the run stops here, before any data or model
    is touched, unless ``model.random_init=true``. Tiny test models are always random."""
    if model.init_from or model.random_init:
        return
    missing = []
    if not _is_tiny(model.sam_variant) and not model.sam_checkpoint:
        missing.append(f"SAM {model.sam_variant!r}: set model.sam_checkpoint=<its official .pth> "
                       f"(or the weights.* key of the experiment)")
    if model.encoder.startswith("beit3") and not _is_tiny(model.encoder) and not model.encoder_checkpoint:
        missing.append(f"encoder {model.encoder!r}: set model.encoder_checkpoint=<{model.encoder}_patch16_224.pth> "
                       f"(or the weights.* key of the experiment)")
    if missing:
        raise ValueError("no pretrained weights for the full-size model parts below; training them from random "
                         "weights cannot reproduce the paper:\n  " + "\n  ".join(missing)
                         + "\nTo train from random init anyway (debugging), set model.random_init=true.")


def check_encoder_choice(cfg) -> None:
    """``model.encoder`` follows the ``encoder`` group (``${encoder.name}``); overriding it alone would
    build one encoder while the config names another."""
    if "encoder" in cfg and cfg.model.encoder != cfg.encoder.name:
        raise ValueError(f"model.encoder={cfg.model.encoder!r} but the encoder group is {cfg.encoder.name!r}: choose "
                         f"the encoder with encoder=<name> (configs/encoder/), not model.encoder")


def build_end_eval(trainer_cfg, data, *, run_dir: Path):
    """``trainer.eval_at_end``: a callable evaluating ``run_dir/final`` into ``run_dir/eval`` with
    `evaluate.run_eval_from_config` (configs/eval.yaml + ``trainer.eval_overrides``), or None.

    The splits' files are checked here (errors name them), before any model is built; results of an
    earlier evaluation of other weights in ``run_dir/eval`` are replaced."""
    if not trainer_cfg.eval_at_end:
        return None
    from evf_sam.engine.evaluate import check_eval_splits, eval_config, expand_splits, run_eval_from_config

    root = getattr(data, "root", None)
    if not root:
        raise ValueError(f"trainer.eval_at_end needs REFER data with a root; data.kind={data.kind!r} has none")
    overrides = dict(trainer_cfg.eval_overrides)
    unknown = sorted(set(overrides) - set(eval_config()))
    if unknown:
        raise ValueError(f"trainer.eval_overrides: unknown key(s) {unknown}; the keys of configs/eval.yaml are "
                         f"{sorted(eval_config())}")
    cfg = eval_config(**{"checkpoint": str(Path(run_dir) / "final"), "output_dir": str(Path(run_dir) / "eval"),
                         "device": trainer_cfg.device, "progress": bool(trainer_cfg.progress_bar),
                         "splits": expand_splits(list(trainer_cfg.eval_at_end)),
                         **overrides,
                         "data": {"root": str(root), "semantic_root": getattr(data, "semantic_root", None),
                                  "num_workers": data.num_workers, **dict(overrides.get("data") or {})}})
    check_eval_splits(cfg)

    def end_eval() -> tuple[Path, dict[str, dict]]:
        return Path(cfg.output_dir), run_eval_from_config(cfg, replace_mismatched=True)

    return end_eval


def build_trainer(cfg, *, config_yaml: str | None = None) -> Trainer:
    """Every part of the run, built from ``cfg`` in order (all ranks call this)."""
    from omegaconf import OmegaConf

    from evf_sam.data.build import (build_train_dataset, build_val_splits, prepare_data, tokenizer_corpus,
                                    uses_semantic_token)

    run = typed(cfg, RunConfig)
    check_encoder_choice(cfg)
    model_cfg, data, trainable = typed(cfg.model), typed(cfg.data), typed(cfg.trainable)
    check_pretrained_weights(model_cfg)
    optim, ds, trainer_cfg, logger_cfg = typed(cfg.optim), typed(cfg.deepspeed), typed(cfg.trainer), typed(cfg.logger)
    run_dir = Path(run.run_dir).absolute()
    dist = D.init_distributed(trainer_cfg.device)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    setup_logging(run_dir, dist.rank)
    if trainer_cfg.engine != "deepspeed":
        raise ValueError(f"trainer.engine={trainer_cfg.engine!r}: only 'deepspeed' is implemented")
    precision = resolve_precision(trainer_cfg.precision, dist.device)
    dtype = dtype_of(precision)

    # 1. data files first: fail before any model is built
    prepare_data(data)
    end_eval = build_end_eval(trainer_cfg, data, run_dir=run_dir)
    if dist.rank == 0:
        atomic_write_text(run_dir / "config.yaml", config_yaml or OmegaConf.to_yaml(cfg))
        atomic_write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger.info("run dir %s | world %d | device %s | backend %s | precision %s", run_dir, dist.world_size,
                dist.device, dist.backend, precision)

    # 2. tokenizer + model
    seed_everything(run.seed)
    model, tokenizer, tokenizer_dir = build_model_and_tokenizer(
        model_cfg, run_dir, tokenizer_sentences=tokenizer_corpus(data), semantic_token=uses_semantic_token(data))
    set_trainable(model, trainable.params)
    logger.info("parameters (trainable globs %s):\n%s", trainable.params, format_param_table(model))
    model.to(dist.device)

    # 3. data
    use_cache = bool(data.embedding_cache)
    if use_cache and sam_family(model.config.sam_variant) == "sam2":
        raise ValueError(f"data.embedding_cache is set, but SAM {model.config.sam_variant!r} gives "
                         f"multi-scale image features that the cache does not store; set data.embedding_cache=null")
    train_dataset = build_train_dataset(data, model, tokenizer, seed=run.seed, with_sam_images=not use_cache)
    if hasattr(train_dataset, "summary"):
        logger.info(train_dataset.summary())
    val_splits = []
    if trainer_cfg.val_every > 0 or trainer_cfg.val_at_end:
        val_splits = build_val_splits(data, model, tokenizer, seed=run.seed)
    cache = None
    if use_cache:
        from evf_sam.engine.embedding_cache import EmbeddingCache

        cache = EmbeddingCache.open_or_build(
            data.embedding_cache, model, train_dataset.image_keys(), train_dataset.sam_image,
            device=dist.device, batch_size=data.embedding_cache_batch_size, dtype=data.embedding_cache_dtype,
            encoder=data.embedding_cache_encoder, precision=data.embedding_cache_precision)

    # 4. optimizer, schedule, DeepSpeed. Told the accelerator (no detection warning), its logger and the
    # prints of its op builds go to train.log only.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if dist.device.type == "cuda" else "cpu")
    with prints_to_log("deepspeed"):
        import deepspeed

        route_library_logs()
    optimizer = build_optimizer(model, lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas),
                                eps=optim.eps)
    scheduler = build_scheduler(optimizer, total_steps=trainer_cfg.total_steps, warmup_steps=optim.warmup_steps,
                                schedule=optim.schedule, min_lr_ratio=optim.min_lr_ratio)
    ds_config = build_deepspeed_config(ds, micro_batch_size=trainer_cfg.micro_batch_size,
                                       grad_accum=trainer_cfg.grad_accum, precision=precision)
    with prints_to_log("deepspeed"):
        engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                       config=ds_config, dist_init_required=False)
    run_config = resolved(cfg)
    return Trainer(
        trainer_cfg, engine=engine, scheduler=scheduler, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
        train_dataset=train_dataset, num_workers=data.num_workers, val_splits=val_splits,
        embedding_cache=cache, max_text_len=text_length(data.max_text_len, model.max_text_len),
        run_dir=run_dir, dist=dist, dtype=dtype,
        checkpointer=Checkpointer(run_dir / "checkpoints", rank=dist.rank, world_size=dist.world_size,
                                  keep_last=trainer_cfg.keep_last),
        run_logger=RunLogger(run_dir, rank=dist.rank, logger=logger_cfg, run_name=run.name, config=run_config),
        resume=run.resume, seed=run.seed, run_config=run_config, end_eval=end_eval)
