"""Datasets of a training run, built from the ``data`` config group (configs/data/*.yaml).

    prepare_data(cfg.data)                                   # check (or generate) the files: before any model
    train_ds = build_train_dataset(cfg.data, model, tokenizer, seed=cfg.seed)
    splits = build_val_splits(cfg.data, model, tokenizer, seed=cfg.seed)   # [ValidationSplit], main one first

``data.kind``: ``refer`` (the REFER mix under ``data.root``, optionally with semantic-segmentation
sources, paper Tab. 6) or ``random`` (random tensors, no files). The semantic-data rules live here:
which sources train (rate > 0), where they are (``semantic_sources.<name>.root``, else
``semantic_root``, else ``root``), and which prefix their expressions carry, in training and in
validation (``val_semantic.prefix: auto``: the training prefix if semantic data is trained on, else the
bare class name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evf_sam.config import resolved
from evf_sam.data.batch import text_length
from evf_sam.engine import distributed as D

__all__ = ["SemanticSpec", "ValidationSplit", "build_train_dataset", "build_val_splits", "check_semantic_tokenizer",
           "prepare_data", "refer_sources", "semantic_prefix", "semantic_readers", "semantic_specs",
           "tokenizer_corpus", "uses_semantic_token", "val_semantic_prefix"]

logger = logging.getLogger(__name__)


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


def refer_sources(data) -> list:
    """``data.sources`` with rate > 0 as `train_dataset.Source` records."""
    from evf_sam.data.train_dataset import Source

    out = []
    for name, s in data.sources.items():
        if float(s.rate) <= 0:
            continue
        out.append(Source(name=str(name), dataset=str(s.dataset), split_by=str(s.split_by), rate=float(s.rate),
                          split=str(s.get("split", "train"))))
    return out


def prepare_data(data) -> dict[str, Any]:
    """Checks (or, for synthetic data, generates) the data files; runs before any model is built."""
    if data.kind == "random":
        return {"kind": "random"}
    if data.kind != "refer":
        raise ValueError(f"data.kind must be refer or random, got {data.kind!r}")
    from evf_sam.data.train_dataset import check_refer_root

    syn = data.get("synthetic")
    if syn is not None and syn.get("generate", False):
        root = Path(data.root)
        if D.is_main():  # idempotent: a complete dataset with the same parameters is reused
            from evf_sam.data.synthetic import make_synthetic_refer

            kwargs = {k: v for k, v in resolved(syn).items() if k != "generate"}
            stats = make_synthetic_refer(root, **kwargs)
            logger.info("synthetic REFER data in %s (%s)", root, "reused" if stats.get("reused") else "generated")
        D.barrier()
    if refer_sources(data) or not semantic_specs(data):
        check_refer_root(data.root, refer_sources(data))
    semantic_readers(data)  # ADE20K / Mapillary layout (FileNotFoundError naming the path), before any model
    return {"kind": "refer", "root": str(data.root)}


def tokenizer_corpus(data) -> list[str]:
    """Sentences of the data root a tiny tokenizer is trained on besides `testing.TINY_SENTENCES`
    (the synthetic generator's ``refer_seg/sentences.txt``; none for other data)."""
    corpus = Path(str(data.get("root") or "")) / "refer_seg" / "sentences.txt"
    if data.kind == "refer" and corpus.is_file():
        return [x for x in corpus.read_text().splitlines() if x.strip()]
    return []


# -- semantic-segmentation data (paper Tab. 6; configs/data/refer_mix_semantic.yaml) ---------------

def semantic_specs(data) -> list[SemanticSpec]:
    """``data.semantic_sources`` with rate > 0."""
    out = []
    for name, s in (data.get("semantic_sources") or {}).items():
        if s is None or float(s.get("rate", 0.0)) <= 0:
            continue
        out.append(SemanticSpec(name=str(name), dataset=str(s.get("dataset", name)),
                                split=str(s.get("split", "training")), rate=float(s.rate),
                                root=str(s.get("root") or _semantic_root(data)), version=str(s.get("version", "auto"))))
    return out


def _semantic_root(data) -> str:
    root = data.get("semantic_root") or data.get("root")
    if not root:
        raise ValueError("data.semantic_root is not set: the directory holding ADEChallengeData2016/ and mapillary/ "
                         "(see data/README.md)")
    return str(root)


def semantic_prefix(data) -> str:
    """The prefix of semantic training expressions (``data.semantic_prefix``; null: the multitask release's)."""
    from evf_sam.tokenizer import SEMANTIC_PREFIX

    p = data.get("semantic_prefix")
    return SEMANTIC_PREFIX if p is None else str(p)


def val_semantic_prefix(data) -> str:
    """``data.val_semantic.prefix``; "auto": the training prefix if semantic data is trained on, else none
    (a model trained on RES data only is asked with the bare class name, as EVF-SAM's ValDataset does)."""
    vs = data.get("val_semantic")
    p = "auto" if vs is None else vs.get("prefix", "auto")
    if p is None:
        return ""
    if str(p) == "auto":
        return semantic_prefix(data) if semantic_specs(data) else ""
    return str(p)


def uses_semantic_token(data) -> bool:
    """Whether training or validation expressions contain the ``[semantic]`` token."""
    from evf_sam.tokenizer import SEMANTIC_TOKEN

    if data.get("kind") != "refer":
        return False
    train = bool(semantic_specs(data)) and SEMANTIC_TOKEN in semantic_prefix(data)
    return train or (data.get("val_semantic") is not None and SEMANTIC_TOKEN in val_semantic_prefix(data))


def semantic_readers(data, *, val: bool = True) -> dict[str, Any]:
    """Readers of the semantic training sources (+ ``"val"``: the validation split); raise naming what is missing."""
    from evf_sam.data.semantic import build_semantic_reader

    out = {}
    for spec in semantic_specs(data):
        kw = {"version": spec.version} if spec.dataset == "mapillary" else {}
        out[spec.name] = build_semantic_reader(spec.dataset, spec.root, spec.split, **kw)
    vs = data.get("val_semantic")
    if val and vs is not None:
        kw = {"version": str(vs.get("version", "auto"))} if str(vs.dataset) == "mapillary" else {}
        out["val"] = build_semantic_reader(str(vs.dataset), str(vs.get("root") or _semantic_root(data)),
                                           str(vs.get("split", "validation")), **kw)
    return out


def check_semantic_tokenizer(data, model, tokenizer) -> None:
    """``[semantic]`` must be one token of the tokenizer with a row in the text embedding."""
    if not uses_semantic_token(data):
        return
    from torch import nn

    from evf_sam.tokenizer import require_semantic_token

    emb = getattr(getattr(model, "encoder", None), "text_embed", None)
    require_semantic_token(tokenizer, emb.num_embeddings if isinstance(emb, nn.Embedding) else None)


# -- datasets ------------------------------------------------------------------------------------

def build_train_dataset(data, model, tokenizer, *, seed: int, with_sam_images: bool = True):
    """The training dataset (`ReferTrainDataset` mix or `RandomTrainDataset`) for ``model``'s input sizes,
    preprocessing and encoder tokenisation. ``with_sam_images=False``: the embedding cache supplies SAM's side."""
    from evf_sam.data.random_data import RandomTrainDataset
    from evf_sam.data.train_dataset import ReferTrainDataset

    encoder = str(model.config.encoder)
    common = dict(tokenizer=tokenizer, sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                  max_text_len=text_length(data.get("max_text_len"), model.max_text_len), seed=int(seed),
                  sentences_per_image=int(data.sentences_per_image), with_sam_images=with_sam_images)
    if data.kind == "random":
        return RandomTrainDataset(num_images=int(data.num_images), encoder=encoder, **common)
    semantic = []
    specs = semantic_specs(data)
    if specs:
        from evf_sam.data.train_dataset import SemanticTrainSource

        check_semantic_tokenizer(data, model, tokenizer)
        readers = semantic_readers(data, val=False)
        semantic = [SemanticTrainSource(readers[spec.name], name=spec.name, rate=spec.rate,
                                        classes_per_image=int(data.get("classes_per_image", 3)),
                                        prefix=semantic_prefix(data), resize_mode=model.resize_mode)
                    for spec in specs]
    return ReferTrainDataset(data.root, refer_sources(data), encoder=encoder, semantic_sources=semantic,
                             resize_mode=model.resize_mode, **common)


def build_val_splits(data, model, tokenizer, *, seed: int) -> list[ValidationSplit]:
    """The validation splits: ``data.val`` first (the best-checkpoint metric is read from it), then
    ``data.val_semantic`` (``data.kind=refer`` only); empty when both are null."""
    splits = []
    val = data.get("val")
    if val is not None and data.kind == "random":  # held-out random samples (another seed), one expression each
        from evf_sam.data.random_data import RandomEvalDataset

        splits.append(ValidationSplit(RandomEvalDataset(sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                                                        seed=int(seed) + 1, num_images=int(val.get("num_images", 8))),
                                      batch_size=int(val.get("batch_size", 4))))
    elif val is not None:
        from evf_sam.data.eval_dataset import build_eval_dataset

        splits.append(ValidationSplit(
            build_eval_dataset(data.root, str(val.dataset), str(val.split_by), str(val.split),
                               sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                               max_images=val.get("max_images"), resize_mode=model.resize_mode),
            batch_size=int(val.get("batch_size", 4))))
    vs = data.get("val_semantic") if data.kind == "refer" else None
    if vs is not None:
        from evf_sam.data.eval_dataset import SemanticEvalDataset

        check_semantic_tokenizer(data, model, tokenizer)
        splits.append(ValidationSplit(
            SemanticEvalDataset(semantic_readers(data)["val"], sam_size=model.sam_image_size,
                                beit_size=model.beit_image_size, max_images=vs.get("max_images"),
                                prefix=val_semantic_prefix(data), ignore_unlabeled=bool(vs.get("ignore_unlabeled", True)),
                                resize_mode=model.resize_mode),
            batch_size=int(vs.get("batch_size", 4))))
    return splits
