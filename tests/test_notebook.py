"""notebooks/inference.ipynb runs top to bottom on CPU (nbclient, an ipykernel on this very Python),
and what it shows is the predictor's output; it is committed without outputs."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient
from PIL import Image

from evf_sam.predictor import EvfSamPredictor
from evf_sam.visualize import render_masks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "inference.ipynb"
KERNEL = "evf-sam-test-python"


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def _kernel_on_this_python(root: Path, monkeypatch) -> None:
    """A kernelspec that starts ipykernel with sys.executable and imports this checkout's evf_sam."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "evf-sam test", "language": "python",
        "env": {"PYTHONPATH": str(REPO)},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(root / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "agg")


def _image_outputs(cell) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))).convert("RGB"))
            for o in cell.outputs if o.get("output_type") in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def test_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    _kernel_on_this_python(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_cells = len(nb.cells)
    out = tmp_path / "probe"
    out.mkdir()
    # A probe cell (not committed): what the kernel ran on, and the arrays the notebook computed.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\n"
        f"np.save({str(out / 'image.npy')!r}, image)\n"
        f"np.save({str(out / 'masks.npy')!r}, pred.masks.numpy())\n"
        "print(sys.executable)\nprint(str(CHECKPOINT))\nprint(device)"))
    NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()

    executable, checkpoint, device = _stdout(nb.cells[-1]).split()
    assert executable == sys.executable
    image, masks = np.load(out / "image.npy"), np.load(out / "masks.npy")

    # what the notebook predicted and showed == the predictor on its checkpoint, in this process
    want = EvfSamPredictor.from_pretrained(checkpoint)(image, ["the red circle on the left", "the green square"])
    assert np.array_equal(masks, want.masks.numpy()) and masks.shape == (2, 240, 320)
    printed = _stdout(next(c for c in nb.cells[:n_cells] if "pred = predictor.predict" in c.source))
    for prompt, m in zip(want.prompts, want.masks):
        assert f"{prompt!r}: {int(m.sum())} px" in printed
    shown = _image_outputs(nb.cells[n_cells - 2])  # the overlay cell
    assert len(shown) == 1
    assert np.array_equal(shown[0], render_masks(image, want.masks.numpy(), want.prompts, want.scores.tolist()))
    image_cell = next(c for c in nb.cells if "Image.fromarray(image)" in c.source)
    assert np.array_equal(_image_outputs(image_cell)[0], image)
