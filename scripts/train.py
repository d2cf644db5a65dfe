#!/usr/bin/env python
"""Train EVF-SAM (Hydra config: configs/train.yaml; `--help` lists the groups and examples).

    python scripts/train.py model=tiny data=synthetic trainer=tiny logger=none
    torchrun --nproc_per_node 4 scripts/train.py data.root=/data model.tokenizer=... \
        model.sam_checkpoint=sam_vit_h_4b8939.pth model.encoder_checkpoint=beit3_large_patch16_224.pth

Errors are one line on stderr and exit status 1 (`EVF_SAM_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import evf_sam.config  # noqa: E402,F401  (registers the config schemas: a wrong key or type fails at composition)
from evf_sam.engine.errors import reporting  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from evf_sam.engine.build import train

    with reporting("train.py"):
        train(cfg, config_yaml=OmegaConf.to_yaml(cfg))


if __name__ == "__main__":
    with reporting("train.py"):
        main()
