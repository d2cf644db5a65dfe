#!/usr/bin/env python
"""Inference benchmark: kept for old commands; the one script is benchmarks/bench_sam.py (same arguments).

    python benchmarks/bench_inference.py --size tiny      # == python benchmarks/bench_sam.py --size tiny
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sam import main  # noqa: E402

if __name__ == "__main__":
    main()
