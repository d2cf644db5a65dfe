"""Golden fixture from the official EVF-SAM2 video code (hustvl/EVF-SAM ``inference_video.py`` +
``model/evf_sam2_video.py`` + its vendored SAM-2 video predictor), for tests/test_video.py. The
official code is run from a path given on the command line (never copied into this repository);
only the small fixtures under tests/fixtures/official/ are committed.

    /work/venvs/official/bin/python scripts/make_official_video_golden.py --official /work/official

What it writes (tests/fixtures/official/):

* ``video_clip/0000{0..3}.jpg``: `evf_sam.testing.video_clip` (4 frames, 54 x 96, a disc moving
  over a `parity_image` background), JPEG-encoded once here (the official loader reads JPEG folders
  only; committing the files keeps the test independent of the JPEG encoder's version);
* ``parity_sam2_video.pt``: for each prompt of `VIDEO_PROMPTS`, the official ``inference_video.py``
  ``main()`` (``--model_type sam2 --precision fp32 --image_path <clip> --prompt <p>``) on the seeded,
  prompt-sensitive EVF-SAM2 parity weights (`evf_sam.testing.video_parity_state_dict`: Hiera-T +
  BEiT-3-Base, official checkpoint layout, the BPE fixture tokenizer, as scripts/make_official_goldens.py,
  with SAM-2's object-score output bias at +4 so that the object is "present" on every frame -- with
  the plain seeded weights every frame after the first is SAM-2's constant "no object" -1024):
  the per-frame mask logits at the video's size (what ``propagate_in_video`` yields, the official
  ``model.inference`` thresholds them at 0), the token ids, and sha256 of the frames as decoded by
  cv2 (the BEiT-3 input of frame 0) and by PIL (the SAM-2 input).

Everything runs in float32 on CPU. The official files are used unmodified (sha256 checked against
`OFFICIAL_VIDEO_FILES`); what this script changes at run time, and why (all for "no CUDA"):
  - ``torch.Tensor.cuda`` / ``torch.nn.Module.cuda`` return the object itself (the official code
    calls ``.cuda()`` on frames, memories and the model);
  - the vendored ``sam2_video_predictor`` module sees ``torch.device("cuda")`` as CPU (``init_state``
    hard-codes the state's device);
  - ``torch.cuda.get_device_properties`` answers "compute capability 0" (``main`` queries it to turn
    on TF32); ``torch.autocast(device_type="cuda", float16)``, entered by ``main``, is inactive without
    CUDA (torch disables it with a warning), so the run is float32;
  - the vendored ``fill_holes_in_mask_scores`` (``fill_hole_area=8``) needs the CUDA extension
    ``sam2._C``; it is skipped, which is what Meta's ``sam2`` package does when the extension is
    missing (it warns and returns the scores unchanged), i.e. what evf_sam.video runs on a CPU.
The logits are recorded by wrapping ``SAM2VideoPredictor.propagate_in_video`` (the generator the
official ``inference`` consumes); its values are passed through unchanged.

Environment: the venv of scripts/make_official_goldens.py (/work/venvs/official, transformers 4,
opencv-python-headless), with --system-site-packages for torch / hydra / Pillow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_official_goldens import (  # noqa: E402
    FIXTURES, OFFICIAL_COMMIT, check_official_files, fixture_tokenizer_dir)

OFFICIAL_VIDEO_FILES = {  # sha256 at OFFICIAL_COMMIT
    "inference_video.py":
        "02655066fcfb6c26b8c392bfb4c7f90161c888771b88111fcc105495e7798c86",
    "model/evf_sam2_video.py":
        "8392e67c4acf0970682bde5a1e99710db242d7f82ee896c13911ae8fdeaef50c",
    "model/segment_anything_2/sam2/sam2_video_predictor.py":
        "83ec0adb1c091f219f8d07e7c37cfeac9e56f80590ef4174cc10f27f49fe98a9",
    "model/segment_anything_2/sam2/modeling/sam2_base.py":
        "d8704c2d7f87598f702ff45ad7e62748fa40aafd678b9e23b8d6ea00df7537d2",
    "model/segment_anything_2/sam2/build_sam.py":
        "5e0104540d401d371a1b970d4a2d11a3e97693679b3fecfc4489e788dcd05192",
    "model/segment_anything_2/sam2/utils/misc.py":
        "2a571eb7659c548819ae97e9e9c032dcf677101a1469540ed716c6cdce478340",
}
VIDEO_CLIP = {"frames": 4, "height": 54, "width": 96, "seed": 5}  # evf_sam.testing.video_clip arguments
VIDEO_PROMPTS = ("the red disc moving right", "[semantic] background")
CLIP_DIR = "video_clip"
JPEG_QUALITY = 95


def _sha256_array(a) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_clip(out: Path) -> Path:
    """The committed JPEG frames (``00000.jpg`` ...: the names official ``main`` expects)."""
    from PIL import Image

    from evf_sam.testing import video_clip

    d = out / CLIP_DIR
    d.mkdir(parents=True, exist_ok=True)
    frames, _ = video_clip(VIDEO_CLIP["frames"], VIDEO_CLIP["height"], VIDEO_CLIP["width"], VIDEO_CLIP["seed"])
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{i:05d}.jpg", quality=JPEG_QUALITY)
    return d


class _CpuTorch(types.ModuleType):
    """``torch`` as the vendored video predictor sees it: ``torch.device("cuda")`` is the CPU."""

    def __init__(self, torch):
        super().__init__("torch")
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def device(self, *args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return self._torch.device("cpu")
        return self._torch.device(*args, **kwargs)


def _import_official(official: Path):
    """The official inference_video module, with the run-time changes of the module docstring."""
    import torch

    check_official_files(official, OFFICIAL_VIDEO_FILES)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(major=0, minor=0, name="cpu")
    import inference_video
    import model.segment_anything_2.sam2.sam2_video_predictor as vp

    vp.torch = _CpuTorch(torch)
    vp.fill_holes_in_mask_scores = lambda mask, max_area: mask  # sam2 without its CUDA extension
    return inference_video, vp


def make_video_golden(official: Path, out: Path) -> None:
    import time

    import cv2
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from evf_sam.testing import (VIDEO_OBJ_SCORE_BIAS, parity_official_config, parity_shapes, state_dict_sha256,
                                 video_parity_state_dict)

    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    shapes = parity_shapes("sam2")  # (imports Meta's sam2 and clears its hydra state before the vendored one)
    clip = write_clip(out)
    inference_video, vp = _import_official(official)
    files = sorted(p.name for p in clip.iterdir())
    decoded_cv2 = [cv2.cvtColor(cv2.imread(str(clip / f)), cv2.COLOR_BGR2RGB) for f in files]
    decoded_pil = [np.array(Image.open(clip / f).convert("RGB")) for f in files]
    result = {"clip": dict(VIDEO_CLIP), "files": files, "jpeg_quality": JPEG_QUALITY,
              "frames_sha256_cv2": [_sha256_array(a) for a in decoded_cv2],
              "frames_sha256_pil": [_sha256_array(a) for a in decoded_pil],
              "cases": []}

    recorded: list = []
    original = vp.SAM2VideoPredictor.propagate_in_video

    def propagate_in_video(self, *args, **kwargs):
        for frame_idx, obj_ids, logits in original(self, *args, **kwargs):
            recorded.append((int(frame_idx), list(obj_ids), logits.detach().float().cpu().clone()))
            yield frame_idx, obj_ids, logits

    vp.SAM2VideoPredictor.propagate_in_video = propagate_in_video
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "ckpt"
        ckpt.mkdir()
        fixture_tokenizer_dir(FIXTURES, "bpe", ckpt)  # the tokenizer fixture of make_official_goldens.py
        state = {k: v.to(torch.float16) for k, v in video_parity_state_dict(shapes).items()}
        torch.save(state, ckpt / "pytorch_model.bin")
        (ckpt / "config.json").write_text(json.dumps(parity_official_config("sam2"), indent=2) + "\n")
        result["weights_sha256"] = state_dict_sha256(state)
        del state
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpt), padding_side="right", use_fast=False)
        for prompt in VIDEO_PROMPTS:
            recorded.clear()
            with torch.no_grad():
                inference_video.main(["--version", str(ckpt), "--model_type", "sam2", "--precision", "fp32",
                                      "--image_path", str(clip), "--prompt", prompt,
                                      "--vis_save_path", str(tmp / "vis")])
            frames = [r[0] for r in recorded]
            assert frames == list(range(len(files))), frames
            assert all(r[1] == [1] for r in recorded)
            logits = torch.stack([r[2][0, 0] for r in recorded])  # (T, H, W)
            assert logits.shape == (len(files), VIDEO_CLIP["height"], VIDEO_CLIP["width"]), logits.shape
            result["cases"].append({"prompt": prompt, "ids": tok(prompt)["input_ids"], "logits": logits,
                                    "areas": [int(a) for a in (logits > 0).sum((1, 2))]})
            print(f"{prompt!r}: mask areas per frame {result['cases'][-1]['areas']} of "
                  f"{VIDEO_CLIP['height'] * VIDEO_CLIP['width']}; logits in [{logits.min():.2f}, "
                  f"{logits.max():.2f}]; {time.time() - t0:.0f} s", flush=True)
    result["meta"] = {"official_commit": OFFICIAL_COMMIT, "transformers_version": transformers.__version__,
                      "torch_version": str(torch.__version__), "opencv_version": cv2.__version__,
                      "dtype": "float32", "device": "cpu", "fill_holes": "skipped (no CUDA extension)",
                      "obj_score_bias": VIDEO_OBJ_SCORE_BIAS,
                      "script": "scripts/make_official_video_golden.py", "seconds": round(time.time() - t0)}
    f = out / "parity_sam2_video.pt"
    torch.save(result, f)
    print(f"wrote {f} ({f.stat().st_size / 1e3:.0f} kB) in {time.time() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="extracted hustvl/EVF-SAM at OFFICIAL_COMMIT")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args()
    make_video_golden(args.official.resolve(), args.out)


if __name__ == "__main__":
    main()
