"""SAM-2 backend (evf_sam/models/sam2_backend.py) against Meta's stock ``sam2`` package.

The reference for the decoding path is the official EVF-SAM2 wiring (hustvl/EVF-SAM
model/evf_sam2.py) written out here with the stock modules; the reference for the architecture is
the stock ``sam2.build_sam.build_sam2`` on the package's own YAML configs (through hydra).
"""

import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

# find_spec, not importorskip: importing sam2 initialises hydra's global state (see the module)
if importlib.util.find_spec("sam2") is None:
    pytest.skip("Meta's sam2 package is not installed", allow_module_level=True)

from evf_sam.models.checkpoint import StateDictMismatchError  # noqa: E402
from evf_sam.models.sam2_backend import SAM2_CONFIGS, build_sam2_backend, load_sam2_state_dict  # noqa: E402

TOY = "sam2_tiny"


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return build_sam2_backend(TOY)


def _official_evf_sam2(model, images, prompts, image_index, multimask_output):
    """hustvl/EVF-SAM EvfSam2Model.forward / inference, prompt by prompt, on the stock modules."""
    backbone_out = model.forward_image(images)
    _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
    feats = [f.to(images.dtype) for f in feats]
    assert model.directly_add_no_mem_embed
    feats[-1] = feats[-1] + model.no_mem_embed
    b = images.shape[0]
    maps = [f.permute(1, 2, 0).view(b, -1, *s) for f, s in zip(feats, sizes)]
    image_embed, high_res = maps[-1], maps[:-1]
    masks, ious = [], []
    for j, i in enumerate(image_index.tolist()):
        empty_sparse, dense = model.sam_prompt_encoder(points=None, boxes=None, masks=None)
        assert empty_sparse.shape == (1, 0, model.sam_prompt_embed_dim)
        sparse = torch.cat([empty_sparse, prompts[j:j + 1]], dim=1)  # their PromptEncoder(text_embeds=...)
        low_res, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=image_embed[i].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=True,
            high_res_features=[f[i].unsqueeze(0) for f in high_res],
        )
        if multimask_output:
            sorted_ids = torch.argsort(iou, dim=-1, descending=True)
            low_res = torch.take_along_dim(low_res, sorted_ids[..., None, None], dim=1)[:, :1]
            iou = torch.take_along_dim(iou, sorted_ids, dim=1)[:, :1]
        masks.append(low_res)
        ious.append(iou)
    return torch.cat(masks), torch.cat(ious)


@pytest.mark.parametrize("multimask_output", [False, True])
def test_matches_official_wiring(toy, multimask_output):
    s = toy.image_size
    h, w = toy.image_embedding_size
    images = torch.randn(2, 3, s, s)
    prompts = torch.randn(5, 1, toy.prompt_dim)
    image_index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        feats = toy.encode_image(images)
        low_res, iou = toy.decode_text_prompts(feats, prompts, image_index, multimask_output=multimask_output)
        ref_low, ref_iou = _official_evf_sam2(toy, images, prompts, image_index, multimask_output)
    assert feats[0].shape == (2, toy.prompt_dim, h, w)
    assert feats[1].shape[-2:] == (4 * h, 4 * w) and feats[2].shape[-2:] == (2 * h, 2 * w)
    assert low_res.shape == (5, 1, 4 * h, 4 * w) and iou.shape == (5, 1)
    assert (low_res - ref_low).abs().max() < 1e-5
    assert (iou - ref_iou).abs().max() < 1e-5
    # the comparison discriminates: prompts and images change the masks
    assert (low_res[2] - low_res[3]).abs().max() > 1e-3  # same image, different prompts
    with torch.no_grad():
        swapped, _ = toy.decode_text_prompts(feats, prompts, 1 - image_index, multimask_output=multimask_output)
    assert (swapped - low_res).abs().max() > 1e-3
    if multimask_output:
        with torch.no_grad():  # the 3 candidates differ, so picking the wrong one would be caught
            all3, all_iou, _, _ = toy.sam_mask_decoder(
                feats[0][image_index], toy.sam_prompt_encoder.get_dense_pe(), prompts,
                toy.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(5, -1, h, w),
                multimask_output=True, repeat_image=False, high_res_features=[f[image_index] for f in feats[1:]])
        assert all3.shape[1] == 3
        assert (all3[:, 0] - all3[:, 1]).abs().max() > 1e-3 and (all3[:, 1] - all3[:, 2]).abs().max() > 1e-3
        assert torch.allclose(iou[:, 0], all_iou.max(dim=1).values, atol=1e-6)


