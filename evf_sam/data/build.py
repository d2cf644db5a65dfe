"""Datasets of a training run, built from the ``data`` config group (configs/data/*.yaml).

    data = typed(cfg.data)                                   # evf_sam.config: ReferDataConfig | RandomDataConfig
    prepare_data(data)                                       # check (or generate) the files: before any model
    train_ds = build_train_dataset(data, model, tokenizer, seed=cfg.seed)
    splits = build_val_splits(data, model, tokenizer, seed=cfg.seed)   # [ValidationSplit], main one first

``data.kind``: ``refer`` (the REFER mix under ``data.root``, optionally with semantic-segmentation
sources, paper Tab. 6) or ``random`` (random tensors, no files). The semantic-data rules live here:
which sources train (rate > 0), where they are (``semantic_sources.<name>.root``, else
``semantic_root``, else ``root``), and which prefix their expressions carry, in training and in
validation (default ``"[semantic] "`` for every run, as official utils/dataset.py; ``val_semantic.prefix:
auto``, the older protocol: the training prefix if semantic data is trained on, else the bare class name).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from evf_sam.config import RandomDataConfig, ReferDataConfig
from evf_sam.data.batch import text_length
from evf_sam.engine import distributed as D

__all__ = ["SemanticSpec", "ValidationSplit", "build_train_dataset", "build_val_splits", "check_semantic_tokenizer",
           "prepare_data", "refer_sources", "semantic_prefix", "semantic_readers", "semantic_specs",
           "tokenizer_corpus", "uses_semantic_token", "val_semantic_prefix"]

logger = logging.getLogger(__name__)

DataConfig = Union[ReferDataConfig, RandomDataConfig]


@dataclass(frozen=True)
class SemanticSpec:
    """One semantic-segmentation training source of ``data.semantic_sources`` (rate > 0)."""

    name: str  # config key, e.g. "ade20k"
    dataset: str  # ade20k | mapillary
    split: str  # training | validation
    rate: float  # relative sampling rate (normalised with the REFER rates)
    root: str  # directory holding ADEChallengeData2016/ or mapillary/
    version: str  # Mapillary: v2.0 | v1.2 | auto


@dataclass
class ValidationSplit:
    """One split validated during training: a dataset `evaluate` takes, and its batch size."""

    dataset: Any  # ImageEntriesDataset: ReferEvalDataset | SemanticEvalDataset | RandomEvalDataset
    batch_size: int

    @property
    def name(self) -> str:  # "refcoco|unc|val", "ade20k|semantic|val", "random|-|val"
        return self.dataset.name


def refer_sources(data: ReferDataConfig) -> list:
    """``data.sources`` with rate > 0 as `train_dataset.Source` records."""
    from evf_sam.data.train_dataset import Source

    return [Source(name=str(name), dataset=s.dataset, split_by=s.split_by, rate=float(s.rate), split=s.split)
            for name, s in data.sources.items() if s.rate > 0]


def _check_kind(data: DataConfig) -> None:
    want = {"refer": ReferDataConfig, "random": RandomDataConfig}.get(data.kind)
    if want is None:
        raise ValueError(f"data.kind must be refer or random, got {data.kind!r}")
    if not isinstance(data, want):
        raise ValueError(f"data.kind={data.kind!r} but data={data.name!r} has the keys of {type(data).__name__}; "
                         f"choose the data option (data=random | refer_mix | ...) instead of overriding data.kind")


def prepare_data(data: DataConfig) -> dict[str, Any]:
    """Checks (or, for synthetic data, generates) the data files; runs before any model is built."""
    _check_kind(data)
    if data.kind == "random":
        return {"kind": "random"}
    from evf_sam.data.train_dataset import check_refer_root

    if data.synthetic.generate:
        root = Path(data.root)
        if D.is_main():  # idempotent: a complete dataset with the same parameters is reused
            from evf_sam.data.synthetic import make_synthetic_refer

            kwargs = {k: v for k, v in dataclasses.asdict(data.synthetic).items() if k != "generate" and v is not None}
            stats = make_synthetic_refer(root, **kwargs)
            logger.info("synthetic REFER data in %s (%s)", root, "reused" if stats.get("reused") else "generated")
        D.barrier()
    if data.synthetic_semantic.generate:
        root = _semantic_root(data)
        if D.is_main():  # idempotent: complete trees with the same parameters are reused
            from evf_sam.data.synthetic_semantic import make_synthetic_semantic

            kwargs = {k: v for k, v in dataclasses.asdict(data.synthetic_semantic).items()
                      if k != "generate" and v is not None}
            stats = make_synthetic_semantic(root, **kwargs)
            logger.info("synthetic ADE20K / Mapillary data in %s (%s)", root, "reused" if stats["reused"] else "generated")
        D.barrier()
    if refer_sources(data) or not semantic_specs(data):
        check_refer_root(data.root, refer_sources(data))
    semantic_readers(data)  # ADE20K / Mapillary layout (FileNotFoundError naming the path), before any model
    return {"kind": "refer", "root": str(data.root)}


def tokenizer_corpus(data: DataConfig) -> list[str]:
    """Sentences of the data root a tiny tokenizer is trained on besides `testing.TINY_SENTENCES`
    (the synthetic generator's ``refer_seg/sentences.txt``, and the class names of generated synthetic
    semantic data, whether a run trains on them or not; none for other data)."""
    if data.kind != "refer":
        return []
    corpus = Path(data.root) / "refer_seg" / "sentences.txt"
    out = [x for x in corpus.read_text().splitlines() if x.strip()] if corpus.is_file() else []
    if data.synthetic_semantic.generate:
        from evf_sam.data.synthetic_semantic import synthetic_semantic_class_names

        out += synthetic_semantic_class_names()
    return out


# -- semantic-segmentation data (paper Tab. 6; configs/data/refer_mix_semantic.yaml) ---------------

def semantic_specs(data: ReferDataConfig) -> list[SemanticSpec]:
    """``data.semantic_sources`` with rate > 0."""
    return [SemanticSpec(name=str(name), dataset=s.dataset, split=s.split, rate=float(s.rate),
                         root=s.root or _semantic_root(data), version=s.version)
            for name, s in data.semantic_sources.items() if s is not None and s.rate > 0]


def _semantic_root(data: ReferDataConfig) -> str:
    root = data.semantic_root or data.root
    if not root:
        raise ValueError("data.semantic_root is not set: the directory holding ADEChallengeData2016/ and mapillary/ "
                         "(see data/README.md)")
    return str(root)


def semantic_prefix(data: ReferDataConfig) -> str:
    """The prefix of semantic training expressions (``data.semantic_prefix``; null: the multitask release's)."""
    from evf_sam.tokenizer import SEMANTIC_PREFIX

    return SEMANTIC_PREFIX if data.semantic_prefix is None else data.semantic_prefix


def val_semantic_prefix(data: ReferDataConfig) -> str:
    """``data.val_semantic.prefix``; "auto": the training prefix if semantic data is trained on, else none
    (a model trained on RES data only is asked with the bare class name, as EVF-SAM's ValDataset does)."""
    p = "auto" if data.val_semantic is None else data.val_semantic.prefix
    if p is None:
        return ""
    if p == "auto":
        return semantic_prefix(data) if semantic_specs(data) else ""
    return p


def uses_semantic_token(data: DataConfig) -> bool:
    """Whether training expressions contain the ``[semantic]`` token (the tokenizer must then have it)."""
    from evf_sam.tokenizer import SEMANTIC_TOKEN

    if data.kind != "refer":
        return False
    # Validation alone does not need it: official utils/dataset.py asks every model, RES-only ones
    # whose tokenizer lacks the token included, with "[semantic] <class>" (then ordinary pieces).
    return bool(semantic_specs(data)) and SEMANTIC_TOKEN in semantic_prefix(data)


def semantic_readers(data: ReferDataConfig, *, val: bool = True) -> dict[str, Any]:
    """Readers of the semantic training sources (+ ``"val"``: the validation split); raise naming what is missing."""
    from evf_sam.data.semantic import build_semantic_reader

    out = {}
    for spec in semantic_specs(data):
        out[spec.name] = build_semantic_reader(spec.dataset, spec.root, spec.split, spec.version)
    if val and data.val_semantic is not None:
        out["val"] = _val_semantic_reader(data)
    return out


def _val_semantic_reader(data: ReferDataConfig):
    """The reader of ``data.val_semantic`` (root: its own, else ``data.semantic_root``, else ``data.root``)."""
    from evf_sam.data.semantic import build_semantic_reader

    vs = data.val_semantic
    return build_semantic_reader(vs.dataset, vs.root or _semantic_root(data), vs.split, vs.version)


def val_semantic_dataset(data: ReferDataConfig, model, *, max_images: int | None = None):
    """``data.val_semantic`` as a `SemanticEvalDataset` for ``model`` (validation; scripts/eval_pilot.py).
    max_images: None keeps ``data.val_semantic.max_images``."""
    from evf_sam.data.eval_dataset import SemanticEvalDataset

    vs = data.val_semantic
    return SemanticEvalDataset(_val_semantic_reader(data), sam_size=model.sam_image_size,
                               beit_size=model.beit_image_size,
                               max_images=vs.max_images if max_images is None else max_images,
                               prefix=val_semantic_prefix(data), ignore_unlabeled=vs.ignore_unlabeled,
                               resize_mode=model.resize_mode)


def check_semantic_tokenizer(data: DataConfig, model, tokenizer) -> None:
    """``[semantic]`` must be one token of the tokenizer with a row in the text embedding."""
    if not uses_semantic_token(data):
        return
    from torch import nn

    from evf_sam.tokenizer import require_semantic_token

    emb = getattr(getattr(model, "encoder", None), "text_embed", None)
    require_semantic_token(tokenizer, emb.num_embeddings if isinstance(emb, nn.Embedding) else None)


# -- datasets ------------------------------------------------------------------------------------

def build_train_dataset(data: DataConfig, model, tokenizer, *, seed: int, with_sam_images: bool = True):
    """The training dataset (`ReferTrainDataset` mix or `RandomTrainDataset`) for ``model``'s input sizes,
    preprocessing and encoder tokenisation. ``with_sam_images=False``: the embedding cache supplies SAM's side."""
    from evf_sam.data.random_data import RandomTrainDataset
    from evf_sam.data.train_dataset import ReferTrainDataset

    encoder = str(model.config.encoder)
    common = dict(tokenizer=tokenizer, sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                  max_text_len=text_length(data.max_text_len, model.max_text_len), seed=int(seed),
                  sentences_per_image=data.sentences_per_image, with_sam_images=with_sam_images)
    _check_kind(data)
    if data.kind == "random":
        return RandomTrainDataset(num_images=data.num_images, encoder=encoder, **common)
    semantic = []
    specs = semantic_specs(data)
    if specs:
        from evf_sam.data.train_dataset import SemanticTrainSource

        if data.classes_per_image is None:
            raise ValueError(f"data.semantic_sources {[s.name for s in specs]} train, but data.classes_per_image is "
                             f"not set (configs/data/refer_mix_semantic.yaml sets 3, as LISA / EVF-SAM)")
        check_semantic_tokenizer(data, model, tokenizer)
        readers = semantic_readers(data, val=False)
        semantic = [SemanticTrainSource(readers[spec.name], name=spec.name, rate=spec.rate,
                                        classes_per_image=data.classes_per_image, prefix=semantic_prefix(data),
                                        resize_mode=model.resize_mode)
                    for spec in specs]
    from evf_sam.data.train_dataset import EXCLUDE_SPLITS

    return ReferTrainDataset(data.root, refer_sources(data), encoder=encoder, semantic_sources=semantic,
                             resize_mode=model.resize_mode,
                             exclude_splits=EXCLUDE_SPLITS if data.exclude_eval_images else (), **common)


def build_val_splits(data: DataConfig, model, tokenizer, *, seed: int) -> list[ValidationSplit]:
    """The validation splits: ``data.val`` first (the best-checkpoint metric is read from it), then
    ``data.val_semantic`` (``data.kind=refer`` only); empty when both are null."""
    _check_kind(data)
    splits = []
    val = data.val
    if val is not None and data.kind == "random":  # held-out random samples (another seed), one expression each
        from evf_sam.data.random_data import RandomEvalDataset

        splits.append(ValidationSplit(RandomEvalDataset(sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                                                        seed=int(seed) + 1, num_images=val.num_images),
                                      batch_size=val.batch_size))
    elif val is not None:
        from evf_sam.data.eval_dataset import build_eval_dataset

        splits.append(ValidationSplit(
            build_eval_dataset(data.root, val.dataset, val.split_by, val.split, sam_size=model.sam_image_size,
                               beit_size=model.beit_image_size, max_images=val.max_images,
                               resize_mode=model.resize_mode, empty_area=val.empty_area),
            batch_size=val.batch_size))
    vs = data.val_semantic if data.kind == "refer" else None
    if vs is not None:
        check_semantic_tokenizer(data, model, tokenizer)
        splits.append(ValidationSplit(val_semantic_dataset(data, model), batch_size=vs.batch_size))
    return splits
