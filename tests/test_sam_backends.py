"""The SAM axis (paper Tab. 7) wired through EvfSam: SAM-1, EfficientSAM and SAM-2 backends.

Per family at toy size: forward + backward through `EvfSam`, the predictor on a real image with the
family's preprocessing, official-format checkpoint round trip (config.json ``architectures``), and
the official release's parameter counts for the full-size models (hustvl/EVF-SAM README).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam
from evf_sam.models.sam_backends import SAM_VARIANTS, resize_mode_of, sam_family
from evf_sam.predictor import EvfSamPredictor
from evf_sam.preprocess import beit3_preprocess, sam_preprocess, sam_resize
from evf_sam.testing import build_tiny_model, make_tokenizer, tiny_inputs, write_official_checkpoint

TINY = {"sam": "tiny", "efficient_sam": "efficient_sam_tiny", "sam2": "sam2_tiny"}
ARCH = {"sam": "EvfSamModel", "efficient_sam": "EvfEffiSamModel", "sam2": "EvfSam2Model"}
FAMILIES = list(TINY)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8)


def test_registry_families_and_resize_modes():
    assert {sam_family(v) for v in SAM_VARIANTS} == set(FAMILIES)
    assert resize_mode_of("vit_h") == "pad"
    assert resize_mode_of("efficient_sam_s") == resize_mode_of("sam2_hiera_l") == "square"
    with pytest.raises(ValueError, match="unknown SAM variant 'sam3'.*vit_h.*sam2_hiera_l"):
        sam_family("sam3")
    with pytest.raises(ValueError, match="unknown sam_variant 'vit_g'"):
        EvfSamConfig(sam_variant="vit_g")


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_through_evf_sam(family):
    model = build_tiny_model(seed=0, sam_variant=TINY[family]).train()
    assert model.resize_mode == ("pad" if family == "sam" else "square")
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())  # always frozen
    inputs = tiny_inputs(model, n_images=2, n_prompts=3)
    low, iou = model(**inputs)
    h, w = model.image_embedding_size
    assert low.shape == (3, 1, 4 * h, 4 * w) and iou.shape == (3, 1)
    (low.float().square().mean() + iou.float().mean()).backward()
    assert all(p.grad is None for p in model.sam.image_encoder.parameters())
    assert model.projector.fc1.weight.grad is not None and model.projector.fc1.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_decode_equals_one_prompt_at_a_time(family):
    model = build_tiny_model(seed=3, sam_variant=TINY[family]).eval()
    inputs = tiny_inputs(model, n_images=2, n_prompts=4, seed=1)
    with torch.no_grad():
        emb = model.encode_image(inputs["sam_images"])
        prompts = model.encode_prompts(inputs["beit_images"][inputs["image_index"]], inputs["text_ids"],
                                       inputs["text_padding_mask"])
        low, iou = model.decode_masks(emb, prompts, inputs["image_index"])
        for i, b in enumerate(inputs["image_index"].tolist()):
            one = tuple(e[b:b + 1] for e in emb) if isinstance(emb, tuple) else emb[b:b + 1]
            l1, i1 = model.decode_masks(one, prompts[i:i + 1], None)
            torch.testing.assert_close(low[i:i + 1], l1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i:i + 1], i1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_predictor_uses_the_familys_preprocessing(family, tok_dir, image):
    model = build_tiny_model(seed=2, sam_variant=TINY[family]).eval()
    pred = EvfSamPredictor(model, tokenizer=tok_dir)
    pred.set_image(image)
    out = pred.predict(["the big red circle on the left", "blue square"])
    assert out.logits.shape == (2, 37, 91) and out.masks.dtype == torch.bool
    # The same numbers by hand: the official sam_preprocess for this model_type, then the stages.
    s = model.sam_image_size
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    if family == "sam":
        x = (torch.from_numpy(sam_resize(image, s)).permute(2, 0, 1).float() - mean) / std
        x = F.pad(x, (0, s - x.shape[-1], 0, s - x.shape[-2]))
    else:  # official inference.py "effi" / "sam2": the uint8 image interpolated to S x S, then normalised
        u8 = torch.from_numpy(image).permute(2, 0, 1).contiguous()[None]
        x = (F.interpolate(u8, (s, s), mode="bilinear", align_corners=False)[0] - mean) / std
    torch.testing.assert_close(sam_preprocess(image, s, model.resize_mode, pipeline="inference")[0], x)
    from evf_sam.tokenizer import load_tokenizer, tokenize

    ids, pad = tokenize(load_tokenizer(tok_dir), ["the big red circle on the left", "blue square"],
                        model.max_text_len)
    with torch.no_grad():
        emb = model.encode_image(x[None])
        beit = beit3_preprocess(image, model.beit_image_size)[None].expand(2, -1, -1, -1)
        low, _ = model.decode_masks(emb, model.encode_prompts(beit, ids, pad), torch.zeros(2, dtype=torch.long))
        ref = model.postprocess_masks(low, tuple(sam_resize(image, s).shape[:2]), (37, 91))[:, 0]
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_official_checkpoint_round_trip(family, tmp_path, tok_dir):
    model = build_tiny_model(seed=4, sam_variant=TINY[family]).eval()
    d = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir, dtype=torch.float32, fmt="safetensors")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == [ARCH[family]] and cfg["sam_variant"] == TINY[family]
    loaded = EvfSam.from_pretrained(d)
    assert loaded.config.sam_variant == TINY[family] and type(loaded.sam) is type(model.sam)
    assert not any(p.requires_grad for p in loaded.sam.image_encoder.parameters())
    assert list(model.state_dict()) == list(loaded.state_dict())
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert [k for k, _ in model.named_buffers()] == [k for k, _ in loaded.named_buffers()]
    for (k, a), (k2, b) in zip(model.named_buffers(), loaded.named_buffers()):  # incl. non-persistent ones
        assert k == k2 and torch.equal(a, b), k
    inputs = tiny_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model(**inputs), atol=0, rtol=0)


def test_checkpoint_of_another_family_is_refused(tmp_path, tok_dir):
    model = build_tiny_model(seed=0, sam_variant="sam2_tiny")
    d = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir, fmt="safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["EvfSamModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sam_variant='sam2_tiny' is a sam2 model \\(EvfSam2Model\\)"):
        EvfSam.from_pretrained(d)


@pytest.mark.parametrize("sam_variant,encoder,official", [
    ("vit_h", "beit3_large", 1.32e9),  # EVF-SAM
    ("sam2_hiera_l", "beit3_large", 898e6),  # EVF-SAM2
    ("efficient_sam_s", "beit3_large", 700e6),  # EVF-Effi-SAM-L
    ("efficient_sam_t", "beit3_base", 232e6),  # EVF-Effi-SAM-B
])
def test_parameter_counts_match_the_official_model_zoo(sam_variant, encoder, official):
    """hustvl/EVF-SAM README, "Weights": Params column (rounded there to 3 significant digits)."""
    with torch.device("meta"):
        model = build_evf_sam(EvfSamConfig(sam_variant=sam_variant, encoder=encoder))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - official) / official < 0.005, n


def test_embedding_cache_refuses_sam2(tmp_path):
    from evf_sam.engine.embedding_cache import EmbeddingCache

    model = build_tiny_model(seed=0, sam_variant="sam2_tiny")
    s = model.sam_image_size
    with pytest.raises(ValueError, match="multi-scale image features.*embedding_cache=null"):
        EmbeddingCache.open_or_build(tmp_path / "cache", model, [1], lambda i: torch.zeros(3, s, s))
    assert not (tmp_path / "cache").exists()


def test_table7_rows_build_at_toy_size_and_train_the_official_modules():
    """Every row of configs/experiment/table7.yaml: its SAM family at toy size, its trainable globs,
    one forward + backward; SAM-2 stays frozen (official EVF-SAM2), the others train the mask decoder."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from evf_sam.engine.optim import apply_trainable
    from evf_sam.paper_numbers import paper_row

    configs = Path(__file__).resolve().parents[1] / "configs"
    rows = sorted(p.stem for p in (configs / "experiment" / "table7_rows").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfgs = [compose("train", overrides=["+experiment=table7", f"+experiment/table7_rows={r}",
                                            "weights.sam_vit_h=/w/h.pth", "weights.efficient_sam_s=/w/s.pt",
                                            "weights.efficient_sam_t=/w/t.pt", "weights.sam2_hiera_l=/w/l.pt",
                                            "weights.beit3_large=/w/bl.pth", "weights.beit3_base=/w/bb.pth",
                                            "weights.tokenizer=/w/tok", "encoder_dirs.clip_large=/w/clip",
                                            "encoder_dirs.vilt=/w/vilt"])
                for r in rows]
    seen = set()
    for r, cfg in zip(rows, cfgs):
        assert cfg.model.sam_variant == cfg.sam.variant and cfg.model.encoder == cfg.encoder.name
        assert str(cfg.model.sam_checkpoint).startswith("/w/")
        beit3 = cfg.encoder.name.startswith("beit3")  # CLIP / ViLT rows: weights and tokenizer from their dir
        assert str(cfg.model.encoder_checkpoint if beit3 else cfg.model.encoder_path).startswith("/w/")
        assert cfg.model.tokenizer == ("/w/tok" if beit3 else cfg.encoder.pretrained)
        assert paper_row("table7", {"sam": cfg.sam.name, "encoder": cfg.encoder.name,
                                          "fusion": cfg.fusion.name}) is not None, r
        seen.add((cfg.sam.name, cfg.encoder.name))
        family = sam_family(cfg.model.sam_variant)
        model = build_tiny_model(seed=0, sam_variant=TINY[family]).train()
        names = apply_trainable(model, list(cfg.trainable.params))
        sam_trained = {n.split(".")[1] for n in names if n.startswith("sam.")}
        expected = {"sam": {"prompt_encoder", "mask_decoder"}, "efficient_sam": {"mask_decoder"}, "sam2": set()}
        assert sam_trained == expected[family], (r, sam_trained)
        low, iou = model(**tiny_inputs(model))
        low.float().square().mean().backward()
        assert all(p.grad is None for n, p in model.named_parameters() if n not in names)
        assert model.projector.fc2.weight.grad is not None
    assert len(seen) == len(rows) == 7  # the paper's 5 rows + 2 model-zoo rows


@pytest.mark.slow
@pytest.mark.parametrize("sam_variant,trainable", [("efficient_sam_tiny", "enc_proj_mask"),
                                                   ("sam2_tiny", "enc_proj"), ("sam2_tiny", "enc_proj_mask")])
def test_trainer_runs_the_square_resize_families(tmp_path, sam_variant, trainable):
    """scripts/train.py (DeepSpeed, 1 process) on synthetic REFER data with an EfficientSAM / SAM-2
    toy model: square-resized inputs and targets, the official trainable set, an export that loads."""
    from tests.test_train import _train

    run = tmp_path / "run"
    _train(run, "data=synthetic", f"data.root={tmp_path / 'syn'}", "data.synthetic.num_train=8",
           "data.synthetic.num_val=2", "data.synthetic.num_test=2", "data.synthetic.image_size=48",
           "data.num_workers=0", "trainer.total_steps=2", f"model.sam_variant={sam_variant}",
           f"trainable={trainable}")
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] and 0.0 <= results["refcoco|unc|val"]["ciou"] <= 1.0
    model = EvfSam.from_pretrained(run / "final")
    assert model.config.sam_variant == sam_variant and model.resize_mode == "square"
    cfg = json.loads((run / "final" / "config.json").read_text())
    assert cfg["architectures"] == [ARCH[sam_family(sam_variant)]]
    # SAM-2 with a trained mask decoder: the eval-mode stability fallback is recorded off
    want = False if (sam_variant == "sam2_tiny" and trainable == "enc_proj_mask") else None
    assert cfg.get("sam_stability_fallback") is want and model.config.sam_stability_fallback is want
    # SAM-2 trains and evaluates with the best of 3 masks (official EVF-SAM2 forward()), EfficientSAM with one
    assert cfg["multimask_output"] is model.config.multimask_output is (sam_variant == "sam2_tiny")


