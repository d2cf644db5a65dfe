#!/usr/bin/env python
"""Is the fast SAM encoder's fp32 path the reference's? (the EvfSamConfig.sam_encoder default rests on it)

    nice -n 10 python benchmarks/sam_encoder_fp32_parity.py      # ~3-4 GB RAM, ~2 SAM-H forwards of CPU

SAM-H image encoder (segment-anything vit_h architecture), random weights (rel-pos and abs-pos tables
random too, not zero), one 1024x1024 random input: segment-anything's ImageEncoderViT vs
FastImageEncoderViT on the same weights, both fp32, CPU. Built block by block (the encoder's forward is
patch_embed -> + pos_embed -> blocks -> neck, run here in that order for both), so only one block's
weights are in memory at a time."""
import time

import torch
from functools import partial
from segment_anything.modeling.image_encoder import ImageEncoderViT
from evf_sam.models.sam_encoder import FastImageEncoderViT, _layer_norm_2d
torch.set_num_threads(2)
kw = dict(depth=32, embed_dim=1280, img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
          num_heads=16, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[7, 15, 23, 31],
          window_size=14, out_chans=256)
def piece(depth_slice):
    """An ImageEncoderViT of vit_h's width whose blocks are blocks[depth_slice] of the real one."""
    torch.manual_seed(1000 + depth_slice)
    g = [i - depth_slice for i in kw["global_attn_indexes"] if i == depth_slice]
    enc = ImageEncoderViT(**{**kw, "depth": 1, "global_attn_indexes": g}).eval()
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "rel_pos" in n or "pos_embed" in n:
                p.normal_(0, 0.02)
    return enc, FastImageEncoderViT.from_reference(enc, share=True).eval()
torch.manual_seed(0)
x = torch.randn(1, 3, 1024, 1024)
t_ref = t_fast = 0.0
with torch.no_grad():
    first, first_f = piece(0)
    a = first.patch_embed(x) + first.pos_embed
    b = first_f.patch_embed(x) + first_f.pos_embed
    for i in range(32):
        ref, fast = (first, first_f) if i == 0 else piece(i)
        t = time.perf_counter(); a = ref.blocks[0](a); t_ref += time.perf_counter() - t
        t = time.perf_counter(); b = fast.blocks[0](b); t_fast += time.perf_counter() - t
        print(f"block {i:2d} ({'global' if ref.blocks[0].window_size == 0 else 'window'}): max |diff| {(a - b).abs().max():.2e} (max |x| {a.abs().max():.1f})", flush=True)
        last, last_f = ref, fast
    a = last.neck(a.permute(0, 3, 1, 2))
    b = last_f.neck[0](b.permute(0, 3, 1, 2))
    b = _layer_norm_2d(last_f.neck[3], last_f.neck[2](_layer_norm_2d(last_f.neck[1], b)))
d = (a - b).abs()
print(f"SAM-H fp32 embedding {tuple(a.shape)}: max |ref| {a.abs().max():.3f}, max |diff| {d.max():.3e}, mean |diff| {d.mean():.3e}")
print(f"blocks time: reference {t_ref:.1f} s, fast {t_fast:.1f} s (loaded shared machine, nice)")
