"""A training run from its config: the parts, built in order, handed to the `Trainer`.

    results = train(cfg)                      # scripts/train.py (every rank): build_trainer(cfg).fit()
    trainer = build_trainer(cfg)              # the built parts, not yet trained
    model, tokenizer, tokenizer_dir = build_model_and_tokenizer(cfg, run_dir)

Order (each step fails before the next, costlier one starts): process group and run directory ->
data files (checked or generated) -> config.yaml / config_resolved.yaml -> seed -> tokenizer and model
-> trainable globs -> datasets, validation splits, embedding cache -> optimizer, LR schedule, DeepSpeed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from evf_sam.atomic import atomic_write_text
from evf_sam.config import resolved
from evf_sam.data.batch import text_length
from evf_sam.engine import distributed as D
from evf_sam.engine.checkpointing import Checkpointer
from evf_sam.engine.deepspeed_config import build_deepspeed_config, resolve_precision
from evf_sam.engine.optim import apply_trainable, build_optimizer, build_scheduler, format_param_table
from evf_sam.engine.run_logging import RunLogger, setup_logging
from evf_sam.engine.state import seed_everything
from evf_sam.engine.trainer import Trainer
from evf_sam.models.sam_backends import sam_family

__all__ = ["build_model_and_tokenizer", "build_trainer", "train"]

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def train(cfg, *, config_yaml: str | None = None) -> dict[str, Any]:
    """Entry point of scripts/train.py (every rank)."""
    return build_trainer(cfg, config_yaml=config_yaml).fit()


def build_model_and_tokenizer(cfg, run_dir: Path):
    """(EvfSam, tokenizer, tokenizer_dir) from ``cfg.model``; a tiny tokenizer is trained for model=tiny."""
    from evf_sam.data.build import tokenizer_corpus, uses_semantic_token
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.models.evf_sam import EvfSam

    mc = cfg.model
    tok_dir = mc.get("tokenizer")
    if tok_dir is None:
        if not mc.get("make_tiny_tokenizer", False):
            raise ValueError("model.tokenizer is not set: point it at a directory with BEiT-3's sentencepiece.bpe.model "
                             "(e.g. the official evf-sam checkpoint directory)")
        tok_dir = run_dir / "tokenizer"
        if D.is_main() and not (tok_dir / "sentencepiece.bpe.model").is_file():
            from evf_sam.testing import TINY_SENTENCES
            from evf_sam.tokenizer import train_sentencepiece

            sentences = list(TINY_SENTENCES) + tokenizer_corpus(cfg.data)
            train_sentencepiece(sentences, tok_dir, int(mc.get("tiny_vocab_size", 128)))
            if uses_semantic_token(cfg.data):  # the multitask release's added token, next free id
                from evf_sam.tokenizer import SEMANTIC_TOKEN, add_tokens

                add_tokens(tok_dir, [SEMANTIC_TOKEN])
        D.barrier()
    tokenizer = load_encoder_tokenizer(str(mc.encoder), tok_dir)
    if mc.get("init_from"):
        model = EvfSam.from_pretrained(mc.init_from)
        model.sam.image_encoder.requires_grad_(False)
    else:
        model = _build_model(mc, tokenizer)
    if mc.get("grad_checkpointing", False):
        if not hasattr(model.encoder, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing=true is not supported by encoder {mc.encoder!r} (BEiT-3 only)")
        model.encoder.set_grad_checkpointing(True)
    return model, tokenizer, Path(tok_dir)


def _build_model(mc, tokenizer):
    """A fresh EvfSam from ``cfg.model`` (SAM / BEiT-3 initialised from their .pth files if given)."""
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam

    overrides = dict(resolved(mc.get("encoder_overrides")) or {})
    if mc.get("make_tiny_tokenizer", False) and mc.get("tokenizer") is None:
        overrides.setdefault("vocab_size", len(tokenizer))
    config = EvfSamConfig(sam_variant=str(mc.sam_variant), encoder=str(mc.encoder), encoder_overrides=overrides,
                          fusion=str(mc.get("fusion") or "early"), feature=mc.get("feature"),
                          fused_layers=mc.get("fused_layers"), encoder_path=mc.get("encoder_path"),
                          multimask_output=bool(mc.get("multimask_output", False)),
                          sam_stability_fallback=mc.get("sam_stability_fallback"))
    return build_evf_sam(config, sam_checkpoint=mc.get("sam_checkpoint"),
                         encoder_checkpoint=mc.get("encoder_checkpoint"))


def build_trainer(cfg, *, config_yaml: str | None = None) -> Trainer:
    """Every part of the run, built from ``cfg`` in order (all ranks call this)."""
    from omegaconf import OmegaConf

    from evf_sam.data.build import build_train_dataset, build_val_splits, prepare_data

    trainer_cfg = cfg.trainer
    run_dir = Path(cfg.run_dir).absolute()
    dist = D.init_distributed(trainer_cfg.device)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    setup_logging(run_dir, dist.rank)
    if trainer_cfg.engine != "deepspeed":
        raise ValueError(f"trainer.engine={trainer_cfg.engine!r}: only 'deepspeed' is implemented")
    precision = resolve_precision(trainer_cfg.precision, dist.device)
    dtype = _DTYPES[precision]

    # 1. data files first: fail before any model is built
    prepare_data(cfg.data)
    if dist.rank == 0:
        atomic_write_text(run_dir / "config.yaml", config_yaml or OmegaConf.to_yaml(cfg))
        atomic_write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger.info("run dir %s | world %d | device %s | backend %s | precision %s", run_dir, dist.world_size,
                dist.device, dist.backend, precision)

    # 2. tokenizer + model
    seed_everything(int(cfg.seed))
    model, tokenizer, tokenizer_dir = build_model_and_tokenizer(cfg, run_dir)
    trained = apply_trainable(model, list(cfg.trainable.params))
    if sam_family(model.config.sam_variant) == "sam2" and model.config.sam_stability_fallback is None \
            and any(n.startswith("sam.sam_mask_decoder.") for n in trained):
        model.set_sam_stability_fallback(False)
        logger.info("SAM-2 mask decoder trains: its eval-mode stability fallback (which would swap in the "
                    "unsupervised multimask outputs) is off; the exported config.json records it")
    logger.info("parameters (trainable globs %s):\n%s", list(cfg.trainable.params), format_param_table(model))
    model.to(dist.device)

    # 3. data
    use_cache = bool(cfg.data.get("embedding_cache"))
    if use_cache and sam_family(model.config.sam_variant) == "sam2":
        raise ValueError(f"data.embedding_cache is set, but SAM {model.config.sam_variant!r} gives "
                         f"multi-scale image features that the cache does not store; set data.embedding_cache=null")
    train_dataset = build_train_dataset(cfg.data, model, tokenizer, seed=int(cfg.seed), with_sam_images=not use_cache)
    if hasattr(train_dataset, "summary"):
        logger.info(train_dataset.summary())
    val_splits = []
    if int(trainer_cfg.val_every) > 0 or trainer_cfg.val_at_end:
        val_splits = build_val_splits(cfg.data, model, tokenizer, seed=int(cfg.seed))
    cache = None
    if use_cache:
        from evf_sam.engine.embedding_cache import EmbeddingCache

        cache = EmbeddingCache.open_or_build(
            cfg.data.embedding_cache, model, train_dataset.image_keys(), train_dataset.sam_image,
            device=dist.device, batch_size=int(cfg.data.get("embedding_cache_batch_size", 8)),
            dtype=str(cfg.data.get("embedding_cache_dtype", "float16")),
            autocast_dtype=dtype if precision != "fp32" else None)

    # 4. optimizer, schedule, DeepSpeed
    import deepspeed

    optim_cfg = cfg.optim
    optimizer = build_optimizer(model, lr=float(optim_cfg.lr), weight_decay=float(optim_cfg.weight_decay),
                                betas=tuple(optim_cfg.betas), eps=float(optim_cfg.eps))
    scheduler = build_scheduler(optimizer, total_steps=int(trainer_cfg.total_steps),
                                warmup_steps=int(optim_cfg.warmup_steps), schedule=str(optim_cfg.schedule),
                                min_lr_ratio=float(optim_cfg.min_lr_ratio))
    ds_config = build_deepspeed_config(OmegaConf.to_container(cfg.deepspeed, resolve=True),
                                       micro_batch_size=int(trainer_cfg.micro_batch_size),
                                       grad_accum=int(trainer_cfg.grad_accum), precision=precision)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config, dist_init_required=False)
    run_config = resolved(cfg)
    return Trainer(
        trainer_cfg, engine=engine, scheduler=scheduler, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
        train_dataset=train_dataset, num_workers=int(cfg.data.num_workers), val_splits=val_splits,
        embedding_cache=cache, max_text_len=text_length(cfg.data.get("max_text_len"), model.max_text_len),
        run_dir=run_dir, dist=dist, dtype=dtype,
        checkpointer=Checkpointer(run_dir / "checkpoints", rank=dist.rank, world_size=dist.world_size,
                                  keep_last=int(trainer_cfg.keep_last)),
        run_logger=RunLogger(run_dir, rank=dist.rank, logger=cfg.logger, run_name=cfg.name, config=run_config),
        resume=str(cfg.resume), seed=int(cfg.seed), run_config=run_config)
