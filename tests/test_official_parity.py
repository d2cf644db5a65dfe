"""Every official model family reproduces the official code (hustvl/EVF-SAM): an official-format
checkpoint directory (official tensor names and config.json fields, fp16 pytorch_model.bin, tokenizer
files) of EVF-SAM (SAM ViT-B + BEiT-3-Base), EVF-Effi-SAM (EfficientSAM-T + BEiT-3-Base) and EVF-SAM2
(Hiera-T + BEiT-3-Base) loads strictly, and

* `EvfSamPredictor` gives the logits of the official inference.py on images of several aspect ratios
  (and a square one) with several prompts,
* the evaluation dataset + the model stages `evaluate` runs give the logits of the official eval.py
  (utils/dataset.py ValDataset, collate_fn, model forward) on a tiny RefCOCO split,

within 1e-3 (fp32, CPU). The references (tests/fixtures/official/parity_*.pt) were made by
scripts/make_official_goldens.py, which ran the official code on the same weights: every tensor is
re-created here bit for bit by `evf_sam.testing.parity_state_dict` (checked against the recorded
sha256), and the weights make the mask depend strongly on the text, so a wrong text path (another
prompt, a tokenizer that splits ``[semantic]``) is far outside the tolerance.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest
import torch

from evf_sam.models.checkpoint import read_official_weights
from evf_sam.models.evf_sam import EvfSam
from evf_sam.predictor import EvfSamPredictor
from evf_sam.preprocess import beit3_preprocess, sam_preprocess
from evf_sam.testing import (PARITY_FAMILIES, build_tiny_model, parity_image, parity_shapes, state_dict_sha256,
                             write_official_checkpoint, write_parity_checkpoint, write_parity_refer)
from evf_sam.tokenizer import XlmrTokenizer, write_tokenizer_dir

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-3  # max |logit difference| allowed (fp32, CPU)
FAMILIES = tuple(PARITY_FAMILIES)


def golden(family: str) -> dict:
    return torch.load(FIXTURES / f"parity_{family}.pt", weights_only=True)


def subsample(logits: torch.Tensor, spec: dict) -> torch.Tensor:
    """The part of (..., H, W) logits the fixture stores (scripts/make_official_goldens.py subsample)."""
    h, w = logits.shape[-2:]
    if h * w < spec["min_pixels"]:
        return logits
    return logits[..., spec["offset"]::spec["stride"], spec["offset"]::spec["stride"]]


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """The tokenizer of the parity checkpoints: the BPE fixture model + added_tokens.json ([semantic])."""
    meta = json.loads((FIXTURES / "tokenizer_parity.json").read_text())["models"]["bpe"]
    raw = lzma.decompress((FIXTURES / meta["file"]).read_bytes())
    return write_tokenizer_dir(tmp_path_factory.mktemp("parity_tok"), raw, meta["added_tokens"])


def run_family(family: str, tmp: Path, tok_dir: Path) -> dict:
    """Writes the official-format checkpoint of ``family``, loads it and runs our predictor and our
    evaluation path on every case of the fixture. Returns what the tests compare."""
    ref = golden(family)
    out: dict = {"golden": ref}
    ckpt = write_parity_checkpoint(tmp / "ckpt", family, tok_dir)
    state, _ = read_official_weights(ckpt)
    out["weights_sha256"] = state_dict_sha256(state)
    out["files"] = sorted(p.name for p in ckpt.iterdir())
    del state
    model = EvfSam.from_pretrained(ckpt)  # strict: raises on any missing / unexpected / mis-shaped tensor
    out["model"] = model
    predictor = EvfSamPredictor(model)  # tokenizer from the checkpoint directory
    embeddings: dict[str, object] = {}  # sha256 of the SAM input -> image embedding (reused, same input)

    # official inference.py -> EvfSamPredictor
    spec = ref["meta"]["subsample"]
    images = {k: parity_image(*v) for k, v in ref["meta"]["images"].items()}
    out["images_sha256"] = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in images.items()}
    out["inference"] = []
    for name in dict.fromkeys(c["image"] for c in ref["inference"]):
        cases = [c for c in ref["inference"] if c["image"] == name]
        prompts = [c["prompt"] for c in cases]
        predictor.set_image(images[name])
        sam_x = sam_preprocess(images[name], model.sam_image_size, model.resize_mode, pipeline="inference")[0]
        embeddings[_sha256(sam_x)] = predictor._embedding  # for the evaluation path below (SAM-1: same input)
        pred = predictor.predict(prompts)
        for i, c in enumerate(cases):
            out["inference"].append({
                "image": name, "prompt": c["prompt"], "logits": subsample(pred.logits[i], spec),
                "ids": predictor.tokenizer(c["prompt"])["input_ids"], "sam_input_sha256": _sha256(sam_x),
                "beit_input_sha256": _sha256(beit3_preprocess(images[name], model.beit_image_size))})
        if family == "sam2" and "single_mask" in ref and name == ref["single_mask"][0]["image"]:
            # the alternative: the single mask, without and with SAM-2's stability fallback
            single = predictor.predict([c["prompt"] for c in ref["single_mask"]], multimask_output=False)
            model.set_sam_stability_fallback(True)
            fallback = predictor.predict([c["prompt"] for c in ref["single_mask"]], multimask_output=False)
            model.set_sam_stability_fallback(False)
            model.config.sam_stability_fallback = None
            out["single_mask"], out["single_mask_fallback"] = single.logits, fallback.logits
        if name == "tall":  # a wrong text path: the tokenizer without added_tokens.json splits "[semantic]"
            bare = EvfSamPredictor(model, tokenizer=XlmrTokenizer(tok_dir / "sentencepiece.bpe.model"))
            bare._embedding, bare._beit_image = predictor._embedding, predictor._beit_image
            bare.input_size, bare.original_size = predictor.input_size, predictor.original_size
            i = prompts.index("[semantic] wall")
            out["perturbed_tokenizer"] = {"case": (name, prompts[i]),
                                          "logits": subsample(bare.predict(prompts[i]).logits[0], spec)}

    # official eval.py -> our evaluation dataset + the stages evaluate() runs
    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine.evaluate import evaluate
    from evf_sam.models.encoders import tokenize_for_encoder

    eval_images = {e["image_id"] for e in ref["eval"]}
    refer = [{"image_id": e["image_id"], "height": images[e["image"]].shape[0],
              "width": images[e["image"]].shape[1], "seed": ref["meta"]["images"][e["image"]][2],
              "refs": e["refs"]} for e in ref["meta"]["eval_images"] if e["image_id"] in eval_images]
    root = write_parity_refer(tmp / "refer", refer)
    ds = build_eval_dataset(root, "refcoco", "unc", "val", sam_size=model.sam_image_size,
                            beit_size=model.beit_image_size, resize_mode=model.resize_mode)
    out["eval"] = []
    tok = predictor.tokenizer
    with torch.no_grad():
        for item in ds:
            key = _sha256(item.sam_image)
            if key not in embeddings:
                embeddings[key] = model.encode_image(item.sam_image[None])
            ids, pad = tokenize_for_encoder(str(model.config.encoder), tok, item.sentences, model.max_text_len)
            n = len(item.sentences)
            prompts = model.encode_prompts(item.beit_image[None].expand(n, -1, -1, -1), ids, pad)
            low_res, _ = model.decode_masks(embeddings[key], prompts, torch.zeros(n, dtype=torch.long))
            logits = model.postprocess_masks(low_res.float(), item.input_size, item.original_size)[:, 0]
            pred = logits > 0
            out["eval"].append({
                "image_id": item.image_id, "sentences": item.sentences, "logits": subsample(logits, spec),
                "ids": [row[~p].tolist() for row, p in zip(ids, pad)], "sam_input_sha256": key,
                "beit_input_sha256": _sha256(item.beit_image),
                "intersection": [int((p & g).sum()) for p, g in zip(pred, item.gt_masks)],
                "union": [int((p | g).sum()) for p, g in zip(pred, item.gt_masks)]})
    out["eval_dataset"], out["tokenizer"], out["embeddings"] = ds, tok, embeddings
    out["evaluate"] = evaluate
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory, tok_dir):
    return run_family(request.param, tmp_path_factory.mktemp(f"parity_{request.param}"), tok_dir)


pytestmark = pytest.mark.slow  # BEiT-3-Base + a 1024-px SAM image encoder per family


def test_checkpoint_is_official_and_weights_are_recreated(run):
    ref, model = run["golden"], run["model"]
    family = ref["family"]
    assert run["weights_sha256"] == ref["weights_sha256"], "parity_state_dict no longer re-creates the weights"
    assert run["images_sha256"] == {k: hashlib.sha256(parity_image(*v).tobytes()).hexdigest()
                                    for k, v in ref["meta"]["images"].items()}
    assert {"config.json", "pytorch_model.bin", "sentencepiece.bpe.model", "added_tokens.json"} <= set(run["files"])
    arch, sam_scale, variant = PARITY_FAMILIES[family]
    assert ref["config"]["architectures"] == [arch] and ref["config"]["sam_scale"] == sam_scale
    assert model.config.sam_variant == variant and model.config.encoder == "beit3_base"
    assert len(model.state_dict()) == ref["n_tensors"]
    assert model.config.multimask_output is (family == "sam2")  # the official choice, from official files


def test_predictor_matches_official_inference(run):
    ref = run["golden"]
    assert len(run["inference"]) == len(ref["inference"]) >= 4
    shapes = {ref["meta"]["images"][c["image"]][0] / ref["meta"]["images"][c["image"]][1] for c in ref["inference"]}
    assert len(shapes) >= 2  # several aspect ratios
    for ours, want in zip(run["inference"], ref["inference"]):
        case = (ref["family"], ours["image"], ours["prompt"])
        assert (ours["image"], ours["prompt"]) == (want["image"], want["prompt"])
        assert ours["ids"] == want["ids"], case
        assert ours["sam_input_sha256"] == want["sam_input_sha256"], f"SAM preprocessing differs: {case}"
        assert ours["beit_input_sha256"] == want["beit_input_sha256"], f"BEiT-3 preprocessing differs: {case}"
        assert ours["logits"].shape == want["logits"].shape, case
        diff = float((ours["logits"] - want["logits"]).abs().max())
        assert diff < TOL, f"{case}: max |logit diff| {diff:.2e}"
        assert _iou(ours["logits"], want["logits"]) > 0.999, case


def test_evaluation_matches_official_eval(run):
    ref = run["golden"]
    assert len(run["eval"]) == len(ref["eval"]) >= 2
    want_by_image = {e["image_id"]: e for e in ref["eval"]}
    for ours in run["eval"]:
        want = want_by_image[ours["image_id"]]
        case = (ref["family"], ours["image_id"])
        assert ours["sentences"] == want["sentences"], case  # lower-cased and stripped, in the same order
        assert ours["ids"] == want["ids"], case
        assert ours["sam_input_sha256"] == want["sam_input_sha256"], f"SAM preprocessing differs: {case}"
        assert ours["beit_input_sha256"] == want["beit_input_sha256"], case
        diff = float((ours["logits"] - want["logits"]).abs().max())
        assert diff < TOL, f"{case}: max |logit diff| {diff:.2e}"
        # exact integer I / U as eval.py, up to pixels whose logit is within the tolerance of 0
        for i, u, wi, wu in zip(ours["intersection"], ours["union"], want["intersection"], want["union"]):
            assert abs(i - wi) <= 2 and abs(u - wu) <= 2, case
    if ref["family"] == "sam":  # SAM-1: evaluation and inference preprocess identically (one official path)
        assert {e["sam_input_sha256"] for e in ref["eval"]} <= {c["sam_input_sha256"] for c in ref["inference"]}
    else:  # square mode: shrinking, eval.py's PIL resize (antialiased) is not inference.py's uint8 interpolation
        large = {e["image"]: e["image_id"] for e in ref["meta"]["eval_images"]}["large"]
        eval_large = next(e["sam_input_sha256"] for e in ref["eval"] if e["image_id"] == large)
        assert eval_large not in {c["sam_input_sha256"] for c in ref["inference"]}


def test_evaluate_reports_the_official_metrics(run):
    """`evaluate` itself (dataset -> metrics) on the same split: the official eval.py's cIoU."""
    ref, model, cache = run["golden"], run["model"], run["embeddings"]
    encode_image = model.encode_image

    def cached(x):  # the SAM image encoder is a deterministic function of its input, already run above
        key = _sha256(x[0]) if x.shape[0] == 1 else None
        return cache[key] if key in cache else encode_image(x)

    model.encode_image = cached
    try:
        metrics = run["evaluate"](model, run["tokenizer"], run["eval_dataset"], progress=False)
    finally:
        del model.encode_image
    inter = sum(sum(e["intersection"]) for e in ref["eval"])
    union = sum(sum(e["union"]) for e in ref["eval"])
    assert metrics["n_expressions"] == sum(len(e["sentences"]) for e in ref["eval"])
    assert metrics["ciou"] == pytest.approx(inter / union, abs=1e-4)


