"""SAM-2 as EVF-SAM's promptable mask model (paper Tab. 7; the official "EVF-SAM2" release).

    sam2 = build_sam2_backend("sam2_hiera_l", checkpoint="sam2_hiera_large.pt")   # strict load
    feats = sam2.encode_image(images)                       # (B, 3, 1024, 1024), "square" resize
    low_res, iou = sam2.decode_text_prompts(feats, prompts, image_index, multimask_output=False)
    logits = sam2.postprocess_masks(low_res, input_size, original_size)          # (N, 1, H, W)

Sources. The modules are those of Meta's ``sam2`` package (https://github.com/facebookresearch/sam2,
PyPI ``sam2``; ``Hiera``, ``FpnNeck``, ``ImageEncoder``, ``PositionEmbeddingSine``,
``MemoryAttention`` / ``MemoryAttentionLayer`` / ``RoPEAttention``, ``MemoryEncoder`` /
``MaskDownSampler`` / ``Fuser`` / ``CXBlock``, ``SAM2Base``), built here in Python with the values
of the package's ``configs/sam2/sam2_hiera_{l,t}.yaml`` instead of through hydra. The wiring is that
of hustvl/EVF-SAM ``model/evf_sam2.py`` (``EvfSam2Model``):

* ``build_sam2("sam2_hiera_l.yaml")`` (``sam_scale`` "large"; "tiny" -> ``sam2_hiera_t.yaml``) with
  build_sam2's default ``apply_postprocessing=True``, i.e. the mask decoder's
  ``dynamic_multimask_via_stability`` (delta 0.05, threshold 0.98): in eval mode with
  ``multimask_output=False`` a single mask whose stability score is below 0.98 is replaced by the
  best of the 3 multimask outputs. `Sam2Arch.dynamic_multimask_via_stability` switches it off.
  `EvfSam` predicts, evaluates and trains EVF-SAM2 with ``multimask_output=True`` by default (the
  official ``inference()`` and ``forward()``), where the fallback never acts, and turns it off unless
  ``EvfSamConfig.sam_stability_fallback`` is True.
* image: ``forward_image`` (Hiera + FPN neck, ``conv_s0`` / ``conv_s1`` of the mask decoder on the
  two high-resolution levels) -> ``_prepare_backbone_features`` -> features cast to the input dtype
  -> ``no_mem_embed`` added to the last level (``directly_add_no_mem_embed``) -> image embedding
  (B, 256, 64, 64) and high-resolution features (B, 32, 256, 256), (B, 64, 128, 128).
* prompt: EVF-SAM's vendored SAM-2 ``PromptEncoder`` takes ``text_embeds`` and appends them to the
  (empty) sparse embedding; the dense embedding is ``no_mask_embed`` broadcast. The stock ``sam2``
  prompt encoder has no such argument, so `decode_text_prompts` builds both directly.
* ``sam_mask_decoder(..., repeat_image=True, high_res_features=...)``; multimask output keeps the
  mask with the highest predicted IoU; the object-score head's output is not used.
* post-processing: ``F.interpolate(low_res.float(), original_size, "bilinear", align_corners=False)``
  straight to the original size (the SAM-2 input is the image stretched to S x S, no padding).

State-dict names are exactly ``SAM2Base``'s (``image_encoder.trunk.*``, ``image_encoder.neck.*``,
``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``memory_attention.*``, ``memory_encoder.*``,
``maskmem_tpos_enc``, ``no_mem_embed``, ``no_mem_pos_enc``, ``no_obj_ptr``, ``mask_downsample.*``,
``obj_ptr_proj.*``), so a SAM-2 ``.pt`` (``{"model": state_dict}``) and the ``visual_model.*``
tensors of an official EVF-SAM2 checkpoint load strictly. The video-memory modules are built (their
weights are in every checkpoint) but EVF-SAM never runs them.

``sam2`` is imported lazily (`Sam2Backend` is created on first access), so ``SAM2_CONFIGS`` and the
config validation work without it. Importing ``sam2`` initialises hydra's global config module as a
side effect; when this module is the first to import ``sam2`` it clears that again, so the
project's own hydra ``initialize_config_dir`` / ``@hydra.main`` keep working in the same process.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evf_sam.models.registry import register_sam_family
from evf_sam.models.sam_decoding import best_of_multimask, features_per_prompt
from evf_sam.models.state_dict import load_weights_strict

if TYPE_CHECKING:  # the real class is created lazily (it subclasses sam2's SAM2Base)
    from sam2.modeling.sam2_base import SAM2Base as Sam2Backend  # noqa: F401

__all__ = ["SAM2_CONFIGS", "SAM2_INSTALL", "Sam2Arch", "Sam2Backend", "build_sam2_backend",
           "load_sam2_state_dict"]

SAM2_INSTALL = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0"


@dataclass(frozen=True)
class Sam2Arch:
    """Sizes of one SAM-2 variant (the fields of ``configs/sam2/sam2_hiera_*.yaml`` that vary).

    Everything not listed here (FPN top-down levels [2, 3] with nearest interpolation, ``scalp=1``,
    4 memory-attention layers with 1-head RoPE attention, memory-encoder mask down-sampler and
    2 CXBlocks, the ``SAM2Base`` flags) is the same in every official SAM-2 config and set in
    `_build_modules`.
    """

    # Hiera trunk
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # Hiera's default (sam2_hiera_t.yaml does not set it)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    # neck / SAM heads / memory
    d_model: int = 256  # C: FPN width = image-embedding channels = prompt dim
    mem_dim: int = 64  # memory-encoder output width
    mem_attn_ffn_dim: int = 2048
    image_size: int = 1024  # S
    dynamic_multimask_via_stability: bool = True  # build_sam2(apply_postprocessing=True)

    @property
    def backbone_channel_list(self) -> list[int]:
        """Hiera's stage widths, deepest first (dim doubles at every stage)."""
        return [self.embed_dim * 2 ** i for i in reversed(range(len(self.stages)))]

    @property
    def embedding_size(self) -> int:
        """h = w of the image embedding (backbone stride 16)."""
        return self.image_size // 16


