"""Small, stable helpers for tests (ours and other modules'): a tiny EVF-SAM, a tiny tokenizer,
official-format checkpoint directories written from a model, and the seeded reference weights and
images of the official-parity fixtures (`parity_state_dict`, `parity_image`, `write_parity_checkpoint`).

    tok_dir = make_tokenizer(tmp_path / "tok")
    model = build_tiny_model(seed=0)                        # tiny SAM (256 px) + beit3_tiny (32 px)
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir)   # fp16 pytorch_model.bin
    EvfSam.from_pretrained(ckpt)

Tiny sizes: SAM input 256 -> 16x16 image embedding, prompt dim 32, low-res masks 64x64; BEiT-3 at
32 px, width 64, 2 layers, text up to 64 tokens, text embedding 1000 rows (enough for
`make_tokenizer`'s vocabulary).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from evf_sam.models.checkpoint import official_config, official_state_dict, write_checkpoint_dir
from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam

__all__ = ["PARITY_FAMILIES", "TINY_SENTENCES", "build_tiny_model", "make_tokenizer", "parity_config",
           "parity_image", "parity_official_config", "parity_shapes", "parity_state_dict", "parity_tensor",
           "state_dict_sha256", "tiny_config", "tiny_inputs", "write_official_checkpoint", "write_parity_checkpoint",
           "video_clip", "video_parity_state_dict", "force_object_present",
           "write_parity_refer"]

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SHAPES = ("circle", "square", "triangle", "star", "ellipse", "rectangle")
_WHERE = ("on the left", "on the right", "at the top", "at the bottom", "in the middle",
          "next to the big one", "below the small one", "above everything")
_SIZES = ("big", "small", "large", "tiny")
TINY_SENTENCES: tuple[str, ...] = tuple(
    f"the {z} {c} {s} {w}" for z in _SIZES for c in _COLOURS for s in _SHAPES for w in _WHERE
)


def tiny_config(vocab_size: int | None = None, **overrides) -> EvfSamConfig:
    """tiny SAM + beit3_tiny; ``vocab_size`` sets the BEiT-3 text embedding rows (>= len(tokenizer)).
    ``sam_variant="efficient_sam_tiny"`` / ``"sam2_tiny"`` swap in the other SAM families at toy size."""
    enc = {} if vocab_size is None else {"vocab_size": int(vocab_size)}
    overrides.setdefault("sam_variant", "tiny")
    return EvfSamConfig(encoder="beit3_tiny", encoder_overrides=enc, **overrides)


def build_tiny_model(seed: int = 0, vocab_size: int | None = None, **overrides) -> EvfSam:
    """A randomly initialised tiny EvfSam (eval mode, float32), deterministic in ``seed``.

    SAM initialises ``no_mask_embed`` / tokens with N(0, 1) but leaves the rest to PyTorch defaults,
    so outputs are small but not degenerate.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_evf_sam(tiny_config(vocab_size, **overrides)).eval()


def make_tokenizer(out_dir: str | Path, vocab_size: int = 128) -> Path:
    """Trains a tiny XLM-R-layout sentencepiece tokenizer on `TINY_SENTENCES`; returns the dir."""
    from evf_sam.tokenizer import train_sentencepiece

    return train_sentencepiece(TINY_SENTENCES, out_dir, vocab_size)


def tiny_inputs(model: EvfSam, n_images: int = 2, n_prompts: int = 3, text_len: int = 6,
                seed: int = 0) -> dict[str, Tensor]:
    """Random inputs for ``model.forward`` / the three stages (keys = forward's argument names).

    sam_images (B, 3, S, S), beit_images (B, 3, 32, 32), text_ids (N, T) starting with <s>,
    ending in </s> then <pad> (prompt i has T - i real tokens), text_padding_mask (N, T),
    image_index (N,) = [0, 1, ..., 0, 1, ...] modulo B.
    """
    g = torch.Generator().manual_seed(seed)
    s, b = model.sam_image_size, model.beit_image_size
    vocab = model.encoder.config.vocab_size if hasattr(model.encoder, "config") else 100
    ids = torch.randint(4, min(vocab, 60), (n_prompts, text_len), generator=g)
    pad = torch.zeros(n_prompts, text_len, dtype=torch.bool)
    ids[:, 0] = 0
    for i in range(n_prompts):
        n = max(3, text_len - i)
        ids[i, n - 1] = 2
        ids[i, n:] = 1
        pad[i, n:] = True
    return {
        "sam_images": torch.randn(n_images, 3, s, s, generator=g),
        "beit_images": torch.randn(n_images, 3, b, b, generator=g).clamp(-1, 1),
        "text_ids": ids,
        "text_padding_mask": pad,
        "image_index": torch.arange(n_prompts) % n_images,
    }


