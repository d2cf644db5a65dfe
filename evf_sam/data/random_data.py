"""Random data (``data.kind=random``): random images, rectangle masks and sentences from a fixed list,
no files. For benchmarks and trainer tests.

    samples = RandomSamples(sam_size=256, beit_size=32, seed=0, num_images=16)
    s = samples.sample(7)                                        # TrainSample, a pure function of (seed, 7)
    train = RandomTrainDataset(tokenizer=tok, sam_size=256, beit_size=32, max_text_len=32, num_images=16)
    val = RandomEvalDataset(sam_size=256, beit_size=32, seed=1, num_images=8)    # items like ReferEvalDataset's

Image ``i``'s SAM input and BEiT-3 input are seeded by ``(seed, i)``, so the embedding cache works as
for real images; sample ``index`` draws its image, its number of expressions (1..k), their rectangles
and sentences from ``(seed, index)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evf_sam.data.batch import ImageKey, TrainSample
from evf_sam.data.eval_dataset import EvalItem, ImageEntriesDataset
from evf_sam.data.train_dataset import TrainDatasetBase, sample_rng

__all__ = ["RandomEvalDataset", "RandomSamples", "RandomTrainDataset"]


class RandomSamples:
    """The random sample generator shared by the training and the validation dataset."""

    def __init__(self, *, sam_size: int, beit_size: int, seed: int = 0, num_images: int = 64,
                 sentences_per_image: int = 3, sentences: Sequence[str] | None = None, with_sam_images: bool = True):
        from evf_sam.testing import TINY_SENTENCES

        self.sam_size, self.beit_size = sam_size, beit_size
        self.seed, self.num_images, self.k = seed, num_images, sentences_per_image
        self.sentences = list(sentences or TINY_SENTENCES)
        self.with_sam_images = with_sam_images

    def image_keys(self) -> list[ImageKey]:
        return [ImageKey("random", i) for i in range(self.num_images)]

    def sam_image(self, key: ImageKey) -> Tensor:
        """(3, S, S) random SAM input of image ``key``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key.image_id))
        return torch.randn(3, self.sam_size, self.sam_size, generator=g)

    def sample(self, index: int) -> TrainSample:
        rng = sample_rng(self.seed, index)
        key = ImageKey("random", int(rng.integers(self.num_images)))
        g = torch.Generator().manual_seed(self.seed * 7_919 + key.image_id)
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
        sam = self.sam_image(key) if self.with_sam_images else torch.zeros(3, 0, 0)
        return TrainSample(sam_image=sam, beit_image=beit, sentences=sentences, masks=masks, input_size=(s, s),
                           original_size=(s, s), image_key=key)


class RandomTrainDataset(TrainDatasetBase):
    """`RandomSamples` as a training dataset (index -> `TrainSample`, ``collate``)."""

    def __init__(self, *, tokenizer, sam_size: int, beit_size: int, max_text_len: int, seed: int = 0,
                 num_images: int = 64, sentences_per_image: int = 3, sentences: Sequence[str] | None = None,
                 with_sam_images: bool = True, encoder: str = "beit3_large"):
        self.samples = RandomSamples(sam_size=sam_size, beit_size=beit_size, seed=seed, num_images=num_images,
                                     sentences_per_image=sentences_per_image, sentences=sentences,
                                     with_sam_images=with_sam_images)
        self.tokenizer, self.max_text_len, self.encoder = tokenizer, max_text_len, encoder
        self.with_sam_images = with_sam_images

    def image_keys(self) -> list[ImageKey]:
        return self.samples.image_keys()

    def sam_image(self, key: ImageKey) -> Tensor:
        return self.samples.sam_image(key)

    def __getitem__(self, index: int) -> TrainSample:
        return self.samples.sample(index)


class RandomEvalDataset(ImageEntriesDataset):
    """Held-out random samples (``data.kind=random`` validation) as `ReferEvalDataset`-like items.

    Item ``i`` is sample ``i`` of `RandomSamples` with ``seed`` and one sentence per sample: one
    expression, its rectangle mask as the ground truth at the original size (= the S x S frame).
    """

    def __init__(self, *, sam_size: int, beit_size: int, seed: int, num_images: int = 8):
        self.samples = RandomSamples(sam_size=sam_size, beit_size=beit_size, seed=seed, num_images=num_images,
                                     sentences_per_image=1)
        self.entries = [(i, [i]) for i in range(int(num_images))]  # (sample index, [its one expression])

    @property
    def name(self) -> str:
        return "random|-|val"

    def __getitem__(self, index: int) -> EvalItem:
        i, _ = self.entries[index]
        s = self.samples.sample(i)
        n = len(s.sentences)
        return EvalItem(image_id=int(s.image_id), image_path="", sam_image=s.sam_image, beit_image=s.beit_image,
                        input_size=s.input_size, original_size=s.original_size, sentences=list(s.sentences),
                        gt_masks=s.masks > 0.5, ref_ids=[i] * n, sent_ids=list(range(n)))
