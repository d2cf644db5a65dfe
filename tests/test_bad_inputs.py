"""Bad inputs, one table per entry point: each case asserts the message (what, which file, the fix)
and that nothing was lost, half-written or executed (issue 12).

- checkpoints: `EvfSam.from_pretrained` raises `CheckpointFileError` naming the file; `evf-sam
  predict` prints one line, exits 2 and writes nothing; the traceback only with --debug /
  EVF_SAM_DEBUG=1; a pickle whose payload would create a file is refused and the file never exists.
- prompts without a visible character (zero-width / invisible characters) are empty prompts.
- a failed `set_image` leaves no image set.
- REFER data: `python -m evf_sam.data.check` fails on a missing or empty split, a refs file
  without refs, a split image that is not an image; a truncated refs pickle names the file;
  polygons of fewer than 3 points are counted, warned about and their refs skipped.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from evf_sam.cli import main
from evf_sam.data.check import main as check_main
from evf_sam.data.refer import IMAGE_DIRS, ReferDataset, UnsafePickleError, write_refer
from evf_sam.models.evf_sam import EvfSam
from evf_sam.models.state_dict import CheckpointFileError
from evf_sam.predictor import EvfSamPredictor
from evf_sam.prompts import EmptyPromptError, is_blank
from evf_sam.testing import build_tiny_model, make_tokenizer, write_official_checkpoint
from evf_sam.tokenizer import tokenize

# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="module")
def good_ckpts(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("ckpts")
    model = build_tiny_model(seed=0)
    return {fmt: write_official_checkpoint(root / fmt, model, tok_dir, fmt=fmt) for fmt in ("bin", "safetensors")}


class _Payload:
    """A pickled object whose unpickling would create ``path`` (what a malicious weight file does)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncate(f, keep=0.5):
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def _evil_bin(f, marker):
    state = torch.load(f, weights_only=True)
    state["payload"] = _Payload(str(marker))
    f.unlink()
    torch.save(state, f)


# (case id, checkpoint format, how to break it, file named in the message, words in the message)
CKPT_CASES = [
    ("truncated-safetensors", "safetensors", lambda d, m: _truncate(d / "model.safetensors"),
     "model.safetensors", ["truncated or corrupt", "re-download"]),
    ("garbage-safetensors", "safetensors", lambda d, m: (d / "model.safetensors").write_bytes(b"\x00garbage" * 40),
     "model.safetensors", ["not a readable safetensors file", "re-download"]),
    ("empty-safetensors", "safetensors", lambda d, m: (d / "model.safetensors").write_bytes(b""),
     "model.safetensors", ["truncated or corrupt"]),
    ("truncated-bin", "bin", lambda d, m: _truncate(d / "pytorch_model.bin"),
     "pytorch_model.bin", ["not a readable PyTorch file", "truncated or corrupt", "re-download"]),
    ("garbage-bin", "bin", lambda d, m: (d / "pytorch_model.bin").write_bytes(b"hello, not a pickle" * 8),
     "pytorch_model.bin", ["not a readable PyTorch file"]),
    ("pickle-with-code", "bin", lambda d, m: _evil_bin(d / "pytorch_model.bin", m),
     "pytorch_model.bin", ["refused", "could run code", "safetensors"]),
    ("config-array", "safetensors", lambda d, m: (d / "config.json").write_text('["EvfSamModel"]'),
     "config.json", ["holds a JSON array, not an object", '"architectures"']),
    ("config-string", "safetensors", lambda d, m: (d / "config.json").write_text('"evf"'),
     "config.json", ["holds a JSON string, not an object"]),
    ("config-null-field", "safetensors",
     lambda d, m: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                                "sam_scale": None})),
     "config.json", ["'sam_scale' is null", "remove the key(s) or set a value"]),
    ("config-not-json", "safetensors", lambda d, m: (d / "config.json").write_text('{"architectures": ['),
     "config.json", ["not valid JSON"]),
]


def _broken(good_ckpts, tmp_path, fmt, breaker):
    d = tmp_path / "ckpt"
    shutil.copytree(good_ckpts[fmt], d)
    marker = tmp_path / "payload_ran"
    breaker(d, marker)
    return d, marker


