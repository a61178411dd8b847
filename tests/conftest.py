"""Shared pytest fixtures."""
import os

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (small models are faster so, and timings steadier)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shard_reads(monkeypatch):
    """(store directory name, shard index) of every acts shard read through
    ActivationStore.shard: how tests see which shards a resume re-read."""
    from actspace.capture.store import ActivationStore

    seen = []
    real = ActivationStore.shard

    def shard(self, i, field="acts"):
        if field == "acts":
            seen.append((os.path.basename(self.path), i))
        return real(self, i, field)

    monkeypatch.setattr(ActivationStore, "shard", shard)
    return seen
