"""`evf-sam predict` on folders and its output contract (issues 12 and 14): recursive --image DIR with
--ext, the merging predictions.json manifest (a re-run skips what is done, --overwrite redoes it, a
crash keeps what was finished), files written in the output directory itself with the usual
permissions, and COCO RLE in pycocotools' format."""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

import evf_sam.atomic
from evf_sam.cli import main
from evf_sam.predictor import EvfSamPredictor
from evf_sam.rle import decode_rle, encode_rle, rle_counts, rle_from_counts_string, rle_to_counts_string
from evf_sam.testing import build_tiny_model, make_tokenizer, write_official_checkpoint
from evf_sam.visualize import render_masks

P0, P1 = "the red circle", "a small blue square"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    return write_official_checkpoint(root / "ckpt", build_tiny_model(seed=0), make_tokenizer(root / "tok"))


@pytest.fixture
def folder(tmp_path):
    """in/a.png, in/sub/b.jpg, in/sub/deeper/c.PNG + files that are not inputs."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / ".cache").mkdir()
    Image.fromarray(rng.integers(0, 256, (21, 33, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 17, 3), dtype=np.uint8)).save(d / "sub" / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (12, 40, 3), dtype=np.uint8)).save(d / "sub" / "deeper" / "c.PNG")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / ".hidden.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / ".cache" / "x.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _predict(ckpt, out, *args):
    return main(["predict", "--checkpoint", str(ckpt), "--output", str(out), "--device", "cpu", *args])


def _manifest(out):
    return json.loads((out / "predictions.json").read_text())


class _Calls:
    """Records predictor.predict calls as (image size, prompts); optionally fails on call ``fail_at``."""

    def __init__(self, monkeypatch, fail_at: int | None = None, exc: BaseException | None = None):
        self.calls: list[tuple[tuple[int, int], list[str]]] = []
        real = EvfSamPredictor.predict

        def predict(pred, prompts, multimask_output=None):
            self.calls.append((pred.original_size, list(prompts)))
            if fail_at is not None and len(self.calls) == fail_at:
                raise exc
            return real(pred, prompts, multimask_output)

        monkeypatch.setattr(EvfSamPredictor, "predict", predict)


def test_recursive_directory_and_extensions(ckpt, folder, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt, out, "--image", str(folder), "--prompt", P0, P1) == 0
    recs = _manifest(out)["predictions"]
    # sorted, recursive, hidden names and non-images left out; keys from the path under the folder
    assert [(r["key"], r["prompt"]) for r in recs] == [
        ("a", P0), ("a", P1), ("sub_b", P0), ("sub_b", P1), ("sub_deeper_c", P0), ("sub_deeper_c", P1)]
    assert recs[2]["image"] == str(folder / "sub" / "b.jpg")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["predictions.json"] + [f"{k}_{s}" for k in ("a", "sub_b", "sub_deeper_c")
                                                  for s in ("overlay.png", "masks.json")] + [r["mask"] for r in recs])
    out2 = tmp_path / "out2"
    assert _predict(ckpt, out2, "--image", str(folder), "--ext", ".png", "--prompt", P0) == 0  # case-insensitive
    assert [r["key"] for r in _manifest(out2)["predictions"]] == ["a", "sub_deeper_c"]


def test_no_image_in_directory(ckpt, folder, tmp_path, capsys):
    assert _predict(ckpt, tmp_path / "out", "--image", str(folder), "--ext", "tif", "--prompt", P0) == 2
    err = capsys.readouterr().err
    assert "holds no image with extension tif" in err and "--ext" in err
    assert not (tmp_path / "out").exists()


def test_output_inside_the_input_folder_is_not_read_back(ckpt, folder, monkeypatch):
    out = folder / "results"
    assert _predict(ckpt, out, "--image", str(folder), "--prompt", P0) == 0
    calls = _Calls(monkeypatch)
    assert _predict(ckpt, out, "--image", str(folder), "--prompt", P0) == 0  # its PNGs are not new inputs
    assert calls.calls == [] and len(_manifest(out)["predictions"]) == 3


def test_manifest_merges_and_overlay_combines(ckpt, folder, tmp_path, monkeypatch):
    a, b = folder / "a.png", folder / "sub" / "b.jpg"
    out = tmp_path / "out"
    assert _predict(ckpt, out, "--image", str(a), "--prompt", P0) == 0
    first = _manifest(out)["predictions"]
    mask_a0 = (out / first[0]["mask"]).read_bytes()
    calls = _Calls(monkeypatch)
    assert _predict(ckpt, out, "--image", str(a), str(b), "--prompt", P0, P1) == 0
    # a|P0 was done: only a|P1 and both prompts of b ran, one batch (one SAM encoder pass) per image
    assert calls.calls == [((21, 33), [P1]), ((30, 17), [P0, P1])]
    recs = _manifest(out)["predictions"]
    assert [(os.path.basename(r["image"]), r["prompt"]) for r in recs] == [
        ("a.png", P0), ("a.png", P1), ("b.jpg", P0), ("b.jpg", P1)]
    assert recs[0] == {**first[0], "overlay": "a_overlay.png", "rle": "a_masks.json"}  # the old record, unchanged
    assert (out / recs[0]["mask"]).read_bytes() == mask_a0
    assert len({r["mask"] for r in recs}) == 4 and all((out / r["mask"]).is_file() for r in recs)
    # a's overlay and RLE file show both of its masks: the old one and the new one
    rgb = np.asarray(Image.open(a).convert("RGB"))
    masks = np.stack([np.asarray(Image.open(out / r["mask"])) == 255 for r in recs[:2]])
    want = render_masks(rgb, masks, [P0, P1], [recs[0]["score"], recs[1]["score"]])
    assert np.array_equal(np.asarray(Image.open(out / "a_overlay.png")), want)
    rle = json.loads((out / "a_masks.json").read_text())
    assert [x["prompt"] for x in rle["annotations"]] == [P0, P1]
    assert all(np.array_equal(decode_rle(x["segmentation"]), m) for x, m in zip(rle["annotations"], masks))
    assert all(x["area"] == int(m.sum()) for x, m in zip(rle["annotations"], masks))


def test_rerun_skips_and_overwrite_redoes(ckpt, folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--image", str(folder), "--prompt", P0]
    assert _predict(ckpt, out, *args) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()}
    capsys.readouterr()
    calls = _Calls(monkeypatch)
    assert _predict(ckpt, out, *args) == 0
    assert calls.calls == [] and "nothing to do: all 3 (image, prompt) pairs are already in" in capsys.readouterr().err
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()} == before  # untouched
    assert _predict(ckpt, out, *args, "--overwrite") == 0
    assert [c[1] for c in calls.calls] == [[P0]] * 3
    after = {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()}
    assert sorted(after) == sorted(before)  # the same files (same names), rewritten: new inodes, same content
    assert all(after[n][1] != before[n][1] for n in before)
    assert all(after[n][0] == before[n][0] for n in before if n != "predictions.json")
    assert _manifest(out)["predictions"] == json.loads(before["predictions.json"][0])["predictions"]


@pytest.mark.parametrize("how", ["predict-raises", "manifest-cannot-be-replaced", "ctrl-c"])
def test_crash_mid_batch_keeps_finished_images(ckpt, folder, tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "out"
    args = ["--image", str(folder), "--prompt", P0, P1]
    if how == "manifest-cannot-be-replaced":  # the second rewrite of predictions.json fails
        real, n = evf_sam.atomic.atomic_write_bytes, []

        def flaky(path, data):
            if os.path.basename(path) == "predictions.json":
                n.append(path)
                if len(n) == 2:
                    raise OSError(errno.EACCES, "Permission denied", str(path))
            real(path, data)

        monkeypatch.setattr(evf_sam.atomic, "atomic_write_bytes", flaky)
    else:
        exc = RuntimeError("CUDA out of memory") if how == "predict-raises" else KeyboardInterrupt()
        _Calls(monkeypatch, fail_at=2, exc=exc)
    rc = _predict(ckpt, out, *args)
    err = capsys.readouterr().err.strip()
    assert rc == (130 if how == "ctrl-c" else 1), err
    assert err.startswith("evf-sam: error: ") and "\n" not in err and "nothing was written" not in err, err
    assert "mask" in err and "of 1 finished image listed in predictions.json" in err and "run the same command" in err
    recs = _manifest(out)["predictions"]
    assert [(r["key"], r["prompt"]) for r in recs] == [("a", P0), ("a", P1)]  # the finished image, complete
    assert all((out / r["mask"]).is_file() for r in recs) and (out / "a_overlay.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    monkeypatch.undo()
    calls = _Calls(monkeypatch)
    assert _predict(ckpt, out, *args) == 0  # the re-run does the rest only
    assert [c[0] for c in calls.calls] == [(30, 17), (12, 40)]
    recs = _manifest(out)["predictions"]
    assert [r["key"] for r in recs] == ["a", "a", "sub_b", "sub_b", "sub_deeper_c", "sub_deeper_c"]
    listed = {r["mask"] for r in recs} | {r["overlay"] for r in recs} | {r["rle"] for r in recs}
    assert sorted(p.name for p in out.iterdir()) == sorted(listed | {"predictions.json"})  # manifest = folder


def test_failure_before_any_image_says_nothing_was_written(ckpt, folder, tmp_path, monkeypatch, capsys):
    _Calls(monkeypatch, fail_at=1, exc=RuntimeError("boom"))
    assert _predict(ckpt, tmp_path / "out", "--image", str(folder / "a.png"), "--prompt", P0) == 1
    err = capsys.readouterr().err
    assert "prediction failed on" in err and "a.png" in err and "boom" in err and "nothing was written" in err


def test_every_rename_stays_in_the_output_directory(ckpt, folder, tmp_path, monkeypatch):
    """A mount point cannot be renamed into or out of: fail every rename across directories (EXDEV)."""
    real_replace, real_rename = os.replace, os.rename
    seen = []

    def same_dir_only(real):
        def f(src, dst, *a, **k):
            seen.append((str(src), str(dst)))
            if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *a, **k)
        return f

    monkeypatch.setattr(os, "replace", same_dir_only(real_replace))
    monkeypatch.setattr(os, "rename", same_dir_only(real_rename))
    out = tmp_path / "mnt"
    out.mkdir()  # an existing (e.g. mounted) output directory
    (out / "mine.txt").write_text("kept")
    assert _predict(ckpt, out, "--image", str(folder / "a.png"), "--prompt", P0) == 0
    assert seen and all(os.path.dirname(d) == str(out) for _, d in seen)
    assert (out / "mine.txt").read_text() == "kept" and len(_manifest(out)["predictions"]) == 1


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_the_usual_permissions(ckpt, folder, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "new" / "out"
        assert _predict(ckpt, out, "--image", str(folder / "a.png"), "--prompt", P0) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = list(out.iterdir())
    assert len(files) == 4 and all(stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask for f in files)


def test_unreadable_manifest_is_not_overwritten(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("{ not json")
    assert _predict(ckpt, out, "--image", str(folder / "a.png"), "--prompt", P0) == 2
    err = capsys.readouterr().err
    assert "predictions.json" in err and "not a readable evf-sam predictions file" in err
    assert (out / "predictions.json").read_text() == "{ not json" and len(list(out.iterdir())) == 1


def test_records_whose_mask_was_deleted_are_redone(ckpt, folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _predict(ckpt, out, "--image", str(folder / "a.png"), "--prompt", P0, P1) == 0
    recs = _manifest(out)["predictions"]
    (out / recs[1]["mask"]).unlink()
    calls = _Calls(monkeypatch)
    assert _predict(ckpt, out, "--image", str(folder / "a.png"), "--prompt", P0, P1) == 0
    assert [c[1] for c in calls.calls] == [[P1]]
    assert [r["prompt"] for r in _manifest(out)["predictions"]] == [P0, P1]


# ---------------------------------------------------------------------------------------------
# COCO RLE


def test_rle_hand_computed():
    # column-major: column 0 = (0, 0), column 1 = (1, 0), column 2 = (1, 1) -> 0 0 1 0 1 1
    m = np.array([[0, 1, 1], [0, 0, 1]], bool)
    assert rle_counts(m) == [2, 1, 1, 2]
    # counts 2, 1, 1 as themselves; the 4th as 2 - counts[1] = 1; each + 48 as ASCII
    assert encode_rle(m) == {"size": [2, 3], "counts": "2111"}
    assert rle_counts(np.ones((2, 2), bool)) == [0, 4]  # starts with a (empty) background run
    assert rle_to_counts_string([0, 4]) == "04"
    # a negative difference: 100 - 5 = 95 -> sign-extended 5-bit groups
    assert rle_from_counts_string(rle_to_counts_string([5, 100, 3, 5])) == [5, 100, 3, 5]
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": "2111"}), m)
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": [2, 1, 1, 2]}), m)
    with pytest.raises(ValueError, match="cover 5 pixels"):
        decode_rle({"size": [2, 3], "counts": [2, 1, 2]})


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (37, 91), (256, 300)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_rle_matches_pycocotools(shape, density):
    mask_utils = pytest.importorskip("pycocotools.mask")  # in the test extra: runs in CI
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    m = rng.random(shape) < density
    if shape == (256, 300):  # long runs: multi-group counts and large negative differences
        m = np.zeros(shape, bool)
        m[40:200, 10:290] = density > 0.5
        m[::17, ::13] ^= True
    ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    ours = encode_rle(m)
    assert ours["counts"] == ref["counts"].decode("ascii") and ours["size"] == list(ref["size"])
    assert np.array_equal(decode_rle(ours), m)
    assert np.array_equal(mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()}), m)
    assert np.array_equal(decode_rle({"size": list(shape), "counts": rle_counts(m)}), m)