@pytest.mark.parametrize("fmt,breaker,file,words", [c[1:] for c in CKPT_CASES], ids=[c[0] for c in CKPT_CASES])
def test_checkpoint_api_error(good_ckpts, tmp_path, fmt, breaker, file, words):
    d, marker = _broken(good_ckpts, tmp_path, fmt, breaker)
    with pytest.raises(CheckpointFileError) as e:
        EvfSam.from_pretrained(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d / file) in msg and e.value.path == str(d / file), msg
    for w in words:
        assert w in msg, msg
    assert isinstance(e.value, ValueError)  # callers that caught ValueError still do
    assert not marker.exists()  # the pickle's payload never ran


@pytest.mark.parametrize("fmt,breaker,file,words", [c[1:] for c in CKPT_CASES], ids=[c[0] for c in CKPT_CASES])
def test_checkpoint_cli_error(good_ckpts, tmp_path, capsys, monkeypatch, fmt, breaker, file, words):
    monkeypatch.delenv("EVF_SAM_DEBUG", raising=False)
    d, marker = _broken(good_ckpts, tmp_path, fmt, breaker)
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(d), "--image", str(img), "--prompt", "a cat", "--output", str(out),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("evf-sam: error: ") and "\n" not in err and "Traceback" not in err, err
    assert file in err and all(w in err for w in words), err
    assert not out.exists()  # nothing written
    assert not marker.exists()


def test_debug_flag_shows_the_traceback(good_ckpts, tmp_path, capsys, monkeypatch):
    d, _ = _broken(good_ckpts, tmp_path, "safetensors", CKPT_CASES[0][2])
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    args = ["predict", "--checkpoint", str(d), "--image", str(img), "--prompt", "x", "--output", str(tmp_path / "o"),
            "--device", "cpu"]
    monkeypatch.delenv("EVF_SAM_DEBUG", raising=False)
    assert main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "SafetensorError" in err and err.rstrip().splitlines()[-1].startswith("evf-sam: ")
    monkeypatch.setenv("EVF_SAM_DEBUG", "1")
    assert main(args) == 2
    assert "Traceback" in capsys.readouterr().err


def test_refused_pickle_elsewhere_is_the_same_error(tmp_path):
    """read_state_dict (BEiT-3 / SAM weight files) goes through the same safe loader."""
    from evf_sam.models.state_dict import read_state_dict

    marker = tmp_path / "payload_ran"
    f = tmp_path / "sam.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload(str(marker))}, f)
    with pytest.raises(CheckpointFileError, match="sam.pth.*refused"):
        read_state_dict(f, wrappers=("model",), what="SAM checkpoint", expected="a SAM .pth")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Prompts


INVISIBLE = [
    ("zero-width-space", "\u200b", "U+200B"),
    ("bom", "\ufeff", "U+FEFF"),
    ("word-joiner", "\u2060", "U+2060"),
    ("mixed-with-whitespace", " \u200b\t\u200c\u200d ", "U+200C"),
    ("soft-hyphen-and-nbsp", "\u00ad\u00a0", "U+00AD"),
    ("hangul-filler", "\u3164", "U+3164"),
    ("variation-selector", "\ufe0f\ufe0f", "U+FE0F"),
]


@pytest.fixture(scope="module")
def predictor(good_ckpts):
    return EvfSamPredictor.from_pretrained(good_ckpts["safetensors"])


@pytest.mark.parametrize("prompt,code", [c[1:] for c in INVISIBLE], ids=[c[0] for c in INVISIBLE])
def test_invisible_prompt_is_empty(predictor, tmp_path, capsys, prompt, code):
    assert is_blank(prompt)
    predictor.set_image(np.zeros((16, 24, 3), np.uint8))
    pattern = f"prompt 1 is empty \\(only invisible characters: .*{re.escape(code)}"
    with pytest.raises(EmptyPromptError, match=pattern):
        predictor.predict(["a dog", prompt])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        tokenize(predictor.tokenizer, [prompt], max_length=16)
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(predictor.model.source_dir), "--image", str(img), "--prompt", "ok",
               "--prompt", prompt, "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "empty prompt" in err and code in err and "\n" not in err, err
    assert not out.exists()


def test_visible_text_with_invisible_characters_is_kept(predictor):
    assert not is_blank("a\u200bdog") and not is_blank("\u200b\u00e9")
    predictor.set_image(np.zeros((16, 24, 3), np.uint8))
    assert predictor.predict(["\ufeffa dog"]).prompts == ["\ufeffa dog"]  # used as given (official)


