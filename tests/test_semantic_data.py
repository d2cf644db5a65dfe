"""Paper Tab. 6 data: ADE20K / Mapillary Vistas readers in their release layouts, the "[semantic] "
prefix (one token), mixing into the REFER training mix by rate, the ADE20K evaluation items, mIoU,
clear errors, and one short training run through the real trainer (results.json with the ADE20K
val split and its mIoU). Every dataset here is a few tiny files written in the real formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evf_sam.data.eval_dataset import SemanticEvalDataset
from evf_sam.data.semantic import ADE20K_CLASSES, IGNORE_INDEX, ADE20KReader, MapillaryReader
from evf_sam.data.synthetic_semantic import make_tiny_semantic, write_ade20k, write_mapillary
from evf_sam.data.train_dataset import SemanticTrainSource
from evf_sam.metrics import ClassIoU
from evf_sam.tokenizer import (SEMANTIC_PREFIX, SEMANTIC_TOKEN, add_tokens, load_tokenizer, require_semantic_token,
                               tokenize)

ROOT = Path(__file__).resolve().parents[1]


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    """(plain tiny tokenizer dir, the same + [semantic] via add_tokens)."""
    from evf_sam.testing import make_tokenizer

    base = tmp_path_factory.mktemp("tok")
    plain = make_tokenizer(base / "plain")
    sem = make_tokenizer(base / "sem")
    add_tokens(sem, [SEMANTIC_TOKEN])
    return plain, sem


@pytest.fixture(scope="module")
def hand_ade(tmp_path_factory):
    """ADE20K with hand-made label maps whose pixel counts are known."""
    root = tmp_path_factory.mktemp("ade")
    # training image 0 (32 x 32): wall 64 px, sky 128 px, person 32 px, tree 16 px, other (0) the rest
    lab = np.zeros((32, 32), np.uint8)
    lab[0:8, 0:8] = 1           # wall   -> class 0
    lab[8:16, 0:16] = 3         # sky    -> class 2
    lab[16:20, 0:8] = 13        # person -> class 12
    lab[20:24, 0:4] = 5         # tree   -> class 4
    lab[31, 31] = 150           # flag   -> class 149 (1 px)
    empty = np.zeros((32, 32), np.uint8)  # "other" only: no class at all
    write_ade20k(root, "training", [("ADE_train_00000001", _img(32, 32), lab),
                                    ("ADE_train_00000002", _img(32, 32, 1), empty)])
    # validation: image 1 (10 x 12): rows 0-1 other (24 px), rows 2-5 wall (48 px),
    # rows 6-9: cols 0-5 sky (24 px), cols 6-11 other (24 px); image 2 all other; image 3 all wall
    v1 = np.zeros((10, 12), np.uint8)
    v1[2:6] = 1
    v1[6:10, 0:6] = 3
    write_ade20k(root, "validation", [("ADE_val_00000001", _img(10, 12, 2), v1),
                                      ("ADE_val_00000002", _img(10, 12, 3), np.zeros((10, 12), np.uint8)),
                                      ("ADE_val_00000003", _img(10, 12, 4), np.ones((10, 12), np.uint8))])
    return root


# -- readers ---------------------------------------------------------------------------------------

def test_ade20k_reader_classes_masks_and_ignore(hand_ade):
    r = ADE20KReader(hand_ade, "training")
    assert len(r) == 2 and r.classes == ADE20K_CLASSES and len(r.classes) == 150
    assert r.classes[0] == "wall" and r.classes[2] == "sky" and r.classes[149] == "flag"
    assert r.images[0].name == "ADE_train_00000001.jpg" and r.labels[0].parent.name == "training"
    lab = r.read_label(0)
    counts = {int(c): int((lab == c).sum()) for c in np.unique(lab)}
    assert counts == {0: 64, 2: 128, 12: 32, 4: 16, 149: 1, IGNORE_INDEX: 1024 - 64 - 128 - 32 - 16 - 1}
    assert r.present_classes(lab) == [0, 2, 4, 12, 149]
    assert r.present_classes(r.read_label(1)) == []  # label 0 ("other") is ignored
    # LISA / EVF-SAM's directory name "ade20k/" is read too
    os.rename(hand_ade / "ADEChallengeData2016", hand_ade / "ade20k")
    try:
        assert len(ADE20KReader(hand_ade, "validation")) == 3
    finally:
        os.rename(hand_ade / "ade20k", hand_ade / "ADEChallengeData2016")


def test_ade20k_label_outside_150_is_an_error(tmp_path):
    write_ade20k(tmp_path, "training", [("a", _img(8, 8), np.zeros((8, 8), np.uint8))])
    from PIL import Image

    bad = np.zeros((8, 8), np.uint8)
    bad[0, 0] = 151
    Image.fromarray(bad).save(tmp_path / "ADEChallengeData2016/annotations/training/a.png")
    with pytest.raises(ValueError, match=r"a\.png.*\[151\]"):
        ADE20KReader(tmp_path, "training").read_label(0)


def test_mapillary_reader_names_duplicates_unlabeled_and_versions(tmp_path):
    labels = [("object--vehicle--car", "Car"), ("object--vehicle--car-group", "Car"),
              ("void--unlabeled", "Unlabeled"), ("nature--sky", "Sky"), ("human--person--individual", "Person")]
    lab = np.array([[0, 1, 2, 3], [3, 3, 4, 2]], np.uint8).repeat(4, 0).repeat(4, 1)  # 8 x 16
    write_mapillary(tmp_path, "training", [("img1", _img(8, 16), lab)], labels=labels)
    r = MapillaryReader(tmp_path, "training")
    assert r.version == "v2.0" and r.classes == ("car", "sky", "person")  # readable, lower-cased, merged
    assert r.labels[0] == tmp_path / "mapillary/training/v2.0/labels/img1.png"
    assert r.images[0] == tmp_path / "mapillary/training/images/img1.jpg"
    from PIL import Image

    assert Image.open(r.labels[0]).mode == "P"  # palette PNG, as released
    out = r.read_label(0)
    counts = {int(c): int((out == c).sum()) for c in np.unique(out)}
    assert counts == {0: 32, 1: 48, 2: 16, IGNORE_INDEX: 32}  # car = ids 0 + 1; "Unlabeled" ignored
    assert r.present_classes(out) == [0, 1, 2]
    # a v1.2-only tree is found by version=auto
    v12 = tmp_path / "v12"
    write_mapillary(v12, "validation", [("x", _img(8, 16), lab)], labels=labels, version="v1.2")
    r12 = MapillaryReader(v12, "validation")
    assert r12.version == "v1.2" and len(r12) == 1


def test_missing_directories_give_clear_errors(tmp_path, hand_ade):
    with pytest.raises(FileNotFoundError) as e:
        ADE20KReader(tmp_path / "nothing", "training")
    msg = str(e.value)
    assert "ADEChallengeData2016" in msg and "annotations/training/*.png" in msg and "data/README.md" in msg
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing .*ADEChallengeData2016/annotations/validation/"):
        ADE20KReader(tmp_path, "validation")
    with pytest.raises(FileNotFoundError) as e:
        MapillaryReader(tmp_path, "training")
    assert "config_v2.0.json" in str(e.value) and "mapillary/training/v2.0/labels/*.png" in str(e.value)
    # a label map without its image is named
    write_ade20k(tmp_path / "x", "training", [("ADE_train_1", _img(8, 8), np.ones((8, 8), np.uint8))])
    (tmp_path / "x/ADEChallengeData2016/images/training/ADE_train_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_train_1.jpg"):
        ADE20KReader(tmp_path / "x", "training")


# -- the [semantic] token ------------------------------------------------------------------------

def test_semantic_prefix_is_one_added_token(tok_dirs):
    plain_dir, sem_dir = tok_dirs
    plain, tok = load_tokenizer(plain_dir), load_tokenizer(sem_dir)
    sid = require_semantic_token(tok)
    assert sid == len(plain) and len(tok) == len(plain) + 1  # the next free id, like 64002 officially
    assert json.loads((sem_dir / "added_tokens.json").read_text()) == {SEMANTIC_TOKEN: sid}
    ids, pad = tokenize(tok, [SEMANTIC_PREFIX + "wall", "wall"], max_length=32)
    assert ids[0, 0] == 0 and ids[0, 1] == sid  # <s> [semantic] ...
    n = int((~pad[1]).sum())
    assert torch.equal(ids[0, 2:n + 1], ids[1, 1:n])  # then exactly the tokens of the bare class name
    assert int((~pad[0]).sum()) == n + 1
    assert add_tokens(sem_dir, [SEMANTIC_TOKEN]) == {SEMANTIC_TOKEN: sid}  # idempotent


def test_missing_or_out_of_range_semantic_token_errors(tok_dirs):
    plain_dir, sem_dir = tok_dirs
    with pytest.raises(ValueError, match="multitask EVF-SAM tokenizer"):
        require_semantic_token(load_tokenizer(plain_dir))
    tok = load_tokenizer(sem_dir)
    with pytest.raises(ValueError, match=r"only \d+ rows \(vocab_size\)"):
        require_semantic_token(tok, text_embedding_rows=len(tok) - 1)
    assert require_semantic_token(tok, text_embedding_rows=64010) == len(tok) - 1


def test_added_tokens_file_with_a_gap_is_refused(tok_dirs, tmp_path):
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(tok_dirs[0], d)
    n = len(load_tokenizer(d))
    (d / "added_tokens.json").write_text(json.dumps({SEMANTIC_TOKEN: n + 5}))
    with pytest.raises(ValueError, match=rf"should be id {n + 5}"):
        load_tokenizer(d)


# -- training samples and the mix --------------------------------------------------------------------

def test_train_source_samples_present_classes_with_prefix(hand_ade):
    src = SemanticTrainSource(ADE20KReader(hand_ade, "training"), name="ade20k", rate=1.0, classes_per_image=3)
    count = {"wall": 64, "sky": 128, "person": 32, "tree": 16, "flag": 1}
    seen = set()
    for i in range(6):
        s = src.sample(np.random.default_rng([0, i]), sam_size=64, beit_size=32)
        # image 2 has no class: always re-drawn to image 1, of which 3 of its 5 classes are taken
        assert s.image_key == src.key(0) and s.original_size == (32, 32) and s.input_size == (64, 64)
        assert len(s.sentences) == 3 and len(set(s.sentences)) == 3
        assert s.sam_image.shape == (3, 64, 64) and s.beit_image.shape == (3, 32, 32)
        assert s.masks.shape == (3, 64, 64)
        for sent, m in zip(s.sentences, s.masks):
            assert sent.startswith(SEMANTIC_PREFIX)
            name = sent[len(SEMANTIC_PREFIX):]
            assert int(m.sum()) == 4 * count[name]  # nearest x2 into the SAM frame
            seen.add(name)
    assert seen <= set(count) and len(seen) > 3
    only_empty = SemanticTrainSource(ADE20KReader(hand_ade, "training"), name="x", rate=1.0, max_redraws=5)
    only_empty.reader.labels = only_empty.reader.labels[1:]
    only_empty.reader.images = only_empty.reader.images[1:]
    with pytest.raises(ValueError, match="had no class"):
        only_empty.sample(np.random.default_rng(0), sam_size=64, beit_size=32)


@pytest.fixture(scope="module")
def mix_roots(tmp_path_factory):
    from evf_sam.data.synthetic import make_synthetic_refer

    base = tmp_path_factory.mktemp("mix")
    make_synthetic_refer(base / "syn", num_train=8, num_val=2, num_test=2, image_size=64)
    make_tiny_semantic(base / "sem", num_train=4, num_val=2, size=32)
    return base / "syn", base / "sem"


def test_mix_rates_and_unchanged_refer_samples(mix_roots, tok_dirs):
    from evf_sam.data.train_dataset import ReferTrainDataset, Source

    syn, sem = mix_roots
    tok = load_tokenizer(tok_dirs[1])
    common = dict(tokenizer=tok, sam_size=64, beit_size=32, max_text_len=32, seed=3, with_sam_images=False,
                  exclude_splits=())
    refer = [Source("refcoco", "refcoco", "unc", 1.0)]
    ade = SemanticTrainSource(ADE20KReader(sem, "training"), name="ade20k", rate=1.0)
    vistas = SemanticTrainSource(MapillaryReader(sem, "training"), name="mapillary", rate=2.0)
    ds = ReferTrainDataset(syn, refer, semantic_sources=[ade, vistas], **common)
    assert ds.probs.tolist() == [0.25, 0.25, 0.5]
    n = 400
    counts = {"refer": 0, "ade20k": 0, "mapillary": 0}
    for i in range(n):
        s = ds[i]
        if ade.owns(s.image_key):
            counts["ade20k"] += 1
            assert all(x.startswith(SEMANTIC_PREFIX) for x in s.sentences)
        elif vistas.owns(s.image_key):
            counts["mapillary"] += 1
            assert all(x[len(SEMANTIC_PREFIX):] in vistas.reader.classes for x in s.sentences)
        else:
            counts["refer"] += 1
            assert not any(x.startswith(SEMANTIC_PREFIX) for x in s.sentences)
    for k, p in (("refer", 0.25), ("ade20k", 0.25), ("mapillary", 0.5)):
        assert abs(counts[k] / n - p) < 0.08, counts
    # collate into one Batch: the [semantic] id is in the token ids
    b = ds.collate([ds[i] for i in range(8)])
    assert b.gt_masks.shape[0] == b.text_ids.shape[0] == b.image_index.shape[0]
    # embedding-cache keys: semantic images are addressable
    keys = ds.image_keys()
    assert ade.key(0) in keys and vistas.key(3) in keys
    assert ds.sam_image(vistas.key(0)).shape == (3, 64, 64)
    # no (or only zero-rate) semantic sources: the REFER samples are exactly the old ones
    plain = ReferTrainDataset(syn, refer, **common)
    zero = ReferTrainDataset(syn, refer, semantic_sources=[SemanticTrainSource(ade.reader, name="a", rate=0.0)],
                             **common)
    for i in range(5):
        a, z = plain[i], zero[i]
        assert a.image_key == z.image_key and a.sentences == z.sentences
        assert torch.equal(a.masks, z.masks)


# -- evaluation and mIoU -----------------------------------------------------------------------------

def test_eval_items_one_per_image_one_expression_per_class(hand_ade):
    ds = SemanticEvalDataset(ADE20KReader(hand_ade, "validation"), sam_size=16, beit_size=32, ignore_unlabeled=True)
    assert ds.name == "ade20k|semantic|val" and len(ds) == 2 and ds.num_expressions == 3  # all-"other" skipped
    assert ds.num_classes == 150
    it = ds[0]
    assert it.sentences == ["[semantic] wall", "[semantic] sky"] and it.class_ids == [0, 2]
    assert it.gt_masks.shape == (2, 10, 12) and it.gt_masks.dtype == torch.bool
    assert it.gt_masks.sum((1, 2)).tolist() == [48, 24] and int(it.ignore_mask.sum()) == 48
    assert it.original_size == (10, 12) and it.sam_image.shape == (3, 16, 16)
    assert ds[1].sentences == ["[semantic] wall"] and int(ds[1].gt_masks.sum()) == 120
    assert [len(ds.shard(r, 2)) for r in range(2)] == [1, 1] and len(ds.subset(1)) == 1
    bare = SemanticEvalDataset(ADE20KReader(hand_ade, "validation"), sam_size=16, prefix="", ignore_unlabeled=False)
    assert bare[0].sentences == ["wall", "sky"] and bare[0].ignore_mask is None


def test_class_iou_hand_computed():
    m = ClassIoU(4)
    m.update([0, 0, 2], torch.tensor([30, 10, 5]), torch.tensor([40, 20, 10]))
    out = m.compute()
    assert out["n_classes"] == 2
    assert out["miou"] == pytest.approx((40 / 60 + 5 / 10) / 2)
    assert m.per_class() == {0: pytest.approx(2 / 3), 2: 0.5}
    with pytest.raises(ValueError, match="class ids"):
        m.update([4], torch.tensor([1]), torch.tensor([1]))


class _OracleModel(torch.nn.Module):
    """Stands in for EvfSam in `evaluate`: returns given masks (one (n, H, W) tensor per image, in order)."""

    max_text_len = 32

    def __init__(self, masks):
        super().__init__()
        self.masks = list(masks)
        self.config = SimpleNamespace(encoder="beit3_tiny")

    def encode_image(self, sam):
        return torch.zeros(sam.shape[0], 1, 1, 1)

    def encode_prompts(self, beit, ids, pad):
        return torch.zeros(ids.shape[0], 1, 1)

    def decode_masks(self, emb, prompts, image_index):
        return torch.zeros(prompts.shape[0], 1, 4, 4), None

    def postprocess_masks(self, low_res, input_size, original_size):
        m = self.masks.pop(0)
        assert m.shape[0] == low_res.shape[0]
        return (m.float() * 2 - 1)[:, None]  # logits > 0 exactly on the mask


def test_evaluate_reports_miou(hand_ade, tok_dirs):
    from evf_sam.engine.evaluate import evaluate

    tok = load_tokenizer(tok_dirs[1])
    ds = SemanticEvalDataset(ADE20KReader(hand_ade, "validation"), sam_size=16, beit_size=32, ignore_unlabeled=True)
    gts = [ds[i].gt_masks for i in range(len(ds))]
    perfect = evaluate(_OracleModel(gts), tok, ds, progress=False)
    assert perfect["miou"] == 1.0 and perfect["ciou"] == 1.0 and perfect["n_classes"] == 2
    assert perfect["n_expressions"] == 3 and perfect["n_images"] == 2
    # predict every pixel: wall I 48 + 120, U 72 + 120 (other pixels ignored); sky I 24, U 72
    everything = [torch.ones_like(g) for g in gts]
    r = evaluate(_OracleModel(everything), tok, ds, progress=False)
    assert r["miou"] == pytest.approx((168 / 192 + 24 / 72) / 2)
    assert r["ciou"] == pytest.approx(192 / 264) and r["giou"] == pytest.approx((48 / 72 + 24 / 72 + 1) / 3)
    # counting the "other" pixels as false positives (EVF-SAM's ValDataset, the default): U = 120 per expression
    ds2 = SemanticEvalDataset(ADE20KReader(hand_ade, "validation"), sam_size=16, beit_size=32)
    r2 = evaluate(_OracleModel(everything), tok, ds2, progress=False)
    assert r2["miou"] == pytest.approx((168 / 240 + 24 / 120) / 2)


# -- the trainer ----------------------------------------------------------------------------------

def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_trainer_checks_tokenizer_and_semantic_root(mix_roots, tok_dirs, tmp_path):
    from evf_sam.config import typed
    from evf_sam.data.build import build_train_dataset, prepare_data
    from evf_sam.testing import build_tiny_model

    syn, sem = mix_roots
    base = ["model=tiny", "data=refer_mix_semantic", f"data.root={syn}", "data.sources.refclef.rate=0",
            "data.num_workers=0"]
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        prepare_data(typed(_compose(*base, f"data.semantic_root={tmp_path / 'none'}").data))
    cfg = _compose(*base, f"data.semantic_root={sem}")
    data = typed(cfg.data)
    assert prepare_data(data)["kind"] == "refer"
    plain = load_tokenizer(tok_dirs[0])
    with pytest.raises(ValueError, match="no '\\[semantic\\]' token"):
        build_train_dataset(data, build_tiny_model(vocab_size=len(plain)), plain, seed=cfg.seed)
    tok = load_tokenizer(tok_dirs[1])
    with pytest.raises(ValueError, match="text embedding has only"):
        build_train_dataset(data, build_tiny_model(vocab_size=len(plain)), tok, seed=cfg.seed)
    ds = build_train_dataset(data, build_tiny_model(vocab_size=len(tok)), tok, seed=cfg.seed)
    assert [s.name for s in ds.semantic] == ["ade20k", "mapillary"] and ds.probs.tolist() == [0.2] * 5


@pytest.mark.slow
def test_train_on_refer_plus_semantic_writes_ade20k_miou(mix_roots, tmp_path):
    syn, sem = mix_roots
    run = tmp_path / "run"
    args = ["model=tiny", "data=refer_mix_semantic", "trainer=tiny", "logger=none", "optim.warmup_steps=1",
            f"run_dir={run}", f"data.root={tmp_path / 'syn'}", f"data.semantic_root={sem}",
            "data.sources.refclef.rate=0", "+data.synthetic.generate=true", "+data.synthetic.num_train=8",
            "+data.synthetic.num_val=2", "+data.synthetic.num_test=2", "+data.synthetic.image_size=64",
            "data.num_workers=0", "trainer.total_steps=3", "trainer.ckpt_every=-1", "data.val.max_images=2",
            "data.val_semantic.max_images=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    p = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), *args], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    results = json.loads((run / "results.json").read_text())
    ade = results["ade20k|semantic|val"]
    assert 0.0 <= ade["miou"] <= 1.0 and 0.0 <= ade["ciou"] <= 1.0 and ade["n_images"] == 2
    assert ade["n_classes"] >= 1 and ade["n_expressions"] >= 2
    assert results["refcoco|unc|val"]["n_images"] == 2 and "miou" not in results["refcoco|unc|val"]
    vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert {v["split"] for v in vals} == {"refcoco|unc|val", "ade20k|semantic|val"}
    log = (run / "train.log").read_text()
    assert "ade20k=4 semantic images" in log and "mapillary=4 semantic images" in log
    # the tiny tokenizer got [semantic] (next free id) and the export carries it
    added = json.loads((run / "final" / "added_tokens.json").read_text())
    assert list(added) == [SEMANTIC_TOKEN]
    assert require_semantic_token(load_tokenizer(run / "final"), text_embedding_rows=added[SEMANTIC_TOKEN] + 1)


def test_table6_rows_compose():
    from evf_sam.config import typed
    from evf_sam.data.build import semantic_specs, uses_semantic_token, val_semantic_prefix

    rows = {"res": [], "res_ade20k": ["ade20k"], "res_ade20k_mapillary": ["ade20k", "mapillary"]}
    for row, names in rows.items():
        cfg = _compose("+experiment=table6", f"extra_data={row}", "data.root=/data")
        assert cfg.paper_table == "table6" and cfg.run_dir == f"runs/table6/{row}" and cfg.extra_data.name == row
        data = typed(cfg.data)
        assert [s.name for s in semantic_specs(data)] == names
        assert cfg.data.semantic_root == "/data" and cfg.data.val_semantic.dataset == "ade20k"
        assert val_semantic_prefix(data) == "[semantic] "  # official utils/dataset.py: every row, RES-only too
        assert cfg.data.val_semantic.ignore_unlabeled is False
        assert uses_semantic_token(data) == bool(names)  # validation alone does not require the single token
        old = typed(_compose("+experiment=table6", f"extra_data={row}", "data.root=/data",
                             "data.val_semantic.prefix=auto").data)
        assert val_semantic_prefix(old) == ("[semantic] " if names else "")  # the older protocol, opt-in
        # the REFER mix is the same in every row: RefCOCO/+/g; RefCLEF and gRefCOCO opt-in (the paper's main run)
        assert {k: s.rate for k, s in cfg.data.sources.items()} == {
            "refcoco": 1.0, "refcoco_plus": 1.0, "refcocog": 1.0, "refclef": 0.0, "grefcoco": 0.0}
