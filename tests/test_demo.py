"""The web demo (evf_sam/demo.py, `evf-sam demo`): the session behind the page, the CLI's checks,
and the real page served on 127.0.0.1 and driven in headless Chromium (Debian's /usr/bin/chromium
through Playwright; scripts/install.sh installs both)."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evf_sam.cli import main
from evf_sam.demo import MAX_PROMPTS, SegmentSession, build_demo, parse_prompts, serve
from evf_sam.predictor import EvfSamPredictor
from evf_sam.testing import build_tiny_model, make_tokenizer
from evf_sam.tokenizer import add_tokens
from evf_sam.visualize import LEGEND_BACKGROUND, mask_color, render_masks

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPTS = ["the red square on the left", "the blue background"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    tok = make_tokenizer(root / "tok")
    return build_tiny_model(seed=0).save_pretrained(root / "ckpt", tok)


@pytest.fixture(scope="module")
def multitask_ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint whose tokenizer has the multitask release's [semantic] token."""
    root = tmp_path_factory.mktemp("demo_mt")
    tok = make_tokenizer(root / "tok")
    add_tokens(tok, ["[semantic]"])
    return build_tiny_model(seed=0).save_pretrained(root / "ckpt", tok)


def _scene(h: int = 192, w: int = 256) -> np.ndarray:
    """A red square on a blue background with a little texture (H, W, 3) uint8."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (40, 70, 160)
    img[30:120, 20:110] = (220, 40, 40)
    img += np.random.default_rng(0).integers(0, 12, img.shape, dtype=np.uint8)
    return img


@pytest.fixture
def scene_png(tmp_path) -> Path:
    p = tmp_path / "scene.png"
    Image.fromarray(_scene()).save(p)
    return p


def _count_encodes(predictor: EvfSamPredictor) -> list[int]:
    """Counts real SAM image-encoder passes (wraps model.encode_image)."""
    calls = [0]
    encode = predictor.model.encode_image

    def counted(x):
        calls[0] += 1
        return encode(x)

    predictor.model.encode_image = counted
    return calls


# ---------------------------------------------------------------------------------------------
# The session behind the page (no browser)


def test_parse_prompts():
    assert parse_prompts("  a red cat \n\n\tthe dog\n") == ["a red cat", "the dog"]
    for bad in ("", "  \n \n", None):
        with pytest.raises(ValueError, match="at least one prompt"):
            parse_prompts(bad)
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPTS}"):
        parse_prompts("\n".join(["x"] * (MAX_PROMPTS + 1)))


def test_session_matches_predictor_caches_and_writes(ckpt, tmp_path):
    img = _scene()
    predictor = EvfSamPredictor.from_pretrained(ckpt)
    encodes = _count_encodes(predictor)
    session = SegmentSession(predictor, out_dir=tmp_path / "out")
    r = session.segment(img, f"  {PROMPTS[0]}\n\n{PROMPTS[1]}  \n")
    want = EvfSamPredictor.from_pretrained(ckpt)(img, PROMPTS)
    assert r.prompts == PROMPTS and not r.reused_embedding and encodes[0] == 1
    assert np.array_equal(r.masks, want.masks.numpy())
    assert 0 < r.masks.sum() < r.masks.size  # not degenerate
    assert r.scores == pytest.approx(want.scores.tolist(), abs=1e-6)
    assert np.array_equal(r.overlay, render_masks(img, want.masks.numpy(), PROMPTS, want.scores.tolist()))

    assert [f.name for f in r.mask_files] == ["00_the-red-square-on-the-left.png", "01_the-blue-background.png"]
    for f, m in zip(r.mask_files, want.masks.numpy()):
        png = np.asarray(Image.open(f))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255} and np.array_equal(png == 255, m)
    with zipfile.ZipFile(r.zip_file) as z:
        assert sorted(z.namelist()) == sorted([f.name for f in r.mask_files] + ["overlay.png", "predictions.json"])
        summary = json.loads(z.read("predictions.json"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read("overlay.png")))), r.overlay)
        for f, m in zip(r.mask_files, want.masks.numpy()):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read(f.name)))) == 255, m)
    assert [p["prompt"] for p in summary["predictions"]] == PROMPTS
    assert [p["area"] for p in summary["predictions"]] == [int(m.sum()) for m in want.masks]
    assert (summary["height"], summary["width"]) == img.shape[:2]
    html = r.table_html()
    assert all(p in html for p in PROMPTS) and "rgb(%d,%d,%d)" % mask_color(1) in html

    # same image, new prompts: the cached embedding is used; a new image is encoded once
    r2 = session.segment(img.copy(), PROMPTS[1])
    assert r2.reused_embedding and encodes[0] == 1 and session.image_encodes == 1
    assert np.array_equal(r2.masks[0], r.masks[1])
    r3 = session.segment(img[::-1].copy(), PROMPTS[1])
    assert not r3.reused_embedding and encodes[0] == 2


def test_session_bad_input(ckpt, tmp_path):
    session = SegmentSession(EvfSamPredictor.from_pretrained(ckpt), out_dir=tmp_path)
    with pytest.raises(ValueError, match="upload an image"):
        session.segment(None, "x")
    with pytest.raises(ValueError, match="at least one prompt"):
        session.segment(_scene(), " \n ")
    assert not session.supports_semantic
    with pytest.raises(ValueError, match=r"no \[semantic\] token.*multitask"):
        session.segment(_scene(), "a dog\n[semantic] sky")
    assert not list(tmp_path.iterdir())  # nothing written for rejected requests


def test_session_semantic_prompts_with_multitask_tokenizer(multitask_ckpt, tmp_path):
    predictor = EvfSamPredictor.from_pretrained(multitask_ckpt)
    session = SegmentSession(predictor, out_dir=tmp_path)
    assert session.supports_semantic
    r = session.segment(_scene(), "[semantic] sky\nthe red square")
    want = EvfSamPredictor.from_pretrained(multitask_ckpt)(_scene(), ["[semantic] sky", "the red square"])
    assert np.array_equal(r.masks, want.masks.numpy())
    ids = predictor.tokenizer("[semantic] sky")["input_ids"]
    assert predictor.tokenizer.convert_tokens_to_ids("[semantic]") in ids  # the prefix is one token


def test_session_keeps_only_recent_requests(ckpt, tmp_path, monkeypatch):
    import evf_sam.demo

    monkeypatch.setattr(evf_sam.demo, "_KEEP_REQUESTS", 2)
    session = SegmentSession(EvfSamPredictor.from_pretrained(ckpt), out_dir=tmp_path)
    made = [session.segment(_scene(64, 48), "x").zip_file.parent for _ in range(4)]
    assert sorted(tmp_path.glob("request-*")) == made[2:] and (made[-1] / "masks.zip").is_file()


# ---------------------------------------------------------------------------------------------
# `evf-sam demo`: checks before serving, and the wiring


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("evf-sam: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_cli_demo_errors(ckpt, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "nockpt"), "--port", "0"]) == 2
    _one_line_error(capsys, "nockpt", "not found")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--checkpoint", str(ckpt), "--port", str(port)]) == 2
        _one_line_error(capsys, f"127.0.0.1:{port}", "--port")
    assert main(["demo", "--checkpoint", str(ckpt), "--port", "70000"]) == 2
    _one_line_error(capsys, "out of range")
    if not torch.cuda.is_available():
        assert main(["demo", "--checkpoint", str(ckpt), "--precision", "fp16", "--device", "cpu"]) == 2
        _one_line_error(capsys, "fp16")


def test_cli_demo_serves_the_checkpoint(ckpt, monkeypatch, capsys):
    import evf_sam.demo

    served = {}

    def fake_serve(app, *, host, port, block, quiet):
        served.update(app=app, host=host, port=port, block=block)

    monkeypatch.setattr(evf_sam.demo, "serve", fake_serve)
    assert main(["demo", "--checkpoint", str(ckpt), "--port", "0", "--device", "cpu", "--precision", "bf16"]) == 0
    assert served["host"] == "127.0.0.1" and served["block"] and 0 < served["port"] < 65536
    predictor = served["app"].evf_session.predictor
    assert predictor.model.dtype == torch.bfloat16 and predictor.model.source_dir == ckpt
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{served['port']}" in err


# ---------------------------------------------------------------------------------------------
# The page, in a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture
def no_outbound_sockets(monkeypatch):
    """Records (and refuses) any TCP/UDP connection this process makes outside 127.0.0.0/8 / ::1."""
    outbound: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            outbound.append(address)
            raise OSError(f"test: outbound connection to {address} refused")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return outbound


def _pixels_near(img: np.ndarray, color, tol: int = 60) -> int:
    return int((np.abs(img[..., :3].astype(int) - np.asarray(color)).sum(-1) < tol).sum())


def test_browser_upload_prompt_and_download(ckpt, scene_png, tmp_path, monkeypatch, no_outbound_sockets):
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install.sh` (it apt-get installs Debian's chromium)")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    predictor = EvfSamPredictor.from_pretrained(ckpt)
    encodes = _count_encodes(predictor)
    app = build_demo(predictor, checkpoint="tiny-test")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve(app, port=port, block=False, quiet=True)
    external: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def route(r):
                url = r.request.url
                if url.startswith(base + "/") or url.startswith(("data:", "blob:")):
                    r.continue_()
                else:
                    external.append(url)
                    r.abort()

            page.route("**/*", route)
            page.goto(base + "/", wait_until="load")
            page.wait_for_selector("#evf-segment", timeout=60_000)

            page.locator("#evf-image input[type=file]").set_input_files(str(scene_png))
            page.wait_for_selector("#evf-image img", timeout=60_000)
            page.locator("#evf-prompts textarea").fill("\n".join(PROMPTS))
            before = tmp_path / "before.png"
            page.locator("#evf-result").screenshot(path=str(before))
            page.click("#evf-segment")
            page.wait_for_selector("#evf-files a[download]", timeout=120_000)
            page.wait_for_selector("#evf-result img", timeout=60_000)
            page.wait_for_function("document.querySelector('#evf-result img').complete")
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            after = tmp_path / "after.png"
            page.locator("#evf-result").screenshot(path=str(after))

            links = {a.get_attribute("download"): a.get_attribute("href")
                     for a in page.locator("#evf-files a[download]").all()}
            result_src = page.locator("#evf-result img").get_attribute("src")
            table_text = page.locator("#evf-table").inner_text()

            def fetch(url: str) -> bytes:
                resp = page.request.get(url)
                assert resp.ok, (url, resp.status)
                return resp.body()

            files = {name: fetch(href) for name, href in links.items()}
            shown = np.asarray(Image.open(io.BytesIO(fetch(result_src))).convert("RGB"))

            # re-prompting the same image: the server does not encode it again
            page.locator("#evf-prompts textarea").fill(PROMPTS[1])
            page.click("#evf-segment")
            page.wait_for_function(
                "document.querySelectorAll('#evf-files a[download]').length === 2", timeout=120_000)

            # bad input is an error message on the page, not a crash
            page.locator("#evf-prompts textarea").fill("  \n ")
            page.click("#evf-segment")
            page.locator("[data-testid=toast-body]").filter(has_text="type at least one prompt").wait_for(
                timeout=60_000)
            browser.close()
    finally:
        app.close()
        app.evf_session.close()

    # the masks are the predictor's for the same image and prompts
    want = EvfSamPredictor.from_pretrained(ckpt)(str(scene_png), PROMPTS)
    assert set(files) == {"masks.zip", "00_the-red-square-on-the-left.png", "01_the-blue-background.png"}
    for i, name in enumerate(["00_the-red-square-on-the-left.png", "01_the-blue-background.png"]):
        png = np.asarray(Image.open(io.BytesIO(files[name])))
        assert np.array_equal(png == 255, want.masks[i].numpy()) and set(np.unique(png)) <= {0, 255}
    with zipfile.ZipFile(io.BytesIO(files["masks.zip"])) as z:
        assert [p["prompt"] for p in json.loads(z.read("predictions.json"))["predictions"]] == PROMPTS
    # the result shown is the overlay of exactly those masks, with the prompts as captions
    assert np.array_equal(shown, render_masks(np.asarray(Image.open(scene_png)), want.masks.numpy(), PROMPTS,
                                              want.scores.tolist()))
    assert all(p in table_text for p in PROMPTS)
    assert encodes[0] == 1  # two requests on one image, one SAM encoder pass

    # the screenshot shows it: the result panel was empty, now it has the legend's dark band and
    # both mask colours
    assert shot.stat().st_size > 10_000
    pre = np.asarray(Image.open(before).convert("RGB"))
    post = np.asarray(Image.open(after).convert("RGB"))
    assert _pixels_near(pre, LEGEND_BACKGROUND, 30) == 0
    assert _pixels_near(post, LEGEND_BACKGROUND, 30) > 0.02 * post.shape[0] * post.shape[1]
    for i in range(2):
        assert _pixels_near(pre, mask_color(i)) == 0 and _pixels_near(post, mask_color(i)) >= 20
    assert np.abs(pre.astype(int) - post.astype(int)).mean() > 10

    if os.environ.get("EVF_SAM_TEST_ARTIFACTS"):  # keep the screenshots (CI artifacts, a look by eye)
        keep = Path(os.environ["EVF_SAM_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for f in (before, after, shot):
            shutil.copy(f, keep / f"demo_{f.name}")
    assert external == []  # the page asked nothing from outside the server
    assert no_outbound_sockets == []  # nor did the server

