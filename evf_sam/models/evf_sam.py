"""EVF-SAM: a BEiT-3 encoder fuses the referring text with the image early; its vision [CLS],
projected, is the one sparse prompt of a frozen-encoder SAM (paper Fig. 4).

    model = EvfSam.from_pretrained("evf-sam")                  # official directory
    emb = model.encode_image(sam_images)                       # (B, C, h, w), once per image
    prompts = model.encode_prompts(beit_images, ids, pad)      # (N, 1, C), one per expression
    low_res, iou = model.decode_masks(emb, prompts, image_index)
    logits = model.postprocess_masks(low_res, input_size, original_size)   # (N, 1, H, W), mask = logits > 0

Three parts, one path for every configuration: a prompt encoder (`models/encoders.py`; officially
BEiT-3 with early fusion, whose vision [CLS] is the feature), the `Projector`, and a SAM backend
(`models/sam_backends.py`: SAM, EfficientSAM or SAM-2), to which `EvfSam` always delegates. The
prompt wiring is the official one: the projected feature is the one sparse prompt, appended to the
empty sparse embedding of SAM's prompt encoder; the backend decodes N prompts against their images
(``image_index``) in one batch without repeating each image embedding per prompt first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evf_sam.models.beit3 import load_beit3_state_dict
from evf_sam.models.encoders import build_prompt_encoder
from evf_sam.models.projector import Projector
from evf_sam.models.sam_backends import SAM_VARIANTS, build_sam_backend, sam_family

__all__ = ["EvfSam", "EvfSamConfig", "build_evf_sam"]


@dataclass
class EvfSamConfig:
    """Architecture of an EVF-SAM model; serialised into config.json next to the official fields."""

    sam_variant: str = "vit_h"  # models/sam_backends.py: vit_h/l/b (SAM), efficient_sam_s/t, sam2_hiera_l/t
    encoder: str = "beit3_large"  # models/encoders.py; official "mm_extractor_scale": large/base <-> beit3_large/base
    encoder_overrides: dict[str, Any] = field(default_factory=dict)  # BEiT3Config fields / CLIP, ViLT config kwargs
    out_dim: int | None = None  # projector output = SAM prompt embed dim; None = derive from SAM (256 for vit_*)
    # Default of decode_masks (so of prediction, evaluation and training). True: SAM's 3 multimask outputs, the
    # best by predicted IoU; False: the single-mask output. None = the family's official choice: True for SAM-2
    # (EVF-SAM2's inference() and forward() use multimask_output=True), False for SAM and EfficientSAM.
    multimask_output: bool | None = None
    # Ablation axes (paper Tab. 1, 3, 5); the defaults are the official model.
    fusion: str = "early"  # "text" | "late" | "early" | "early_k" (see models/encoders.py)
    feature: str | None = None  # "image_cls" | "text_cls" | "image_avg" | "concat"; None = the fusion's default
    fused_layers: int | None = None  # K for fusion="early_k": cross-modal attention in layers 1..K only
    encoder_path: str | None = None  # CLIP / ViLT: local transformers directory with pretrained weights
    # SAM-2 only: its mask decoder's eval-mode "dynamic multimask via stability" fallback (a single mask
    # with stability < 0.98 is replaced by the best multimask output), i.e. build_sam2's postprocessing. It
    # only acts when multimask_output is False, which the official EVF-SAM2 never uses. None = off: the
    # single-mask alternative is the single mask (the loss never supervises the multimask outputs / IoU
    # head); True reproduces the official code called with multimask_output=False.
    sam_stability_fallback: bool | None = None
    # SAM-1 image encoder implementation, same weights and names: "reference" (segment-anything's
    # ImageEncoderViT) or "fast" (models/sam_encoder.py: SDPA; precision / compile are set at run time
    # with use_fast_sam_encoder(model, compute_dtype=..., compile=...)). None = "fast" for SAM-1 (fp32:
    # the reference's embedding within 1e-4, official parity tests green), "reference" (the family's own
    # encoder, already SDPA) for EfficientSAM / SAM-2. Not written to config.json.
    sam_encoder: str | None = None

    def __post_init__(self) -> None:
        if self.sam_variant not in SAM_VARIANTS:
            raise ValueError(f"unknown sam_variant {self.sam_variant!r}; choose one of {', '.join(SAM_VARIANTS)}")
        if self.sam_encoder is None:
            self.sam_encoder = "fast" if sam_family(self.sam_variant) == "sam" else "reference"
        if self.sam_encoder not in ("reference", "fast"):
            raise ValueError(f"unknown sam_encoder {self.sam_encoder!r}; choose 'reference' or 'fast'")
        if self.sam_encoder == "fast" and sam_family(self.sam_variant) != "sam":
            raise ValueError(f"sam_encoder='fast' replaces segment-anything's image encoder; sam_variant="
                             f"{self.sam_variant!r} is a {sam_family(self.sam_variant)} model (already SDPA): "
                             f"leave sam_encoder='reference'")
        if self.sam_stability_fallback is not None and sam_family(self.sam_variant) != "sam2":
            raise ValueError(f"sam_stability_fallback={self.sam_stability_fallback} applies to SAM-2 only, "
                             f"not sam_variant={self.sam_variant!r}; leave it None")
        self.encoder_overrides = dict(self.encoder_overrides or {})
        if self.multimask_output is None:
            self.multimask_output = sam_family(self.sam_variant) == "sam2"

    def is_official_encoder(self) -> bool:
        """True for the paper's model: BEiT-3, early fusion in every layer, vision [CLS] feature."""
        return (self.encoder.startswith("beit3") and self.fusion == "early" and self.feature in (None, "image_cls")
                and self.fused_layers is None and self.encoder_path is None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvfSamConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown EvfSamConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)


