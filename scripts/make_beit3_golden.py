"""Write tests/fixtures/beit3_golden.pt: torchscale's BEiT3 outputs on tiny random weights.

Needs torchscale (0.3.0) + fairscale, which evf-sam itself never imports. The torchscale config
mirrors the official BEiT-3 repository (``beit3/modeling_utils.py: _get_base_config``):
multiway=True, layernorm_embedding=False, normalize_output=True, no_output_layer=True, and
torchscale's defaults subln=True, encoder_normalize_before=True, no_scale_embedding=True,
activation_fn="gelu", layernorm_eps=1e-5 -- only the sizes are shrunk.

    python scripts/make_beit3_golden.py [--out tests/fixtures/beit3_golden.pt]

The fixture holds the state dict (torchscale names, no ``beit3.`` prefix), our BEiT3Config
fields, the torchscale config, inputs and fp32 eval-mode outputs of text-only, image-only and
fused (padded text) runs. tests/test_beit3.py checks our BEiT3 against it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

SEED = 1234
# Tiny sizes; keys are BEiT3Config fields (evf_sam.models.beit3).
OUR_CONFIG = dict(
    embed_dim=32, depth=2, num_heads=4, ffn_dim=64, img_size=16, patch_size=8, in_chans=3,
    vocab_size=100, max_text_positions=16, layernorm_eps=1e-5,
)
PAD_ID = 1


def torchscale_config() -> dict:
    c = OUR_CONFIG
    return dict(
        # as in the official _get_base_config / _get_large_config
        img_size=c["img_size"], patch_size=c["patch_size"], vocab_size=c["vocab_size"],
        multiway=True, layernorm_embedding=False, normalize_output=True, no_output_layer=True,
        drop_path_rate=0.0, encoder_embed_dim=c["embed_dim"],
        encoder_attention_heads=c["num_heads"], encoder_ffn_embed_dim=c["ffn_dim"],
        encoder_layers=c["depth"], checkpoint_activations=None,
        # torchscale defaults the official config relies on, spelled out
        subln=True, encoder_normalize_before=True, no_scale_embedding=True,
        activation_fn="gelu", layernorm_eps=c["layernorm_eps"], in_chans=c["in_chans"],
        max_source_positions=c["max_text_positions"], dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "tests/fixtures/beit3_golden.pt")
    args = ap.parse_args()

    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3 as TorchscaleBEiT3

    torch.manual_seed(SEED)
    ts_cfg = torchscale_config()
    model = TorchscaleBEiT3(EncoderConfig(**ts_cfg)).eval()
    with torch.no_grad():
        # Perturb every parameter (LayerNorm weights/biases, [CLS]/mask tokens, position tables
        # included) so that no part is trivially identity or zero.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)

    # Right-padded prompts of lengths 7, 4, 2: <s> tokens </s> <pad>...
    lengths = [7, 4, 2]
    t = max(lengths)
    text_ids = torch.full((len(lengths), t), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        text_ids[i, 0] = 0
        text_ids[i, 1 : n - 1] = torch.randint(3, OUR_CONFIG["vocab_size"], (n - 2,))
        text_ids[i, n - 1] = 2
    text_padding_mask = text_ids == PAD_ID
    s = OUR_CONFIG["img_size"]
    image = torch.randn(len(lengths), 3, s, s).clamp(-1, 1)

    with torch.no_grad():
        text_out = model(textual_tokens=text_ids, text_padding_position=text_padding_mask)
        image_out = model(visual_tokens=image)
        fused_out = model(textual_tokens=text_ids, visual_tokens=image,
                          text_padding_position=text_padding_mask)

    golden = {
        "config": OUR_CONFIG,
        "torchscale_config": ts_cfg,
        "seed": SEED,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "inputs": {"text_ids": text_ids, "text_padding_mask": text_padding_mask, "image": image},
        "outputs": {
            "text": text_out["encoder_out"].clone(),
            "image": image_out["encoder_out"].clone(),
            "fused": fused_out["encoder_out"].clone(),
        },
        "multiway_split_position": {
            "text": text_out["multiway_split_position"],
            "image": image_out["multiway_split_position"],
            "fused": fused_out["multiway_split_position"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KB, "
          f"{sum(v.numel() for v in golden['state_dict'].values())} parameters)")


if __name__ == "__main__":
    main()
