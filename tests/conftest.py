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


_RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous():
    """In-process trainings / evaluations create (and destroy) a 1-rank process group of their own,
    setting RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT ... in os.environ (engine.distributed); each
    test starts without them and leaves none behind, so no later subprocess inherits half a rendezvous
    or reuses a port."""
    saved = {k: os.environ.pop(k) for k in _RENDEZVOUS_VARS if k in os.environ}
    yield
    for k in _RENDEZVOUS_VARS:
        os.environ.pop(k, None)
    os.environ.update(saved)
