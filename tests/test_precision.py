import re
from pathlib import Path

import pytest
import torch

from evf_sam.precision import PRECISIONS, dtype_of

ROOT = Path(__file__).resolve().parents[1]


def test_precision_names_map_to_dtypes_and_bad_names_are_named():
    assert [dtype_of(p) for p in PRECISIONS] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"):
        dtype_of("fp8")


def test_the_precision_table_lives_in_one_place():
    """The name -> dtype table was written in five modules; a new copy should use evf_sam.precision."""
    pattern = re.compile(r"""["']bf16["']\s*:\s*(torch\.bfloat16|["']bfloat16["'])""")
    copies = [str(p.relative_to(ROOT)) for d in ("evf_sam", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py")
              if pattern.search(p.read_text()) and p.name != "precision.py"]
    assert copies == []