# ---------------------------------------------------------------------------------------------
# set_image failures


@pytest.mark.parametrize("bad", ["missing-file", "not-an-image", "wrong-array"])
def test_failed_set_image_clears_the_previous_image(predictor, tmp_path, bad):
    predictor.set_image(np.full((16, 24, 3), 200, np.uint8))
    assert predictor.is_image_set and predictor.predict("a dog").masks.shape == (1, 16, 24)
    if bad == "missing-file":
        arg, exc = str(tmp_path / "nope.png"), FileNotFoundError
    elif bad == "not-an-image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        arg, exc = str(tmp_path / "bad.png"), ValueError
    else:
        arg, exc = np.zeros((4, 4, 7), np.uint8), ValueError
    with pytest.raises(exc):
        predictor.set_image(arg)
    assert not predictor.is_image_set and predictor.original_size is None
    with pytest.raises(RuntimeError, match="the last set_image\\(.*\\) failed, and the image before it was cleared"):
        predictor.predict("a dog")
    predictor.set_image(np.zeros((10, 12, 3), np.uint8))  # a good image works again
    assert predictor.predict("a dog").masks.shape == (1, 10, 12)


# ---------------------------------------------------------------------------------------------
# REFER data: python -m evf_sam.data.check and the reader

SPLITS = ("train", "val", "testA", "testB")


def _refer_root(tmp_path, *, splits=SPLITS, sentences=True, segmentation=None, bad_image=False, n_refs=None):
    """refcoco|unc with one 24x32 image and one ref per split (+ 2 files instances.json / refs(unc).p)."""
    root = tmp_path / "data"
    img_dir = root / "refer_seg" / IMAGE_DIRS["refcoco"]
    img_dir.mkdir(parents=True)
    images, anns, refs = [], [], []
    for i, split in enumerate(splits):
        iid = i + 1
        name = f"COCO_train2014_{iid:012d}.jpg"
        images.append({"id": iid, "file_name": name, "height": 24, "width": 32})
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(img_dir / name, format="JPEG")
        seg = [[2, 2, 20, 2, 20, 20, 2, 20]]
        if segmentation is not None and split == "val":
            seg = segmentation
        anns.append({"id": 10 + i, "image_id": iid, "category_id": 1, "segmentation": seg})
        sents = [{"sent_id": i, "sent": f"thing {i}", "raw": f"thing {i}", "tokens": ["thing"]}] if sentences else []
        refs.append({"ref_id": 100 + i, "ann_id": 10 + i, "image_id": iid, "category_id": 1, "split": split,
                     "file_name": name, "sent_ids": [s["sent_id"] for s in sents], "sentences": sents})
    if bad_image:
        (img_dir / images[1]["file_name"]).write_bytes(b"<html>404 not found</html>")
    write_refer(root, "refcoco", "unc", images, anns, [{"id": 1, "name": "thing"}], refs[:n_refs])
    return root


def _check(root, capsys):
    rc = check_main([str(root), "--require", "refcoco|unc"])
    return rc, capsys.readouterr().out


def test_check_passes_a_complete_root(tmp_path, capsys):
    rc, out = _check(_refer_root(tmp_path), capsys)
    assert rc == 0 and "all required data present" in out, out


def _truncate_refs(root):
    f = root / "refer_seg" / "refcoco" / "refs(unc).p"
    _truncate(f, 0.6)
    return f


DATA_CASES = [
    ("missing-split", {"splits": ("train", "val", "testA")}, ["refcoco|unc|testB: split missing"]),
    ("empty-split", {"sentences": False}, ["refcoco|unc|val: split has no sentences"]),
    ("zero-refs", {"n_refs": 0}, ["refs(unc).p holds no refs"]),
    ("not-an-image", {"bad_image": True}, ["refcoco|unc|val: 1 of 1 image files are not images",
                                            "COCO_train2014_000000000002.jpg"]),
    ("only-degenerate-polygons", {"segmentation": [[2, 2, 20, 2]]},
     ["refcoco|unc|val: split has only refs without a usable polygon"]),
]


