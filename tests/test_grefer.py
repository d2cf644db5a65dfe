"""gRefCOCO: the reader on hand-written files in the release layout (grefs(unc).json / .p, ann_id lists,
[-1] = no target), the metrics (ReLA's cIoU / gIoU / N-acc / T-acc), the text-blind baselines, the
evaluation dataset and loop, the training source, the config path and the synthetic look-alike."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from evf_sam.data.grefer import GReferDataset, grefs_path, load_grefs, write_grefer
from evf_sam.data.refer import UnsafePickleError, parse_split_name
from evf_sam.metrics import GRefMetrics, RefMetrics

H, W = 12, 16
IMG_DIR = "refer_seg/images/mscoco/images/train2014"


def _box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _poly(y0, y1, x0, x1) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _poly_mask(y0, y1, x0, x1) -> np.ndarray:
    """pycocotools' rasterisation of `_poly` (the reference decoder)."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(_poly(y0, y1, x0, x1), H, W)))


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _sent(sid: int, text: str) -> dict:
    return {"sent_id": sid, "sent": text, "raw": text.capitalize(), "tokens": text.split()}


# Image 5: objects 1 (polygon box rows 1-4, cols 1-5) and 2 (RLE box rows 6-10, cols 8-14).
# Image 6: object 3 (RLE box rows 0-5, cols 0-7).
BOX2, BOX3 = _box(6, 11, 8, 15), _box(0, 6, 0, 8)
ANNS = [
    {"id": 1, "image_id": 5, "category_id": 1, "segmentation": _poly(1, 4, 1, 5), "iscrowd": 0},
    {"id": 2, "image_id": 5, "category_id": 2, "segmentation": _rle(BOX2), "iscrowd": 0},
    {"id": 3, "image_id": 6, "category_id": 1, "segmentation": _rle(BOX3), "iscrowd": 0},
]
IMAGES = [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": H, "width": W},
          {"id": 6, "file_name": "COCO_train2014_000000000006.jpg", "height": H, "width": W}]
# the release's conventions: ann_id and category_id are lists; no target is ann_id [-1]
REFS = [
    {"ref_id": 10, "ann_id": [1, 2], "category_id": [1, 2], "image_id": 5, "split": "val", "file_name": "a.jpg",
     "sent_ids": [100, 101], "sentences": [_sent(100, "both things"), _sent(101, "Everything ")]},
    {"ref_id": 11, "ann_id": [-1], "category_id": [], "image_id": 5, "split": "val", "file_name": "a.jpg",
     "sent_ids": [102], "sentences": [_sent(102, "the dog")]},
    {"ref_id": 12, "ann_id": [3], "category_id": [1], "image_id": 6, "split": "val", "file_name": "b.jpg",
     "sent_ids": [103], "sentences": [_sent(103, "the box")]},
    {"ref_id": 13, "ann_id": 2, "category_id": 2, "image_id": 5, "split": "train", "file_name": "a.jpg",
     "sent_ids": [104], "sentences": [_sent(104, "right thing")]},  # a scalar ann_id: read as [2]
    {"ref_id": 14, "ann_id": [-1], "category_id": [], "image_id": 6, "split": "train", "file_name": "b.jpg",
     "sent_ids": [105], "sentences": [_sent(105, "the cat")]},
]


