"""EVF-SAM: Early Vision-Language Fusion for Text-Prompted Segment Anything Model.

    from evf_sam import EvfSam, EvfSamPredictor
    model = EvfSam.from_pretrained("evf-sam")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CheckpointFileError", "EvfSam", "EvfSamConfig", "EvfSamPredictor", "Prediction", "build_evf_sam", "__version__"]

# Imported on first use: `import evf_sam` stays light (no torch / segment_anything until needed),
# and evf_sam.predictor can import evf_sam.models without a cycle.
_LAZY = {
    "EvfSam": "evf_sam.models.evf_sam",
    "EvfSamConfig": "evf_sam.models.evf_sam",
    "build_evf_sam": "evf_sam.models.evf_sam",
    "EvfSamPredictor": "evf_sam.predictor",
    "Prediction": "evf_sam.predictor",
    "CheckpointFileError": "evf_sam.models.state_dict",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evf_sam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