def test_no_index_means_one_prompt_per_image(toy):
    s = toy.image_size
    images = torch.randn(2, 3, s, s)
    prompts = torch.randn(2, 1, toy.prompt_dim)
    with torch.no_grad():
        feats = toy.encode_image(images)
        a = toy.decode_text_prompts(feats, prompts, None, multimask_output=False)
        b = toy.decode_text_prompts(feats, prompts, torch.tensor([0, 1]), multimask_output=False)
        with pytest.raises(ValueError, match="image_index"):
            toy.decode_text_prompts(feats, torch.randn(3, 1, toy.prompt_dim), None, multimask_output=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_toy_trains_fast_and_frozen_encoder_gets_no_grad():
    import time

    model = build_sam2_backend(TOY).train()
    model.image_encoder.requires_grad_(False)
    s = model.image_size
    start = time.perf_counter()
    feats = model.encode_image(torch.randn(2, 3, s, s))
    prompts = torch.randn(3, 1, model.prompt_dim, requires_grad=True)
    low_res, iou = model.decode_text_prompts(feats, prompts, torch.tensor([0, 1, 1]), multimask_output=False)
    (low_res.mean() + iou.mean()).backward()
    assert time.perf_counter() - start < 5.0
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    # official training: the frozen Hiera + FPN get nothing; the mask decoder (incl. conv_s0 / conv_s1
    # applied inside forward_image) and no_mem_embed do
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.sam_mask_decoder.conv_s0.weight.grad.abs().sum() > 0
    assert model.sam_mask_decoder.conv_s1.weight.grad.abs().sum() > 0
    assert model.no_mem_embed.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Architecture == the stock package's YAML configs


def _linspace_on_cpu():
    """Hiera's stochastic-depth schedule calls .item() on torch.linspace; the backend's own workaround
    (that one op on CPU) lets the stock model be built on the meta device too."""
    from evf_sam.models.sam2_backend import _meta_safe

    return _meta_safe()


@pytest.mark.parametrize("variant,yaml", [("sam2_hiera_l", "configs/sam2/sam2_hiera_l.yaml"),
                                          ("sam2_hiera_t", "configs/sam2/sam2_hiera_t.yaml")])
def test_architecture_equals_stock_build_sam2(variant, yaml):
    from hydra import initialize_config_module
    from sam2.build_sam import build_sam2

    with torch.device("meta"):
        ours = build_sam2_backend(variant)
    with initialize_config_module("sam2", version_base="1.2"), torch.device("meta"), _linspace_on_cpu():
        stock = build_sam2(yaml, ckpt_path=None, device="meta")
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    assert list(ours_sd) == list(stock_sd)  # same names, same order
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in stock_sd.items()}
    # same module structure (layer types, sizes, dropout, windows ...) beyond the weights
    for name in ("image_encoder", "memory_attention", "memory_encoder", "sam_prompt_encoder", "sam_mask_decoder",
                 "obj_ptr_proj", "obj_ptr_tpos_proj", "mask_downsample"):
        assert repr(getattr(ours, name)) == repr(getattr(stock, name)), name
    trunk, stock_trunk = ours.image_encoder.trunk, stock.image_encoder.trunk
    assert trunk.window_spec == tuple(stock_trunk.window_spec)
    assert list(trunk.global_att_blocks) == list(stock_trunk.global_att_blocks)
    assert [b.window_size for b in trunk.blocks] == [b.window_size for b in stock_trunk.blocks]
    assert ours.image_encoder.scalp == stock.image_encoder.scalp
    assert ours.image_encoder.neck.fpn_top_down_levels == stock.image_encoder.neck.fpn_top_down_levels
    assert ours.image_encoder.neck.fpn_interp_model == stock.image_encoder.neck.fpn_interp_model
    for attr in ("image_size", "backbone_stride", "num_maskmem", "directly_add_no_mem_embed",
                 "use_high_res_features_in_sam", "num_feature_levels", "iou_prediction_use_sigmoid",
                 "pred_obj_scores", "sigmoid_scale_for_mem_enc", "sigmoid_bias_for_mem_enc",
                 "use_mask_input_as_output_without_sam", "multimask_output_in_sam", "multimask_min_pt_num",
                 "multimask_max_pt_num", "multimask_output_for_tracking", "use_multimask_token_for_obj_ptr",
                 "use_obj_ptrs_in_encoder", "add_tpos_enc_to_obj_ptrs", "only_obj_ptrs_in_the_past_for_eval",
                 "fixed_no_obj_ptr", "use_mlp_for_obj_ptr_proj", "hidden_dim", "mem_dim"):
        assert getattr(ours, attr) == getattr(stock, attr), attr
    # build_sam2's default apply_postprocessing=True, which the official EVF-SAM2 keeps
    for attr in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                 "dynamic_multimask_stability_thresh"):
        assert getattr(ours.sam_mask_decoder, attr) == getattr(stock.sam_mask_decoder, attr), attr
    assert ours.image_size == 1024 and ours.prompt_dim == 256 and ours.image_embedding_size == (64, 64)
    assert ours.resize_mode == "square"