def _write_release(root: Path, refs=REFS, fmt: str = "json") -> Path:
    """The release layout written by hand (not through write_grefer), plus grey JPEG images."""
    from PIL import Image

    d = root / "refer_seg" / "grefcoco"
    d.mkdir(parents=True, exist_ok=True)
    (d / "instances.json").write_text(json.dumps({"images": IMAGES, "annotations": ANNS,
                                                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    if fmt == "json":
        (d / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        (d / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / IMG_DIR).mkdir(parents=True, exist_ok=True)
    for im in IMAGES:
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(root / IMG_DIR / im["file_name"])
    return root


@pytest.fixture()
def release(tmp_path):
    return _write_release(tmp_path)


# -- reader ------------------------------------------------------------------------------------------

def test_reader_masks_and_no_target(release):
    g = GReferDataset(release)
    assert g.refs_file.name == "grefs(unc).json"
    assert g.splits == ["val", "train"] and [r["ref_id"] for r in g.split_refs("val")] == [10, 11, 12]
    by_id = {r["ref_id"]: r for r in g.refs}
    assert [by_id[i]["no_target"] for i in (10, 11, 12, 13, 14)] == [False, True, False, False, True]
    assert by_id[13]["ann_id"] == [2] and by_id[13]["category_id"] == [2]
    box1 = _poly_mask(1, 4, 1, 5)
    assert box1.sum() > 0
    np.testing.assert_array_equal(g.annotation_mask(1), box1)
    np.testing.assert_array_equal(g.ref_mask(by_id[10]), box1 | BOX2)  # multi-target: the union
    np.testing.assert_array_equal(g.ref_mask(by_id[12]), BOX3)
    nt = g.ref_mask(by_id[11])
    assert nt.shape == (H, W) and nt.dtype == np.uint8 and nt.sum() == 0  # no target: empty, image-sized
    assert g.image_path(5) == release / IMG_DIR / "COCO_train2014_000000000005.jpg"
    assert "2 no-target" in repr(g)


def test_p_file_first_and_restricted(tmp_path):
    root = _write_release(tmp_path)
    d = root / "refer_seg" / "grefcoco"
    alt = [dict(r, split="test") for r in REFS]
    (d / "grefs(unc).p").write_bytes(pickle.dumps(alt, protocol=2))  # both present: G_REFER reads the .p
    assert grefs_path(root).name == "grefs(unc).p"
    assert GReferDataset(root).splits == ["test"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    (d / "grefs(unc).p").write_bytes(pickle.dumps([dict(REFS[0], sentences=Evil())], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"grefs\(unc\)\.p"):
        GReferDataset(root)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)\.json"):
        GReferDataset(tmp_path)
    mixed = [dict(REFS[0], ann_id=[1, -1])]
    with pytest.raises(ValueError, match="-1 must stand alone"):
        GReferDataset(_write_release(tmp_path / "a", mixed))
    flag = [dict(REFS[1], no_target=False)]  # a no_target key, if present, must agree with ann_id
    with pytest.raises(ValueError, match="disagrees"):
        GReferDataset(_write_release(tmp_path / "b", flag))
    wrong_image = [dict(REFS[0], image_id=6)]
    with pytest.raises(ValueError, match="another image"):
        GReferDataset(_write_release(tmp_path / "c", wrong_image))
    with pytest.raises(ValueError, match="no split 'testC'"):
        GReferDataset(_write_release(tmp_path / "d")).split_refs("testC")


def test_writer_round_trip_both_formats(tmp_path):
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    for fmt in ("json", "p"):
        root = tmp_path / fmt
        write_grefer(root, IMAGES, ANNS, cats, REFS, fmt=fmt)
        path = root / "refer_seg" / "grefcoco" / f"grefs(unc).{fmt}"
        assert grefs_path(root) == path
        raw = json.loads(path.read_text()) if fmt == "json" else pickle.loads(path.read_bytes())
        assert raw[3]["ann_id"] == [2] and raw[1]["ann_id"] == [-1] and "no_target" not in raw[1]
        assert [r["ref_id"] for r in load_grefs(path)] == [r["ref_id"] for r in REFS]
    write_grefer(tmp_path / "p", IMAGES, ANNS, cats, REFS, fmt="json")  # the stale .p is removed
    assert grefs_path(tmp_path / "p").suffix == ".json"
    with pytest.raises(ValueError, match="not annotations of image 6"):
        write_grefer(tmp_path / "x", IMAGES, ANNS, cats, [dict(REFS[2], ann_id=[1])])


def test_split_names():
    assert parse_split_name("grefcoco|unc|testB") == ("grefcoco", "unc", "testB")
    with pytest.raises(ValueError, match="split_by 'umd'"):
        parse_split_name("grefcoco|umd|val")
    assert parse_split_name("refcoco|unc|val") == ("refcoco", "unc", "val")


# -- metrics -----------------------------------------------------------------------------------------

def _m(*boxes) -> torch.Tensor:
    out = torch.zeros(len(boxes), 4, 4, dtype=torch.bool)
    for k, b in enumerate(boxes):
        if b is not None:
            y0, y1, x0, x1 = b
            out[k, y0:y1, x0:x1] = True
    return out


def test_gref_metrics_hand_computed():
    # 4x4 images (16 px). e0: target 4 px, pred covers 2 of them + 2 outside: I 2, U 6, IoU 1/3.
    # e1: target, pred exactly it: I 4, U 4. e2: no target, pred empty: I 0, U 0, IoU 1 (N-acc hit).
    # e3: no target, pred 3 px: I 0, U 3, IoU 0. e4: target 2 px, pred empty: I 0, U 2, IoU 0 (T-acc miss).
    pred = _m((0, 2, 1, 3), (2, 4, 2, 4), None, (0, 1, 0, 3), None)
    gt = _m((0, 2, 0, 2), (2, 4, 2, 4), None, None, (3, 4, 0, 2))
    nt = [False, False, True, True, False]
    m = GRefMetrics()
    i, u = m.update(pred, gt, nt)
    assert i.tolist() == [2, 4, 0, 0, 0] and u.tolist() == [6, 4, 0, 3, 2]
    m.add_images(2)
    r = m.compute()
    assert r["ciou"] == pytest.approx(6 / 15)
    assert r["giou"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 0) / 5)
    assert r["n_acc"] == 0.5 and r["t_acc"] == pytest.approx(2 / 3)
    assert r["pr@0.5"] == pytest.approx(1 / 3) and r["pr@0.9"] == pytest.approx(1 / 3)  # targets only
    assert (r["n_expressions"], r["n_no_target"], r["n_images"]) == (5, 2, 2)

    # empty_area = 3/16: a prediction of <= 3 px is empty, scored as the empty mask: e3 becomes an
    # N-acc hit (IoU 1, U 0); e0..e1 (4 px) stay; an empty target prediction is still a T-acc miss
    m2 = GRefMetrics(empty_area=3 / 16)
    i2, u2 = m2.update(pred, gt, nt)
    assert u2.tolist() == [6, 4, 0, 0, 2]
    r2 = m2.compute()
    assert r2["n_acc"] == 1.0 and r2["t_acc"] == pytest.approx(2 / 3) and r2["ciou"] == pytest.approx(6 / 12)
    assert r2["giou"] == pytest.approx((1 / 3 + 1 + 1 + 1 + 0) / 5)


def test_gref_metrics_edge_cases_and_reduction():
    m = GRefMetrics()
    # a target expression whose ground truth is empty and prediction empty: ReLA's IoU 0 (U == 0), not 1
    m.update(_m(None), _m(None), [False])
    assert m.compute()["giou"] == 0.0 and m.compute()["n_acc"] is None and m.compute()["t_acc"] == 0.0
    with pytest.raises(ValueError, match="no-target expression has a non-empty"):
        GRefMetrics().update(_m((0, 1, 0, 1)), _m((0, 1, 0, 1)), [True])
    with pytest.raises(ValueError, match="fraction"):
        GRefMetrics(empty_area=1.5)
    # state round trip / merge: the sums of two halves equal one pass
    pred, gt = _m((0, 2, 0, 2), None, (1, 3, 1, 3)), _m((0, 2, 0, 1), None, None)
    nt = [False, False, True]
    whole, a, b = GRefMetrics(), GRefMetrics(), GRefMetrics()
    whole.update(pred, gt, nt)
    a.update(pred[:1], gt[:1], nt[:1])
    b.update(pred[1:], gt[1:], nt[1:])
    assert a.merge(b).compute() == whole.compute()
    # RefMetrics keeps its own rule (an empty union counts 1)
    ref = RefMetrics()
    ref.update(_m(None), _m(None))
    assert ref.compute()["giou"] == 1.0


# -- baselines ---------------------------------------------------------------------------------------

def test_trivial_baselines_on_release(release):
    from evf_sam.engine.baselines import trivial_baselines

    b = trivial_baselines(release, "grefcoco", "unc", "val")
    box1 = _poly_mask(1, 4, 1, 5)
    n1, n2, n3 = int(box1.sum()), int(BOX2.sum()), int(BOX3.sum())
    # val: ref 10 (2 sentences, gt box1|box2), ref 11 (1 sentence, no target), ref 12 (1 sentence, box3)
    e = b["empty"]
    assert e["ciou"] == 0.0 and e["giou"] == pytest.approx(1 / 4) and e["n_acc"] == 1.0 and e["t_acc"] == 0.0
    u = b["union"]  # image 5's union is box1|box2 (exactly ref 10's gt), image 6's is box3
    assert u["ciou"] == pytest.approx((2 * (n1 + n2) + n3) / (2 * (n1 + n2) + (n1 + n2) + n3))
    assert u["giou"] == pytest.approx(3 / 4) and u["n_acc"] == 0.0 and u["t_acc"] == 1.0
    assert e["n_expressions"] == u["n_expressions"] == 4 and u["n_no_target"] == 1


# -- evaluation dataset and loop ---------------------------------------------------------------------

def test_eval_dataset_items(release):
    from evf_sam.data.eval_dataset import GReferEvalDataset, build_eval_dataset

    ds = build_eval_dataset(release, "grefcoco", "unc", "val", sam_size=64, beit_size=32, empty_area=0.01)
    assert isinstance(ds, GReferEvalDataset) and ds.name == "grefcoco|unc|val" and ds.empty_area == 0.01
    assert len(ds) == 2 and ds.num_expressions == 4 and ds.num_no_target == 1
    item = ds[0]  # image 5: "both things", "everything" (stripped, lower-cased), "the dog"
    assert item.sentences == ["both things", "everything", "the dog"] and item.no_target == [False, False, True]
    both = torch.from_numpy((_poly_mask(1, 4, 1, 5) | BOX2).astype(bool))
    assert torch.equal(item.gt_masks[0], both) and torch.equal(item.gt_masks[1], both)
    assert not item.gt_masks[2].any() and item.gt_masks.shape == (3, H, W)


@pytest.fixture(scope="module")
def syn_eval(tmp_path_factory):
    """Synthetic data with the gRefCOCO look-alike, a tokenizer on its sentences and a tiny random model."""
    from evf_sam.data.synthetic import make_synthetic_refer, synthetic_grefcoco_sentences
    from evf_sam.testing import build_tiny_model, write_official_checkpoint
    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    tmp = tmp_path_factory.mktemp("geval")
    make_synthetic_refer(tmp / "data", seed=3, num_train=4, num_val=4, num_test=2, image_size=64, grefcoco=True)
    tok_dir = train_sentencepiece(synthetic_grefcoco_sentences(), tmp / "tok", vocab_size=64)
    tok = load_tokenizer(tok_dir)
    model = build_tiny_model(seed=0, vocab_size=len(tok))
    write_official_checkpoint(tmp / "ckpt", model, tok_dir, dtype=torch.float32)
    return tmp, tok, model


def test_evaluate_matches_independent_scoring_of_saved_masks(syn_eval):
    """evaluate() on a gRefCOCO split == ReLA's rules applied by hand to the masks it saved."""
    from PIL import Image

    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine.evaluate import evaluate

    tmp, tok, model = syn_eval
    ds = build_eval_dataset(tmp / "data", "grefcoco", "unc", "val", sam_size=model.sam_image_size,
                            beit_size=model.beit_image_size, empty_area=0.05)
    out = evaluate(model, tok, ds, progress=False, save_masks_dir=tmp / "masks")
    inter = union = 0
    ious, nt_hits, t_hits, n_nt = [], 0, 0, 0
    for i in range(len(ds)):
        item = ds[i]
        for k, (ref_id, sent_id) in enumerate(zip(item.ref_ids, item.sent_ids)):
            pred = np.asarray(Image.open(tmp / "masks" / f"{item.image_id:012d}_{ref_id}_{sent_id}.png")) > 0
            gt = item.gt_masks[k].numpy()
            empty = pred.sum() <= int(0.05 * pred.size)
            if item.no_target[k]:
                n_nt += 1
                nt_hits += empty
                ious.append(1.0 if empty else 0.0)
                union += 0 if empty else int(pred.sum())
            else:
                t_hits += not empty
                p = pred & (not empty)
                i_, u_ = int((p & gt).sum()), int((p | gt).sum())
                inter, union = inter + i_, union + u_
                ious.append(i_ / u_ if u_ else 0.0)
    n = len(ious)
    assert out["n_expressions"] == n == ds.num_expressions and out["n_no_target"] == n_nt == ds.num_no_target > 0
    assert out["ciou"] == pytest.approx(inter / union) and out["giou"] == pytest.approx(sum(ious) / n)
    assert out["n_acc"] == pytest.approx(nt_hits / n_nt) and out["t_acc"] == pytest.approx(t_hits / (n - n_nt))


def test_eval_script_grefcoco_split(syn_eval):
    """scripts/eval_refcoco.py 'splits=[grefcoco|unc|val]' empty_area=...: the in-process numbers, + N-acc / T-acc."""
    import csv
    import subprocess
    import sys

    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine.evaluate import evaluate

    tmp, tok, model = syn_eval
    repo = Path(__file__).resolve().parents[1]
    out = tmp / "run"
    cmd = [sys.executable, str(repo / "scripts" / "eval_refcoco.py"), f"checkpoint={tmp / 'ckpt'}",
           f"data.root={tmp / 'data'}", f"output_dir={out}", "data.num_workers=0", "progress=false",
           "splits=[grefcoco|unc|val]", "empty_area=0.05", f"hydra.run.dir={tmp / 'hydra'}"]
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "grefcoco|unc|val: cIoU" in p.stdout and "n_acc" in p.stdout and "| gRefCOCO val |" in p.stdout
    res = json.loads((out / "results.json").read_text())["grefcoco|unc|val"]
    ds = build_eval_dataset(tmp / "data", "grefcoco", "unc", "val", sam_size=model.sam_image_size,
                            beit_size=model.beit_image_size, empty_area=0.05)
    assert res == evaluate(model, tok, ds, progress=False) and res["empty_area"] == 0.05
    (row,) = csv.DictReader(open(out / "results.csv"))
    assert float(row["n_acc"]) == res["n_acc"] and float(row["t_acc"]) == res["t_acc"]


# -- training source and config ----------------------------------------------------------------------

def test_training_source_masks(tmp_path):
    from evf_sam.data.train_dataset import EXCLUDE_SPLITS, GReferTrainSource, ReferTrainDataset, Source
    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    # train refs only: with the val refs their images (5, 6) would be excluded from training
    release = _write_release(tmp_path, [REFS[3], REFS[4]])

    tok = load_tokenizer(train_sentencepiece(["right thing", "the cat", "both things", "the dog"] * 20,
                                             release / "tok", vocab_size=32))
    ds = ReferTrainDataset(release, [Source("grefcoco", "grefcoco", "unc", rate=1.0)], tokenizer=tok, sam_size=64,
                           beit_size=32, max_text_len=8, sentences_per_image=3, exclude_splits=EXCLUDE_SPLITS)
    (src,) = ds.refer
    assert isinstance(src, GReferTrainSource) and "grefcoco|unc" in ds.summary()
    assert src.images == [(5, [((2,), "right thing")]), (6, [((-1,), "the cat")])]  # the train split only
    seen = {}
    for index in range(12):
        s = ds[index]
        seen[s.sentences[0]] = s.masks[0]
    # masks in the SAM frame (64 px, longest side 16 -> x4, padded): the object, or nothing
    assert seen["the cat"].sum() == 0
    assert seen["right thing"].sum() == BOX2.sum() * 16 and seen["right thing"][24:44, 32:60].all()
    # with the eval-image exclusion (data.exclude_eval_images, opt-in) gRefCOCO's val / test images never
    # train: with the val refs on images 5 and 6 nothing is left; without it (the default, as the official
    # data code) they do
    full = _write_release(tmp_path / "full")
    with pytest.raises(ValueError, match="no training images"):
        ReferTrainDataset(full, [Source("grefcoco", "grefcoco", "unc", rate=1.0)], tokenizer=tok, sam_size=64,
                          beit_size=32, max_text_len=8, exclude_splits=EXCLUDE_SPLITS)
    kept = ReferTrainDataset(full, [Source("grefcoco", "grefcoco", "unc", rate=1.0)], tokenizer=tok, sam_size=64,
                             beit_size=32, max_text_len=8)
    assert [i for i, _ in kept.refer[0].images] == [5, 6] and "no training image excluded" in kept.summary()


def test_config_source_off_by_default_and_switchable(tmp_path):
    from hydra import compose, initialize_config_dir

    from evf_sam.config import typed
    from evf_sam.data.build import refer_sources

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("train", overrides=["data.root=/d"])
        assert cfg.data.sources.grefcoco.rate == 0.0
        assert "grefcoco" not in [s.name for s in refer_sources(typed(cfg.data))]
        cfg = compose("train", overrides=["data.root=/d", "data.sources.grefcoco.rate=2.0", "data.val.dataset=grefcoco",
                                          "data.val.empty_area=0.01"])
        data = typed(cfg.data)
    (g,) = [s for s in refer_sources(data) if s.name == "grefcoco"]
    assert (g.dataset, g.split_by, g.rate, g.split) == ("grefcoco", "unc", 2.0, "train")
    assert data.val.empty_area == 0.01
    from evf_sam.data.train_dataset import check_refer_root

    (tmp_path / "refer_seg").mkdir()
    with pytest.raises(FileNotFoundError, match=r"grefcoco/grefs\(unc\)\.json"):
        check_refer_root(tmp_path, [g])


# -- synthetic look-alike ----------------------------------------------------------------------------

def test_synthetic_grefcoco_layout_and_expressions(tmp_path):
    from evf_sam.data.synthetic import COLOURS, SHAPES, make_synthetic_refer, synthetic_grefcoco_sentences
    from evf_sam.preprocess import load_image

    stats = make_synthetic_refer(tmp_path, seed=0, num_train=6, num_val=3, num_test=2, image_size=64, grefcoco=True)
    assert (tmp_path / "refer_seg" / "grefcoco" / "grefs(unc).json").is_file()
    g = GReferDataset(tmp_path)
    assert set(g.splits) == {"train", "val", "testA", "testB"} and len(g.images) == 11
    assert stats["images"] == 22 and stats["datasets"]["grefcoco|unc"]["val"]["no_target_refs"] == 3
    vocab = set(synthetic_grefcoco_sentences())
    kinds = set()
    for ref in g.refs:
        image = load_image(g.image_path(ref["image_id"]))
        anns = [a for a in g.annotations.values() if a["image_id"] == ref["image_id"]]
        mean = {a["id"]: image[g.annotation_mask(a["id"]).astype(bool)].astype(float).mean(0) for a in anns}
        colour_of = {i: min(COLOURS, key=lambda c: np.abs(m - COLOURS[c]).sum()) for i, m in mean.items()}
        for s in ref["sentences"]:
            assert s["sent"] in vocab
            words = set(s["sent"].split())
            named = [c for c in COLOURS if c in words]
            if ref["no_target"]:  # an absent palette colour, an absent shape, or never-drawn words
                kinds.add("none")
                assert g.ref_mask(ref).sum() == 0
                shapes = {SHAPES[a["category_id"] - 1] for a in anns}
                named_shapes = {x for x in SHAPES if x in words or x + "s" in words}
                assert ((named and named[0] not in colour_of.values()) or (named_shapes and not named_shapes & shapes)
                        or words & {"purple", "orange", "star", "stars", "heart", "hearts"}), s["sent"]
            elif named:  # a colour expression names every object of that colour, nothing else
                assert sorted(ref["ann_id"]) == sorted(a for a, c in colour_of.items() if c == named[0])
                kinds.add("multi" if len(ref["ann_id"]) > 1 else "single")
            else:  # "both circles", "all the squares": every object of that shape, at least two
                assert len(ref["ann_id"]) >= 2
                kinds.add("shape")
    assert kinds == {"none", "multi", "single", "shape"}
    again = make_synthetic_refer(tmp_path, seed=0, num_train=6, num_val=3, num_test=2, image_size=64, grefcoco=True)
    assert again["reused"] and again["datasets"] == stats["datasets"]


def test_data_check_reports_grefcoco(release, tmp_path):
    import io

    from evf_sam.data.check import check_root

    buf = io.StringIO()
    assert check_root(release, ("grefcoco|unc",), out=buf) == []
    text = buf.getvalue()
    assert "grefcoco|unc     5 refs, 2 images in instances.json (required)" in text
    assert "val      refs       3  sentences       4  images      2  images ok" in text
    (release / IMG_DIR / IMAGES[1]["file_name"]).unlink()
    problems = check_root(release, ("grefcoco|unc",), out=io.StringIO())
    assert any("grefcoco|unc|val: 1 of 2 images missing" in p for p in problems)
    problems = check_root(tmp_path / "empty", ("grefcoco|unc",), out=io.StringIO())
    assert any(r"grefs(unc).json" in p for p in problems)


def test_corrupt_instances_json_is_named(tmp_path):
    """gRefCOCO reads instances.json through ReferDataset's loader: a cut-off file is one error naming it."""
    from evf_sam.data.grefer import GReferDataset

    root = _write_release(tmp_path)
    inst = root / "refer_seg" / "grefcoco" / "instances.json"
    inst.write_text(inst.read_text()[:40])
    with pytest.raises(ValueError, match=r"instances\.json' is not valid JSON, truncated or corrupt"):
        GReferDataset(root)
