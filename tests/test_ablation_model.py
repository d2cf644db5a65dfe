"""Ablation points wired through EvfSam: build, train step, save/load round trip."""

import pytest
import torch

from evf_sam.models.evf_sam import EvfSam
from evf_sam.testing import build_tiny_model, tiny_inputs


@pytest.mark.parametrize("fusion,feature,fused_layers", [
    ("late", None, None), ("text", None, None), ("early_k", None, 1), ("early", "image_avg", None),
])
def test_ablation_model_round_trip(tmp_path, fusion, feature, fused_layers):
    model = build_tiny_model(seed=1, fusion=fusion, feature=feature, fused_layers=fused_layers)
    assert not model.config.is_official_encoder()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        low, iou = model(**inputs)
    out = model.save_pretrained(tmp_path / "ckpt")
    loaded = EvfSam.from_pretrained(out)
    assert (loaded.config.fusion, loaded.config.feature, loaded.config.fused_layers) == (fusion, feature, fused_layers)
    with torch.no_grad():
        low2, iou2 = loaded(**inputs)
    assert torch.equal(low, low2) and torch.equal(iou, iou2)


def test_late_fusion_projector_width_is_derived():
    early = build_tiny_model(seed=0)
    late = build_tiny_model(seed=0, fusion="late")  # concat of text and image [CLS]
    assert late.projector.in_dim == 2 * early.projector.in_dim


def test_impossible_combination_fails_at_build():
    with pytest.raises(ValueError, match="fused_layers"):
        build_tiny_model(seed=0, fusion="late", fused_layers=1)


def test_fused_layers_only_through_early_k():
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam

    for fusion in ("early", "late"):  # "early" is the official path: it must not build early_k unannounced
        config = EvfSamConfig(sam_variant="tiny", encoder="beit3_tiny", fusion=fusion,
                              encoder_overrides={"fused_layers": 1})
        with pytest.raises(ValueError, match="fusion='early_k' \\+ fused_layers=K, not through overrides"):
            build_evf_sam(config)
