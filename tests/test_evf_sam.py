"""EvfSam: SAM registry, architecture vs the official tensor lists, decoding == segment-anything."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evf_sam.models.beit3 import BEiT3
from evf_sam.models.checkpoint import to_official_name
from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam
from evf_sam.models.projector import Projector
from evf_sam.models.sam import SAM_CONFIGS, build_sam
from evf_sam.testing import build_tiny_model, tiny_inputs

ROOT = Path(__file__).resolve().parents[1]
# The official checkpoints' tensor names and shapes (facts, no weights), committed beside the tests;
# copies of ../shared/reference/evf_sam_{large,base}_keys.tsv (described in ../shared/reference/FORMATS.md).
FIXTURES = Path(__file__).parent / "fixtures"
TSV = {"large": FIXTURES / "evf_sam_large_keys.tsv", "base": FIXTURES / "evf_sam_base_keys.tsv"}
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"


def _read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            out[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def model() -> EvfSam:
    return build_tiny_model(seed=0)


# ---------------------------------------------------------------------------------------------
# SAM registry


@pytest.mark.parametrize("variant", sorted(SAM_CONFIGS))
def test_sam_registry(variant):
    if variant == "tiny":
        sam = build_sam("tiny")
        assert sam.image_encoder.img_size == 256 and sam.prompt_encoder.image_embedding_size == (16, 16)
        image = torch.rand(3, 200, 256) * 255  # segment-anything's own end-to-end path, no prompts
        with torch.no_grad():
            out = sam([{"image": image, "original_size": (100, 128)}], multimask_output=False)[0]
        assert out["low_res_logits"].shape == (1, 1, 64, 64) and out["masks"].shape == (1, 1, 100, 128)
        assert torch.isfinite(out["low_res_logits"]).all()
        return
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_sam(variant)
        ref = sam_model_registry[variant]()
    assert _shapes(ours) == _shapes(ref)
    assert ours.image_encoder.img_size == 1024
    if variant == "vit_h":  # both official releases (BEiT-3-Large and -Base) use SAM ViT-H
        for scale in ("large", "base"):
            official = {k: v for k, v in _read_tsv(TSV[scale]).items() if k.startswith("visual_model.")}
            assert _shapes(ours, "visual_model.") == official


@pytest.mark.parametrize("scale", ["large", "base"])
def test_committed_tensor_lists_are_the_reference(scale):
    """The committed lists are complete (../shared/reference/FORMATS.md's counts) and, where the shared reference
    directory sits beside the repository (../shared/reference), byte-identical to it."""
    official = _read_tsv(TSV[scale])
    n_tensors, n_params = {"large": (1569, 1_315_105_328), "base": (1089, 862_865_712)}[scale]
    assert len(official) == n_tensors
    assert sum(math.prod(shape) for shape in official.values()) == n_params
    shared = SHARED_REFERENCE / TSV[scale].name
    if SHARED_REFERENCE.is_dir():
        assert shared.read_bytes() == TSV[scale].read_bytes(), f"{TSV[scale]} differs from {shared}"


@pytest.mark.parametrize("scale,encoder", [("large", "beit3_large"), ("base", "beit3_base")])
def test_full_model_matches_official_tensor_list(scale, encoder):
    official = _read_tsv(TSV[scale])
    with torch.device("meta"):
        m = build_evf_sam(EvfSamConfig(sam_variant="vit_h", encoder=encoder))
    ours = {to_official_name(k): tuple(v.shape) for k, v in m.state_dict().items()}
    assert sorted(set(ours) ^ set(official)) == []
    assert ours == official
    n_params = sum(v.numel() for v in m.state_dict().values())
    assert n_params == {"large": 1_315_105_328, "base": 862_865_712}[scale]  # ../shared/reference/FORMATS.md
    assert m.sam_image_size == 1024 and m.beit_image_size == 224 and m.config.out_dim == 256


def test_unknown_variant_and_clashing_out_dim():
    with pytest.raises(ValueError, match="unknown sam_variant"):
        EvfSamConfig(sam_variant="vit_x")
    with pytest.raises(ValueError, match="out_dim=256 clashes"):
        build_evf_sam(EvfSamConfig(sam_variant="tiny", encoder="beit3_tiny", out_dim=256))
    m = build_tiny_model()
    with pytest.raises(ValueError, match="in_dim"):
        EvfSam(encoder=m.encoder, projector=Projector(8, 32), sam=m.sam, config=m.config)


# ---------------------------------------------------------------------------------------------
# The three stages


def _reference_decode(sam, emb, prompts, image_index, multimask):
    """Official EVF-SAM inference: per prompt, SAM's prompt encoder + MaskDecoder.forward."""
    masks, ious = [], []
    for i in range(prompts.shape[0]):
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat([sparse, prompts[i:i + 1]], dim=1)
        lo, iou = sam.mask_decoder(image_embeddings=emb[int(image_index[i])][None],
                                   image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                   dense_prompt_embeddings=dense, multimask_output=multimask)
        if multimask:
            order = torch.argsort(iou, dim=-1, descending=True)
            lo = torch.take_along_dim(lo, order[..., None, None], dim=1)[:, :1]
            iou = torch.take_along_dim(iou, order, dim=1)[:, :1]
        masks.append(lo)
        ious.append(iou)
    return torch.cat(masks), torch.cat(ious)


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("n_images,image_index", [(1, [0, 0, 0]), (2, [1, 0, 1, 1]), (3, None)])
def test_decode_masks_equals_segment_anything(model, multimask, n_images, image_index):
    c, (h, w) = model.sam.prompt_encoder.embed_dim, model.image_embedding_size
    emb = torch.randn(n_images, c, h, w)
    n = n_images if image_index is None else len(image_index)
    prompts = torch.randn(n, 1, c)
    idx = None if image_index is None else torch.tensor(image_index)
    with torch.no_grad():
        lo, iou = model.decode_masks(emb, prompts, idx, multimask_output=multimask)
        ref_lo, ref_iou = _reference_decode(model.sam, emb, prompts, range(n) if idx is None else idx, multimask)
    assert lo.shape == (n, 1, 4 * h, 4 * w) and iou.shape == (n, 1)
    torch.testing.assert_close(lo, ref_lo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iou, ref_iou, rtol=1e-5, atol=1e-5)


def test_multimask_keeps_best_by_iou(model):
    c, (h, w) = model.sam.prompt_encoder.embed_dim, model.image_embedding_size
    emb, prompts = torch.randn(1, c, h, w), torch.randn(8, 1, c)
    with torch.no_grad():
        lo, iou = model.decode_masks(emb, prompts, torch.zeros(8, dtype=torch.long), multimask_output=True)
        sparse = torch.cat([model.sam.prompt_encoder(points=None, boxes=None, masks=None)[0].expand(8, -1, -1),
                            prompts], dim=1)
        all_lo, all_iou = model.sam.mask_decoder(emb, model.sam.prompt_encoder.get_dense_pe(), sparse,
                                                 model.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1),
                                                 multimask_output=True)  # (8, 3, ...)
    best = all_iou.argmax(1)  # (8,), per prompt
    torch.testing.assert_close(iou[:, 0], all_iou.max(1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo[:, 0], all_lo[torch.arange(8), best], rtol=1e-5, atol=1e-5)
    # default comes from the config (official SAM-1: single mask)
    with torch.no_grad():
        single, _ = model.decode_masks(emb, prompts, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(single[:, 0], _single(model, emb, sparse), rtol=1e-5, atol=1e-5)


def _single(model, emb, sparse):
    lo, _ = model.sam.mask_decoder(emb, model.sam.prompt_encoder.get_dense_pe(), sparse,
                                   model.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1),
                                   multimask_output=False)
    return lo[:, 0]


@pytest.mark.parametrize("input_size,original_size", [((256, 192), (480, 360)), ((170, 256), (85, 128))])
def test_postprocess_masks_equals_segment_anything(model, input_size, original_size):
    low = torch.randn(3, 1, 64, 64)
    out = model.postprocess_masks(low, input_size, original_size)
    ref = model.sam.postprocess_masks(low, input_size, original_size)
    s = model.sam_image_size
    manual = F.interpolate(F.interpolate(low, (s, s), mode="bilinear", align_corners=False)
                           [..., :input_size[0], :input_size[1]], original_size, mode="bilinear", align_corners=False)
    assert out.shape == (3, 1, *original_size)
    assert torch.equal(out, ref) and torch.equal(out, manual)


def test_encode_prompts_is_projected_vision_cls(model):
    x = tiny_inputs(model, n_images=2, n_prompts=3)
    beit = x["beit_images"][x["image_index"]]
    with torch.no_grad():
        p = model.encode_prompts(beit, x["text_ids"], x["text_padding_mask"])
        # the plain BEiT-3 forward (model.encoder is a BEiT3 subclass that returns the pooled feature)
        hidden = BEiT3.forward(model.encoder, text_ids=x["text_ids"], text_padding_mask=x["text_padding_mask"],
                               image=beit).hidden
        ref = model.projector.fc2(torch.relu(model.projector.fc1(hidden[:, 0])))[:, None]
    assert p.shape == (3, 1, model.config.out_dim)
    torch.testing.assert_close(p, ref)


def test_forward_equals_stages_and_frozen_image_encoder_gets_no_grad():
    model = build_tiny_model(seed=1).train()
    x = tiny_inputs(model, n_images=2, n_prompts=3)
    lo, iou = model(**x)
    assert lo.shape == (3, 1, 64, 64) and iou.shape == (3, 1) and torch.isfinite(lo).all()
    (lo.sigmoid().mean() + iou.mean()).backward()
    assert all(p.grad is None for p in model.sam.image_encoder.parameters())
    assert model.projector.fc1.weight.grad is not None
    assert model.encoder.vision_embed.cls_token.grad is not None
    assert model.sam.mask_decoder.iou_token.weight.grad is not None
    assert not model.encode_image(x["sam_images"]).requires_grad  # frozen: no graph kept
    model.eval()
    with torch.no_grad():
        emb = model.encode_image(x["sam_images"])
        prompts = model.encode_prompts(x["beit_images"][x["image_index"]], x["text_ids"], x["text_padding_mask"])
        ref = model.decode_masks(emb, prompts, x["image_index"])
        out = model(**x)
        cached = model(None, x["beit_images"], x["text_ids"], x["text_padding_mask"], x["image_index"],
                       image_embeddings=emb)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(cached, ref)


def test_unfrozen_image_encoder_gets_grad():
    model = build_tiny_model(seed=2).train()
    model.sam.image_encoder.requires_grad_(True)
    x = tiny_inputs(model, n_images=1, n_prompts=2)
    lo, _ = model(**x)
    lo.mean().backward()
    assert model.sam.image_encoder.patch_embed.proj.weight.grad is not None


def test_input_shape_errors(model):
    with pytest.raises(ValueError, match="sam_images must be"):
        model.encode_image(torch.zeros(1, 3, 1024, 1024))
    c, (h, w) = model.sam.prompt_encoder.embed_dim, model.image_embedding_size
    with pytest.raises(ValueError, match="one prompt per image"):
        model.decode_masks(torch.zeros(2, c, h, w), torch.zeros(3, 1, c))


def test_tiny_sizes_are_registered():
    tiny = SAM_CONFIGS["tiny"]
    assert tiny.image_size == 256 and tiny.image_size // tiny.patch_size == 16 and tiny.prompt_embed_dim == 32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_decode_runs_and_tracks_fp32(dtype):
    """SAM's random-PE matrix stays fp32 under .to(dtype), so decode works in bf16/fp16."""
    from evf_sam.testing import build_tiny_model, tiny_inputs

    model = build_tiny_model(seed=0)
    inputs = tiny_inputs(model)
    with torch.no_grad():
        ref, _ = model(**inputs)
        model.to(dtype)
        assert model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
        assert model.projector.fc1.weight.dtype == dtype
        if dtype == torch.float16:  # CPU fp16 conv is not implemented everywhere: decode only
            emb = model.to(torch.float32).encode_image(inputs["sam_images"])
            model.to(dtype)
            prompts = model.encode_prompts(inputs["beit_images"][inputs["image_index"]].to(dtype),
                                           inputs["text_ids"], inputs["text_padding_mask"])
            low, _ = model.decode_masks(emb.to(dtype), prompts, inputs["image_index"])
        else:
            cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
            low, _ = model(**cast)
    assert low.dtype == dtype
    assert torch.isfinite(low.float()).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.parametrize("encoder,fusion,max_len", [("beit3_tiny", "early", 64), ("beit3_tiny", "late", 64),
                                                    ("clip_tiny", "late", 32), ("vilt_tiny", "early", 32)])
def test_every_encoder_has_one_interface(encoder, fusion, max_len):
    """One builder, one text-length name: BEiT-3's is its position table minus the 2 fairseq rows."""
    model = build_evf_sam(EvfSamConfig(sam_variant="tiny", encoder=encoder, fusion=fusion))
    assert model.max_text_len == model.encoder.max_text_len == max_len
    assert not hasattr(model.encoder, "max_text_length")
    assert model.beit_image_size == model.encoder.image_size == 32
    assert model.projector.in_dim == model.encoder.feature_dim
    x = tiny_inputs(model, n_images=1, n_prompts=2)
    with torch.no_grad():
        feat = model.encoder(text_ids=x["text_ids"], text_padding_mask=x["text_padding_mask"],
                             image=x["beit_images"][x["image_index"]])
    assert feat.shape == (2, model.encoder.feature_dim)
