#!/usr/bin/env python
"""Cheap multimodal pre-training of a pilot's tiny BEiT-3 (research tool for the Tab. 3 pilot).

The paper's argument for early fusion is that BEiT-3 is multimodally *pre-trained*; a pilot's tiny BEiT-3
starts from random weights. This gives the tiny encoder the same two image-text objectives of that kind
(before any segmentation), on the pilot's synthetic training images and their expressions:

- masked language modelling with the image in the sequence (one text token per expression replaced by
  ``<mask>``, predicted from its fused hidden state; BEiT-3's image-text masked data modelling);
- image-text matching on the fused vision [CLS] (half of the expressions paired with another image,
  `itm_pairs`);
- with ``--cls-mlm``: the fused vision [CLS] also predicts the masked word (matched pairs), so the read-out
  that prompts SAM under early fusion is itself trained to combine the text with the image (MLM alone
  trains only the masked text position; the [CLS] gets no other signal when ITM stays at chance).

Then every fusion variant of the pilot fine-tunes from the same weights (``model.encoder_checkpoint``)::

    python scripts/pretrain_pilot_encoder.py OUT +experiment=pilot_base data.root=data/synthetic_grounded
    python scripts/train.py +experiment=pilot_table3 seed=0,1,2 model.encoder_checkpoint=OUT/encoder.pth \
        model.tokenizer=OUT/tokenizer model.make_tiny_tokenizer=false +model.encoder_overrides.vocab_size=<V>

(``V`` is printed, and written to OUT/pretrain.json.) Writes ``OUT/encoder.pth`` (``{"model":
{"beit3.<name>": tensor}}``, the BEiT-3 .pth layout `load_beit3_state_dict` reads), ``OUT/tokenizer/`` and
``OUT/pretrain.json`` (settings, final losses and accuracies).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def itm_pairs(image_index, n_images: int, gen):
    """Image-text matching pairs: (N,) image index each expression is shown with, (N,) 1 = its own image.

    Half of the expressions (N // 2, chosen at random) see another image of the batch: an expression of
    image i is written for i, so any other image j != i is a negative (a few may still fit by chance,
    e.g. "the red one" where j has a single red shape too). Needs n_images >= 2."""
    import torch

    n = image_index.shape[0]
    match = torch.ones(n, dtype=torch.long)
    swap = torch.randperm(n, generator=gen)[: n // 2]
    seen = image_index.clone()
    seen[swap] = (image_index[swap] + torch.randint(1, n_images, (len(swap),), generator=gen)) % n_images
    match[swap] = 0
    return seen, match


def pretrain(out: Path, overrides: list[str], *, steps: int, batch_size: int, lr: float, seed: int,
             log_every: int = 50, cls_mlm: bool = False) -> dict:
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir

    import evf_sam.config  # noqa: F401
    from evf_sam.atomic import atomic_write_text
    from evf_sam.config import typed
    from evf_sam.data.build import build_train_dataset, prepare_data, tokenizer_corpus
    from evf_sam.engine.build import build_model_and_tokenizer
    from evf_sam.models.beit3 import BEiT3, save_beit3_state_dict

    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "fusion=early", f"seed={seed}"])
    data, model_cfg = typed(cfg.data), typed(cfg.model)
    prepare_data(data)
    torch.manual_seed(seed)
    model, tokenizer, tok_dir = build_model_and_tokenizer(model_cfg, out, tokenizer_sentences=tokenizer_corpus(data))
    enc = model.encoder
    if not isinstance(enc, BEiT3):
        raise ValueError(f"encoder {model_cfg.encoder!r} is not a BEiT-3")
    ds = build_train_dataset(data, model, tokenizer, seed=seed, with_sam_images=False)
    width, vocab = enc.config.embed_dim, len(tokenizer)
    mlm_head, itm_head = torch.nn.Linear(width, vocab), torch.nn.Linear(width, 2)
    heads = [mlm_head, itm_head]
    if cls_mlm:  # made only when used: its init draws from the global RNG, which dropout reads next
        cls_head = torch.nn.Linear(width, vocab)
        heads.append(cls_head)
    params = [*enc.parameters(), *(p for h in heads for p in h.parameters())]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    gen = torch.Generator().manual_seed(seed)
    enc.train()
    hist: list[dict] = []
    t0 = time.time()
    for step in range(steps):
        batch = ds.collate([ds[step * batch_size + j] for j in range(batch_size)])
        ids, pad = batch.text_ids.clone(), batch.text_padding_mask
        n = ids.shape[0]
        # one maskable position per expression: not <s>, </s> or padding
        lengths = (~pad).sum(1)
        pos = 1 + (torch.rand(n, generator=gen) * (lengths - 2).clamp(min=1)).long()
        target = ids[torch.arange(n), pos]
        ids[torch.arange(n), pos] = tokenizer.mask_token_id
        seen, match = itm_pairs(batch.image_index, batch.beit_images.shape[0], gen)
        images = batch.beit_images[seen]
        out_ = BEiT3.forward(enc, text_ids=ids, text_padding_mask=pad, image=images)
        s = out_.multiway_split_position
        text_h = out_.hidden[:, s:]
        mlm_logits = mlm_head(text_h[torch.arange(n), pos])
        itm_logits = itm_head(out_.hidden[:, 0])
        mlm = F.cross_entropy(mlm_logits, target)
        itm = F.cross_entropy(itm_logits, match)
        loss = mlm + itm
        if cls_mlm:  # the vision [CLS] also predicts the masked word (matched pairs only): it must read both
            keep = match.bool()
            cls_logits = cls_head(out_.hidden[keep, 0])
            cmlm = F.cross_entropy(cls_logits, target[keep])
            loss = loss + cmlm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist.append({"mlm": mlm.item(), "itm": itm.item(), **({"cls_mlm": cmlm.item(), "cls_mlm_acc": (
                         cls_logits.argmax(-1) == target[keep]).float().mean().item()} if cls_mlm else {}),
                     "mlm_acc": (mlm_logits.argmax(-1) == target).float().mean().item(),
                     "itm_acc": (itm_logits.argmax(-1) == match).float().mean().item()})
        if (step + 1) % log_every == 0:
            last = hist[-log_every:]
            avg = {k: sum(h[k] for h in last) / len(last) for k in last[0]}
            print(f"step {step + 1}/{steps}: " + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    save_beit3_state_dict(enc, out / "encoder.pth")
    last = hist[-min(len(hist), 100):]
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "cls_mlm": cls_mlm,
               "overrides": overrides,
               "vocab_size": vocab, "tokenizer": str(tok_dir), "seconds": round(time.time() - t0, 1),
               "final": {k: sum(h[k] for h in last) / len(last) for k in last[0]}}
    atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output directory (encoder.pth, tokenizer/, pretrain.json)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml (e.g. +experiment=pilot_base)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (expressions: up to k per image)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--cls-mlm", action="store_true",
                   help="the fused vision [CLS] also predicts the masked word (trains the early-fusion read-out)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = pretrain(args.out, args.overrides, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                 log_every=args.log_every, cls_mlm=args.cls_mlm)
    print(json.dumps(s["final"]), f"vocab_size={s['vocab_size']}", f"wrote {args.out / 'encoder.pth'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
