"""Multimodal prompt encoders behind one interface: the paper's encoder / fusion / feature axes.

    adapter = build_prompt_encoder("beit3_large", fusion="early", feature="image_cls")
    feats = adapter(text_ids=ids, text_padding_mask=pad, image=beit_images)   # (N, adapter.feature_dim)

`EvfSam` projects ``feats`` to one sparse SAM prompt; the projector's input width is
``adapter.feature_dim``, computed here from the built model (never written in YAML).

Encoders (paper Tab. 1) and the fusions each supports (Tab. 3):

    beit3_large / beit3_base   our BEiT-3 (evf_sam.models.beit3)   text, late, early, early_k
    clip_large(_openclip) / clip_huge  transformers CLIPModel      text, late
    vilt                       transformers ViltModel              text, late, early

Inputs, for every encoder:
    text_ids           (N, T) long, tokenised with the encoder's own tokenizer (see
                       `load_encoder_tokenizer`: XLM-R sentencepiece for BEiT-3, CLIP BPE,
                       BERT WordPiece for ViLT), at most ``adapter.max_text_len`` tokens
    text_padding_mask  (N, T) bool, True = padding
    image              (N, 3, H, W) in the BEiT-3 normalisation (mean = std = 0.5), i.e. the
                       data pipeline's ``Batch.beit_images``; CLIP / ViLT adapters re-normalise
                       to their own statistics and resize to ``adapter.image_size`` if H differs

Impossible combinations (CLIP with early fusion, text-only fusion with an image feature, ...) raise
``ValueError`` at build time, naming the clashing options and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evf_sam.models.beit3 import BEIT3_CONFIGS, BEiT3, BEiT3Config
from evf_sam.models.features import FUSIONS, feature_dim, pool_tokens, resolve_feature
from evf_sam.models.registry import encoder_family_of, register_encoder_family

# ---------------------------------------------------------------------------------------------
# Variants: each encoder is declared once, in its family's table (BEiT-3: beit3.BEIT3_CONFIGS), and
# each family registers its builder with that table (models/registry.py) below.

# CLIPConfig keyword arguments (text_config / vision_config / projection_dim) of the public checkpoints.
CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "clip_large": dict(  # OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14)
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=768,
    ),
    "clip_large_openclip": dict(  # OpenCLIP ViT-L/14 (laion/CLIP-ViT-L-14-laion2B-s32B-b82K), paper Tab. 3 ‡
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act="gelu"),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=768,
    ),
    "clip_huge": dict(  # OpenCLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
        text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         max_position_embeddings=77, hidden_act="gelu"),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=1024,
    ),
    "clip_tiny": dict(  # tests
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=32, vocab_size=256, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24,
    ),
}
# OpenAI CLIP statistics, also used by the OpenCLIP ViT-H/14 LAION checkpoints.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ViltConfig keyword arguments; ViltConfig() defaults are dandelin/vilt-b32-mlm.
VILT_PRESETS: dict[str, dict[str, Any]] = {
    "vilt": dict(),  # ViLT-B/32 (dandelin/vilt-b32-mlm)
    "vilt_tiny": dict(  # tests
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, vocab_size=256, max_position_embeddings=32),
}
VILT_MEAN = (0.5, 0.5, 0.5)
VILT_STD = (0.5, 0.5, 0.5)

BEIT3_MEAN = (0.5, 0.5, 0.5)  # the normalisation of the `image` argument (Batch.beit_images)
BEIT3_STD = (0.5, 0.5, 0.5)


def encoder_kind(encoder: str) -> str:
    """Family of an encoder name (``"clip_large"`` -> ``"clip"``); family names map to themselves."""
    return encoder_family_of(encoder).name


def check_combination(
    encoder: str, fusion: str, feature: str | None = None, fused_layers: int | None = None,
    depth: int | None = None,
) -> str:
    """Validates encoder × fusion × feature (× fused_layers) and returns the resolved feature.

    Raises ``ValueError`` naming the clashing options and what is allowed.
    """
    family = encoder_family_of(encoder)
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    allowed = family.fusions
    if fusion not in allowed:
        raise ValueError(
            f"fusion={fusion!r} is not possible with encoder={encoder!r}: {family.no_fusion_why}; "
            f"allowed fusions for encoder={encoder!r}: {', '.join(allowed)}"
        )
    if fusion == "early_k":
        if fused_layers is None:
            raise ValueError("fusion='early_k' needs fused_layers=K (cross-modal attention in layers 1..K)")
        if fused_layers < 1 or (depth is not None and fused_layers > depth):
            hi = depth if depth is not None else "depth"
            raise ValueError(
                f"fused_layers={fused_layers} is out of range for encoder={encoder!r}: allowed 1..{hi} "
                f"(fused_layers={hi} is the same as fusion='early')"
            )
    elif fused_layers is not None:
        raise ValueError(
            f"fused_layers={fused_layers} clashes with fusion={fusion!r}: fused_layers is only used by "
            f"fusion='early_k'"
        )
    return resolve_feature(fusion, feature)


# ---------------------------------------------------------------------------------------------
# The interface


class PromptEncoderAdapter(nn.Module):
    """A multimodal encoder that turns (text, image) into one prompt feature per expression.

    Attributes (set by every implementation):
        encoder_name: registry name, e.g. "beit3_large" (not `encoder`: BEiT-3 has an `encoder` submodule)
        kind: "beit3" | "clip" | "vilt"
        fusion, feature: the ablation-axis values this adapter was built with
        width: token width D of the encoder
        feature_dim: width of the returned feature (D, or 2D for "concat"); the projector's input width
        image_size, image_mean, image_std: what the encoder wants (the adapter converts from BEiT-3 input)
        max_text_len: longest token sequence the encoder accepts, special tokens included (BEiT-3:
            its text position table minus the 2 unused fairseq rows; CLIP / ViLT: their position table)
    """

    encoder_name: str
    kind: str
    fusion: str
    feature: str
    width: int
    feature_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    max_text_len: int  # BEiT-3: `BEiT3.max_text_len`

    def _set_axes(self, *, encoder: str, kind: str, fusion: str, feature: str, width: int,
                  image_size: int, image_mean, image_std) -> None:
        self.encoder_name, self.kind, self.fusion, self.feature = encoder, kind, fusion, feature
        self.width = width
        self.feature_dim = feature_dim(feature, width)
        self.image_size = int(image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def prepare_image(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) BEiT-3-normalised -> (N, 3, S, S) in this encoder's normalisation and size."""
        if tuple(self.image_mean) != BEIT3_MEAN or tuple(self.image_std) != BEIT3_STD:
            mean_in = image.new_tensor(BEIT3_MEAN).view(1, 3, 1, 1)
            std_in = image.new_tensor(BEIT3_STD).view(1, 3, 1, 1)
            mean = image.new_tensor(self.image_mean).view(1, 3, 1, 1)
            std = image.new_tensor(self.image_std).view(1, 3, 1, 1)
            image = (image * std_in + mean_in - mean) / std  # back to [0, 1], then to ours
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bicubic",
                                  align_corners=False)
        return image

    def forward(self, *, text_ids: Tensor, text_padding_mask: Tensor, image: Tensor) -> Tensor:
        """(N, T) long, (N, T) bool (True = pad), (N, 3, H, W) -> (N, feature_dim)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"encoder={self.encoder_name}, fusion={self.fusion}, feature={self.feature}, "
                f"feature_dim={self.feature_dim}")


# ---------------------------------------------------------------------------------------------
# BEiT-3


class BEiT3PromptEncoder(BEiT3, PromptEncoderAdapter):
    """Our BEiT-3 with a fusion mode and a feature read-out.

    It *is* a `BEiT3` (subclass, no wrapper), so its parameter names are torchscale's, unchanged:
    `EvfSam.encoder.*` keeps mapping to the official `mm_extractor.beit3.*`, and BEiT-3 `.pth` files
    load as before. ``fusion="early_k"`` is `BEiT3Config.fused_layers = K`.
    """

    def __init__(self, config: BEiT3Config, *, encoder: str = "beit3", fusion: str = "early",
                 feature: str | None = None):
        feature = check_combination(encoder, fusion, feature, config.fused_layers if fusion == "early_k" else None,
                                    depth=config.depth)
        if fusion != "early_k" and config.fused_layers is not None:
            raise ValueError(
                f"BEiT3Config.fused_layers={config.fused_layers} clashes with fusion={fusion!r}: "
                f"use fusion='early_k' with fused_layers={config.fused_layers}"
            )
        super().__init__(config)
        self._set_axes(encoder=encoder, kind="beit3", fusion=fusion, feature=feature, width=config.embed_dim,
                       image_size=config.img_size, image_mean=BEIT3_MEAN, image_std=BEIT3_STD)

    def forward(self, *, text_ids: Tensor, text_padding_mask: Tensor, image: Tensor) -> Tensor:
        """(N, T), (N, T), (N, 3, S, S) -> (N, feature_dim)."""
        encode = super().forward  # BEiT3.forward -> BEiT3Output
        if self.fusion == "text":
            out = encode(text_ids=text_ids, text_padding_mask=text_padding_mask)
            return pool_tokens(self.feature, text_tokens=out.hidden)
        if self.fusion == "late":
            img = encode(image=image).hidden  # (N, 1 + P, D), no text in the sequence
            txt = encode(text_ids=text_ids, text_padding_mask=text_padding_mask).hidden  # (N, T, D)
            return pool_tokens(self.feature, image_tokens=img, text_tokens=txt)
        out = encode(text_ids=text_ids, text_padding_mask=text_padding_mask, image=image)
        s = out.multiway_split_position  # vision tokens first ([CLS] at 0), then text
        return pool_tokens(self.feature, image_tokens=out.hidden[:, :s], text_tokens=out.hidden[:, s:])


@register_encoder_family("beit3", fusions=FUSIONS, variants=BEIT3_CONFIGS)
def _build_beit3(encoder: str, *, fusion: str, feature: str | None, fused_layers: int | None,
                 pretrained: str | Path | None, overrides: dict | None) -> BEiT3PromptEncoder:
    if pretrained is not None:
        raise ValueError("pretrained= is for CLIP / ViLT directories; BEiT-3 weights come with an EVF-SAM "
                         "checkpoint (EvfSam.from_pretrained) or a BEiT-3 .pth (build_evf_sam(encoder_checkpoint=))")
    overrides = dict(overrides or {})
    if "fused_layers" in overrides:
        raise ValueError("set fused_layers through fusion='early_k' + fused_layers=K, not through overrides")
    if encoder not in BEIT3_CONFIGS:
        raise ValueError(f"unknown BEiT-3 encoder {encoder!r}; choose one of {', '.join(BEIT3_CONFIGS)}")
    base = dataclasses.replace(BEIT3_CONFIGS[encoder], **overrides)
    check_combination(encoder, fusion, feature, fused_layers, depth=base.depth)
    config = dataclasses.replace(base, fused_layers=fused_layers)
    return BEiT3PromptEncoder(config, encoder=encoder, fusion=fusion, feature=feature)


# ---------------------------------------------------------------------------------------------
# CLIP (late fusion at most: two towers)


class CLIPPromptEncoder(PromptEncoderAdapter):
    """transformers CLIP towers; features are the projected global embeddings (joint CLIP space).

    ``text_cls`` is CLIP's pooled text embedding (the EOS token, projected); ``concat`` is
    text ⊕ image embedding. Only the towers a fusion uses are kept (no unused parameters).
    """

    def __init__(self, model: nn.Module, *, encoder: str, fusion: str, feature: str | None,
                 image_mean=CLIP_MEAN, image_std=CLIP_STD):
        super().__init__()
        feature = check_combination(encoder, fusion, feature)
        config = model.config
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        if fusion == "late":
            self.vision_model = model.vision_model
            self.visual_projection = model.visual_projection
        self._set_axes(encoder=encoder, kind="clip", fusion=fusion, feature=feature, width=config.projection_dim,
                       image_size=config.vision_config.image_size, image_mean=image_mean, image_std=image_std)
        self.max_text_len = int(config.text_config.max_position_embeddings)  # <|startoftext|> ... <|endoftext|>

    def forward(self, *, text_ids: Tensor, text_padding_mask: Tensor, image: Tensor) -> Tensor:
        """(N, T), (N, T), (N, 3, H, W) -> (N, feature_dim)."""
        text = self.text_model(input_ids=text_ids, attention_mask=(~text_padding_mask).long()).pooler_output
        text = self.text_projection(text)[:, None]  # (N, 1, D)
        img = None
        if self.fusion == "late":
            pooled = self.vision_model(pixel_values=self.prepare_image(image)).pooler_output
            img = self.visual_projection(pooled)[:, None]  # (N, 1, D)
        return pool_tokens(self.feature, text_tokens=text, image_tokens=img)


@register_encoder_family("clip", fusions=("text", "late"), variants=CLIP_PRESETS,  # two towers
                         no_fusion_why="CLIP encodes image and text in two separate towers, so there is no "
                                       "cross-modal attention")
def _build_clip(encoder: str, *, fusion: str, feature: str | None, fused_layers: int | None,
                pretrained: str | Path | None, overrides: dict | None) -> CLIPPromptEncoder:
    from transformers import CLIPConfig, CLIPModel

    check_combination(encoder, fusion, feature, fused_layers)  # fail before loading weights
    mean, std = CLIP_MEAN, CLIP_STD
    if pretrained is not None:
        if overrides:
            raise ValueError(f"overrides={overrides} clash with pretrained={str(pretrained)!r}: the checkpoint's "
                             "config.json fixes the architecture")
        model = CLIPModel.from_pretrained(str(pretrained))
        mean, std = _preprocessor_stats(pretrained, mean, std)
    else:
        kwargs = _merge(CLIP_PRESETS[encoder], _image_overrides("clip", overrides))
        model = CLIPModel(CLIPConfig(**kwargs))
    return CLIPPromptEncoder(model, encoder=encoder, fusion=fusion, feature=feature, image_mean=mean, image_std=std)


# ---------------------------------------------------------------------------------------------
# ViLT (single stream: early fusion by construction)


class ViltPromptEncoder(PromptEncoderAdapter):
    """transformers ViltModel. Its sequence is text first, then image ([CLS_img] + patches).

    ``early`` is exactly ViltModel's forward (without the pooler); ``text`` / ``late`` run the same
    embeddings and transformer on one modality at a time.
    """

    def __init__(self, model: nn.Module, *, encoder: str, fusion: str, feature: str | None,
                 image_mean=VILT_MEAN, image_std=VILT_STD):
        super().__init__()
        feature = check_combination(encoder, fusion, feature)
        self.model = model
        config = model.config
        self._set_axes(encoder=encoder, kind="vilt", fusion=fusion, feature=feature, width=config.hidden_size,
                       image_size=config.image_size, image_mean=image_mean, image_std=image_std)
        self.max_text_len = int(config.max_position_embeddings)  # [CLS] ... [SEP]

    def _text_embed(self, text_ids: Tensor, text_padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.model.embeddings
        x = emb.text_embeddings(input_ids=text_ids)  # (N, T, D)
        x = x + emb.token_type_embeddings(torch.zeros_like(text_ids))  # modality 0 = text
        return x, (~text_padding_mask).long()

    def _image_embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.model.embeddings
        pixels = self.prepare_image(image)
        pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long, device=pixels.device)
        x, mask, _ = emb.visual_embed(pixels, pixel_mask, max_image_length=self.model.config.max_image_length)
        x = x + emb.token_type_embeddings(torch.ones_like(mask, dtype=torch.long))  # modality 1 = image
        return x, mask.long()  # (N, 1 + P, D), (N, 1 + P)

    def _encode(self, x: Tensor, mask: Tensor) -> Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(config=self.model.config, inputs_embeds=x, attention_mask=mask)
        h = self.model.encoder(x, attention_mask=attn).last_hidden_state
        return self.model.layernorm(h)

    def forward(self, *, text_ids: Tensor, text_padding_mask: Tensor, image: Tensor) -> Tensor:
        """(N, T), (N, T), (N, 3, H, W) -> (N, feature_dim)."""
        if self.fusion == "text":
            return pool_tokens(self.feature, text_tokens=self._encode(*self._text_embed(text_ids, text_padding_mask)))
        if self.fusion == "late":
            txt = self._encode(*self._text_embed(text_ids, text_padding_mask))
            img_x, img_mask = self._image_embed(image)
            img = self._encode(img_x, img_mask)
            return pool_tokens(self.feature, text_tokens=txt, image_tokens=img, patch_mask=img_mask[:, 1:].bool())
        tx, tmask = self._text_embed(text_ids, text_padding_mask)
        ix, imask = self._image_embed(image)
        h = self._encode(torch.cat([tx, ix], dim=1), torch.cat([tmask, imask], dim=1))  # (N, T + 1 + P, D)
        t = text_ids.shape[1]
        return pool_tokens(self.feature, text_tokens=h[:, :t], image_tokens=h[:, t:], patch_mask=imask[:, 1:].bool())


@register_encoder_family("vilt", fusions=("text", "late", "early"), variants=VILT_PRESETS,  # one stream
                         no_fusion_why="ViLT has no per-layer fusion switch (only BEiT-3 implements fused_layers)")
def _build_vilt(encoder: str, *, fusion: str, feature: str | None, fused_layers: int | None,
                pretrained: str | Path | None, overrides: dict | None) -> ViltPromptEncoder:
    from transformers import ViltConfig, ViltModel

    check_combination(encoder, fusion, feature, fused_layers)
    mean, std = VILT_MEAN, VILT_STD
    if pretrained is not None:
        if overrides:
            raise ValueError(f"overrides={overrides} clash with pretrained={str(pretrained)!r}: the checkpoint's "
                             "config.json fixes the architecture")
        model = ViltModel.from_pretrained(str(pretrained), add_pooling_layer=False)
        mean, std = _preprocessor_stats(pretrained, mean, std)
    else:
        model = ViltModel(ViltConfig(**_merge(VILT_PRESETS[encoder], _image_overrides("vilt", overrides))),
                          add_pooling_layer=False)
    return ViltPromptEncoder(model, encoder=encoder, fusion=fusion, feature=feature, image_mean=mean, image_std=std)


# ---------------------------------------------------------------------------------------------
# Builder


def build_prompt_encoder(
    encoder: str = "beit3_large",
    *,
    fusion: str = "early",
    feature: str | None = None,
    fused_layers: int | None = None,
    pretrained: str | Path | None = None,
    overrides: dict | None = None,
) -> PromptEncoderAdapter:
    """Builds the prompt encoder for one point of the ablation grid.

    Args:
        encoder: registered name (`registry.encoder_names()`): beit3_large, beit3_base, clip_large,
            clip_huge, vilt, *_tiny.
        fusion: "text" | "late" | "early" | "early_k".
        feature: "image_cls" | "text_cls" | "image_avg" | "concat"; None = the fusion's default
            (text -> text_cls, late -> concat, early / early_k -> image_cls).
        fused_layers: K for fusion="early_k" (cross-modal attention in the first K layers).
        pretrained: CLIP / ViLT: a local transformers directory (`from_pretrained`). BEiT-3 weights are
            not loaded here: they come with an EVF-SAM checkpoint (`EvfSam.from_pretrained`) or a
            BEiT-3 .pth (`build_evf_sam(encoder_checkpoint=...)`, `beit3.load_beit3_state_dict`).
        overrides: architecture overrides for tiny models (BEiT3Config fields; CLIPConfig / ViltConfig kwargs,
            where BEiT3Config's ``img_size`` / ``patch_size`` also set the CLIP / ViLT image tower's).
    """
    return encoder_family_of(encoder).build(encoder, fusion=fusion, feature=feature, fused_layers=fused_layers,
                                            pretrained=pretrained, overrides=overrides)


def with_vocab_size(encoder: str, overrides: dict | None, vocab_size: int) -> dict:
    """``overrides`` + a text embedding of ``vocab_size`` rows (a tiny tokenizer's length) where the
    encoder's family keeps it: BEiT-3 / ViLT ``vocab_size``, CLIP ``text_config.vocab_size``. A size
    already in ``overrides`` wins."""
    out = copy.deepcopy(dict(overrides or {}))
    if encoder_kind(encoder) == "clip":
        text = dict(out.get("text_config") or {})
        text.setdefault("vocab_size", int(vocab_size))
        out["text_config"] = text
    else:
        out.setdefault("vocab_size", int(vocab_size))
    return out


def _image_overrides(kind: str, overrides: dict | None) -> dict:
    """BEiT3Config's ``img_size`` / ``patch_size`` keys (the pilot recipe sets them for whichever tiny
    encoder it trains) as the image tower's own: CLIP ``vision_config.image_size`` / ``patch_size``,
    ViLT ``image_size`` / ``patch_size``."""
    out = copy.deepcopy(dict(overrides or {}))
    img_size, patch_size = out.pop("img_size", None), out.get("patch_size")
    if kind == "clip":
        out.pop("patch_size", None)
        vision = dict(out.get("vision_config") or {})
        if img_size is not None:
            vision.setdefault("image_size", img_size)
        if patch_size is not None:
            vision.setdefault("patch_size", patch_size)
        if vision:
            out["vision_config"] = vision
    elif img_size is not None:
        out.setdefault("image_size", img_size)
    return out


def _merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge (overrides win); nested dicts (text_config / vision_config) merge key by key."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _preprocessor_stats(path: str | Path, mean, std):
    """image_mean / image_std from a transformers `preprocessor_config.json`, if the directory has one."""
    f = Path(path) / "preprocessor_config.json"
    if f.is_file():
        cfg = json.loads(f.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return mean, std


# ---------------------------------------------------------------------------------------------
# Tokenisation per encoder


def load_encoder_tokenizer(encoder: str, path: str | Path):
    """The tokenizer an encoder was pre-trained with, from a local directory.

    beit3: XLM-R sentencepiece (`evf_sam.tokenizer.load_tokenizer`, the official EVF-SAM files)
    clip:  CLIP byte-level BPE (vocab.json + merges.txt, e.g. the openai/clip-vit-large-patch14 dir)
    vilt:  BERT WordPiece, uncased (vocab.txt, e.g. the dandelin/vilt-b32-mlm dir)
    """
    kind = encoder_kind(encoder)
    if kind == "beit3":
        from evf_sam.tokenizer import load_tokenizer

        return load_tokenizer(path)
    if kind == "clip":
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(path))
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(path))


def tokenize_for_encoder(encoder: str, tokenizer, prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Prompts -> ids (N, T) long, padding mask (N, T) bool (True = pad); right padding, truncation.

    BEiT-3 goes through `evf_sam.tokenizer.tokenize` (the one used for inference and training); CLIP
    and ViLT use their tokenizer's own special tokens (CLIP: <|startoftext|> ... <|endoftext|>;
    ViLT: [CLS] ... [SEP]). ``max_length`` must not exceed the adapter's ``max_text_len``.
    """
    if encoder_kind(encoder) == "beit3":
        from evf_sam.tokenizer import tokenize

        return tokenize(tokenizer, prompts, max_length)
    from evf_sam.prompts import check_prompt

    for i, p in enumerate(prompts):
        check_prompt(p, f"prompt {i}")
    enc = tokenizer(list(prompts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].long(), ~enc["attention_mask"].bool()