def test_a_wrong_text_path_fails(run):
    """The tolerance is sharp: another prompt, or a tokenizer that splits [semantic], is far outside it."""
    ref = run["golden"]
    by_image: dict = {}
    for ours, want in zip(run["inference"], ref["inference"]):
        by_image.setdefault(ours["image"], []).append((ours, want))
    for pairs in by_image.values():
        (a, wa), (b, wb) = pairs[:2]
        assert float((a["logits"] - wb["logits"]).abs().max()) > 500 * TOL
        assert float((b["logits"] - wa["logits"]).abs().max()) > 500 * TOL
    name, prompt = run["perturbed_tokenizer"]["case"]
    want = next(c for c in ref["inference"] if (c["image"], c["prompt"]) == (name, prompt))
    assert float((run["perturbed_tokenizer"]["logits"] - want["logits"]).abs().max()) > 100 * TOL


def test_save_pretrained_is_read_by_the_official_code(run, tmp_path):
    ref = run["golden"]
    sp = ref["save_pretrained"]  # measured by the generator: official from_pretrained of our export
    assert sp["official_from_pretrained"] == "no missing / unexpected / mismatched tensors"
    assert sp["max_abs_logit_diff"] < TOL
    for k in ("architectures", "model_type", "sam_scale", "mm_extractor_scale", "hidden_size", "out_dim"):
        assert sp["config"][k] == ref["config"][k], k
    # and our export today still has the official names and config fields
    d = run["model"].save_pretrained(tmp_path / "export")
    state, _ = read_official_weights(d)
    assert set(state) == set(parity_shapes(ref["family"]))
    cfg = json.loads((d / "config.json").read_text())
    assert {k: cfg[k] for k in ("architectures", "model_type", "sam_scale", "mm_extractor_scale", "hidden_size",
                                "out_dim")} == {k: ref["config"][k] for k in ("architectures", "model_type", "sam_scale",
                                                                             "mm_extractor_scale", "hidden_size",
                                                                             "out_dim")}


