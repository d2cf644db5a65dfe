"""The registry: every SAM variant and every prompt encoder, each declared once.

A family's module declares its variants in one table (name -> architecture) and registers its
builder with that table, timm's ``@register_model`` shape with one decorator per family:

    @register_sam_family("sam", resize_mode="pad", variants=SAM_CONFIGS)      # models/sam.py
    def build_sam(variant: str, checkpoint=None) -> SamBackend: ...

    sam_family_of("vit_h")        # SamFamily(name="sam", resize_mode="pad", build=build_sam, variants=SAM_CONFIGS)
    sam_variant_names()           # ("vit_h", "vit_l", "vit_b", "tiny", "efficient_sam_s", ...)
    encoder_family_of("clip_large").fusions   # ("text", "late")

SAM families: `models/sam.py`, `models/efficient_sam.py`, `models/sam2_backend.py` (registered when
`models/sam_backends.py` imports them; none of them imports Meta's ``sam2`` before a SAM-2 model is
built, so listing and validating names stays light). Encoder families: `models/encoders.py`.
This module imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["EncoderFamily", "SamFamily", "encoder_family_of", "encoder_names", "register_encoder_family",
           "register_sam_family", "sam_family_of", "sam_variant_names"]


@dataclass(frozen=True)
class SamFamily:
    """One SAM family (paper Tab. 7) and its registered variants."""

    name: str  # "sam" | "efficient_sam" | "sam2"
    resize_mode: str  # SAM-branch preprocessing: "pad" | "square" (evf_sam/preprocess.py)
    build: Callable[..., Any]  # (variant, checkpoint=None) -> backend in eval mode
    variants: Mapping[str, Any]  # variant name -> the family's architecture record


@dataclass(frozen=True)
class EncoderFamily:
    """One prompt-encoder family (paper Tab. 1) and its registered variants."""

    name: str  # "beit3" | "clip" | "vilt"
    fusions: tuple[str, ...]  # fusion modes it can run (paper Tab. 3)
    no_fusion_why: str  # why the other fusion modes are impossible ("" if none is)
    build: Callable[..., Any]  # (encoder, *, fusion, feature, fused_layers, pretrained, overrides) -> adapter
    variants: Mapping[str, Any]  # encoder name -> architecture (BEiT3Config / transformers config kwargs)


_SAM_FAMILIES: dict[str, SamFamily] = {}
_ENCODER_FAMILIES: dict[str, EncoderFamily] = {}


def _check_new(family: str, variants: Mapping[str, Any], families: Mapping[str, Any], taken: tuple[str, ...]) -> None:
    if family in families:
        raise ValueError(f"family {family!r} is registered twice")
    clash = sorted(set(variants) & set(taken))
    if clash:
        raise ValueError(f"{family!r} registers names that are already taken: {', '.join(clash)}")


def register_sam_family(name: str, *, resize_mode: str, variants: Mapping[str, Any]) -> Callable:
    """Decorator for a family's builder ``build(variant, checkpoint=None)``; ``variants`` is the
    family's name -> architecture table, looked up live (so each variant is written once, there)."""

    def register(build: Callable) -> Callable:
        _check_new(name, variants, _SAM_FAMILIES, sam_variant_names())
        _SAM_FAMILIES[name] = SamFamily(name=name, resize_mode=resize_mode, build=build, variants=variants)
        return build

    return register


def register_encoder_family(name: str, *, fusions: tuple[str, ...], variants: Mapping[str, Any],
                            no_fusion_why: str = "") -> Callable:
    """Decorator for a family's builder ``build(encoder, *, fusion, feature, fused_layers, pretrained,
    overrides)``; ``variants`` is the family's name -> architecture table, looked up live."""

    def register(build: Callable) -> Callable:
        _check_new(name, variants, _ENCODER_FAMILIES, encoder_names() + tuple(_ENCODER_FAMILIES))
        _ENCODER_FAMILIES[name] = EncoderFamily(name=name, fusions=tuple(fusions), no_fusion_why=no_fusion_why,
                                                build=build, variants=variants)
        return build

    return register


def sam_variant_names() -> tuple[str, ...]:
    """Every registered SAM variant, families in registration order."""
    return tuple(v for fam in _SAM_FAMILIES.values() for v in fam.variants)


def sam_family_of(variant: str) -> SamFamily:
    """The family of a SAM variant; ValueError naming the choices for an unknown one."""
    for fam in _SAM_FAMILIES.values():
        if variant in fam.variants:
            return fam
    raise ValueError(f"unknown SAM variant {variant!r}; choose one of {', '.join(sam_variant_names())}")


def encoder_names() -> tuple[str, ...]:
    """Every registered prompt encoder, families in registration order."""
    return tuple(e for fam in _ENCODER_FAMILIES.values() for e in fam.variants)


def encoder_family_of(encoder: str) -> EncoderFamily:
    """The family of an encoder name (a family name maps to itself); ValueError naming the choices."""
    if encoder in _ENCODER_FAMILIES:
        return _ENCODER_FAMILIES[encoder]
    for fam in _ENCODER_FAMILIES.values():
        if encoder in fam.variants:
            return fam
    raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(encoder_names())}")