def test_importing_sam2_leaves_hydra_uninitialised():
    code = ("import evf_sam.models.sam2_backend as m; m.Sam2Backend; "
            "from hydra.core.global_hydra import GlobalHydra; "
            "assert 'sam2' in __import__('sys').modules; "
            "assert not GlobalHydra.instance().is_initialized()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_variant_lists_choices():
    with pytest.raises(ValueError) as e:
        build_sam2_backend("sam2_hiera_xl")
    for name in SAM2_CONFIGS:
        assert name in str(e.value)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_strict_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    src = build_sam2_backend(TOY)
    path = tmp_path / "sam2_toy.pt"
    torch.save({"model": src.state_dict()}, path)  # the official SAM-2 .pt layout

    torch.manual_seed(2)
    fresh = build_sam2_backend(TOY)
    assert not torch.equal(fresh.no_mem_embed, src.no_mem_embed)  # so the load below is visible
    loaded = build_sam2_backend(TOY, checkpoint=path)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.training

    s = src.image_size
    images, prompts = torch.randn(1, 3, s, s), torch.randn(2, 1, src.prompt_dim)
    with torch.no_grad():
        a = src.decode_text_prompts(src.encode_image(images), prompts, torch.tensor([0, 0]))
        b = loaded.decode_text_prompts(loaded.encode_image(images), prompts, torch.tensor([0, 0]))
    assert torch.equal(a[0], b[0])


def test_renamed_key_is_named_and_nothing_is_copied(tmp_path):
    torch.manual_seed(1)
    sd = dict(build_sam2_backend(TOY).state_dict())
    sd["sam_mask_decoder.iou_tokens.weight"] = sd.pop("sam_mask_decoder.iou_token.weight")
    path = tmp_path / "bad.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(StateDictMismatchError) as e:
        build_sam2_backend(TOY, checkpoint=path)
    assert "sam_mask_decoder.iou_token.weight" in e.value.missing
    assert "sam_mask_decoder.iou_tokens.weight" in e.value.unexpected
    assert "sam_mask_decoder.iou_tokens.weight" in str(e.value)

    torch.manual_seed(2)
    model = build_sam2_backend(TOY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StateDictMismatchError):
        load_sam2_state_dict(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_half_precision_decode(toy):
    model = build_sam2_backend(TOY)
    model.load_state_dict(toy.state_dict())
    model = model.to(torch.bfloat16)
    assert model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    s = model.image_size
    images = torch.randn(2, 3, s, s)
    prompts = torch.randn(3, 1, model.prompt_dim)
    idx = torch.tensor([0, 1, 1])
    with torch.no_grad():
        low16, _ = model.decode_text_prompts(model.encode_image(images.bfloat16()), prompts.bfloat16(), idx)
        low32, _ = toy.decode_text_prompts(toy.encode_image(images), prompts, idx)
    assert low16.dtype == torch.bfloat16
    assert ((low16.float() > 0) == (low32 > 0)).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------
# Post-processing


def test_postprocess_straight_to_original_size(toy):
    c = torch.full((2, 1, 64, 64), 3.25, dtype=torch.bfloat16)
    out = toy.postprocess_masks(c, (32, 64), (37, 53))
    assert out.shape == (2, 1, 37, 53) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 3.25), rtol=0, atol=1e-6)
    # left half negative, right half positive: no crop to input_size, the whole low-res frame maps
    # onto the original image
    step = torch.cat([-torch.ones(1, 1, 64, 32), torch.ones(1, 1, 64, 32)], dim=-1)
    out = toy.postprocess_masks(step, (10, 64), (40, 80))[0, 0]
    assert torch.all(out[:, :40] < 0) and torch.all(out[:, 40:] > 0)
    ref = F.interpolate(step, (40, 80), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(out, ref)
