"""REFER reader / writer: round trip (polygon, multi-part polygon, compressed and uncompressed RLE),
the restricted unpickler, Python-2 style pickles, clear errors."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest

from evf_sam.data.refer import (ReferDataset, RestrictedUnpickler, UnsafePickleError, decode_segmentation,
                                load_refs_pickle, refs_path, write_refer)

H, W = 20, 30


def _rle_uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _rle_compressed(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


@pytest.fixture()
def tiny_refer(tmp_path):
    """Two images, four annotations (polygon, 2-part polygon, compressed RLE, uncompressed RLE)."""
    images = [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": H, "width": W},
              {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W}]
    rle_c, rle_u = _box(2, 8, 3, 9), _box(10, 19, 20, 28)
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
        {"id": 2, "image_id": 7, "category_id": 1,  # two separate parts, merged by union
         "segmentation": [[14, 2, 18, 2, 18, 6, 14, 6], [20, 12, 26, 12, 26, 18, 20, 18]]},
        {"id": 3, "image_id": 9, "category_id": 2, "segmentation": rle_c},
        {"id": 4, "image_id": 9, "category_id": 2, "segmentation": _rle_uncompressed(rle_u)},
    ]
    anns[2]["segmentation"] = _rle_compressed(rle_c)
    refs = []
    for k, (ann, split) in enumerate(zip(anns, ["train", "val", "val", "testA"])):
        sents = [{"sent_id": 10 * k + j, "sent": f"object {k} take {j}", "raw": f"Object {k} take {j}",
                  "tokens": ["object", str(k), "take", str(j)]} for j in range(k + 1)]
        refs.append({"ref_id": 100 + k, "ann_id": ann["id"], "image_id": ann["image_id"], "category_id": 1,
                     "split": split, "file_name": "x.jpg", "sent_ids": [s["sent_id"] for s in sents],
                     "sentences": sents})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    write_refer(tmp_path, "refcoco", "unc", images, anns, cats, refs)
    return tmp_path, images, anns, refs, {"rle_c": rle_c, "rle_u": rle_u}


def test_round_trip_refs_splits_sentences(tiny_refer):
    root, images, anns, refs, _ = tiny_refer
    r = ReferDataset(root, "refcoco", "unc")
    assert r.refs == refs
    assert r.splits == ["train", "val", "testA"]
    assert [x["ref_id"] for x in r.split_refs("val")] == [101, 102]
    assert r.image_ids("val") == [7, 9]
    assert [s["sent"] for s in r.sentences("val")] == ["object 1 take 0", "object 1 take 1", "object 2 take 0",
                                                       "object 2 take 1", "object 2 take 2"]
    assert r.image_path(9).name == "COCO_train2014_000000000009.jpg"
    assert r.image_path(9).parent == root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    assert r.has_image(7) and not r.has_image(8)


def test_round_trip_masks(tiny_refer):
    root, _, _, _, boxes = tiny_refer
    r = ReferDataset(root, "refcoco", "unc")
    m1 = r.annotation_mask(1)
    assert m1.shape == (H, W) and m1.dtype == np.uint8 and set(np.unique(m1)) == {0, 1}
    assert m1[5, 6] == 1 and m1[15, 6] == 0 and m1[5, 20] == 0
    m2 = r.annotation_mask(2)  # both parts present
    assert m2[4, 16] == 1 and m2[15, 23] == 1 and m2[4, 6] == 0
    np.testing.assert_array_equal(r.annotation_mask(3), boxes["rle_c"])
    np.testing.assert_array_equal(r.annotation_mask(4), boxes["rle_u"])
    np.testing.assert_array_equal(r.ann_mask(4), boxes["rle_u"])


def test_decode_polygon_matches_pycocotools_union():
    from pycocotools import mask as mask_utils

    parts = [[1, 1, 9, 1, 9, 9, 1, 9], [5, 5, 15, 5, 15, 15, 5, 15]]  # overlapping parts
    ref = mask_utils.decode(mask_utils.frPyObjects(parts, H, W)).max(axis=2)
    np.testing.assert_array_equal(decode_segmentation(parts, H, W), ref)
    assert decode_segmentation([], H, W).sum() == 0


def test_refs_file_is_protocol2_plain_pickle(tiny_refer):
    root = tiny_refer[0]
    raw = refs_path(root, "refcoco", "unc").read_bytes()
    assert raw[:2] == b"\x80\x02"
    assert b"c__builtin__" not in raw and b"\x93" not in raw  # no GLOBAL / STACK_GLOBAL opcodes


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_objects(tmp_path):
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps([{"ref_id": 1, "x": _Evil()}], protocol=proto)
        with pytest.raises(UnsafePickleError, match="refusing to load"):
            RestrictedUnpickler(io.BytesIO(data)).load()
    p = tmp_path / "refer_seg" / "refcoco" / "refs(unc).p"
    p.parent.mkdir(parents=True)
    p.write_bytes(pickle.dumps([_Evil()], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p"):
        load_refs_pickle(p)


def test_python2_str_pickle_is_read(tmp_path):
    # What Python 2's cPickle.dump(refs, f, 2) writes for byte strings: SHORT_BINSTRING opcodes.
    ref = {"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val",
           "sentences": [{"sent_id": 4, "sent": "caf\xe9 man", "raw": "Caf\xe9 man", "tokens": ["caf\xe9", "man"]}]}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump([_py2_bytes(ref)])
    assert b"_codecs" not in buf.getvalue()
    p = tmp_path / "refs(unc).p"
    p.write_bytes(buf.getvalue())
    assert load_refs_pickle(p) == [ref]


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_bytes(x):
    if isinstance(x, str):
        return x.encode("latin1")
    if isinstance(x, list):
        return [_py2_bytes(v) for v in x]
    if isinstance(x, dict):
        return {_py2_bytes(k): _py2_bytes(v) for k, v in x.items()}
    return x


def test_clear_errors(tiny_refer, tmp_path):
    root = tiny_refer[0]
    with pytest.raises(FileNotFoundError, match=r"refcoco\+\|unc.*refs\(unc\)\.p|instances\.json"):
        ReferDataset(root, "refcoco+", "unc")
    with pytest.raises(ValueError, match="unknown REFER dataset"):
        ReferDataset(root, "refcocoz", "unc")
    with pytest.raises(ValueError, match="unknown split_by 'umd'"):
        ReferDataset(root, "refcoco", "umd")
    r = ReferDataset(root, "refcoco", "unc")
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'val', 'testA'\]"):
        r.split_refs("test")
    with pytest.raises(KeyError, match="ann_id 99"):
        r.annotation_mask(99)
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000007.jpg"):
        r.image_path(7, must_exist=True)


def test_ref_with_missing_annotation_or_image(tiny_refer):
    root = tiny_refer[0]
    p = refs_path(root, "refcoco", "unc")
    refs = load_refs_pickle(p)
    refs[1]["ann_id"] = 555
    refs[2]["image_id"] = 777
    p.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(ValueError, match=r"\(101, 555\)") as e:
        ReferDataset(root, "refcoco", "unc")
    assert "(102, 777)" in str(e.value)


def test_write_refer_rejects_dangling_refs_and_objects(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]}]
    ref = {"ref_id": 1, "ann_id": 2, "image_id": 1, "split": "val", "sentences": []}
    with pytest.raises(ValueError, match="ann_id 2"):
        write_refer(tmp_path, "refcoco", "unc", images, anns, [], [ref])
    ref = {"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "val", "sentences": [], "x": object()}
    with pytest.raises(TypeError, match="plain containers"):
        write_refer(tmp_path, "refcoco", "unc", images, anns, [], [ref])
    assert json.loads((tmp_path / "refer_seg" / "refcoco" / "instances.json").read_text()) if (
        tmp_path / "refer_seg" / "refcoco" / "instances.json").exists() else True
