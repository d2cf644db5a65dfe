import os

import pytest
import torch

import evf_sam.config  # noqa: F401  (registers the schemas configs/*.yaml extend, for tests that compose them)

# Tests run on 2 CPU cores next to other processes: keep intra-op threads small and results
# deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous(monkeypatch):
    """In-process evaluations create (and destroy) a process group, setting MASTER_ADDR / MASTER_PORT in
    os.environ; restored afterwards so that no later subprocess reuses the port."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
