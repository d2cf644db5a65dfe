"""Golden fixtures from the official EVF-SAM code (hustvl/EVF-SAM), for tests/test_official_parity.py and
tests/test_tokenizer_parity.py. The official code is run from a path given on the command line (never
copied into this repository); only the small fixtures under tests/fixtures/official/ are committed.

    /work/venvs/official/bin/python scripts/make_official_goldens.py --official /work/official [tokenizer|models|all]

What it writes (tests/fixtures/official/):

* ``tokenizer_{unigram,bpe}.model.xz``: two small sentencepiece models (XLM-R layout, nmt_nfkc
  normaliser) trained here on `TOKENIZER_CORPUS`; ``tokenizer_parity.json``: `TOKENIZER_STRINGS` and
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

Everything runs in float32 on CPU. The official code hard-codes CUDA in places it does not reach here;
what this script changes at run time, and why:
  - EvfSamModel builds only ``sam_scale="huge"``: its ``build_sam_vit_h`` is swapped for the vendored
    ``build_sam_vit_b`` while ``sam_scale="base"`` models are built (SAM ViT-H at 1024 px is far too
    slow for a CPU test);
  - eval.py's ``main`` (NCCL process group, ``.cuda()``) is not run; its dataset, collate function and
    the model's ``forward(inference=True)`` are called directly, as ``validate`` does;
  - ``skimage`` (imported by utils/refer.py for plotting only) is stubbed if it is not installed.

Environment (a separate venv, so that the project's packages are never downgraded):

    python3 -m venv --system-site-packages /work/venvs/official
    /work/venvs/official/bin/pip install "transformers>=4.40,<5"          # -> 4.57.6, tokenizers 0.22.2
    /work/venvs/official/bin/pip install --no-deps torchscale==0.2.0 fairscale==0.4.13 \\
        opencv-python-headless accelerate                              # cv2 5.0.0.93, accelerate 1.15.0
    /work/venvs/official/bin/pip install matplotlib                      # utils/refer.py imports it
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
import shutil
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OFFICIAL_COMMIT = "9935dc52571678b806830821b3ddeacb30e7af07"  # hustvl/EVF-SAM HEAD, "Update README.md"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="tokenizer", choices=["tokenizer"])
    ap.add_argument("--official", type=Path, required=True, help="extracted hustvl/EVF-SAM at OFFICIAL_COMMIT")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args()
    if args.what in ("tokenizer", "all"):
        make_tokenizer_goldens(args.out)


if __name__ == "__main__":
    main()
