"""Synthetic REFER data: exact layout, determinism, resolvable expressions, idempotence."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from evf_sam.data.refer import ReferDataset, refer_dir
from evf_sam.data.synthetic import COLOURS, MANIFEST, make_synthetic_refer, synthetic_sentences

SMALL = dict(num_train=4, num_val=3, num_test=4, image_size=64)


def _files(root):
    base = refer_dir(root)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and p.name != MANIFEST}  # the manifest records the root path


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    stats = make_synthetic_refer(root, seed=0, **SMALL)
    return root, stats


def test_layout_and_splits(syn):
    root, stats = syn
    base = refer_dir(root)
    for d, b in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        assert (base / d / "instances.json").is_file() and (base / d / f"refs({b}).p").is_file()
    imgs = sorted((base / "images/mscoco/images/train2014").iterdir())
    assert len(imgs) == 11 and all(p.name.startswith("COCO_train2014_") and len(p.stem) == 27 for p in imgs)
    assert ReferDataset(root, "refcoco", "unc").splits == ["train", "val", "testA", "testB"]
    assert ReferDataset(root, "refcoco+", "unc").splits == ["train", "val", "testA", "testB"]
    g = ReferDataset(root, "refcocog", "umd")
    assert g.splits == ["train", "val", "test"]
    split_images = [set(g.image_ids(s)) for s in g.splits]
    assert sum(map(len, split_images)) == len(set().union(*split_images)) == 11  # disjoint, all images
    assert stats["datasets"]["refcoco|unc"]["val"]["images"] == 3


def test_expressions_resolvable_by_colour(syn):
    """Every sentence names its object's colour; colours are distinct within an image; the pixels
    under the ground-truth mask have that colour (checked on the decoded JPEG)."""
    root, _ = syn
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        r = ReferDataset(root, dataset, split_by)
        by_image: dict[int, list[str]] = {}
        for ref in r.refs:
            words = set()
            for s in ref["sentences"]:
                named = [c for c in COLOURS if c in s["sent"].split()]
                assert len(named) == 1, (dataset, s["sent"])
                words.add(named[0])
                assert s["sent"] == s["sent"].strip().lower() or dataset == "refcocog"
            assert len(words) == 1
            colour = words.pop()
            by_image.setdefault(ref["image_id"], []).append(colour)
            image = np.asarray(Image.open(r.image_path(ref["image_id"], must_exist=True)).convert("RGB"))
            mask = r.annotation_mask(ref["ann_id"]).astype(bool)
            assert mask.shape == image.shape[:2] and mask.sum() >= 50
            inner = image[mask].astype(float).mean(0)
            nearest = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - inner).sum())
            assert nearest == colour
        for colours in by_image.values():
            assert len(colours) == len(set(colours)) >= 2


def test_masks_disjoint_and_all_segmentation_kinds(syn):
    root, _ = syn
    r = ReferDataset(root, "refcoco", "unc")
    kinds = set()
    for image_id in r.image_ids():
        anns = [a for a in r.annotations.values() if a["image_id"] == image_id]
        total = sum(r.annotation_mask(a["id"]).astype(int) for a in anns)
        assert total.max() == 1  # non-overlapping objects
        for a in anns:
            seg = a["segmentation"]
            kinds.add("polygon" if isinstance(seg, list) else
                      "rle_list" if isinstance(seg["counts"], list) else "rle_str")
    assert kinds == {"polygon", "rle_list", "rle_str"}


def test_vocabulary_covers_sentences(syn):
    root, _ = syn
    vocab = set(synthetic_sentences())
    written = (refer_dir(root) / "sentences.txt").read_text().split("\n")
    assert {s for s in written if s} <= vocab
    for d, b in (("refcoco", "unc"), ("refcocog", "umd")):
        assert {s["sent"] for s in ReferDataset(root, d, b).sentences()} <= vocab


def test_deterministic(tmp_path, syn):
    root0, _ = syn
    make_synthetic_refer(tmp_path / "a", seed=0, **SMALL)
    assert _files(tmp_path / "a") == _files(root0)  # same bytes (images, json, pickles, manifest aside)
    make_synthetic_refer(tmp_path / "b", seed=1, **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and a["refcoco/instances.json"] != b["refcoco/instances.json"]


def test_idempotent_and_rebuilds_partial(tmp_path, monkeypatch):
    import evf_sam.data.synthetic as synthetic

    root = tmp_path / "d"
    s1 = make_synthetic_refer(root, seed=3, **SMALL)
    assert s1["reused"] is False
    base = refer_dir(root)
    probe = base / "refcoco" / "instances.json"
    t0 = probe.stat().st_mtime_ns
    s2 = make_synthetic_refer(root, seed=3, **SMALL)
    assert s2["reused"] is True and probe.stat().st_mtime_ns == t0
    # a half-written dataset (the completion manifest is written last) is detected and rebuilt
    real_write = synthetic.write_refer

    def crash_on_refcocog(root_, dataset, *args, **kwargs):
        if dataset == "refcocog":
            raise KeyboardInterrupt("simulated crash")
        return real_write(root_, dataset, *args, **kwargs)

    monkeypatch.setattr(synthetic, "write_refer", crash_on_refcocog)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_refer(root, seed=5, **SMALL)
    monkeypatch.setattr(synthetic, "write_refer", real_write)
    assert not (base / MANIFEST).exists()
    os.remove(base / "refcoco+" / "refs(unc).p")
    s3 = make_synthetic_refer(root, seed=5, **SMALL)
    assert s3["reused"] is False and (base / "refcoco+" / "refs(unc).p").is_file() and (base / MANIFEST).is_file()
    # different parameters: rebuilt
    s4 = make_synthetic_refer(root, seed=4, **SMALL)
    assert s4["reused"] is False
    assert json.loads((base / MANIFEST).read_text())["params"]["seed"] == 4


def test_refuses_to_overwrite_foreign_refer_root(tmp_path):
    (tmp_path / "refer_seg" / "refcoco").mkdir(parents=True)
    (tmp_path / "refer_seg" / "refcoco" / "instances.json").write_text("{}")
    with pytest.raises(FileExistsError):
        make_synthetic_refer(tmp_path, seed=0, **SMALL)
    assert (tmp_path / "refer_seg" / "refcoco" / "instances.json").read_text() == "{}"


def test_cli(tmp_path, capsys):
    from evf_sam.data.synthetic import main

    assert main(["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--num-test", "2",
                 "--image-size", "48"]) == 0
    assert "refcoco|unc" in capsys.readouterr().out
    assert ReferDataset(tmp_path, "refcoco", "unc").splits == ["train", "val", "testA", "testB"]


def test_task_knobs(tmp_path):
    from evf_sam.data.synthetic import SHAPES

    root = tmp_path / "k"
    make_synthetic_refer(root, seed=0, num_train=6, num_val=1, num_test=2, image_size=64, max_objects=3,
                         colours=["red", "green", "blue"], shapes=["circle", "square"], difficulty="hard")
    r = ReferDataset(root, "refcoco", "unc")
    vocab = set(synthetic_sentences())
    colourless = 0
    for ref in r.refs:
        ann = r.annotations[ref["ann_id"]]
        shape = SHAPES[ann["category_id"] - 1]
        assert shape in ("circle", "square")
        same_image = [a for a in r.annotations.values() if a["image_id"] == ref["image_id"]]
        shape_unique = sum(a["category_id"] == ann["category_id"] for a in same_image) == 1
        for s in ref["sentences"]:
            words = s["sent"].split()
            assert s["sent"] in vocab
            assert not set(words) & (set(COLOURS) - {"red", "green", "blue"})
            if not set(words) & set(COLOURS):  # colour-free: must still single the object out
                colourless += 1
                if s["sent"] in (shape, f"the {shape}"):
                    assert shape_unique
    assert colourless > 0

    make_synthetic_refer(tmp_path / "c", seed=0, num_train=3, num_val=1, num_test=2, image_size=64,
                         difficulty="colour_only")
    for s in ReferDataset(tmp_path / "c", "refcoco+", "unc").sentences():
        w = s["sent"].split()
        assert len(w) <= 3 and w[-1] in (*SHAPES, "one", *COLOURS)

    with pytest.raises(ValueError, match="colours"):
        make_synthetic_refer(tmp_path / "x", colours=["red", "mauve"])
    with pytest.raises(ValueError, match="max_objects"):
        make_synthetic_refer(tmp_path / "x", colours=["red", "green"], max_objects=3)
    with pytest.raises(ValueError, match="difficulty"):
        make_synthetic_refer(tmp_path / "x", difficulty="nightmare")


def test_easy_data_is_pinned():
    """The default ("easy") data, which the quickstart and its learning test train on, stays byte-identical
    (annotations and refs; hashes taken before the "grounded" mode was added)."""
    import hashlib
    import tempfile

    expected = {"refcoco/instances.json": "89022e90be38176a", "refcoco/refs(unc).p": "7f81a817ead67052",
                "refcoco+/refs(unc).p": "50f0a9cac904ecc1", "refcocog/refs(umd).p": "aac97390b487cb69",
                "sentences.txt": "6bf24b93cc09a6c8"}
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_refer(tmp, seed=0, **SMALL)
        base = refer_dir(tmp)
        got = {f: hashlib.sha256((base / f).read_bytes()).hexdigest()[:16] for f in expected}
    assert got == expected
    # the tokenizer corpus of tests that train on synthetic_sentences() (e.g. test_eval.py)
    assert hashlib.sha256("\n".join(synthetic_sentences()).encode()).hexdigest()[:16] == "4eed1b9615698e3b"


# -- "grounded": expressions that need the image ------------------------------------------------------

_SIDE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
_BIG = {"biggest", "bigger", "big", "largest", "larger"}
_SMALL = {"smallest", "smaller", "small"}


def _objects(r: ReferDataset, image_id: int, image: np.ndarray) -> list[dict]:
    """Every annotated object of the image, measured from its mask and the decoded JPEG."""
    from evf_sam.data.synthetic import SHAPES

    out = []
    for a in r.annotations.values():
        if a["image_id"] != image_id:
            continue
        m = r.annotation_mask(a["id"]).astype(bool)
        ys, xs = np.nonzero(m)
        inner = image[m].astype(float).mean(0)
        colour = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - inner).sum())
        out.append({"ann_id": a["id"], "colour": colour, "shape": SHAPES[a["category_id"] - 1],
                    "x": xs.mean(), "y": ys.mean(), "area": int(m.sum())})
    return out


def _resolve(sent: str, kind: str, objs: list[dict]) -> list[int]:
    """ann_ids that ``sent`` (of expression type ``kind``) describes, read independently of the generator:
    filter by the colour / shape words, then take the extreme / second along the named side or size."""
    from evf_sam.data.synthetic import SHAPES

    words = [w[:-1] if w[:-1] in SHAPES else w for w in sent.replace(",", "").split()]  # "circles" -> "circle"
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    side = next((w for w in words if w in _SIDE_WORDS), None)
    big = True if set(words) & _BIG else False if set(words) & _SMALL else None
    pool = [o for o in objs if (colour is None or o["colour"] == colour) and (shape is None or o["shape"] == shape)]
    if kind in ("colour", "shape", "colour+shape"):
        assert side is None and big is None, sent
        return [o["ann_id"] for o in pool]
    if kind in ("position", "colour+position", "shape+position", "ordinal"):
        key = {"left": lambda o: o["x"], "right": lambda o: -o["x"], "top": lambda o: o["y"],
               "bottom": lambda o: -o["y"]}[side]
        ranked = sorted(pool, key=key)
        return [ranked[1 if kind == "ordinal" else 0]["ann_id"]]
    assert kind in ("size", "colour+size") and big is not None, sent
    return [max(pool, key=lambda o: o["area"] if big else -o["area"])["ann_id"]]


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounded")
    stats = make_synthetic_refer(root, seed=0, num_train=40, num_val=6, num_test=6, image_size=96,
                                 difficulty="grounded")
    return root, stats


def test_grounded_expressions_single_out_their_object(grounded):
    """Each sentence, resolved from the pixels and masks alone, names exactly its ref's object; colours
    repeat within images; every expression type occurs, and the ones that need the colour do not
    pretend it is unique."""
    from collections import Counter

    from evf_sam.data.synthetic import EXPRESSION_TYPES, GROUNDED_COLOURS, grounded_sentences

    root, _ = grounded
    vocab = set(grounded_sentences())
    repeated = 0
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        r = ReferDataset(root, dataset, split_by)
        kinds = Counter()
        images = {}
        for ref in r.refs:
            if ref["image_id"] not in images:
                pixels = np.asarray(Image.open(r.image_path(ref["image_id"], must_exist=True)).convert("RGB"))
                images[ref["image_id"]] = _objects(r, ref["image_id"], pixels)
            objs = images[ref["image_id"]]
            target = next(o for o in objs if o["ann_id"] == ref["ann_id"])
            assert ref["sentences"] and len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
            for s in ref["sentences"]:
                kind = s["type"]
                kinds[kind] += 1
                assert kind in EXPRESSION_TYPES and s["sent"] in vocab
                assert _resolve(s["sent"], kind, objs) == [ref["ann_id"]], (dataset, s["sent"], kind, objs)
                same_colour = sum(o["colour"] == target["colour"] for o in objs)
                same_shape = sum(o["shape"] == target["shape"] for o in objs)
                if kind in ("colour+shape", "colour+position", "colour+size"):
                    assert same_colour > 1, s["sent"]
                if kind in ("colour+shape", "shape+position"):
                    assert same_shape > 1, s["sent"]
        for objs in images.values():
            assert {o["colour"] for o in objs} <= set(GROUNDED_COLOURS) and 2 <= len(objs) <= 4
            repeated += len({o["colour"] for o in objs}) < len(objs)
        located = {"position", "ordinal", "colour+position", "shape+position"}
        if dataset == "refcoco+":  # no location words, like RefCOCO+
            assert not located & set(kinds) and set(kinds) == set(EXPRESSION_TYPES) - located
        else:
            assert set(kinds) == set(EXPRESSION_TYPES), (dataset, kinds)
    assert repeated > 40  # of 3 x 52 images: colours repeat in most


def test_grounded_is_deterministic_and_its_vocabulary_is_separate(grounded, tmp_path):
    from evf_sam.data.synthetic import grounded_sentences

    root, _ = grounded
    make_synthetic_refer(tmp_path, seed=0, num_train=40, num_val=6, num_test=6, image_size=96, difficulty="grounded")
    assert _files(tmp_path) == _files(root)
    written = {s for s in (refer_dir(root) / "sentences.txt").read_text().split("\n") if s}
    assert written <= set(grounded_sentences()) <= set(synthetic_sentences(("grounded",)))
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_sentences(("nightmare",))
    with pytest.raises(ValueError, match="max_objects"):
        make_synthetic_refer(tmp_path / "x", difficulty="grounded", max_objects=7)


def test_type_scores_per_expression_type(grounded, tmp_path):
    """Predictions that are right exactly on the colour sentences: cIoU 1 there, 0 elsewhere; the union
    baseline over all types equals evf_sam.engine.baselines.trivial_baselines."""
    from evf_sam.engine.baselines import trivial_baselines
    from evf_sam.type_scores import ALL, merge_scores, type_scores

    root, _ = grounded
    r = ReferDataset(root, "refcoco", "unc")
    masks = tmp_path / "masks"
    masks.mkdir()
    for ref in r.split_refs("val"):
        gt = r.annotation_mask(ref["ann_id"]).astype(np.uint8) * 255
        for s in ref["sentences"]:
            pred = gt if s["type"] == "colour" else np.zeros_like(gt)
            Image.fromarray(pred).save(masks / f"{ref['image_id']:012d}_{ref['ref_id']}_{s['sent_id']}.png")
    scores = type_scores(root, "refcoco", "unc", "val", masks_dir=masks)
    model = {t: m.compute() for t, m in scores["model"].items()}
    assert model["colour"]["ciou"] == 1.0 and model["colour"]["n_expressions"] > 0
    assert all(m["ciou"] == 0.0 for t, m in model.items() if t not in ("colour", ALL))
    n = sum(len(ref["sentences"]) for ref in r.split_refs("val"))
    assert model[ALL]["n_expressions"] == n == sum(m["n_expressions"] for t, m in model.items() if t != ALL)
    assert 0 < model[ALL]["ciou"] < 1
    ref = trivial_baselines(root, "refcoco", "unc", "val")
    assert scores["union"][ALL].compute() == ref["union"] and scores["empty"][ALL].compute() == ref["empty"]
    both = merge_scores([scores, scores])
    assert both["union"]["colour"].compute()["n_expressions"] == 2 * scores["union"]["colour"].compute()["n_expressions"]
    assert both["union"]["colour"].compute()["ciou"] == pytest.approx(scores["union"]["colour"].compute()["ciou"])
    next(masks.iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="save_masks_dir"):
        type_scores(root, "refcoco", "unc", "val", masks_dir=masks)


def test_grounded_colour_only_names_a_colour_found_once_among_repeats(tmp_path):
    """The data of configs/experiment/pilot_table3_colour.yaml (grounded, expression_types=[colour], colours
    repeat): every sentence is a colour expression whose colour occurs once in its image, on the referred
    object, so the colour word names the object but only the image says where it is; other colours repeat
    in some images (a text-blind "every object of a colour" guess is not the answer)."""
    make_synthetic_refer(tmp_path, seed=3, num_train=40, num_val=4, num_test=4, image_size=96, difficulty="grounded",
                         expression_types=["colour"])
    n_sentences, repeats = 0, 0
    for dataset, split_by in (("refcoco", "unc"), ("refcocog", "umd")):
        r = ReferDataset(tmp_path, dataset, split_by)
        for ref in r.refs:
            pixels = np.asarray(Image.open(r.image_path(ref["image_id"])).convert("RGB"))
            objs = _objects(r, ref["image_id"], pixels)
            (target,) = [o for o in objs if o["ann_id"] == ref["ann_id"]]
            colours = [o["colour"] for o in objs]
            assert colours.count(target["colour"]) == 1
            repeats += len(set(colours)) < len(colours)
            for s in ref["sentences"]:
                n_sentences += 1
                assert s["type"] == "colour" and target["colour"] in s["sent"].split(), (s, target)
                assert _resolve(s["sent"], s["type"], objs) == [ref["ann_id"]], (s["sent"], objs)
    assert n_sentences > 0 and repeats > 0


def test_grounded_knobs_distinct_colours_and_a_subset_of_types(tmp_path):
    """repeat_colours=False + colour-free types: the colour that would single the object out is never named;
    every sentence still resolves to its object from pixels and masks."""
    from evf_sam.data.synthetic import EXPRESSION_TYPES

    kinds = ("shape", "position", "ordinal", "size")
    make_synthetic_refer(tmp_path, seed=2, num_train=30, num_val=4, num_test=4, image_size=96, difficulty="grounded",
                         repeat_colours=False, expression_types=kinds)
    seen = set()
    for dataset, split_by in (("refcoco", "unc"), ("refcocog", "umd")):
        r = ReferDataset(tmp_path, dataset, split_by)
        for ref in r.refs:
            pixels = np.asarray(Image.open(r.image_path(ref["image_id"])).convert("RGB"))
            objs = _objects(r, ref["image_id"], pixels)
            assert len({o["colour"] for o in objs}) == len(objs)
            for s in ref["sentences"]:
                seen.add(s["type"])
                assert not set(s["sent"].split()) & set(COLOURS), s["sent"]
                assert _resolve(s["sent"], s["type"], objs) == [ref["ann_id"]], (s["sent"], objs)
    assert seen == set(kinds)
    with pytest.raises(ValueError, match="expression_types"):
        make_synthetic_refer(tmp_path / "x", difficulty="grounded", expression_types=["colour", "relation"])
    with pytest.raises(ValueError, match="grounded"):
        make_synthetic_refer(tmp_path / "x", expression_types=list(EXPRESSION_TYPES))
    with pytest.raises(ValueError, match="repeat_colours"):
        make_synthetic_refer(tmp_path / "x", repeat_colours=False)
    with pytest.raises(ValueError, match="max_objects"):
        make_synthetic_refer(tmp_path / "x", difficulty="grounded", repeat_colours=False, colours=["red", "blue"],
                             max_objects=3)
