"""Shared pytest fixtures. The tests mirror the package (tests/ops, tests/capture, ...); the
shared helpers (_models.py, _minilm.py ...) sit here and are importable from every folder."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


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