def write_official_checkpoint(out_dir: str | Path, model: EvfSam, tokenizer_dir: str | Path | None = None,
                              dtype: torch.dtype = torch.float16, fmt: str = "bin") -> Path:
    """Writes ``model`` as the official release does: official tensor names, weights cast to
    ``dtype``, official config.json (plus our tiny-model fields), tokenizer files.

    fmt: "bin" (pytorch_model.bin, like the official release), "safetensors" (model.safetensors),
    "sharded" (pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json),
    "sharded_safetensors" (model-0000i-of-0000n.safetensors + model.safetensors.index.json).
    """
    return write_checkpoint_dir(out_dir, config=official_config(model, dtype),
                                state=official_state_dict(model, dtype), tokenizer_dir=tokenizer_dir, fmt=fmt)


# ---------------------------------------------------------------------------------------------
# Official-parity reference weights and images (tests/test_official_parity.py,
# scripts/make_official_goldens.py). Both sides create them from these functions alone, so the
# weights never need to be stored: every tensor comes from a torch.Generator seeded by its
# official name, and every image from integer arithmetic.

PARITY_TAG = "evf-sam-official-parity-v1"  # part of every tensor's seed: change it to change all weights
# family -> (official "architectures", official "sam_scale", our sam_variant): the smallest architecture
# each official model class builds (EvfSamModel builds only "huge"; the generator script swaps in the
# vendored ViT-B builder, see its docstring), all with BEiT-3-Base ("mm_extractor_scale": "base").
PARITY_FAMILIES: dict[str, tuple[str, str, str]] = {
    "sam": ("EvfSamModel", "base", "vit_b"),
    "effi": ("EvfEffiSamModel", "tiny", "efficient_sam_t"),
    "sam2": ("EvfSam2Model", "tiny", "sam2_hiera_t"),
}
# nn.Embedding-like weights (rows are looked up, not multiplied): unit scale, not 1/sqrt(fan_in)
_EMBEDDING = re.compile(r"(text_embed|embed_positions\.[AB]|point_embeddings(\.\d+)?|not_a_point_embed|no_mask_embed|"
                        r"iou_token|mask_tokens|obj_score_token|invalid_points|bbox_\w+_embeddings)\.weight$")
# Gains on top of 1/sqrt(fan_in) (std = gain / sqrt(fan_in)). They make the text decide the mask: BEiT-3's
# vision [CLS] attends more sharply (q / k) and carries what it reads (v / out): another prompt moves its
# [CLS] feature by ~35 % (gain 1: ~10 %; q / k gain 2.5 reaches ~120 % but makes the fp32 result
# ill-conditioned, rel. error 3e-4 against fp64, more than the parity tolerance allows); the projected
# prompt token is large next to SAM's learned tokens, and the mask logits are far from 0 (a stable
# single mask, so SAM-2's stability fallback keeps it and it differs from the best of 3).
_GAINS: tuple[tuple[re.Pattern, float], ...] = (
    (re.compile(r"mm_extractor\.beit3\.encoder\.layers\.\d+\.self_attn\.[qk]_proj\.[AB]\.weight$"), 1.5),
    (re.compile(r"mm_extractor\.beit3\.encoder\.layers\.\d+\.self_attn\.(v|out)_proj\.[AB]\.weight$"), 1.5),
    (re.compile(r"text_hidden_fcs\.0\.2\.weight$"), 4.0),
    (re.compile(r"output_hypernetworks_mlps\.\d+\.(layers\.2|fc)\.weight$"), 4.0),
)


def _parity_range(name: str, shape: Sequence[int]) -> tuple[float, float]:
    """(centre, half width) of the uniform distribution of the tensor ``name`` (an official name)."""
    last = name.rsplit(".", 1)[-1]
    if last == "bias":
        return 0.0, 0.1
    if last == "weight" and len(shape) <= 1:  # norm gains, layer scales
        return 1.0, 0.25
    if last == "weight" and _EMBEDDING.search(name):
        return 0.0, math.sqrt(3.0)  # std 1
    if last == "weight":
        fan_in = max(1, math.prod(int(d) for d in shape[1:]))
        gain = next((g for pat, g in _GAINS if pat.search(name)), 1.0)
        return 0.0, gain * math.sqrt(3.0 / fan_in)
    if last == "positional_encoding_gaussian_matrix":
        return 0.0, math.sqrt(3.0)  # SAM's own init: N(0, 1)
    return 0.0, 0.5 * math.sqrt(3.0)  # position tables, [CLS] / mask tokens, SAM-2's no_mem_* ...: std 0.5