def test_square_mode_training_samples_cover_the_whole_frame(tmp_path):
    """EfficientSAM / SAM-2 training: the image is stretched over S x S, so the target mask is the
    annotation resized to S x S and the loss region (input_size) is the whole frame."""
    from evf_sam.data.refer import ReferDataset
    from evf_sam.data.synthetic import make_synthetic_refer
    from evf_sam.data.train_dataset import ReferTrainDataset, Source
    from evf_sam.preprocess import load_image

    make_synthetic_refer(tmp_path, num_train=4, num_val=1, num_test=1, image_size=40)
    tok = __import__("evf_sam.tokenizer", fromlist=["x"]).load_tokenizer(make_tokenizer(tmp_path / "tok"))
    src = [Source(name="refcoco", dataset="refcoco", split_by="unc", split="train", rate=1.0)]
    common = dict(tokenizer=tok, sam_size=64, beit_size=32, max_text_len=20, seed=0, sentences_per_image=1)
    pad = ReferTrainDataset(tmp_path, src, **common)
    square = ReferTrainDataset(tmp_path, src, resize_mode="square", **common)
    a, b = pad[0], square[0]
    assert a.image_id == b.image_id and a.sentences == b.sentences
    assert max(a.input_size) == 64
    assert b.input_size == (64, 64)
    image = load_image(ReferDataset(tmp_path, "refcoco", "unc").image_path(b.image_id))
    torch.testing.assert_close(b.sam_image, sam_preprocess(image, 64, "square", pipeline="eval")[0])
    # target = the padded-frame target's valid part, stretched back over the frame (nearest), ~equal
    h, w = a.input_size
    valid = a.masks[0, :h, :w]
    stretched = F.interpolate(valid[None, None], (64, 64), mode="nearest-exact")[0, 0]
    assert (stretched != b.masks[0]).float().mean() < 0.05 and b.masks[0].sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_groups_name_each_familys_prompt_encoder_and_mask_decoder(family):
    """configs/trainable globs (paper Tab. 4) select the same modules in every family, under SAM-2's
    own names (sam_prompt_encoder, sam_mask_decoder) too; the image encoder never."""
    import yaml

    from evf_sam.engine.optim import apply_trainable

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "trainable"
    model = build_tiny_model(seed=0, sam_variant=TINY[family])
    prefix = "sam_" if family == "sam2" else ""
    for f in sorted(root.glob("*.yaml")):
        group = yaml.safe_load(f.read_text())
        names = apply_trainable(model, group["params"])
        sam_trained = {n.split(".")[1] for n in names if n.startswith("sam.")}
        want = set()
        if "prompt" in group["name"]:
            want.add(prefix + "prompt_encoder")
        if "mask" in group["name"]:
            want.add(prefix + "mask_decoder")
        assert sam_trained == want, (family, f.stem, sam_trained)


