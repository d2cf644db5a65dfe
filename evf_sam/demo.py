"""Web demo: ``evf-sam demo --checkpoint DIR_OR_HUB_ID`` (Gradio, served on 127.0.0.1 by default).

Upload an image, type one prompt per line (``[semantic] sky`` with a multitask checkpoint), press
Segment: each mask is drawn in its own colour with an outline, with a legend of prompts and scores
(`evf_sam.visualize.render_masks`); the masks download as one 0/255 PNG per prompt or a zip (the PNGs,
the overlay and ``predictions.json``).

    from evf_sam.demo import build_demo
    app = build_demo(EvfSamPredictor.from_pretrained("YxZhang/evf-sam"))
    app.launch(server_name="127.0.0.1", server_port=7860)      # or serve(app, ...)

All prompts of a request run as one batch on one SAM image embedding (`EvfSamPredictor`), and the
embedding of the last image is kept: new prompts on the same image skip the SAM image encoder.

`SegmentSession` holds everything but the page (no gradio import), so it is usable and testable on
its own. Gradio's analytics, version check and share links are off; the page loads nothing from
outside the server (the default theme's fonts are bundled with gradio).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evf_sam.visualize import mask_color, render_masks

__all__ = ["DemoResult", "SegmentSession", "build_demo", "parse_prompts", "serve"]

MAX_PROMPTS = 32  # per request; each prompt is one row of a batch through BEiT-3 and the mask decoder
_KEEP_REQUESTS = 8  # request directories kept on disk (older ones are deleted)
_SEMANTIC = "[semantic]"


def _no_telemetry() -> None:
    """Before gradio is imported: no analytics, no version check, no hub telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line with visible text (`evf_sam.prompts.is_blank`), stripped. Raises ValueError for none or more than `MAX_PROMPTS`."""
    from evf_sam.prompts import is_blank

    # a line of only invisible characters (U+200B, U+FEFF, ...) is as empty as a blank line
    prompts = [line.strip() for line in (text or "").splitlines() if not is_blank(line)]
    if not prompts:
        raise ValueError("type at least one prompt (one per line)")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts; at most {MAX_PROMPTS} per request")
    return prompts


def _slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "prompt"


@dataclass
class DemoResult:
    """What one Segment request produced."""

    overlay: np.ndarray  # (Hc, Wc, 3) uint8: render_masks(image, masks, prompts, scores)
    masks: np.ndarray  # (N, H, W) bool
    scores: list[float]  # (N,) predicted IoU
    prompts: list[str]  # (N,)
    mask_files: list[Path]  # (N,) 0/255 PNGs, NN_<prompt>.png
    zip_file: Path  # masks.zip: the PNGs, overlay.png, predictions.json
    reused_embedding: bool  # True when the image's SAM embedding came from the previous request

    @property
    def files(self) -> list[str]:
        return [str(self.zip_file), *map(str, self.mask_files)]

    def table_html(self) -> str:
        """The legend as an HTML table: colour, prompt, score, mask area."""
        import html

        rows = []
        for i, (p, s, m) in enumerate(zip(self.prompts, self.scores, self.masks)):
            r, g, b = mask_color(i)
            area = int(m.sum())
            rows.append(
                f'<tr><td><span style="display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b})">'
                f"</span></td><td>{html.escape(p)}</td><td>{s:.3f}</td>"
                f"<td>{area} px ({100.0 * area / m.size:.1f}%)</td></tr>")
        return ('<table class="evf-results"><thead><tr><th></th><th>prompt</th><th>score</th><th>area</th></tr>'
                f"</thead><tbody>{''.join(rows)}</tbody></table>")


class SegmentSession:
    """An `EvfSamPredictor` behind the page: caches the last image's embedding, validates prompts,
    renders and writes the downloads. Thread-safe (one request at a time)."""

    def __init__(self, predictor, out_dir: str | Path | None = None) -> None:
        self.predictor = predictor
        self._own_dir = out_dir is None
        self.out_dir = Path(tempfile.mkdtemp(prefix="evf-sam-demo-")) if out_dir is None else Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._image_key: str | None = None
        self._requests = 0
        self.image_encodes = 0  # SAM image-encoder passes so far (one per new image)

    @property
    def supports_semantic(self) -> bool:
        from evf_sam.tokenizer import semantic_token_id

        return semantic_token_id(self.predictor.tokenizer) is not None

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """ValueError for ``[semantic] ...`` prompts when the tokenizer lacks that token."""
        semantic = [p for p in prompts if p.lower().startswith(_SEMANTIC)]
        if semantic and not self.supports_semantic:
            raise ValueError(
                f"{semantic[0]!r}: this checkpoint's tokenizer has no {_SEMANTIC} token, so semantic-level prompts "
                f"would be read as plain text; use a multitask checkpoint (YxZhang/evf-sam-multitask, "
                f"YxZhang/evf-sam2-multitask) or drop the {_SEMANTIC} prefix")

    @staticmethod
    def _key(image: np.ndarray) -> str:
        h = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        h.update(repr((image.shape, image.dtype.str)).encode())
        return h.hexdigest()

    def segment(self, image: Any, text: str | None) -> DemoResult:
        """image: anything `evf_sam.preprocess.load_image` takes; text: prompts, one per line.
        Raises ValueError with a message for the page on bad input."""
        from evf_sam.preprocess import load_image

        if image is None:
            raise ValueError("upload an image first")
        prompts = parse_prompts(text)
        self.check_prompts(prompts)
        rgb = load_image(image)
        with self._lock:
            key = self._key(rgb)
            reused = key == self._image_key and self.predictor.is_image_set
            if not reused:
                self._image_key = None
                self.predictor.set_image(rgb)
                self.image_encodes += 1
                self._image_key = key
            pred = self.predictor.predict(prompts)
            self._requests += 1
            req = self._requests
        masks = pred.masks.numpy()
        scores = [float(s) for s in pred.scores]
        overlay = render_masks(rgb, masks, pred.prompts, scores)
        mask_files, zip_file = self._write(req, rgb, masks, pred.prompts, scores, overlay)
        return DemoResult(overlay=overlay, masks=masks, scores=scores, prompts=list(pred.prompts),
                          mask_files=mask_files, zip_file=zip_file, reused_embedding=reused)

    def _write(self, req: int, rgb: np.ndarray, masks: np.ndarray, prompts: list[str], scores: list[float],
               overlay: np.ndarray) -> tuple[list[Path], Path]:
        from PIL import Image

        d = self.out_dir / f"request-{req:06d}"
        d.mkdir()
        files, records = [], []
        for i, (p, m, s) in enumerate(zip(prompts, masks, scores)):
            f = d / f"{i:02d}_{_slug(p)}.png"
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(f)
            files.append(f)
            records.append({"prompt": p, "mask": f.name, "score": s, "area": int(m.sum()),
                            "color": list(mask_color(i))})
        buf = io.BytesIO()
        Image.fromarray(overlay).save(buf, format="PNG")
        summary = {"height": int(rgb.shape[0]), "width": int(rgb.shape[1]), "predictions": records}
        zip_file = d / "masks.zip"
        with zipfile.ZipFile(zip_file, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.name)
            z.writestr("overlay.png", buf.getvalue())
            z.writestr("predictions.json", json.dumps(summary, indent=2) + "\n")
        for old in sorted(self.out_dir.glob("request-*"))[:-_KEEP_REQUESTS]:
            shutil.rmtree(old, ignore_errors=True)
        return files, zip_file

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.out_dir, ignore_errors=True)


_CSS = ".evf-results td, .evf-results th {padding: 2px 8px; text-align: left}"


def build_demo(predictor, *, title: str = "EVF-SAM", checkpoint: str = "",
               session: SegmentSession | None = None):
    """The Gradio app (a ``gr.Blocks``) around ``predictor``; ``app.evf_session`` is its
    `SegmentSession`. Launch it with `serve` (or ``app.launch(...)`` with ``ssr_mode=False``)."""
    _no_telemetry()
    import gradio as gr

    session = session or SegmentSession(predictor)
    semantic = session.supports_semantic
    hint = ("One prompt per line; each gets its own mask and colour. "
            + ("Prefix a line with \"[semantic] \" for a semantic-level mask (e.g. \"[semantic] sky\")."
               if semantic else "(This checkpoint has no [semantic] token: referring expressions only.)"))

    def run(image, text):
        try:
            r = session.segment(image, text)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return r.overlay, r.table_html(), r.files

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {title}" + (f" &nbsp;·&nbsp; `{checkpoint}`" if checkpoint else ""))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", image_mode="RGB", label="Image", sources=["upload", "clipboard"],
                                 elem_id="evf-image")
                prompts = gr.Textbox(lines=4, label="Prompts", info=hint, elem_id="evf-prompts",
                                     placeholder="the zebra on the left\nthe tree behind it")
                button = gr.Button("Segment", variant="primary", elem_id="evf-segment")
            with gr.Column():
                result = gr.Image(type="numpy", format="png", label="Result", interactive=False,
                                  buttons=["download", "fullscreen"], elem_id="evf-result")
                table = gr.HTML(elem_id="evf-table")
                files = gr.File(label="Masks (one PNG per prompt; masks.zip holds all, the overlay and scores)",
                                file_count="multiple", interactive=False, elem_id="evf-files")
        button.click(run, [image, prompts], [result, table, files], concurrency_limit=1)
    app.evf_session = session
    return app


def serve(app, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False):
    """Starts ``app`` (from `build_demo`) on ``host:port`` with nothing reaching outside: no share
    link, no analytics, no server-side rendering (it would start Node). ``block=False`` returns once
    the server is up (tests); ``app.close()`` stops it."""
    _no_telemetry()
    import gradio as gr

    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
               quiet=quiet, show_error=True, ssr_mode=False, footer_links=[], mcp_server=False, pwa=False,
               theme=gr.themes.Default(), css=_CSS)
    return app