# The "sam2" family's variants (registered with `build_sam2_backend`).
SAM2_CONFIGS: dict[str, Sam2Arch] = {
    # sam2_hiera_l.yaml: the official EVF-SAM2 (config.json "sam_scale": "large")
    "sam2_hiera_l": Sam2Arch(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                             window_spec=(8, 4, 16, 8)),
    # sam2_hiera_t.yaml ("sam_scale": "tiny")
    "sam2_hiera_t": Sam2Arch(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    # Tests / quickstart: same classes and code path, toy sizes. 256 px input like the SAM "tiny":
    # 16x16 image embedding, 64x64 low-res masks. Hiera needs image_size / 4 divisible by
    # window_spec[0] (the window positional embedding is tiled over the stride-4 grid), and a global-
    # attention block must not be the first block of a stage (q-pooling divides by the window size).
    "sam2_tiny": Sam2Arch(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                          window_spec=(8, 4, 4, 2), window_pos_embed_bkg_spatial_size=(4, 4),
                          d_model=32, mem_dim=16, mem_attn_ffn_dim=64, image_size=256),
}


# ---------------------------------------------------------------------------------------------
# Lazy import of sam2


def _import_sam2() -> None:
    """Imports ``sam2`` (ImportError with the install command if missing), undoing its hydra side effect."""
    if "sam2.modeling.sam2_base" in sys.modules:
        return
    try:
        from hydra.core.global_hydra import GlobalHydra
    except ImportError:  # sam2 needs hydra; the import below reports the real problem
        GlobalHydra = None
    hydra_was_on = GlobalHydra is not None and GlobalHydra.instance().is_initialized()
    first = "sam2" not in sys.modules
    try:
        importlib.import_module("sam2.modeling.sam2_base")  # sam2/__init__ initialises hydra's config module
    except ImportError as e:
        raise ImportError(f"the SAM-2 backend needs Meta's `sam2` package ({e}); install it with: "
                          f"{SAM2_INSTALL}") from e
    if first and GlobalHydra is not None and not hydra_was_on and GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()


_BACKEND_CLASS: type | None = None


def __getattr__(name: str) -> Any:  # PEP 562: `Sam2Backend` is created on first access
    if name == "Sam2Backend":
        return _backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _backend_class() -> type:
    global _BACKEND_CLASS
    if _BACKEND_CLASS is None:
        _import_sam2()
        from sam2.modeling.sam2_base import SAM2Base

        _BACKEND_CLASS = type("Sam2Backend", (_Sam2BackendMixin, SAM2Base), {
            "__module__": __name__, "__qualname__": "Sam2Backend", "__doc__": _Sam2BackendMixin.__doc__})
    return _BACKEND_CLASS


# ---------------------------------------------------------------------------------------------
# Building


def _default_device_is_meta() -> bool:
    return torch.empty(()).device.type == "meta"


@contextmanager
def _meta_safe() -> Iterator[None]:
    """Lets Hiera be built under ``torch.device("meta")``: its stochastic-depth schedule calls
    ``torch.linspace(...)[i].item()``, which a meta tensor cannot answer; that one call runs on CPU."""
    from torch.overrides import TorchFunctionMode

    class _LinspaceOnCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.linspace and kwargs.get("device") is None:
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    with _LinspaceOnCpu():
        yield


def _build_modules(arch: Sam2Arch) -> dict[str, nn.Module]:
    """image_encoder, memory_attention, memory_encoder: the values of configs/sam2/sam2_hiera_*.yaml."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention

    c, feat = arch.d_model, [arch.embedding_size, arch.embedding_size]
    image_encoder = ImageEncoder(
        scalp=1,
        trunk=Hiera(embed_dim=arch.embed_dim, num_heads=arch.num_heads, stages=tuple(arch.stages),
                    global_att_blocks=tuple(arch.global_att_blocks),
                    window_pos_embed_bkg_spatial_size=tuple(arch.window_pos_embed_bkg_spatial_size),
                    window_spec=tuple(arch.window_spec)),
        neck=FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=c, normalize=True, scale=None,
                                                             temperature=10000),
                     d_model=c, backbone_channel_list=arch.backbone_channel_list, fpn_top_down_levels=[2, 3],
                     fpn_interp_model="nearest"),
    )
    memory_attention = MemoryAttention(
        d_model=c, pos_enc_at_input=True, num_layers=4,
        layer=MemoryAttentionLayer(
            activation="relu", dim_feedforward=arch.mem_attn_ffn_dim, dropout=0.1, pos_enc_at_attn=False,
            d_model=c, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
            self_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=feat, embedding_dim=c, num_heads=1,
                                         downsample_rate=1, dropout=0.1),
            cross_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=feat, rope_k_repeat=True,
                                          embedding_dim=c, num_heads=1, downsample_rate=1, dropout=0.1,
                                          kv_in_dim=arch.mem_dim),
        ),
    )
    memory_encoder = MemoryEncoder(
        out_dim=arch.mem_dim, in_dim=c,
        position_encoding=PositionEmbeddingSine(num_pos_feats=arch.mem_dim, normalize=True, scale=None,
                                                temperature=10000),
        mask_downsampler=MaskDownSampler(embed_dim=c, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(layer=CXBlock(dim=c, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=2),
    )
    return {"image_encoder": image_encoder, "memory_attention": memory_attention, "memory_encoder": memory_encoder}


# SAM2Base arguments of configs/sam2/sam2_hiera_{t,s,b+,l}.yaml (identical in all four).
_SAM2BASE_FLAGS: dict[str, Any] = dict(
    num_maskmem=7, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
    use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, use_high_res_features_in_sam=True,
    multimask_output_in_sam=True, iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
    add_tpos_enc_to_obj_ptrs=False, only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True,
    pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
    use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
    use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False,
)


class _Sam2BackendMixin:
    """SAM-2 (``SAM2Base``, same state-dict names) with EVF-SAM's text-prompt interface.

    Attributes (``SAM2Base``'s): ``image_encoder`` (Hiera + FPN neck; frozen by EVF-SAM),
    ``sam_prompt_encoder``, ``sam_mask_decoder``, ``no_mem_embed``, memory modules (unused).
    ``arch``: the `Sam2Arch` it was built from.
    """

    resize_mode: str = "square"  # ResizeLongestSide(S) then stretched to S x S (no padding)

    def __init__(self, arch: Sam2Arch) -> None:
        meta = _default_device_is_meta()
        with _meta_safe() if meta else nullcontext():
            modules = _build_modules(arch)
        extra = None
        if arch.dynamic_multimask_via_stability:
            extra = dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                         dynamic_multimask_stability_thresh=0.98)
        super().__init__(**modules, image_size=arch.image_size, sam_mask_decoder_extra_args=extra,
                         **_SAM2BASE_FLAGS)
        self.arch = arch
        if meta:  # RoPE tables are plain attributes, not buffers: keep real ones for a later load
            for mod in self.memory_attention.modules():
                if hasattr(mod, "compute_cis") and hasattr(mod, "freqs_cis"):
                    with torch.device("cpu"):
                        mod.freqs_cis = mod.compute_cis(end_x=arch.embedding_size, end_y=arch.embedding_size)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def prompt_dim(self) -> int:
        """C: width of the sparse prompt (the projector's output) and of the image embedding."""
        return int(self.sam_prompt_embed_dim)

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        """(h, w) of the image embedding; low-res masks are (4h, 4w)."""
        h, w = self.sam_prompt_encoder.image_embedding_size
        return int(h), int(w)

    # `image_size` (S) is SAM2Base's own attribute.

    def _apply(self, fn, recurse: bool = True):
        """Dtype/device moves keep the prompt encoder's random-PE matrix in float32: sam2's
        ``PositionEmbeddingRandom`` multiplies a float32 grid by it (fails in bf16 / fp16); the dense
        PE is cast to the embeddings' dtype in `decode_text_prompts`."""
        super()._apply(fn, recurse)
        self._keep_pe_float32()
        return self

    def _keep_pe_float32(self) -> None:
        pe = self.sam_prompt_encoder.pe_layer
        if pe.positional_encoding_gaussian_matrix.dtype != torch.float32:
            pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()

    # -- EVF-SAM protocol ---------------------------------------------------------------------

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``forward_image`` + ``_prepare_backbone_features`` + ``no_mem_embed`` (official EVF-SAM2).

        images: (B, 3, S, S) normalised, stretched to S x S
        -> (image_embed (B, C, h, w), high_res_0 (B, C/8, 4h, 4w), high_res_1 (B, C/4, 2h, 2w))

        The Hiera + FPN image encoder runs without autograd when its parameters are frozen; the
        mask decoder's ``conv_s0`` / ``conv_s1`` (applied here, as in ``forward_image``) and
        ``no_mem_embed`` keep theirs, so they train when the mask decoder does.
        """
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")
        frozen = not any(p.requires_grad for p in self.image_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            backbone_out = self.image_encoder(images)
        fpn = list(backbone_out["backbone_fpn"])  # forward_image, split around the no_grad above
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        backbone_out["backbone_fpn"] = fpn
        _, feats, _, sizes = self._prepare_backbone_features(backbone_out)
        feats = [f.to(images.dtype) for f in feats]
        if self.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.no_mem_embed
        b = images.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        return maps[-1], maps[0], maps[1]

    def decode_text_prompts(self, image_features: tuple[Tensor, Tensor, Tensor], prompts: Tensor,
                            image_index: Tensor | None = None, multimask_output: bool = False
                            ) -> tuple[Tensor, Tensor]:
        """One ``sam_mask_decoder`` call for N text prompts against their images.

        image_features: `encode_image`'s tuple for B images; prompts: (N, 1, C) projected BEiT-3
        features (the sparse prompt); image_index: (N,) long, image of each prompt (None: N == B).
        -> low-res logits (N, 1, 4h, 4w), predicted IoU (N, 1). ``multimask_output=True`` keeps the
        best of the 3 multimask outputs by predicted IoU (official).
        """
        image_embed, hr0, hr1 = image_features
        if prompts.dim() != 3 or prompts.shape[-1] != self.prompt_dim:
            raise ValueError(f"prompts must be (N, k, {self.prompt_dim}), got {tuple(prompts.shape)}")
        n = prompts.shape[0]
        image_embed, hr0, hr1 = features_per_prompt(image_index, n, image_embed, hr0, hr1)
        dtype = image_embed.dtype
        self._keep_pe_float32()  # e.g. after a load_state_dict(assign=True) of a half-precision file
        h, w = self.image_embedding_size
        # EVF-SAM's prompt encoder: empty sparse embedding + text_embeds; dense = no_mask_embed broadcast
        sparse = prompts.to(dtype)
        dense = self.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w).to(dtype)
        masks, iou, _, _ = self.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,  # already one image embedding per prompt
            high_res_features=[hr0, hr1],
        )
        if multimask_output:  # sam_mask_decoder returned its 3 multimask outputs
            masks, iou = best_of_multimask(masks, iou)
        return masks, iou

    def postprocess_masks(self, low_res: Tensor, input_size: tuple[int, int] | None,
                          original_size: tuple[int, int]) -> Tensor:
        """Official EVF-SAM2: float32, bilinear (align_corners=False) straight to ``original_size``.

        ``input_size`` is unused (no padding to crop under the "square" resize); kept for the protocol.
        low_res: (N, 1, 4h, 4w) -> (N, 1, H, W) logits (mask = logits > 0)
        """
        return F.interpolate(low_res.float(), tuple(int(x) for x in original_size), mode="bilinear",
                             align_corners=False)


@register_sam_family("sam2", resize_mode=_Sam2BackendMixin.resize_mode, variants=SAM2_CONFIGS)
def build_sam2_backend(variant: str, checkpoint: str | Path | None = None) -> nn.Module:
    """Builds a SAM-2 variant (``SAM2_CONFIGS``) as a `Sam2Backend`, in eval mode.

    ``checkpoint``: a SAM-2 ``.pt`` (``{"model": state_dict}``, e.g. ``sam2_hiera_large.pt``) or a
    state dict, loaded strictly (`load_sam2_state_dict`). Works under ``torch.device("meta")``.
    """
    if variant not in SAM2_CONFIGS:
        raise ValueError(f"unknown SAM-2 variant {variant!r}; choose one of {', '.join(SAM2_CONFIGS)}")
    model = _backend_class()(SAM2_CONFIGS[variant])
    model.eval()
    if checkpoint is not None:
        load_sam2_state_dict(model, checkpoint, what=f"SAM-2 {variant} checkpoint {str(checkpoint)!r}")
    return model


def load_sam2_state_dict(model: nn.Module, state_dict_or_path: Mapping[str, Tensor] | str | Path, *,
                         what: str = "SAM-2 state dict") -> None:
    """Strictly loads SAM-2 weights (``SAM2Base`` names) from a ``.pt`` path or a state dict.

    A ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped. Missing, unexpected and
    mis-shaped tensors raise `StateDictMismatchError` naming each; nothing is copied then. Values
    are cast to the model's dtype.
    """
    load_weights_strict(model, state_dict_or_path, what=what,
                        expected="a SAM-2 .pt file with the state dict under 'model'")
    if isinstance(model, _Sam2BackendMixin):
        model._keep_pe_float32()