def test_sam2_mask_choice_defaults_and_switches(tmp_path, tok_dir):
    """SAM-2 default: the best of the 3 multimask outputs by predicted IoU (official EVF-SAM2 inference()
    and forward()), SAM-2's stability fallback off; multimask_output=False: the single mask as it is;
    sam_stability_fallback=True: build_sam2's fallback for that single mask. Choices survive save / load.
    (tests/test_official_parity.py checks the default against the official code on weights where the
    fallback and the best of 3 differ.)"""
    model = build_tiny_model(seed=5, sam_variant="sam2_tiny").eval()
    assert model.config.multimask_output is True and model.config.sam_stability_fallback is None
    assert model.sam.sam_mask_decoder.dynamic_multimask_via_stability is False
    assert EvfSamConfig(sam_variant="tiny").multimask_output is False  # SAM-1 / EfficientSAM: single mask
    assert EvfSamConfig(sam_variant="efficient_sam_tiny").multimask_output is False
    inputs = tiny_inputs(model, n_prompts=4)
    idx = inputs["image_index"]
    with torch.no_grad():
        default, _ = model(**inputs)
        emb = model.encode_image(inputs["sam_images"])
        prompts = model.encode_prompts(inputs["beit_images"][idx], inputs["text_ids"], inputs["text_padding_mask"])
        best3 = model.decode_masks(emb, prompts, idx, multimask_output=True)[0]
        single = model.decode_masks(emb, prompts, idx, multimask_output=False)[0]
        tokens = model.sam.sam_mask_decoder(  # all 4 mask tokens, no selection
            image_embeddings=emb[0][idx], image_pe=model.sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=prompts, dense_prompt_embeddings=model.sam.sam_prompt_encoder.no_mask_embed
            .weight.reshape(1, -1, 1, 1).expand(4, -1, *emb[0].shape[-2:]), multimask_output=True,
            repeat_image=False, high_res_features=[emb[1][idx], emb[2][idx]])
        model.set_sam_stability_fallback(True)
        fallback = model.decode_masks(emb, prompts, idx, multimask_output=False)[0]
    torch.testing.assert_close(default, best3)
    multi, iou = tokens[0], tokens[1]  # (N, 3, h, w), (N, 3): SAM-2 returns the multimask outputs only
    torch.testing.assert_close(best3, multi.gather(1, iou.argmax(1)[:, None, None, None].expand(-1, 1, *multi.shape[2:])))
    assert not torch.equal(single, best3)
    for i in range(4):  # the fallback keeps the single mask or swaps in the best of 3 (toy weights: unstable)
        assert torch.equal(fallback[i], single[i]) or torch.equal(fallback[i], best3[i])
    assert not torch.equal(fallback, single)
    model.config.multimask_output = False
    d = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir, dtype=torch.float32, fmt="safetensors")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["sam_stability_fallback"] is True and cfg["multimask_output"] is False
    loaded = EvfSam.from_pretrained(d)
    assert loaded.sam.sam_mask_decoder.dynamic_multimask_via_stability is True
    assert loaded.config.multimask_output is False
    with pytest.raises(ValueError, match="SAM-2 only"):
        EvfSamConfig(sam_variant="tiny", sam_stability_fallback=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_image_index_is_refused_by_every_family(family):
    model = build_tiny_model(seed=0, sam_variant=TINY[family]).eval()
    x = tiny_inputs(model, n_images=1, n_prompts=2)
    prompts = torch.zeros(2, 1, model.projector.out_dim)
    with torch.no_grad():
        emb = model.encode_image(x["sam_images"])
        with pytest.raises(ValueError, match=r"image_index must be \(2,\), got \(3,\)"):
            model.decode_masks(emb, prompts, torch.zeros(3, dtype=torch.long))
        with pytest.raises(ValueError, match=r"image_index out of range for 1 images: \[0, 1\]"):
            model.decode_masks(emb, prompts, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="image_index=None needs one prompt per image, got 2 prompts for 1"):
            model.decode_masks(emb, prompts, None)


def test_features_per_prompt_views_one_image_and_gathers_many():
    from evf_sam.models.sam_decoding import best_of_multimask, features_per_prompt

    one, many = torch.randn(1, 4, 2, 2), torch.randn(3, 4, 2, 2)
    view, = features_per_prompt(torch.zeros(5, dtype=torch.long), 5, one)
    assert view.shape == (5, 4, 2, 2) and view.stride(0) == 0 and view.data_ptr() == one.data_ptr()  # no copies
    idx = torch.tensor([2, 0, 2])
    a, b = features_per_prompt(idx, 3, many, 2 * many)
    assert torch.equal(a, many[idx]) and torch.equal(b, 2 * many[idx])
    assert features_per_prompt(None, 3, many)[0] is many
    masks = torch.randn(4, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.1]])
    best_masks, best_iou = best_of_multimask(masks, iou)
    assert best_masks.shape == (4, 1, 2, 2) and best_iou.shape == (4, 1)
    assert torch.equal(best_iou[:, 0], torch.tensor([0.9, 0.8, 0.3, 0.5]))
    assert torch.equal(best_masks[:, 0], masks[torch.arange(4), torch.tensor([1, 0, 2, 0])])  # ties: the first
