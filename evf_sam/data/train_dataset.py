"""Training data: a seeded, resumable sampler over a mix of REFER datasets.

    ds = ReferTrainDataset(root, sources={"refcoco": ("refcoco", "unc", 1.0), ...}, tokenizer=tok, ...)
    sampler = StepBatchSampler(micro_batch_size=16, grad_accum=2, rank=r, world_size=w, start_step=k)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=4)

Every training sample is a pure function of ``(seed, global sample index)``: which dataset (by the
configured sample rates), which image, which of its sentences (up to ``sentences_per_image``, drawn
without replacement from all sentences of the image's refs, as LISA). The sampler hands out global
indices ``((step * grad_accum + micro) * world + rank) * micro_batch + i``, so resuming at step k
only needs k: no sampler state to save, and the order is the same at any number of workers.

Images in the val / test splits of every RefCOCO-family split (``EXCLUDE_SPLITS``) are removed from
the training pool of every source; the count is logged.

Semantic-segmentation sources (paper Tab. 6: ADE20K, Mapillary Vistas; `evf_sam.data.semantic`) join
the mix through ``semantic_sources``: their rates are normalised together with the REFER rates, and a
sample drawn from one is up to ``classes_per_image`` classes present in an image, each as the
expression ``"[semantic] <class name>"`` with its mask. Without semantic sources every sample is
exactly what it was before they existed (same random draws).

`RandomTrainDataset` (``data.kind=random``) gives random images / masks / sentences of the same
shapes with no files at all: for benchmarks and trainer tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from evf_sam.data.batch import Batch
from evf_sam.data.eval_dataset import EvalItem, ImageEntriesDataset

__all__ = ["EXCLUDE_SPLITS", "REFCLEF_ID_OFFSET", "RandomEvalDataset", "RandomTrainDataset", "ReferTrainDataset",
           "StepBatchSampler", "Source", "check_refer_root", "collate_samples"]

logger = logging.getLogger(__name__)

# (dataset, splitBy): their non-train images never enter training (any source).
EXCLUDE_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco", "unc"), ("refcoco", "google"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google"),
)
# RefCLEF (saiapr) ids live in another numbering than COCO's: offset them in Batch.image_ids (cache keys).
REFCLEF_ID_OFFSET = 10**9
DATA_README = "data/README.md"


@dataclass(frozen=True)
class Source:
    name: str  # config key, e.g. "refcoco_plus"
    dataset: str  # REFER dataset dir: refcoco | refcoco+ | refcocog | refclef
    split_by: str  # unc | google | umd | berkeley
    rate: float  # relative sampling rate (normalised over sources)
    split: str = "train"


def _refs_file(root: Path, dataset: str, split_by: str) -> Path:
    return root / "refer_seg" / dataset / f"refs({split_by}).p"


def check_refer_root(root: str | Path, sources: Sequence[Source]) -> None:
    """Raises FileNotFoundError naming every missing file / directory (before any model is built)."""
    root = Path(root)
    missing = []
    if not (root / "refer_seg").is_dir():
        missing.append(str(root / "refer_seg") + "/")
    for s in sources:
        for f in (root / "refer_seg" / s.dataset / "instances.json", _refs_file(root, s.dataset, s.split_by)):
            if not f.is_file():
                missing.append(str(f))
        img = root / "refer_seg" / "images" / ("saiapr_tc-12" if s.dataset == "refclef" else "mscoco/images/train2014")
        if not img.is_dir():
            missing.append(str(img) + "/")
    if missing:
        missing = list(dict.fromkeys(missing))
        raise FileNotFoundError(
            f"data.root={str(root)!r} lacks {len(missing)} file(s) the training mix needs:\n  "
            + "\n  ".join(missing)
            + f"\nSee {DATA_README} for how to download and lay out RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF "
              "(or train on synthetic data: data=synthetic)."
        )


# ---------------------------------------------------------------------------------------------
# Sampling


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of global sample indices from ``start_step`` to ``total_steps``."""

    def __init__(self, *, micro_batch_size: int, grad_accum: int, rank: int, world_size: int,
                 total_steps: int, start_step: int = 0):
        self.mbs, self.gas, self.rank, self.world = micro_batch_size, grad_accum, rank, world_size
        self.total_steps, self.start_step = total_steps, start_step

    def indices(self, step: int, micro: int) -> list[int]:
        base = ((step * self.gas + micro) * self.world + self.rank) * self.mbs
        return list(range(base, base + self.mbs))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.gas):
                yield self.indices(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.gas


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


# ---------------------------------------------------------------------------------------------
# Samples and collate


def collate_samples(samples: list[dict[str, Any]], tokenizer, max_text_len: int, encoder: str = "beit3_large") -> Batch:
    """Samples (one image, k sentences + masks each) -> `Batch` (B images, N = Σk expressions)."""
    from evf_sam.models.encoders import tokenize_for_encoder

    sentences, index, masks = [], [], []
    for b, s in enumerate(samples):
        sentences += s["sentences"]
        index += [b] * len(s["sentences"])
        masks.append(s["masks"])
    ids, pad = tokenize_for_encoder(encoder, tokenizer, sentences, max_text_len)
    return Batch(
        sam_images=torch.stack([s["sam_image"] for s in samples]),
        beit_images=torch.stack([s["beit_image"] for s in samples]),
        text_ids=ids,
        text_padding_mask=pad,
        image_index=torch.tensor(index, dtype=torch.long),
        gt_masks=torch.cat(masks).float(),
        input_sizes=torch.tensor([s["input_size"] for s in samples], dtype=torch.long),
        original_sizes=torch.tensor([s["original_size"] for s in samples], dtype=torch.long),
        image_ids=[int(s["image_id"]) for s in samples],
    )


class _TrainBase(Dataset):
    """Index -> sample; subclasses implement ``_sample(rng)``. Infinite: any index >= 0 is valid."""

    tokenizer: Any
    max_text_len: int
    encoder: str = "beit3_large"  # decides the tokenisation (models.encoders.tokenize_for_encoder)
    with_sam_images: bool = True

    def __len__(self) -> int:  # DataLoader needs one; the batch sampler decides what is read
        return 2**62

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        return collate_samples(samples, self.tokenizer, self.max_text_len, self.encoder)


class RandomTrainDataset(_TrainBase):
    """Random images, random rectangle masks, sentences from a fixed list: no files (benchmarks, tests)."""

    def __init__(self, *, tokenizer, sam_size: int, beit_size: int, max_text_len: int, seed: int = 0,
                 num_images: int = 64, sentences_per_image: int = 3, sentences: Sequence[str] | None = None,
                 with_sam_images: bool = True, encoder: str = "beit3_large"):
        from evf_sam.testing import TINY_SENTENCES

        self.encoder = encoder
        self.tokenizer, self.sam_size, self.beit_size = tokenizer, sam_size, beit_size
        self.max_text_len, self.seed, self.num_images = max_text_len, seed, num_images
        self.k = sentences_per_image
        self.sentences = list(sentences or TINY_SENTENCES)
        self.with_sam_images = with_sam_images

    def image_ids(self) -> list[int]:
        return list(range(self.num_images))

    def sam_image(self, image_id: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(image_id))
        return torch.randn(3, self.sam_size, self.sam_size, generator=g)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = _rng(self.seed, index)
        image_id = int(rng.integers(self.num_images))
        g = torch.Generator().manual_seed(self.seed * 7_919 + image_id)
        beit = torch.randn(3, self.beit_size, self.beit_size, generator=g).clamp(-1, 1)
        s = self.sam_size
        k = int(rng.integers(1, self.k + 1))
        masks = torch.zeros(k, s, s)
        sentences = []
        for j in range(k):
            y0, x0 = rng.integers(0, s // 2, size=2)
            h, w = rng.integers(s // 8, s // 2, size=2)
            masks[j, y0:y0 + h, x0:x0 + w] = 1
            sentences.append(self.sentences[int(rng.integers(len(self.sentences)))])
        sam = self.sam_image(image_id) if self.with_sam_images else torch.zeros(3, 0, 0)
        return {"sam_image": sam, "beit_image": beit, "sentences": sentences, "masks": masks,
                "input_size": (s, s), "original_size": (s, s), "image_id": image_id}


class RandomEvalDataset(ImageEntriesDataset):
    """Held-out random samples (``data.kind=random`` validation) as `ReferEvalDataset`-like items.

    Item ``i`` is sample ``i`` of a `RandomTrainDataset` with ``seed`` and one sentence per sample:
    one expression, its rectangle mask as the ground truth at the original size (= the S x S frame).
    """

    def __init__(self, *, sam_size: int, beit_size: int, seed: int, num_images: int = 8):
        self.samples = RandomTrainDataset(tokenizer=None, sam_size=sam_size, beit_size=beit_size, max_text_len=0,
                                          seed=seed, num_images=num_images, sentences_per_image=1)
        self.entries = [(i, [i]) for i in range(int(num_images))]  # (sample index, [its one expression])

    @property
    def name(self) -> str:
        return "random|-|val"

    def __getitem__(self, index: int) -> EvalItem:
        i, _ = self.entries[index]
        s = self.samples[i]
        n = len(s["sentences"])
        return EvalItem(image_id=int(s["image_id"]), image_path="", sam_image=s["sam_image"], beit_image=s["beit_image"],
                        input_size=tuple(s["input_size"]), original_size=tuple(s["original_size"]),
                        sentences=list(s["sentences"]), gt_masks=s["masks"] > 0.5, ref_ids=[i] * n,
                        sent_ids=list(range(n)))


class ReferTrainDataset(_TrainBase):
    """The REFER training mix (RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF train splits)."""

    def __init__(self, root: str | Path, sources: Sequence[Source], *, tokenizer, sam_size: int, beit_size: int,
                 max_text_len: int, seed: int = 0, sentences_per_image: int = 3,
                 exclude_splits: Sequence[tuple[str, str]] = EXCLUDE_SPLITS, with_sam_images: bool = True,
                 encoder: str = "beit3_large", semantic_sources: Sequence[Any] = (), resize_mode: str = "pad"):
        from evf_sam.data.refer import ReferDataset

        self.encoder = encoder
        self.root = Path(root)
        self.semantic = [s for s in semantic_sources if s.rate > 0]  # evf_sam.data.semantic.SemanticTrainSource
        sources = [s for s in sources if s.rate > 0]
        if sources or not self.semantic:
            check_refer_root(self.root, sources)
        self.tokenizer, self.sam_size, self.beit_size = tokenizer, sam_size, beit_size
        self.max_text_len, self.seed, self.k = max_text_len, seed, sentences_per_image
        self.with_sam_images = with_sam_images
        self.resize_mode = resize_mode  # model.resize_mode: "pad" (SAM-1) | "square" (EfficientSAM, SAM-2)

        excluded: set[int] = set()
        for dataset, split_by in (exclude_splits if sources else ()):
            if not _refs_file(self.root, dataset, split_by).is_file():
                logger.warning("exclusion list: %s not found; its val/test images cannot be excluded",
                               _refs_file(self.root, dataset, split_by))
                continue
            r = ReferDataset(self.root, dataset, split_by)
            excluded |= set(_eval_image_ids(r))
        self.num_excluded_ids = len(excluded)

        self.sources = sources
        if not self.sources and not self.semantic:
            raise ValueError("data.sources: every sample rate is 0")
        rates = np.array([s.rate for s in self.sources] + [s.rate for s in self.semantic], dtype=np.float64)
        self.probs = rates / rates.sum()
        self.readers, self.images = [], []  # per source: reader, list of (image_id, [(ann_id, sentence)])
        self.excluded_per_source: dict[str, int] = {}
        for s in self.sources:
            r = ReferDataset(self.root, s.dataset, s.split_by)
            per_image = _train_sentences(r, s.split)
            n0 = len(per_image)
            if s.dataset != "refclef":
                per_image = {i: v for i, v in per_image.items() if i not in excluded}
            self.excluded_per_source[s.name] = n0 - len(per_image)
            if not per_image:
                raise ValueError(f"data source {s.name} ({s.dataset}|{s.split_by}|{s.split}) has no training images")
            self.readers.append(r)
            self.images.append(sorted(per_image.items()))
        self.num_excluded = sum(self.excluded_per_source.values())

    def summary(self) -> str:
        parts = [f"{s.name}={len(imgs)} images (p={p:.3f}, {self.excluded_per_source[s.name]} excluded)"
                 for s, imgs, p in zip(self.sources, self.images, self.probs)]
        parts += [f"{s.name}={len(s)} semantic images (p={p:.3f}, up to {s.k} classes each, prefix {s.prefix!r})"
                  for s, p in zip(self.semantic, self.probs[len(self.sources):])]
        return (f"training mix: {'; '.join(parts)}; excluded {self.num_excluded} training images that are in "
                f"val/test splits of {', '.join(f'{d}|{b}' for d, b in EXCLUDE_SPLITS)}")

    def _key(self, source: int, image_id: int) -> int:
        return image_id + (REFCLEF_ID_OFFSET if self.sources[source].dataset == "refclef" else 0)

    def image_ids(self) -> list[int]:
        keys = {self._key(i, iid) for i, imgs in enumerate(self.images) for iid, _ in imgs}
        for s in self.semantic:
            keys.update(s.image_ids())
        return sorted(keys)

    def _load(self, source: int, image_id: int) -> np.ndarray:
        from evf_sam.preprocess import load_image

        return load_image(self.readers[source].image_path(image_id))

    def sam_image(self, key: int) -> Tensor:
        from evf_sam.preprocess import sam_preprocess

        for s in self.semantic:
            if s.owns(key):
                return s.sam_image(key, self.sam_size)
        for i, s in enumerate(self.sources):
            iid = key - REFCLEF_ID_OFFSET if s.dataset == "refclef" else key
            if (s.dataset == "refclef") == (key >= REFCLEF_ID_OFFSET) and self.readers[i].has_image(iid):
                return sam_preprocess(self._load(i, iid), self.sam_size, self.resize_mode)[0]
        raise KeyError(f"image key {key} not in the training mix")

    def __getitem__(self, index: int) -> dict[str, Any]:
        from evf_sam.preprocess import (beit3_preprocess, resize_mask_like_sam, sam_preprocess, sam_resized_shape,
                                        sam_valid_size)

        rng = _rng(self.seed, index)
        src = int(rng.choice(len(self.probs), p=self.probs))
        if src >= len(self.sources):
            return self.semantic[src - len(self.sources)].sample(rng, sam_size=self.sam_size, beit_size=self.beit_size,
                                                                 with_sam_images=self.with_sam_images)
        image_id, pairs = self.images[src][int(rng.integers(len(self.images[src])))]
        take = rng.choice(len(pairs), size=min(self.k, len(pairs)), replace=False)
        reader = self.readers[src]
        image = self._load(src, image_id)
        h, w = image.shape[:2]
        if self.with_sam_images:
            sam, input_size = sam_preprocess(image, self.sam_size, self.resize_mode)
        else:
            sam, input_size = torch.zeros(3, 0, 0), sam_resized_shape(h, w, self.sam_size)
        input_size = sam_valid_size(input_size, self.sam_size, self.resize_mode)  # the loss's region of the frame
        masks, sentences = [], []
        for j in take:
            ann_id, sent = pairs[int(j)]
            mask = resize_mask_like_sam(reader.ann_mask(ann_id), self.sam_size, self.resize_mode)
            masks.append(torch.from_numpy(mask.astype(np.float32)))
            sentences.append(sent)
        return {"sam_image": sam, "beit_image": beit3_preprocess(image, self.beit_size), "sentences": sentences,
                "masks": torch.stack(masks), "input_size": tuple(int(x) for x in input_size),
                "original_size": (h, w), "image_id": self._key(src, image_id)}


def _eval_image_ids(reader) -> list[int]:
    return [ref["image_id"] for ref in reader.refs if ref["split"] != "train"]


def _train_sentences(reader, split: str) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for ref in reader.refs:
        if ref["split"] != split:
            continue
        for s in ref["sentences"]:
            text = s["sent"].strip().lower()
            if text:
                out.setdefault(int(ref["image_id"]), []).append((int(ref["ann_id"]), text))
    return out