@pytest.mark.parametrize("kw,words", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_check_fails(tmp_path, capsys, kw, words):
    root = _refer_root(tmp_path, **kw)
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    rc, out = _check(root, capsys)
    assert rc == 1, out
    problems = out.split("PROBLEMS:", 1)[1]
    for w in words:
        assert w in problems, out
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # read only


def test_truncated_refs_pickle_names_the_file(tmp_path, capsys):
    root = _refer_root(tmp_path)
    f = _truncate_refs(root)
    with pytest.raises(ValueError) as e:
        ReferDataset(root, "refcoco", "unc")
    assert str(f) in str(e.value) and "truncated or corrupt" in str(e.value) and "re-download" in str(e.value)
    rc, out = _check(root, capsys)
    assert rc == 1 and str(f) in out.split("PROBLEMS:", 1)[1]


def test_truncated_instances_json_names_the_file(tmp_path):
    root = _refer_root(tmp_path)
    f = root / "refer_seg" / "refcoco" / "instances.json"
    _truncate(f, 0.5)
    with pytest.raises(ValueError, match="instances.json.*not valid JSON"):
        ReferDataset(root, "refcoco", "unc")


def test_refs_pickle_with_code_is_refused(tmp_path):
    root = _refer_root(tmp_path)
    marker = tmp_path / "payload_ran"
    f = root / "refer_seg" / "refcoco" / "refs(unc).p"
    f.write_bytes(pickle.dumps([_Payload(str(marker))], protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        ReferDataset(root, "refcoco", "unc")
    assert not marker.exists()


def test_degenerate_polygons_are_counted_warned_and_skipped(tmp_path, capsys):
    # val's annotation: one real polygon part + two parts of < 3 points; testA's: only a 2-point part
    root = tmp_path / "r"
    root.mkdir()
    base = _refer_root(root, segmentation=[[2, 2, 20, 2, 20, 20, 2, 20], [1, 1], [3, 3, 5, 5]])
    ref_file = base / "refer_seg" / "refcoco" / "refs(unc).p"
    inst = json.loads((base / "refer_seg" / "refcoco" / "instances.json").read_text())
    inst["annotations"][2]["segmentation"] = [[4, 4, 9, 9]]  # testA: a 2-point "polygon"
    (base / "refer_seg" / "refcoco" / "instances.json").write_text(json.dumps(inst))
    with pytest.warns(UserWarning, match="3 polygon part\\(s\\) with fewer than 3 points.*1 annotation\\(s\\) have "
                                         "no polygon of 3\\+ points \\(ann_ids \\[12\\]\\).*1 ref\\(s\\) / 1 sentence"):
        r = ReferDataset(base, "refcoco", "unc")
    assert r.degenerate_parts == 3 and r.empty_ann_ids == {12}
    assert [x["ref_id"] for x in r.split_refs("val")] == [101]  # kept: its real part makes the mask
    # the same mask as the plain polygon of train's annotation 10: degenerate parts add nothing
    assert np.array_equal(r.annotation_mask(11), r.annotation_mask(10)) and r.annotation_mask(11).sum() > 0
    with pytest.raises(ValueError, match="no split 'testA'"):
        r.split_refs("testA")  # its only ref was skipped
    assert len(r.refs) == 4  # the file's refs are all still there (evaluation images stay out of training)
    from evf_sam.data.train_dataset import _eval_image_ids, _train_sentences

    assert _train_sentences(r, "testA") == {} and _train_sentences(r, "train") == {1: [(10, "thing 0")]}
    assert sorted(_eval_image_ids(r)) == [2, 3, 4]  # testA's image (3) still kept out of training
    rc, out = _check(base, capsys)
    assert rc == 1 and "refcoco|unc|testA: split has only refs without a usable polygon" in out
    assert "3 polygon part(s) of < 3 points" in out and "refs skipped (polygons of < 3 points) 1" in out
    assert ref_file.is_file()


def test_degenerate_polygons_in_an_optional_split_only_warn(tmp_path, capsys):
    root = _refer_root(tmp_path, splits=(*SPLITS, "extra"))
    inst_f = root / "refer_seg" / "refcoco" / "instances.json"
    inst = json.loads(inst_f.read_text())
    inst["annotations"][4]["segmentation"] = [[1, 1]]
    inst_f.write_text(json.dumps(inst))
    rc, out = _check(root, capsys)
    assert rc == 0 and "1 polygon part(s) of < 3 points" in out and "e.g. ann_ids [14]" in out, out
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ReferDataset(root, "refcoco", "unc")
    assert any("fewer than 3 points" in str(x.message) for x in w)