def parity_tensor(name: str, shape: Sequence[int]) -> Tensor:
    """The reference value (float32) of the tensor with official name ``name``: uniform, from a
    ``torch.Generator`` seeded by sha256(PARITY_TAG + name), scaled by `_parity_range`."""
    seed = int.from_bytes(hashlib.sha256(f"{PARITY_TAG}:{name}".encode()).digest()[:8], "little") >> 1
    g = torch.Generator().manual_seed(seed)
    centre, half = _parity_range(name, shape)
    u = torch.rand(tuple(int(d) for d in shape), generator=g, dtype=torch.float32)
    return u.mul_(2.0 * half).add_(centre - half)


def parity_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """{official name: float32 tensor} for every name in ``shapes`` (e.g. `parity_shapes(family)`)."""
    return {k: parity_tensor(k, v) for k, v in shapes.items()}


def state_dict_sha256(state: Mapping[str, Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, sorted by name."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parity_config(family: str) -> EvfSamConfig:
    """Our config of the parity model of ``family`` ("sam", "effi", "sam2")."""
    return EvfSamConfig(sam_variant=PARITY_FAMILIES[family][2], encoder="beit3_base")


def parity_official_config(family: str) -> dict:
    """config.json as the official release writes it (transformers 4 schema; official fields only)."""
    arch, sam_scale, _ = PARITY_FAMILIES[family]
    return {"architectures": [arch], "bos_token_id": 0, "eos_token_id": 2, "hidden_size": 768,
            "mm_extractor_scale": "base", "model_type": "evf", "out_dim": 256, "pad_token_id": 1,
            "sam_scale": sam_scale, "tie_word_embeddings": False, "torch_dtype": "float16",
            "transformers_version": "4.31.0"}


def parity_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """{official name: shape} of the parity model of ``family``, from our model built on the meta device."""
    from evf_sam.models.checkpoint import to_official_name

    with torch.device("meta"):
        model = build_evf_sam(parity_config(family))
    return {to_official_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


def write_parity_checkpoint(out_dir: str | Path, family: str, tokenizer_dir: str | Path,
                            shapes: Mapping[str, Sequence[int]] | None = None,
                            state: Mapping[str, Tensor] | None = None) -> Path:
    """The official-format directory of the parity model: `parity_official_config`, fp16
    ``pytorch_model.bin`` of `parity_state_dict` (official names; or ``state``, e.g.
    `video_parity_state_dict`), the tokenizer files."""
    if state is None:
        state = parity_state_dict(shapes or parity_shapes(family))
    state = {k: v.to(torch.float16) for k, v in state.items()}
    return write_checkpoint_dir(out_dir, config=parity_official_config(family), state=state,
                                tokenizer_dir=tokenizer_dir, fmt="bin")


# SAM-2's object-score head decides whether the tracked object is in a frame at all; where it says no,
# the frame's logits are the constant -1024 (NO_OBJ_SCORE) whatever the prompt. Random weights (the
# seeded parity ones, the tiny test models) score about -0.5 on every frame after the prompt frame, so
# every propagated mask would be empty and no comparison could tell two prompts apart. The video
# fixtures therefore set this one bias (the head's output) to +4: the object is present on every frame.
OBJ_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"  # SAM2Base name
VIDEO_OBJ_SCORE_BIAS = 4.0


def video_parity_state_dict(shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Tensor]:
    """`parity_state_dict` of the EVF-SAM2 parity model with the object-score output bias at
    `VIDEO_OBJ_SCORE_BIAS` (official names; tests/test_video.py, scripts/make_official_video_golden.py)."""
    state = parity_state_dict(shapes or parity_shapes("sam2"))
    state[f"visual_model.{OBJ_SCORE_BIAS}"] = torch.full((1,), VIDEO_OBJ_SCORE_BIAS)
    return state


def force_object_present(model: EvfSam, bias: float = VIDEO_OBJ_SCORE_BIAS) -> EvfSam:
    """Sets an EVF-SAM2 model's object-score output bias (see `VIDEO_OBJ_SCORE_BIAS`); returns the model."""
    with torch.no_grad():
        model.sam.get_parameter(OBJ_SCORE_BIAS).fill_(bias)
    return model


def parity_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: colour gradients, a few flat discs and rectangles, and hash noise. Integer
    arithmetic only, so it is the same on every machine and numpy version."""
    y = np.arange(height, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    img = np.empty((height, width, 3), dtype=np.int64)
    img[..., 0] = x * 255 // max(width - 1, 1)
    img[..., 1] = y * 255 // max(height - 1, 1)
    img[..., 2] = (x + y) * 255 // max(width + height - 2, 1)
    palette = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 30), (160, 40, 200), (250, 140, 20))
    r = max(2, min(height, width) // 5)
    for k in range(4):
        cy, cx = (seed * 97 + k * 131 + 7) % height, (seed * 61 + k * 197 + 11) % width
        colour = np.array(palette[(seed + k) % len(palette)], dtype=np.int64)
        if k % 2 == 0:
            inside = (y - cy) ** 2 + (x - cx) ** 2 <= (r + k) ** 2
        else:
            inside = (abs(y - cy) <= r // 2 + k) & (abs(x - cx) <= r + k)
        img[inside] = colour
    for c in range(3):
        noise = ((x * 73856093) ^ (y * 19349663) ^ ((c + 1) * 83492791) ^ (seed * 2654435761)) % 41 - 20
        img[..., c] += noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_parity_refer(root: str | Path, images: Sequence[Mapping]) -> Path:
    """A tiny RefCOCO (unc) in the exact REFER layout for the evaluation-parity fixtures: every image
    is `parity_image(height, width, seed)` (PNG, lossless), every ref a polygon annotation with the
    given sentences, all in split "val"; refs ordered by ref_id within each image.

    ``images``: ``[{"image_id", "height", "width", "seed", "refs": [[sentence, ...], ...]}, ...]``.
    Returns ``root``.
    """
    from PIL import Image

    from evf_sam.data.refer import IMAGE_DIRS, refer_dir, write_refer

    root = Path(root)
    img_dir = refer_dir(root) / IMAGE_DIRS["refcoco"]
    img_dir.mkdir(parents=True, exist_ok=True)
    infos, anns, refs = [], [], []
    sent_id = 0
    for spec in images:
        iid, h, w = int(spec["image_id"]), int(spec["height"]), int(spec["width"])
        name = f"COCO_train2014_{iid:012d}.png"
        Image.fromarray(parity_image(h, w, int(spec["seed"]))).save(img_dir / name)
        infos.append({"id": iid, "file_name": name, "height": h, "width": w})
        for k, sentences in enumerate(spec["refs"]):
            ann_id, ref_id = iid * 100 + k, iid * 100 + k
            if k % 2 == 0:  # a quadrilateral over the left part, a triangle on the right
                poly = [0.1 * w, 0.2 * h, 0.55 * w, 0.1 * h, 0.6 * w, 0.8 * h, 0.05 * w, 0.9 * h]
            else:
                poly = [0.5 * w, 0.95 * h, 0.95 * w, 0.3 * h, 0.9 * w, 0.95 * h]
            poly = [round(float(v), 2) for v in poly]
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": ann_id, "image_id": iid, "category_id": 1, "segmentation": [poly], "iscrowd": 0,
                         "area": 0.0, "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
            sents = []
            for s in sentences:
                sents.append({"sent_id": sent_id, "sent": s, "raw": s, "tokens": s.split()})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": iid, "category_id": 1, "split": "val",
                         "file_name": name, "sent_ids": [x["sent_id"] for x in sents], "sentences": sents})
    write_refer(root, "refcoco", "unc", images=infos, annotations=anns,
                categories=[{"id": 1, "name": "thing", "supercategory": "thing"}], refs=refs)
    return root


def video_clip(n_frames: int, height: int, width: int, seed: int = 0, *, radius: int | None = None,
               background: str = "parity") -> tuple[list[np.ndarray], np.ndarray]:
    """A clip of a red disc moving left to right (tests/test_video.py, scripts/make_official_video_golden.py).

    Frame t: the disc's centre is at row ``height // 2``, column ``width // 4 + t * (width // 2) //
    max(n_frames - 1, 1)`` (integer arithmetic only). ``background``: "parity" (`parity_image` of the
    clip's size and ``seed``, the same every frame) or "flat" (mid grey).
    -> frames: T arrays (H, W, 3) uint8; masks: (T, H, W) bool, the disc in each frame.
    """
    if background == "parity":
        base = parity_image(height, width, seed).astype(np.int64)
    elif background == "flat":
        base = np.full((height, width, 3), 128, dtype=np.int64)
    else:
        raise ValueError(f"background must be 'parity' or 'flat', got {background!r}")
    r = radius if radius is not None else max(2, min(height, width) // 5)
    y = np.arange(height, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    frames, masks = [], []
    for t in range(n_frames):
        cy, cx = height // 2, width // 4 + t * (width // 2) // max(n_frames - 1, 1)
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        img = base.copy()
        img[inside] = (235, 25, 25)
        frames.append(img.astype(np.uint8))
        masks.append(inside)
    return frames, np.stack(masks)


def load_script(name: str):
    """``scripts/<name>.py`` of this checkout as a module (registered in sys.modules, where dataclasses
    look their module up), for tests of the scripts' functions."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
