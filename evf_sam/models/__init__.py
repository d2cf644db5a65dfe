"""The model library: prompt encoders (BEiT-3; CLIP / ViLT ablations), projector, SAM backends (SAM,
EfficientSAM, SAM-2), EvfSam; official checkpoints in `evf_sam.models.checkpoint`.

Never imports Hydra, DeepSpeed or evf_sam.engine.
"""

from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam
from evf_sam.models.projector import Projector
from evf_sam.models.sam import SAM_CONFIGS, build_sam
from evf_sam.models.sam_backends import SAM_VARIANTS, build_sam_backend

__all__ = ["SAM_CONFIGS", "SAM_VARIANTS", "EvfSam", "EvfSamConfig", "Projector", "build_evf_sam", "build_sam",
           "build_sam_backend"]
