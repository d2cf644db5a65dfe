"""Which encoder output becomes the SAM prompt (paper Tab. 5), and which fusion allows which feature.

Every multimodal encoder here ends in two token sequences, each led by its own [CLS]:

    image tokens (N, 1 + P, D): [CLS_img, patch_1 ... patch_P]
    text tokens  (N, T, D):     [CLS_txt (<s> / [CLS] / EOS-pooled), word_1 ...]

and a feature is read from them:

    image_cls   image [CLS]                          (N, D)   official EVF-SAM, default
    text_cls    first text token                     (N, D)
    image_avg   mean of the image patch tokens       (N, D)   [CLS] excluded, padded patches excluded
    concat      text [CLS] ⊕ image [CLS]             (N, 2D)

The fusion axis (paper Tab. 3) decides which of those exist:

    text     text alone through the encoder: only text tokens exist           -> text_cls
    late     image alone and text alone, features concatenated                -> concat
    early    image and text attend to each other in every layer               -> any feature
    early_k  cross-modal attention only in the first K layers (BEiT-3 only)   -> any feature
"""

from __future__ import annotations

import torch
from torch import Tensor

FEATURES = ("image_cls", "text_cls", "image_avg", "concat")
FUSIONS = ("text", "late", "early", "early_k")

# Features a fusion mode can produce; the first one is what `feature=None` picks.
FUSION_FEATURES: dict[str, tuple[str, ...]] = {
    "text": ("text_cls",),
    "late": ("concat",),
    "early": ("image_cls", "text_cls", "image_avg", "concat"),
    "early_k": ("image_cls", "text_cls", "image_avg", "concat"),
}


def resolve_feature(fusion: str, feature: str | None) -> str:
    """Checks ``fusion`` × ``feature`` and returns the feature to use (``None`` -> the fusion's default).

    Raises ``ValueError`` naming both options and what is allowed.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    allowed = FUSION_FEATURES[fusion]
    if feature is None:
        return allowed[0]
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
    if feature not in allowed:
        why = {
            "text": "text-only fusion encodes no image, so there is no image token to read",
            "late": "late fusion concatenates the separately encoded text [CLS] and image [CLS]",
        }[fusion]
        raise ValueError(
            f"feature={feature!r} clashes with fusion={fusion!r}: {why}; "
            f"allowed features for fusion={fusion!r}: {', '.join(allowed)}"
        )
    return feature


def feature_dim(feature: str, width: int) -> int:
    """Width of ``feature`` read from tokens of width ``width`` (``concat`` doubles it)."""
    return 2 * width if feature == "concat" else width


def pool_tokens(
    feature: str,
    *,
    image_tokens: Tensor | None = None,
    text_tokens: Tensor | None = None,
    patch_mask: Tensor | None = None,
) -> Tensor:
    """Reads ``feature`` from the encoder's token sequences.

    Args:
        image_tokens: (N, 1 + P, D), image [CLS] first; None when no image was encoded.
        text_tokens: (N, T, D), text [CLS] first; None when no text was encoded.
        patch_mask: (N, P) bool, True = real patch (ViLT pads patch sequences); None = all real.
    Returns:
        (N, D) or (N, 2D) for ``concat``.
    """

    def need(tokens: Tensor | None, what: str) -> Tensor:
        if tokens is None:
            raise ValueError(f"feature {feature!r} needs {what} tokens but none were encoded")
        return tokens

    if feature == "image_cls":
        return need(image_tokens, "image")[:, 0]
    if feature == "text_cls":
        return need(text_tokens, "text")[:, 0]
    if feature == "image_avg":
        patches = need(image_tokens, "image")[:, 1:]  # (N, P, D)
        if patch_mask is None:
            return patches.mean(dim=1)
        w = patch_mask.to(patches.dtype).unsqueeze(-1)  # (N, P, 1)
        return (patches * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    if feature == "concat":
        return torch.cat([need(text_tokens, "text")[:, 0], need(image_tokens, "image")[:, 0]], dim=-1)
    raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
