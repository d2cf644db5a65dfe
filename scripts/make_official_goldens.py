"""Golden fixtures from the official EVF-SAM code (hustvl/EVF-SAM), for tests/test_official_parity.py and
tests/test_tokenizer_parity.py. The official code is run from a path given on the command line (never
copied into this repository); only the small fixtures under tests/fixtures/official/ are committed.

    /work/venvs/official/bin/python scripts/make_official_goldens.py --official /work/official [tokenizer|models|all]

What it writes (tests/fixtures/official/):

* ``tokenizer_{unigram,bpe}.model.xz``: two small sentencepiece models (XLM-R layout, nmt_nfkc
  normaliser) trained here on ``TINY_SENTENCES`` + `TOKENIZER_EXTRA_CORPUS`; ``tokenizer_parity.json``: `TOKENIZER_STRINGS` and
  the ids transformers 4's slow ``XLMRobertaTokenizer`` (``AutoTokenizer.from_pretrained(dir,
  use_fast=False)``, as the official inference.py / eval.py) gives each of them, with the multitask
  ``[semantic]`` token in ``added_tokens.json``.
* ``parity_{sam,effi,sam2}.pt``: for each official model family at its smallest architecture
  (`evf_sam.testing.PARITY_FAMILIES`: EvfSamModel SAM ViT-B + BEiT-3-Base, EvfEffiSamModel
  EfficientSAM-T + BEiT-3-Base, EvfSam2Model Hiera-T + BEiT-3-Base) on the seeded, prompt-sensitive
  weights of `evf_sam.testing.parity_state_dict` (the test re-creates them bit for bit without the
  official code), written as an official checkpoint directory (official tensor names and config.json
  fields, fp16 ``pytorch_model.bin``, the BPE tokenizer above + ``added_tokens.json``) and loaded with
  the official ``from_pretrained``:
  - ``inference``: official inference.py (``sam_preprocess``, ``beit3_preprocess``, the slow tokenizer,
    ``model.inference``) on `evf_sam.testing.parity_image` images of several aspect ratios (and one
    square) with several prompts: logits at the original size (subsampled for the large image),
    the ids, and checksums of the preprocessed SAM / BEiT-3 tensors;
  - ``eval``: official eval.py's ``ValDataset`` (utils/dataset.py: ``ResizeLongestSide`` or ``Resize``,
    lower-cased sentences) + ``collate_fn`` + ``model(**batch)`` on a tiny REFER dataset written with
    `evf_sam.data.refer.write_refer`: logits and per-expression intersection / union;
  - EVF-SAM2 also ``inference(..., multimask_output=False)`` (single mask + SAM-2's stability
    fallback), whose mask here differs from the default best-of-3 one;
  - ``save_pretrained``: our `EvfSam.from_pretrained` of that directory, then `EvfSam.save_pretrained`;
    the official ``from_pretrained`` loads the result with no missing / unexpected tensors and gives
    the same logits (recorded in ``meta["save_pretrained"]``).

Everything runs in float32 on CPU. The official files are used unmodified (their sha256 is checked
against `OFFICIAL_FILES`); what this script does differently at run time, and why:
  - EvfSamModel builds only ``sam_scale="huge"``: for ``sam_scale="base"`` its
    ``initialize_evf_modules`` runs with ``build_sam_vit_h`` swapped for the vendored
    ``build_sam_vit_b`` (SAM ViT-H at 1024 px is far too slow for a CPU test);
  - inference.py's ``main`` (CUDA autocast, ``.cuda()``, cv2 file IO) is not run: its steps are, with
    its own ``sam_preprocess`` / ``beit3_preprocess``, init_models' ``from_pretrained(...,
    low_cpu_mem_usage=True, torch_dtype=float32)`` and ``model.inference`` (`official_inference`);
    images are given as RGB arrays (what ``cv2.imread`` + ``cvtColor`` returns);
  - eval.py's ``main`` (NCCL process group, ``.cuda()``) is not run; its dataset, collate function and
    the model's ``forward(inference=True)`` are called directly, as ``validate`` does with fp32;
  - ``skimage`` (imported by utils/refer.py for plotting only) is stubbed if it is not installed.

Environment (a separate venv, so that the project's packages are never downgraded):

    python3 -m venv --system-site-packages /work/venvs/official
    /work/venvs/official/bin/pip install "transformers==4.57.6"   # + tokenizers 0.22.2, huggingface_hub 0.36.2
    /work/venvs/official/bin/pip install --no-deps torchscale==0.2.0 fairscale==0.4.13 \\
        opencv-python-headless==5.0.0.93 accelerate==1.15.0      # the official imports; accelerate for
                                                                  # from_pretrained(low_cpu_mem_usage=True)
    /work/venvs/official/bin/pip install matplotlib==3.11.2       # utils/refer.py imports it
    mkdir -p /work/official && git -C <mirror of hustvl/EVF-SAM> archive OFFICIAL_COMMIT | tar -x -C /work/official

It uses the system torch 2.14.1 / torchvision 0.29.1 / timm / sentencepiece / hydra / pycocotools
(--system-site-packages) and this repository's evf_sam (put on sys.path by this script).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import lzma
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OFFICIAL_COMMIT = "9935dc52571678b806830821b3ddeacb30e7af07"  # hustvl/EVF-SAM HEAD, "Update README.md"
OFFICIAL_FILES = {  # sha256 at OFFICIAL_COMMIT of the files whose behaviour the fixtures record
    "inference.py": "2b8d05e78db930a026298c0686b08f6c54833a4932fb10844bb219f917c406b5",
    "eval.py": "f7ead800770243997cc1067676e0e669a34be5bc37b7a41f70ae04e6f32a1c57",
    "utils/dataset.py": "9a0ebedaabbf1abdb981c71c6901d4a631281a10aa12fb477384e5c9015b01ac",
    "model/evf_sam.py": "adc960af59f87444fc056dffcb094529ca7a362a31bf569059fba130c00371d3",
    "model/evf_effisam.py": "39070251a06e02333125ca8fd24ac98325207c8150d935f211e86fcf36a8cd95",
    "model/evf_sam2.py": "65f24a786bef233ecbe1580777ff7794b5eb61cd93d0eda3f80c18dc113446a4",
}
FIXTURES = REPO / "tests" / "fixtures" / "official"

# -------------------------------------------------------------------------------------------------
# Tokenizer

# Sentences the two small sentencepiece models are trained on (with evf_sam.testing.TINY_SENTENCES).
# No emoji: they stay unknown pieces (-> <unk>).
TOKENIZER_EXTRA_CORPUS = (
    "le café à côté de l'église", "über den Fluß, naïve Übung", "左边的红色圆圈", "右边的猫在桌子上",
    "赤い丸の左", "빨간 원 왼쪽", "2 cats and 13 dogs, 400 birds!", "the man in the red shirt (left)",
    "\"quoted\" words; semi-colons: yes?", "THE BIG RED CIRCLE", "Zebra Top Left",
)
TOKENIZER_VOCAB_SIZE = 300  # sentencepiece pieces (upper bound: hard_vocab_limit=False)
TOKENIZER_SEED = 0

TOKENIZER_STRINGS = (
    "the thing",
    "the big red circle on the left",
    "zebra top left",
    "the the the red red circle circle",
    "the  big   red\tcircle\non the left",
    "  leading and trailing spaces  ",
    "The BIG Red Circle, On The LEFT!",
    "UPPER CASE ONLY",
    "2 cats and 13 dogs; 400 birds?",
    "circle #3 at (10, 20) - 50% off",
    "\"quoted\" words; semi-colons: yes?",
    "le café à côté de l'église",
    "über den Fluß, naïve Übung",
    "cafe\u0301 (decomposed accent)",
    "左边的红色圆圈",
    "右边的 猫",
    "赤い丸 and 빨간 원",
    "a cat 🐱 next to a dog 🐶",
    "🐱",
    "emoji🐱glued",
    "full-width ＡＢＣ１２３ letters",
    "tab\tseparated\twords",
    "line one\nline two\r\nline three",
    "[semantic] wall",
    "[semantic] sky and [semantic] floor",
    "wall[semantic]sky",
    "  [semantic]   wall  ",
    "a <mask> b",
    "x   <mask>y",
    "red <s> circle </s> end",
    "<unk> and <pad>",
    "thing",
    "things thingy thin",
)


def _tokenizer_corpus() -> list[str]:
    from evf_sam.testing import TINY_SENTENCES

    return list(TINY_SENTENCES) + list(TOKENIZER_EXTRA_CORPUS) * 3


def make_tokenizer_goldens(out: Path) -> dict:
    """Trains the two models, runs the slow transformers 4 tokenizer, writes the fixtures."""
    import sentencepiece
    import transformers
    from transformers import AutoTokenizer

    from evf_sam.tokenizer import SEMANTIC_TOKEN, add_tokens, train_sentencepiece

    if int(transformers.__version__.split(".")[0]) != 4:
        raise SystemExit(f"the reference is transformers 4's slow tokenizer; this is {transformers.__version__}")
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "official_commit": OFFICIAL_COMMIT,
        "reference": "transformers.AutoTokenizer.from_pretrained(dir, padding_side='right', use_fast=False) "
                     "(XLMRobertaTokenizer, slow), tokenizer(text)['input_ids']",
        "transformers_version": transformers.__version__,
        "sentencepiece_version": sentencepiece.__version__,
        "train": {"corpus": "evf_sam.testing.TINY_SENTENCES + scripts/make_official_goldens.py "
                            "TOKENIZER_EXTRA_CORPUS * 3", "vocab_size": TOKENIZER_VOCAB_SIZE,
                  "seed": TOKENIZER_SEED},
        "strings": list(TOKENIZER_STRINGS),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model_type in ("unigram", "bpe"):
            d = train_sentencepiece(_tokenizer_corpus(), Path(tmp) / model_type, TOKENIZER_VOCAB_SIZE,
                                    model_type=model_type, seed=TOKENIZER_SEED)
            added = add_tokens(d, [SEMANTIC_TOKEN])
            raw = (d / "sentencepiece.bpe.model").read_bytes()
            name = f"tokenizer_{model_type}.model.xz"
            (out / name).write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
            tok = AutoTokenizer.from_pretrained(str(d), padding_side="right", use_fast=False)
            assert type(tok).__name__ == "XLMRobertaTokenizer", type(tok)
            ids = [tok(s)["input_ids"] for s in TOKENIZER_STRINGS]
            result["models"][model_type] = {
                "file": name, "sha256": hashlib.sha256(raw).hexdigest(), "added_tokens": added,
                "len": len(tok), "mask_id": tok.mask_token_id,
                "pieces": [tok.tokenize(s) for s in TOKENIZER_STRINGS], "ids": ids,
            }
    (out / "tokenizer_parity.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    u, b = (result["models"][k]["ids"] for k in ("unigram", "bpe"))
    print(f"tokenizer: {len(TOKENIZER_STRINGS)} strings; unigram len {result['models']['unigram']['len']}, "
          f"bpe len {result['models']['bpe']['len']}; 'the thing' -> unigram {u[0]}, bpe {b[0]}")
    return result


def fixture_tokenizer_dir(fixtures: Path, model_type: str, out_dir: Path) -> Path:
    """The official tokenizer layout from a fixture model (+ the ``added_tokens.json`` it was made with)."""
    from evf_sam.tokenizer import write_tokenizer_dir

    meta = json.loads((fixtures / "tokenizer_parity.json").read_text())["models"][model_type]
    return write_tokenizer_dir(out_dir, lzma.decompress((fixtures / meta["file"]).read_bytes()), meta["added_tokens"])


# -------------------------------------------------------------------------------------------------
# Models

# name -> (height, width, evf_sam.testing.parity_image seed): several aspect ratios, one square, one
# image larger than 1024 px (shrinking is where the two square-mode paths differ most)
PARITY_IMAGES = {"wide": (40, 96, 1), "tall": (100, 44, 2), "square": (64, 64, 3), "large": (720, 1152, 4)}
PARITY_PROMPTS = {
    "wide": ("zebra top left", "the thing"),
    "tall": ("the big red circle on the left", "[semantic] wall"),
    "square": ("Left Man!", "2 cats and 13 dogs"),
    "large": ("the red circle", "the man in the red shirt (left)"),
}
# SAM ViT-B at 1024 px costs ~10x EfficientSAM-T / Hiera-T on a CPU: two aspect ratios for it
FAMILY_IMAGES = {"sam": ("tall", "large"), "effi": ("wide", "tall", "square", "large"),
                 "sam2": ("wide", "tall", "square", "large")}
MODEL_TYPES = {"sam": "ori", "effi": "effi", "sam2": "sam2"}  # official inference.py / eval.py --model_type
# tiny RefCOCO (unc) val split for the eval.py path: the same two images, sentences as written (eval.py
# lower-cases and strips them)
EVAL_IMAGES = (
    {"image_id": 11, "image": "tall", "refs": [["The Big Red Circle", "thing on the RIGHT"], ["  a small square  "]]},
    {"image_id": 12, "image": "large", "refs": [["the man in the red shirt (left)"], ["[semantic] wall", "Zebra top left"]]},
)
SUBSAMPLE = {"min_pixels": 20000, "offset": 3, "stride": 8}  # logits of large images: [..., 3::8, 3::8]


def subsample(logits):
    """(..., H, W) -> the stored part: everything for small images, a regular grid for large ones."""
    h, w = logits.shape[-2:]
    if h * w < SUBSAMPLE["min_pixels"]:
        return logits
    o, k = SUBSAMPLE["offset"], SUBSAMPLE["stride"]
    return logits[..., o::k, o::k]


def _sha256(t) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def check_official_files(official: Path, files: dict[str, str]) -> None:
    """Exits unless every file of ``files`` (path -> sha256) under ``official`` is the pinned commit's,
    then puts ``official`` on sys.path."""
    for rel, want in files.items():
        f = official / rel
        got = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "missing"
        if got != want:
            raise SystemExit(f"{f}: sha256 {got}, expected {want}: --official must be hustvl/EVF-SAM at "
                             f"{OFFICIAL_COMMIT} (git archive {OFFICIAL_COMMIT[:7]} | tar -x -C DIR)")
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))


def _import_official(official: Path) -> types.SimpleNamespace:
    """The official modules, with the run-time changes listed in the module docstring."""
    check_official_files(official, OFFICIAL_FILES)
    try:
        import skimage.io  # noqa: F401
    except ImportError:  # utils/refer.py imports it for plotting only
        sk = types.ModuleType("skimage")
        sk.io = types.ModuleType("skimage.io")
        sys.modules.update({"skimage": sk, "skimage.io": sk.io})
    import inference  # official inference.py: sam_preprocess, beit3_preprocess
    import model.evf_sam as evf_sam_mod
    from model.evf_effisam import EvfEffiSamModel
    from model.evf_sam2 import EvfSam2Model
    from model.segment_anything import build_sam_vit_b
    from model.segment_anything.utils.transforms import ResizeLongestSide
    from utils.dataset import Resize, ValDataset, collate_fn

    original = evf_sam_mod.EvfSamModel.initialize_evf_modules
    if not getattr(original, "_parity_patch", False):
        def initialize_evf_modules(self, config):  # EvfSamModel builds only "huge": let "base" build ViT-B
            if config.sam_scale != "base":
                return original(self, config)
            saved = evf_sam_mod.build_sam_vit_h
            evf_sam_mod.build_sam_vit_h, config.sam_scale = build_sam_vit_b, "huge"
            try:
                return original(self, config)
            finally:
                evf_sam_mod.build_sam_vit_h, config.sam_scale = saved, "base"

        initialize_evf_modules._parity_patch = True
        evf_sam_mod.EvfSamModel.initialize_evf_modules = initialize_evf_modules
    return types.SimpleNamespace(
        inference=inference, classes={"sam": evf_sam_mod.EvfSamModel, "effi": EvfEffiSamModel, "sam2": EvfSam2Model},
        ResizeLongestSide=ResizeLongestSide, Resize=Resize, ValDataset=ValDataset, collate_fn=collate_fn)


def load_official_model(off, family: str, path: Path):
    """``EvfXModel.from_pretrained`` as inference.py / eval.py (fp32, CPU); every tensor must load."""
    import torch

    model, info = off.classes[family].from_pretrained(str(path), low_cpu_mem_usage=True, torch_dtype=torch.float32,
                                                      output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"official {family} from_pretrained({path}): {problems}")
    return model.eval()


def official_inference(off, family: str, model, tok, image, prompt: str, multimask_output: bool | None = None):
    """inference.py main(), minus CUDA and file IO: -> (logits (H, W), ids, sam input, beit input)."""
    import torch

    image_beit = off.inference.beit3_preprocess(image, 224).to(dtype=model.dtype, device=model.device)
    image_sam, resize_shape = off.inference.sam_preprocess(image, model_type=MODEL_TYPES[family])
    image_sam = image_sam.to(dtype=model.dtype, device=model.device)
    input_ids = tok(prompt, return_tensors="pt")["input_ids"].to(device=model.device)
    kw = {} if multimask_output is None else {"multimask_output": multimask_output}
    with torch.no_grad():
        pred = model.inference(image_sam.unsqueeze(0), image_beit.unsqueeze(0), input_ids, resize_list=[resize_shape],
                               original_size_list=[image.shape[:2]], **kw)
    return pred[0].float(), input_ids[0].tolist(), image_sam, image_beit


def make_model_goldens(official: Path, out: Path, families: list[str]) -> None:
    import time

    import torch
    import transformers
    from transformers import AutoTokenizer

    from evf_sam.testing import (PARITY_FAMILIES, parity_image, parity_official_config, parity_shapes,
                                 parity_state_dict, state_dict_sha256, write_parity_refer)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    off = _import_official(official)
    images = {k: parity_image(*v) for k, v in PARITY_IMAGES.items()}
    for family in families:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            # 1. the official-format directory
            ckpt = tmp / "ckpt"
            ckpt.mkdir()
            fixture_tokenizer_dir(out, "bpe", ckpt)
            state = {k: v.to(torch.float16) for k, v in parity_state_dict(parity_shapes(family)).items()}
            torch.save(state, ckpt / "pytorch_model.bin")
            (ckpt / "config.json").write_text(json.dumps(parity_official_config(family), indent=2) + "\n")
            model = load_official_model(off, family, ckpt)
            if set(model.state_dict()) != set(state):  # official names = ours (both ways)
                raise SystemExit(f"{family}: official tensors {sorted(set(model.state_dict()) ^ set(state))[:10]}")
            tok = AutoTokenizer.from_pretrained(str(ckpt), padding_side="right", use_fast=False)
            assert type(tok).__name__ == "XLMRobertaTokenizer"
            result = {"family": family, "architecture": PARITY_FAMILIES[family][0],
                      "sam_scale": PARITY_FAMILIES[family][1], "config": parity_official_config(family),
                      "weights_sha256": state_dict_sha256(state), "n_tensors": len(state),
                      "n_parameters": sum(v.numel() for v in state.values()), "inference": [], "eval": []}
            del state
            # 2. inference.py
            for name in FAMILY_IMAGES[family]:
                image = images[name]
                for prompt in PARITY_PROMPTS[name]:
                    logits, ids, sam_x, beit_x = official_inference(off, family, model, tok, image, prompt)
                    result["inference"].append({
                        "image": name, "prompt": prompt, "ids": ids, "logits": subsample(logits).clone(),
                        "sam_input_sha256": _sha256(sam_x), "beit_input_sha256": _sha256(beit_x)})
                print(f"{family} inference {name} {image.shape[:2]}: {time.time() - t0:.0f} s", flush=True)
            if family == "sam2":  # the single mask (+ SAM-2's stability fallback), which the default does not use
                image = images["tall"]
                result["single_mask"] = []
                for prompt in PARITY_PROMPTS["tall"]:
                    logits = official_inference(off, family, model, tok, image, prompt, multimask_output=False)[0]
                    result["single_mask"].append({"image": "tall", "prompt": prompt, "logits": logits.clone()})
            # 3. eval.py: ValDataset + collate_fn + forward(inference=True)
            data = write_parity_refer(tmp / "data", [
                {"image_id": e["image_id"], "height": PARITY_IMAGES[e["image"]][0],
                 "width": PARITY_IMAGES[e["image"]][1], "seed": PARITY_IMAGES[e["image"]][2], "refs": e["refs"]}
                for e in EVAL_IMAGES])
            transform = off.ResizeLongestSide(1024) if family == "sam" else off.Resize(1024)
            with contextlib.redirect_stdout(io.StringIO()):  # REFER's progress prints
                ds = off.ValDataset(str(data), "refcoco|unc|val", 224, model_type=MODEL_TYPES[family],
                                    transform=transform)
            for idx in range(len(ds)):
                batch = off.collate_fn([ds[idx]], tokenizer=tok, local_rank=0)
                batch["images"] = batch["images"].float()  # validate(), --precision fp32
                batch["images_evf"] = batch["images_evf"].float()
                with torch.no_grad():
                    outd = model(**batch)
                logits = outd["pred_masks"][0].float()  # (n, H, W)
                gt = outd["gt_masks"][0].int()
                pred = (logits > 0).int()
                iid = int(Path(batch["image_paths"][0]).stem.split("_")[-1])
                ids = [row[row.ne(tok.pad_token_id)].tolist() for row in batch["input_ids"]]
                result["eval"].append({
                    "image_id": iid, "sentences": list(batch["sampled_classes_list"]), "ids": ids,
                    "logits": subsample(logits).clone(), "resize": list(batch["resize_list"][0]),
                    "intersection": [int((p & g).sum()) for p, g in zip(pred, gt)],
                    "union": [int((p | g).sum()) for p, g in zip(pred, gt)],
                    "sam_input_sha256": _sha256(batch["images"][0]), "beit_input_sha256": _sha256(batch["images_evf"][0])})
            print(f"{family} eval: {time.time() - t0:.0f} s", flush=True)
            # 4. our save_pretrained, read by the official code
            from evf_sam.models.evf_sam import EvfSam

            ours = EvfSam.from_pretrained(ckpt)
            saved = ours.save_pretrained(tmp / "ours", tokenizer_dir=ckpt)
            del ours
            ref = result["inference"][0]
            model2 = load_official_model(off, family, saved)
            again = official_inference(off, family, model2, tok, images[ref["image"]], ref["prompt"])[0]
            result["save_pretrained"] = {
                "official_from_pretrained": "no missing / unexpected / mismatched tensors",
                "files": sorted(p.name for p in saved.iterdir()),
                "config": json.loads((saved / "config.json").read_text()),
                "max_abs_logit_diff": float((subsample(again) - ref["logits"]).abs().max()),
                "case": [ref["image"], ref["prompt"]]}
            del model2, model
        result["meta"] = {
            "official_commit": OFFICIAL_COMMIT, "transformers_version": transformers.__version__,
            "torch_version": str(torch.__version__), "dtype": "float32", "device": "cpu",
            "images": PARITY_IMAGES, "eval_images": [dict(e) for e in EVAL_IMAGES], "subsample": SUBSAMPLE,
            "tokenizer": "tokenizer_bpe.model.xz + added_tokens.json",
            "script": "scripts/make_official_goldens.py", "seconds": round(time.time() - t0)}
        f = out / f"parity_{family}.pt"
        torch.save(result, f)
        print(f"{family}: wrote {f} ({f.stat().st_size / 1e3:.0f} kB); save_pretrained -> official: max |diff| "
              f"{result['save_pretrained']['max_abs_logit_diff']:.2e}; {time.time() - t0:.0f} s", flush=True)


# -------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all", choices=["tokenizer", "models", "all"])
    ap.add_argument("--official", type=Path, required=True, help="extracted hustvl/EVF-SAM at OFFICIAL_COMMIT")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--families", default="sam,effi,sam2", help="comma-separated subset of sam, effi, sam2")
    args = ap.parse_args()
    if args.what in ("tokenizer", "all"):
        make_tokenizer_goldens(args.out)
    if args.what in ("models", "all"):
        make_model_goldens(args.official.resolve(), args.out, args.families.split(","))


if __name__ == "__main__":
    main()