def test_mask_choice_is_the_official_one(run):
    """EVF-SAM / EVF-Effi-SAM: the single mask (checked against inference.py above). EVF-SAM2: official
    inference() keeps the best of 3 masks by predicted IoU. On these weights the single mask is stable,
    so SAM-2's fallback keeps it and it differs from the best of 3 (a default that used the single mask
    + fallback would fail above); the official multimask_output=False (single mask + fallback) is
    reproduced by multimask_output=False, with or without sam_stability_fallback=True."""
    ref = run["golden"]
    assert run["model"].config.multimask_output is (ref["family"] == "sam2")
    if ref["family"] != "sam2":
        assert "single_mask" not in ref and "single_mask" not in run
        return
    assert len(ref["single_mask"]) == len(run["single_mask"]) == 2
    spec = ref["meta"]["subsample"]
    for i, want in enumerate(ref["single_mask"]):
        best3 = next(c for c in ref["inference"] if (c["image"], c["prompt"]) == (want["image"], want["prompt"]))
        assert float((subsample(want["logits"], spec) - best3["logits"]).abs().max()) > 500 * TOL
        assert float((run["single_mask_fallback"][i] - want["logits"]).abs().max()) < TOL
        assert float((run["single_mask"][i] - want["logits"]).abs().max()) < TOL  # stable: no fallback happened


def test_sam2_official_names_both_ways(tmp_path):
    """The official EVF-SAM2 names the memory encoder's layer scale ...fuser.layers.{i}.weight (SAM-2: gamma)."""
    model = build_tiny_model(seed=0, sam_variant="sam2_tiny")
    d = write_official_checkpoint(tmp_path / "ckpt", model, fmt="safetensors")
    state, _ = read_official_weights(d)
    assert {f"visual_model.memory_encoder.fuser.layers.{i}.weight" for i in (0, 1)} <= set(state)
    assert not [k for k in state if k.endswith(".gamma")]
    loaded = EvfSam.from_pretrained(d)
    for i in (0, 1):
        assert torch.equal(loaded.sam.memory_encoder.fuser.layers[i].gamma,
                           model.sam.memory_encoder.fuser.layers[i].gamma.half().float())
    assert set(parity_shapes("sam2")) >= {f"visual_model.memory_encoder.fuser.layers.{i}.weight" for i in (0, 1)}


def test_fixture_files_are_small():
    files = list(FIXTURES.iterdir())
    assert {f"parity_{f}.pt" for f in FAMILIES} <= {f.name for f in files}
    for f in files:
        assert f.stat().st_size < 1_000_000, f
