"""Training and evaluation engine (DeepSpeed and Hydra are imported lazily, inside the functions).

    evf_sam.engine.trainer          train(cfg), Trainer: DeepSpeed ZeRO-2, checkpoint / resume, logging
    evf_sam.engine.losses           mask_losses: sigmoid BCE + Dice
    evf_sam.engine.optim            trainable globs, AdamW, LR schedule
    evf_sam.engine.embedding_cache  frozen SAM image-embedding cache
    evf_sam.engine.distributed      process group set-up (torchrun or a 1-rank group)
    evf_sam.engine.evaluate         evaluation loop (scripts/eval_refcoco.py and validation)
"""
