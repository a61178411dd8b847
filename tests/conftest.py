"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (small models are faster so, and timings steadier)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
