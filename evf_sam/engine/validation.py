"""Validation during training: every split through `evaluate` (the evaluation script's loop and
`RefMetrics`), nothing else.

    results = validate(model, tokenizer, splits, device=dev, dtype=torch.float32, max_text_len=32)
    # [{"split": "refcoco|unc|val", "ciou": ..., "giou": ..., "pr@0.5": ..., "n_expressions": ..., ...},
    #  {"split": "ade20k|semantic|val", ..., "miou": ..., "n_classes": ...}]        # the order of `splits`

Numbers are reduced over ranks (every rank gets them); counts are reported as floats, like the other
metrics, in metrics.jsonl and results.json.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["validate"]


@torch.no_grad()
def validate(model, tokenizer, splits: Sequence, *, device: torch.device, dtype: torch.dtype,
             max_text_len: int) -> list[dict[str, Any]]:
    """Metrics of ``model`` on each `data.build.ValidationSplit`, in order, as ``{"split": name, **metrics}``."""
    from evf_sam.engine.evaluate import evaluate

    out = []
    for split in splits:
        metrics = evaluate(model, tokenizer, split.dataset, batch_size=split.batch_size, device=device, dtype=dtype,
                           max_text_len=max_text_len, progress=False)
        out.append({"split": split.name, **{k: (float(v) if isinstance(v, (int, float)) else v)
                                            for k, v in metrics.items()}})
    return out
