"""Training and evaluation engine (DeepSpeed is imported lazily, inside the functions; configs are typed
by evf_sam.config).

    evf_sam.engine.build            train(cfg), build_trainer, build_model_and_tokenizer: the parts from the config
    evf_sam.engine.trainer          Trainer: the training loop (DeepSpeed ZeRO-2 steps, validation, export)
    evf_sam.engine.checkpointing    checkpoint tags, `complete` marker, latest, per-rank RNG, prune, resume
    evf_sam.engine.run_logging      console / train.log handlers, metrics.jsonl + wandb records
    evf_sam.engine.deepspeed_config precision and the DeepSpeed config dict
    evf_sam.engine.validation       validation splits through evaluate
    evf_sam.engine.state            TrainState, seeding, RNG state
    evf_sam.engine.losses           mask_losses: sigmoid BCE + Dice
    evf_sam.engine.optim            trainable globs, AdamW, LR schedule
    evf_sam.engine.embedding_cache  frozen SAM image-embedding cache
    evf_sam.engine.distributed      process group set-up (torchrun or a 1-rank group)
    evf_sam.engine.evaluate         evaluation loop (scripts/eval_refcoco.py and validation)
    evf_sam.engine.video_tracking   EVF-SAM2's SAM-2 memory path trained on text-prompted clips
"""
