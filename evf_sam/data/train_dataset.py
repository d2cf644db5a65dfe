"""Training data: a seeded, resumable sampler over a mix of training sources.

    ds = ReferTrainDataset(root, [Source("refcoco", "refcoco", "unc", rate=1.0), ...], tokenizer=tok,
                           sam_size=1024, beit_size=224, max_text_len=64,
                           semantic_sources=[SemanticTrainSource(ADE20KReader(root), name="ade20k", rate=1.0)])
    sampler = StepBatchSampler(micro_batch_size=16, grad_accum=2, rank=r, world_size=w, total_steps=15000, start_step=k)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=4)

Every training sample is a pure function of ``(seed, global sample index)``: which source (by the
configured sample rates), then the source's own draws (an image, up to k of its expressions). The
sampler hands out global indices ``((step * grad_accum + micro) * world + rank) * micro_batch + i``, so
resuming at step k only needs k: no sampler state to save, and the order is the same at any number of
workers.

Sources (one interface: ``name``, ``rate``, ``sample(rng, ...) -> TrainSample``, ``image_keys()``,
``owns(key)``, ``sam_image(key, sam_size)``):

- `ReferTrainSource`: one REFER dataset's train split; a sample is an image and up to
  ``sentences_per_image`` sentences drawn without replacement from all sentences of the image's refs
  (as LISA), each with its object's mask. Images in the val / test splits of every RefCOCO-family split
  (``EXCLUDE_SPLITS``) are removed from every source; the count is logged.
- `GReferTrainSource` (gRefCOCO, ``data.sources.grefcoco``, off by default): the same draws over
  gRefCOCO's train split; a sentence's mask is the union of its objects, all zeros for a no-target
  expression (``ann_id == [-1]``, `evf_sam.data.grefer`), which BCE + Dice then train towards an
  empty prediction. gRefCOCO's val / test images (the RefCOCO unc ones) are excluded when its refs file
  is present.
- `SemanticTrainSource` (paper Tab. 6: ADE20K, Mapillary Vistas; readers in `evf_sam.data.semantic`):
  an image and up to ``classes_per_image`` classes present in it, each as ``"[semantic] <class name>"``
  with the mask ``label == class``. Without semantic sources every REFER sample is exactly what it was
  before they existed (same random draws).

`make_train_sample` is the one place an image and its full-size masks become a `TrainSample`
(SAM-frame resize, valid region, BEiT-3 input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from evf_sam.data.batch import Batch, ImageKey, TrainSample, collate_samples
from evf_sam.tokenizer import SEMANTIC_PREFIX

__all__ = ["EXCLUDE_SPLITS", "GReferTrainSource", "ReferTrainDataset",
           "ReferTrainSource", "SemanticTrainSource", "Source",
           "StepBatchSampler", "TrainDatasetBase", "check_refer_root", "make_train_sample"]

logger = logging.getLogger(__name__)

# (dataset, splitBy): their non-train images never enter training (any source).
EXCLUDE_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco", "unc"), ("refcoco", "google"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google"),
)
DATA_README = "data/README.md"


@dataclass(frozen=True)
class Source:
    name: str  # config key, e.g. "refcoco_plus"
    dataset: str  # REFER dataset dir: refcoco | refcoco+ | refcocog | refclef | grefcoco (evf_sam.data.grefer)
    split_by: str  # unc | google | umd | berkeley
    rate: float  # relative sampling rate (normalised over sources)
    split: str = "train"


def _refs_file(root: Path, dataset: str, split_by: str) -> Path:
    from evf_sam.data.grefer import grefs_path, is_gref_dataset

    if is_gref_dataset(dataset):  # grefs(unc).p, else grefs(unc).json
        return grefs_path(root, dataset, split_by)
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
            + f"\nSee {DATA_README} for how to download and lay out RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF / gRefCOCO "
              "(or train on synthetic data: data=synthetic)."
        )


# ---------------------------------------------------------------------------------------------
# Sampling


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of global sample indices from ``start_step`` to ``total_steps``."""

    def __init__(self, *, micro_batch_size: int, grad_accum: int, rank: int, world_size: int,
                 total_steps: int, start_step: int = 0):
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.rank, self.world_size = rank, world_size
        self.total_steps, self.start_step = total_steps, start_step

    def indices(self, step: int, micro: int) -> list[int]:
        base = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.micro_batch_size
        return list(range(base, base + self.micro_batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.grad_accum):
                yield self.indices(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of global sample ``index``: every draw of that sample comes from it."""
    return np.random.default_rng([int(seed), int(index)])


# ---------------------------------------------------------------------------------------------
# Samples


def make_train_sample(image: np.ndarray, masks: Sequence[np.ndarray], sentences: Sequence[str], *,
                      image_key: ImageKey, sam_size: int, beit_size: int, resize_mode: str = "pad",
                      with_sam_images: bool = True, class_ids: Sequence[int] | None = None) -> TrainSample:
    """(H, W, 3) uint8 image + k (H, W) {0, 1} masks (one per sentence) -> `TrainSample` in the SAM frame.

    resize_mode: the model's ("pad": SAM-1, "square": EfficientSAM / SAM-2); the masks follow the image
    into the frame (nearest) and ``input_size`` is the part of the frame the image covers.
    with_sam_images=False: no SAM image (the embedding cache supplies SAM's side), only its size.
    """
    from evf_sam.preprocess import (beit3_preprocess, resize_mask_like_sam, sam_preprocess, sam_resized_shape,
                                    sam_valid_size)

    h, w = image.shape[:2]
    if with_sam_images:
        # official training datasets take eval.py's transform (utils/refer_seg_dataset.py: Resize for effi/sam2)
        sam, input_size = sam_preprocess(image, sam_size, resize_mode, pipeline="eval")
    else:
        sam, input_size = torch.zeros(3, 0, 0), sam_resized_shape(h, w, sam_size)
    input_size = sam_valid_size(input_size, sam_size, resize_mode)  # the loss's region of the frame
    frame_masks = [torch.from_numpy(resize_mask_like_sam(m, sam_size, resize_mode).astype(np.float32)) for m in masks]
    return TrainSample(sam_image=sam, beit_image=beit3_preprocess(image, beit_size), sentences=list(sentences),
                       masks=torch.stack(frame_masks), input_size=(int(input_size[0]), int(input_size[1])),
                       original_size=(h, w), image_key=image_key,
                       class_ids=None if class_ids is None else [int(c) for c in class_ids])


class ReferTrainSource:
    """The train split of one REFER dataset as a source of the training mix."""

    def __init__(self, reader, source: Source, images: Sequence[tuple[int, list[tuple[int, str]]]], *,
                 sentences_per_image: int = 3, resize_mode: str = "pad"):
        self.reader, self.source = reader, source  # ReferDataset, its config record
        self.name, self.rate = source.name, float(source.rate)
        self.images = list(images)  # [(image_id, [(ann_id, sentence), ...])], image-id order
        self.k, self.resize_mode = int(sentences_per_image), resize_mode
        self.image_source = "saiapr" if source.dataset == "refclef" else "coco"

    def __len__(self) -> int:
        return len(self.images)

    def key(self, image_id: int) -> ImageKey:
        return ImageKey(self.image_source, int(image_id))

    def image_keys(self) -> list[ImageKey]:
        return [self.key(image_id) for image_id, _ in self.images]

    def owns(self, key: ImageKey) -> bool:
        return key.source == self.image_source and self.reader.has_image(key.image_id)

    def sam_image(self, key: ImageKey, sam_size: int) -> Tensor:
        from evf_sam.preprocess import load_image, sam_preprocess

        image = load_image(self.reader.image_path(key.image_id))
        return sam_preprocess(image, sam_size, self.resize_mode, pipeline="eval")[0]

    def sample(self, rng: np.random.Generator, *, sam_size: int, beit_size: int,
               with_sam_images: bool = True) -> TrainSample:
        from evf_sam.preprocess import load_image

        image_id, pairs = self.images[int(rng.integers(len(self.images)))]
        chosen = [pairs[int(j)] for j in rng.choice(len(pairs), size=min(self.k, len(pairs)), replace=False)]
        return make_train_sample(load_image(self.reader.image_path(image_id)),
                                 [self.target_mask(target, image_id) for target, _ in chosen],
                                 [sentence for _, sentence in chosen], image_key=self.key(image_id),
                                 sam_size=sam_size, beit_size=beit_size, resize_mode=self.resize_mode,
                                 with_sam_images=with_sam_images)


    def target_mask(self, ann_id, image_id: int) -> np.ndarray:
        """(H, W) uint8 ground truth of one sentence's target (here: one annotation)."""
        return self.reader.annotation_mask(ann_id)


class GReferTrainSource(ReferTrainSource):
    """gRefCOCO's train split (reader: `evf_sam.data.grefer.GReferDataset`); targets are tuples of
    annotation ids, ``(-1,)`` for no target (an all-zero mask)."""

    def target_mask(self, ann_id, image_id: int) -> np.ndarray:  # noqa: D102
        return self.reader.target_mask(list(ann_id), image_id)


class SemanticTrainSource:
    """One semantic dataset as a source of the training mix (`ReferTrainDataset(semantic_sources=...)`).

    ``sample(rng, ...)`` draws an image, then up to ``classes_per_image`` of the classes present in it
    (without replacement); sentences are ``prefix + class name``; masks ``label == class``; images
    whose label map has no class are re-drawn. Deterministic in ``rng``. Image keys are
    ``("<dataset>/<split>", file stem)``.
    """

    def __init__(self, reader, *, name: str, rate: float, classes_per_image: int = 3,
                 prefix: str = SEMANTIC_PREFIX, resize_mode: str = "pad", max_redraws: int = 100):
        if classes_per_image < 1:
            raise ValueError(f"classes_per_image={classes_per_image}: must be >= 1")
        self.reader, self.name, self.rate = reader, name, float(rate)  # reader: data.semantic.SemanticReader
        self.k, self.prefix = int(classes_per_image), prefix
        self.resize_mode, self.max_redraws = resize_mode, int(max_redraws)
        self.image_source = f"{reader.name}/{reader.split}"

    def __len__(self) -> int:
        return len(self.reader)

    def key(self, i: int) -> ImageKey:
        """The image key of image ``i`` of the reader."""
        return ImageKey(self.image_source, self.reader.images[int(i)].stem)

    def _index(self) -> dict[str, int]:
        index = getattr(self, "_stems", None)
        if index is None or len(index) != len(self.reader):  # built on first use (the reader's lists may change)
            index = self._stems = {p.stem: i for i, p in enumerate(self.reader.images)}
        return index

    def owns(self, key: ImageKey) -> bool:
        return key.source == self.image_source and key.image_id in self._index()

    def image_keys(self) -> list[ImageKey]:
        return [self.key(i) for i in range(len(self.reader))]

    def sam_image(self, key: ImageKey, sam_size: int) -> Tensor:
        from evf_sam.preprocess import sam_preprocess

        image = self.reader.read_image(self._index()[key.image_id])
        return sam_preprocess(image, sam_size, self.resize_mode, pipeline="eval")[0]

    def expression(self, class_id: int) -> str:
        return self.prefix + self.reader.classes[class_id]

    def sample(self, rng: np.random.Generator, *, sam_size: int, beit_size: int,
               with_sam_images: bool = True) -> TrainSample:
        for _ in range(self.max_redraws):
            i = int(rng.integers(len(self.reader)))
            label = self.reader.read_label(i)
            present = self.reader.present_classes(label)
            if present:
                break
        else:
            raise ValueError(f"{self.name}: {self.max_redraws} drawn label maps in a row had no class (all ignored); "
                             f"check {self.reader.labels[0].parent}")
        take = rng.choice(len(present), size=min(self.k, len(present)), replace=False)
        class_ids = [present[int(j)] for j in take]
        image = self.reader.read_image(i)
        h, w = image.shape[:2]
        if label.shape != (h, w):
            raise ValueError(f"{self.reader.labels[i]}: label map is {label.shape[0]}x{label.shape[1]} but its image "
                             f"{self.reader.images[i]} is {h}x{w}")
        return make_train_sample(image, [(label == c).astype(np.uint8) for c in class_ids],
                                 [self.expression(c) for c in class_ids], image_key=self.key(i), sam_size=sam_size,
                                 beit_size=beit_size, resize_mode=self.resize_mode, with_sam_images=with_sam_images,
                                 class_ids=class_ids)


# ---------------------------------------------------------------------------------------------
# Datasets


class TrainDatasetBase(Dataset):
    """Index -> `TrainSample`; infinite (any index >= 0 is valid); ``collate`` makes the `Batch`."""

    tokenizer: object
    max_text_len: int
    encoder: str = "beit3_large"  # decides the tokenisation (models.encoders.tokenize_for_encoder)
    with_sam_images: bool = True

    def __len__(self) -> int:  # DataLoader needs one; the batch sampler decides what is read
        return 2**62

    def collate(self, samples: list[TrainSample]) -> Batch:
        return collate_samples(samples, self.tokenizer, self.max_text_len, self.encoder)


class ReferTrainDataset(TrainDatasetBase):
    """The training mix: REFER train splits (RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF) + semantic sources."""

    def __init__(self, root: str | Path, sources: Sequence[Source], *, tokenizer, sam_size: int, beit_size: int,
                 max_text_len: int, seed: int = 0, sentences_per_image: int = 3,
                 exclude_splits: Sequence[tuple[str, str]] = (), with_sam_images: bool = True,
                 encoder: str = "beit3_large", semantic_sources: Sequence[SemanticTrainSource] = (),
                 resize_mode: str = "pad"):
        from evf_sam.data.grefer import GReferDataset, grefs_path, is_gref_dataset
        from evf_sam.data.refer import ReferDataset

        self.encoder = encoder
        self.root = Path(root)
        self.semantic = [s for s in semantic_sources if s.rate > 0]
        sources = [s for s in sources if s.rate > 0]
        if sources or not self.semantic:
            check_refer_root(self.root, sources)
        self.tokenizer, self.sam_size, self.beit_size = tokenizer, sam_size, beit_size
        self.max_text_len, self.seed = max_text_len, seed
        self.with_sam_images = with_sam_images

        self.exclude_splits = tuple(exclude_splits)
        excluded: set[int] = set()
        for dataset, split_by in (exclude_splits if sources else ()):
            if not _refs_file(self.root, dataset, split_by).is_file():
                logger.warning("exclusion list: %s not found; its val/test images cannot be excluded",
                               _refs_file(self.root, dataset, split_by))
                continue
            excluded |= set(_eval_image_ids(ReferDataset(self.root, dataset, split_by)))
        self.excluded_splits = [f"{d}|{b}" for d, b in self.exclude_splits]
        if sources and self.exclude_splits and grefs_path(self.root).is_file():
            # gRefCOCO val/test (RefCOCO unc's images) too, when its files are present
            excluded |= set(_eval_image_ids(GReferDataset(self.root)))
            self.excluded_splits.append("grefcoco|unc")
        self.num_excluded_ids = len(excluded)

        if not sources and not self.semantic:
            raise ValueError("data.sources: every sample rate is 0")
        self.refer: list[ReferTrainSource] = []
        self.excluded_per_source: dict[str, int] = {}
        for s in sources:
            gref = is_gref_dataset(s.dataset)
            reader = (GReferDataset if gref else ReferDataset)(self.root, s.dataset, s.split_by)
            per_image = _train_sentences(reader, s.split)
            n0 = len(per_image)
            if s.dataset != "refclef":
                per_image = {i: v for i, v in per_image.items() if i not in excluded}
            self.excluded_per_source[s.name] = n0 - len(per_image)
            if not per_image:
                raise ValueError(f"data source {s.name} ({s.dataset}|{s.split_by}|{s.split}) has no training images")
            self.refer.append((GReferTrainSource if gref else ReferTrainSource)(
                reader, s, sorted(per_image.items()), sentences_per_image=sentences_per_image, resize_mode=resize_mode))
        self.num_excluded = sum(self.excluded_per_source.values())
        self.sources = [*self.refer, *self.semantic]  # the order of `probs`
        rates = np.array([s.rate for s in self.sources], dtype=np.float64)
        self.probs = rates / rates.sum()

    def summary(self) -> str:
        parts = [f"{s.name}={len(s)} images (p={p:.3f}, {self.excluded_per_source[s.name]} excluded)"
                 for s, p in zip(self.refer, self.probs)]
        parts += [f"{s.name}={len(s)} semantic images (p={p:.3f}, up to {s.k} classes each, prefix {s.prefix!r})"
                  for s, p in zip(self.semantic, self.probs[len(self.refer):])]
        if not self.exclude_splits:
            return (f"training mix: {'; '.join(parts)}; no training image excluded (as the official data code; "
                    f"data.exclude_eval_images=true drops those in RefCOCO-family val/test splits)")
        return (f"training mix: {'; '.join(parts)}; excluded {self.num_excluded} training images that are in "
                f"val/test splits of {', '.join(self.excluded_splits)}")

    def image_keys(self) -> list[ImageKey]:
        """Every image a sample can come from (sorted, each once: the embedding cache's rows)."""
        return sorted({key for s in self.sources for key in s.image_keys()})

    def sam_image(self, key: ImageKey) -> Tensor:
        """(3, S, S) SAM input of image ``key`` (what the embedding cache encodes)."""
        for s in self.sources:
            if s.owns(key):
                return s.sam_image(key, self.sam_size)
        raise KeyError(f"image key {key} not in the training mix")

    def __getitem__(self, index: int) -> TrainSample:
        rng = sample_rng(self.seed, index)
        source = self.sources[int(rng.choice(len(self.probs), p=self.probs))]
        return source.sample(rng, sam_size=self.sam_size, beit_size=self.beit_size,
                             with_sam_images=self.with_sam_images)


def _eval_image_ids(reader) -> list[int]:
    return [ref["image_id"] for ref in reader.refs if ref["split"] != "train"]


def _train_sentences(reader, split: str) -> dict[int, list[tuple[int | tuple[int, ...], str]]]:
    out: dict[int, list[tuple[int | tuple[int, ...], str]]] = {}
    skip = getattr(reader, "empty_ann_ids", set())  # annotations without a polygon of 3+ points (refer.py)
    for ref in reader.refs:
        if ref["split"] != split:
            continue
        a = ref["ann_id"]  # a list for gRefCOCO: every object of the expression
        target = tuple(int(x) for x in a) if isinstance(a, (list, tuple)) else int(a)
        if skip and any(t in skip for t in (target if isinstance(target, tuple) else (target,))):
            continue
        for s in ref["sentences"]:
            text = s["sent"].strip().lower()
            if text:
                out.setdefault(int(ref["image_id"]), []).append((target, text))
    return out