class EvfSam(nn.Module):
    """Prompt encoder (BEiT-3) + projector + SAM backend (image encoder, prompt encoder, mask decoder).

    ``sam`` is a SAM backend (paper Tab. 7) implementing the protocol of `evf_sam.models.sam_backends`:
    segment-anything's SAM (the official EVF-SAM), EfficientSAM or SAM-2. `EvfSam` always delegates
    to it; it never asks which one it holds.

    Attributes:
        encoder: a prompt encoder of `evf_sam.models.encoders` (``encoder(text_ids=, text_padding_mask=,
            image=)`` -> (N, D); attributes ``feature_dim``, ``image_size``, ``max_text_len``). Official:
            `BEiT3PromptEncoder`, a `BEiT3` with torchscale's names (official ``mm_extractor.beit3``).
        projector: `Projector` D -> C (official ``text_hidden_fcs.0``)
        sam: `SamBackend` (a segment-anything ``Sam``), `EfficientSam` or `Sam2Backend` (official ``visual_model``)
        config: `EvfSamConfig`
    """

    def __init__(self, *, encoder: nn.Module, projector: Projector, sam: nn.Module, config: EvfSamConfig) -> None:
        super().__init__()
        width = _encoder_width(encoder)
        prompt_dim = _sam_prompt_dim(sam)
        if projector.in_dim != width:
            raise ValueError(f"projector in_dim={projector.in_dim} clashes with encoder width {width}")
        if projector.out_dim != prompt_dim:
            raise ValueError(f"projector out_dim={projector.out_dim} clashes with SAM prompt dim {prompt_dim}")
        if config.out_dim is not None and config.out_dim != prompt_dim:
            raise ValueError(f"EvfSamConfig.out_dim={config.out_dim} clashes with SAM {config.sam_variant!r} "
                             f"prompt dim {prompt_dim}")
        self.encoder = encoder
        self.projector = projector
        self.sam = sam
        self.config = config

    def _apply(self, fn, recurse: bool = True):
        """Dtype/device moves keep SAM's random positional-encoding matrix in float32.

        segment-anything's ``PositionEmbeddingRandom`` builds its coordinate grid in float32 and
        multiplies it by this (2, C/2) buffer, which fails once the buffer is bf16/fp16. The official
        fp16 inference has the same constraint; every backend casts the dense PE to the embeddings'
        dtype in `decode_text_prompts`, so keeping this one small buffer in float32 changes no arithmetic.
        """
        super()._apply(fn, recurse)
        self._keep_pe_float32()
        return self

    def set_sam_stability_fallback(self, on: bool) -> None:
        """SAM-2: switches its mask decoder's eval-mode stability fallback (see `EvfSamConfig`)."""
        if sam_family(self.config.sam_variant) != "sam2":
            raise ValueError(f"the stability fallback is a SAM-2 feature; this model has {self.config.sam_variant!r}")
        self.sam.sam_mask_decoder.dynamic_multimask_via_stability = bool(on)
        self.config.sam_stability_fallback = bool(on)

    def _keep_pe_float32(self) -> None:
        for mod in self.sam.modules():  # SAM, EfficientSAM and SAM-2 prompt encoders all have one
            if isinstance(getattr(mod, "positional_encoding_gaussian_matrix", None), Tensor):
                mod.positional_encoding_gaussian_matrix = mod.positional_encoding_gaussian_matrix.float()

    # -- sizes --------------------------------------------------------------------------------

    @property
    def sam_image_size(self) -> int:
        """S: the square SAM input (1024 for vit_* / EfficientSAM / SAM-2, 256 for tiny)."""
        return int(self.sam.image_size)

    @property
    def resize_mode(self) -> str:
        """SAM-branch preprocessing: "pad" (SAM-1) or "square" (EfficientSAM, SAM-2); see preprocess.py."""
        return str(self.sam.resize_mode)

    @property
    def beit_image_size(self) -> int:
        """Side of the prompt encoder's image input (BEiT-3: 224 for the official models)."""
        return int(self.encoder.image_size)

    @property
    def max_text_len(self) -> int:
        """Longest token sequence (incl. <s> and </s>) the encoder's text position table allows."""
        return int(self.encoder.max_text_len)

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        """(h, w) of the SAM image embedding; low-res masks are (4h, 4w)."""
        return tuple(self.sam.image_embedding_size)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: SAM's (never quantized; the projector may be, see evf_sam/quantize.py)."""
        return self._sam_float_parameter().dtype

    @property
    def device(self) -> torch.device:
        return self._sam_float_parameter().device

    def _sam_float_parameter(self) -> Tensor:
        return next(p for p in self.sam.parameters() if p.is_floating_point())

    # -- the three stages ---------------------------------------------------------------------

    def encode_image(self, sam_images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """SAM image encoder (no_grad when its parameters are frozen).

        sam_images: (B, 3, S, S) normalised (+ zero-padded for SAM-1)  ->  (B, C, S/16, S/16)
        (SAM-2: a tuple, the (B, C, S/16, S/16) embedding first, then its high-resolution features)
        """
        s = self.sam_image_size
        if sam_images.dim() != 4 or tuple(sam_images.shape[-2:]) != (s, s):
            raise ValueError(f"sam_images must be (B, 3, {s}, {s}), got {tuple(sam_images.shape)}")
        # The backend disables autograd for its frozen image encoder itself (SAM-2's conv_s0 / conv_s1
        # belong to the mask decoder and may train).
        return self.sam.encode_image(sam_images)

    def encode_prompts(self, beit_images: Tensor, text_ids: Tensor, text_padding_mask: Tensor) -> Tensor:
        """Fused BEiT-3 forward; the vision [CLS] (token 0), projected, is the sparse prompt.

        (An ablation encoder gives its own feature: `evf_sam.models.encoders`.)
        beit_images: (N, 3, 224, 224), text_ids: (N, T) long, text_padding_mask: (N, T) bool (True = pad)
        -> (N, 1, C)
        """
        if beit_images.shape[0] != text_ids.shape[0]:
            raise ValueError(f"one image per expression: beit_images has {beit_images.shape[0]}, "
                             f"text_ids {text_ids.shape[0]} (gather images with image_index first)")
        feat = self.encoder(text_ids=text_ids, text_padding_mask=text_padding_mask, image=beit_images)  # (N, D)
        return self.projector(feat)[:, None]  # (N, 1, C)

    def decode_masks(self, image_embeddings: Tensor, prompt_embeddings: Tensor, image_index: Tensor | None = None,
                     multimask_output: bool | None = None) -> tuple[Tensor, Tensor]:
        """The SAM backend's mask decoder for N prompts against their images (`decode_text_prompts`).

        Args:
            image_embeddings: (B, C, h, w) (SAM-2: `encode_image`'s tuple)
            prompt_embeddings: (N, 1, C) (or (N, C)), the projected [CLS] of each expression
            image_index: (N,) long in [0, B); None means N == B and prompt i goes with image i
            multimask_output: None = ``config.multimask_output``. True: predict SAM's 3 multimask
                outputs and keep the one with the highest predicted IoU (official behaviour);
                False: SAM's single-mask output.
        Returns:
            low-res mask logits (N, 1, 4h, 4w), predicted IoU (N, 1)
        """
        if multimask_output is None:
            multimask_output = self.config.multimask_output
        if prompt_embeddings.dim() == 2:
            prompt_embeddings = prompt_embeddings[:, None]
        if image_index is not None:
            image_index = image_index.to(device=prompt_embeddings.device, dtype=torch.long)
        return self.sam.decode_text_prompts(image_embeddings, prompt_embeddings, image_index, bool(multimask_output))

    def postprocess_masks(self, low_res: Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> Tensor:
        """The backend's official post-processing. SAM-1 (segment-anything's ``Sam.postprocess_masks``):
        bilinear to S x S, crop to ``input_size`` (the resized image before padding), bilinear to
        ``original_size``; EfficientSAM / SAM-2: bilinear straight to ``original_size``
        (``input_size`` unused); align_corners=False.

        low_res: (N, 1, 4h, 4w) -> (N, 1, H, W) logits (mask = logits > 0)
        """
        return self.sam.postprocess_masks(low_res, tuple(int(x) for x in input_size),
                                          tuple(int(x) for x in original_size))

    def forward(self, sam_images: Tensor | None, beit_images: Tensor, text_ids: Tensor, text_padding_mask: Tensor,
                image_index: Tensor, *, image_embeddings: Tensor | None = None,
                multimask_output: bool | None = None) -> tuple[Tensor, Tensor]:
        """Training path: encode_image (no_grad when frozen) + encode_prompts + decode_masks.

        sam_images (B, 3, S, S), beit_images (B, 3, 224, 224) (gathered per expression here),
        text_ids (N, T), text_padding_mask (N, T), image_index (N,) long.
        ``image_embeddings`` (B, C, h, w), e.g. from the embedding cache, replaces ``sam_images``.
        -> low-res logits (N, 1, 4h, 4w), predicted IoU (N, 1)
        """
        if image_embeddings is None:
            if sam_images is None:
                raise ValueError("forward needs sam_images or image_embeddings")
            image_embeddings = self.encode_image(sam_images)
        image_index = image_index.to(device=beit_images.device, dtype=torch.long)
        prompts = self.encode_prompts(beit_images.index_select(0, image_index), text_ids, text_padding_mask)
        return self.decode_masks(image_embeddings, prompts, image_index, multimask_output)

    # -- checkpoints --------------------------------------------------------------------------
    # models/checkpoint.py does the work. It sits above this module (it builds EvfSam), so these two
    # public entry points import it when called: the one import against the layering in models/
    # (tests/test_models_structure.py keeps the rest of the import graph acyclic).

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "EvfSam":
        """Loads an official EVF-SAM directory (or one written by `save_pretrained`, or a hub id), strictly."""
        from evf_sam.hub import resolve_checkpoint
        from evf_sam.models.checkpoint import load_pretrained

        path = resolve_checkpoint(path)  # a local path wins; "owner/name" -> the hub cache's snapshot
        model = load_pretrained(path, dtype=dtype, device=device)
        model._keep_pe_float32()  # the file's copy may be fp16 / bf16 (see _apply)
        model.source_dir = Path(path)  # where EvfSamPredictor finds the tokenizer files
        return model

    def save_pretrained(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
        """Writes model.safetensors (official names) + config.json (+ tokenizer files), atomically."""
        from evf_sam.models.checkpoint import save_pretrained

        return save_pretrained(self, path, tokenizer_dir)


def _sam_prompt_dim(sam: nn.Module) -> int:
    """C: the width of SAM's prompt tokens (256 for every official SAM / EfficientSAM / SAM-2)."""
    return int(sam.prompt_dim)


def _encoder_width(encoder: nn.Module) -> int:
    """Width of the feature the encoder hands to the projector (computed from the built module)."""
    return int(encoder.feature_dim)


def build_evf_sam(config: EvfSamConfig, *, sam_checkpoint: str | Path | None = None,
                  encoder_checkpoint: str | Path | None = None) -> EvfSam:
    """Training initialisation: SAM from its official weight file (segment-anything ``.pth``,
    EfficientSAM / SAM-2 ``.pt``; `sam_backends.build_sam_backend`), BEiT-3 from a BEiT-3 ``.pth``
    (both strict), projector freshly initialised. Sizes are derived from the built modules.

    The SAM image encoder is frozen (``requires_grad=False``), as in every EVF-SAM configuration.
    Returned in eval mode.
    """
    sam = build_sam_backend(config.sam_variant, sam_checkpoint)
    if config.sam_encoder == "fast":
        from evf_sam.models.sam_encoder import use_fast_sam_encoder

        use_fast_sam_encoder(sam)
    # Every encoder, the official BEiT-3 (early fusion, vision [CLS]) included; impossible
    # combinations raise ValueError naming the clash.
    encoder = build_prompt_encoder(config.encoder, fusion=config.fusion, feature=config.feature,
                                   fused_layers=config.fused_layers, pretrained=config.encoder_path,
                                   overrides=config.encoder_overrides)
    if encoder_checkpoint is not None:
        if not config.encoder.startswith("beit3"):
            raise ValueError(f"encoder_checkpoint is a BEiT-3 .pth, but encoder={config.encoder!r}; CLIP / ViLT "
                             f"weights come from encoder_path (a local transformers directory)")
        if not Path(encoder_checkpoint).is_file():
            raise FileNotFoundError(f"BEiT-3 checkpoint not found: {str(encoder_checkpoint)!r} (expected a BEiT-3 "
                                    f".pth with the state dict under 'model', keys 'beit3.*')")
        load_beit3_state_dict(encoder, encoder_checkpoint)
    prompt_dim = _sam_prompt_dim(sam)
    if config.out_dim is None:
        config = dataclasses.replace(config, out_dim=prompt_dim)
    elif config.out_dim != prompt_dim:
        raise ValueError(f"EvfSamConfig.out_dim={config.out_dim} clashes with SAM {config.sam_variant!r} prompt dim "
                         f"{prompt_dim}; set out_dim={prompt_dim} (or None to derive it)")
    projector = Projector(_encoder_width(encoder), prompt_dim)
    sam.image_encoder.requires_grad_(False)
    model = EvfSam(encoder=encoder, projector=projector, sam=sam, config=config).eval()
    if sam_family(config.sam_variant) == "sam2":  # None = off (see EvfSamConfig); the backend is built with it on
        model.sam.sam_mask_decoder.dynamic_multimask_via_stability = bool(config.sam_stability_fallback)
    return model
