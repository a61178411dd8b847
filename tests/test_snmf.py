"""SNMF: recovery of a planted semi-NMF factorisation, batched vs full fit, the shared
interface (encode/decode/save/load) and input checks."""
from __future__ import annotations

import pytest
import torch

import actspace as acts
from actspace.decompose.snmf import SNMF


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(N=1200, r=6, d=24, density=0.15, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(r, d, generator=g, dtype=torch.float64)
    D /= D.norm(dim=1, keepdim=True)
    Z = torch.rand(N, r, generator=g, dtype=torch.float64) * (
        torch.rand(N, r, generator=g) < density)
    return (Z @ D).to(dtype), Z, D


def rel_err(x, m):
    x64 = x.double()
    return ((x64 - m.decode(m.encode(x)).double()).norm() / x64.norm()).item()


def test_recovers_planted_factorisation():
    X, Z, D = planted(dtype=torch.float64)
    m = SNMF(6, dtype=torch.float64).fit(X, n_iter=60)
    h = m.history_
    assert h[-1] < 1e-3 and h[-1] < 0.1 * h[0]
    # monotone up to rounding: Z steps and the D solve each decrease the objective
    assert all(b <= a * (1 + 1e-6) for a, b in zip(h, h[1:]))
    cos = (m.D.double() @ D.T).max(0).values           # best learned atom per true atom
    assert cos.min() > 0.98
    z = m.encode(X)
    assert z.shape == (1200, 6) and (z >= 0).all()
    assert rel_err(X, m) < 1e-3
    # the dictionary is mixed sign, rows unit norm
    assert (m.D < 0).any() and (m.D > 0).any()
    torch.testing.assert_close(m.D.norm(dim=1), torch.ones(6, dtype=torch.float64))


def test_batched_fit_close_to_full_fit(tmp_path):
    X, _, D = planted(seed=1)
    full = SNMF(6).fit(X, n_iter=40)
    batched = SNMF(6).fit(list(X.split(300)), n_iter=25)
    also = SNMF(6).fit(X, n_iter=25, batch_size=300)
    torch.testing.assert_close(also.D, batched.D)         # tensor + batch_size == batch list

    class Store:                                          # the ActivationStore batch API
        def iter_batches(self, batch_size, shuffle=False):
            return ({"acts": b} for b in X.split(batch_size))
    store = SNMF(6).fit(Store(), n_iter=25, batch_size=300)
    torch.testing.assert_close(store.D, batched.D)
    from _saeeval_helpers import write_store                  # a real store on disk
    path, _ = write_store(tmp_path / "s", [{"acts": b, "doc_ids": torch.full((300,), i)}
                                           for i, b in enumerate(X.split(300))], 24)
    torch.testing.assert_close(SNMF(6).fit(str(path), n_iter=25, batch_size=300).D, batched.D)
    opened = acts.ActivationStore.open(path)
    torch.testing.assert_close(SNMF(6).fit(opened, n_iter=25, batch_size=300).D, batched.D)
    e_full, e_b = rel_err(X, full), rel_err(X, batched)
    assert e_b < 0.01 and e_full < 0.01
    # same atoms up to order
    assert (batched.D @ full.D.T).max(1).values.min() > 0.9
    assert batched.history_[-1] < batched.history_[0]


def test_l1_gives_sparser_codes():
    X, _, _ = planted(seed=2, density=0.3)
    plain = SNMF(6).fit(X, n_iter=30)
    sparse = SNMF(6, l1=0.05).fit(X, n_iter=30)
    frac = lambda m: (m.encode(X) > 1e-3).float().mean().item()  # noqa: E731
    assert frac(sparse) < frac(plain)
    assert rel_err(X, sparse) < 0.2


def test_save_load_round_trip(tmp_path):
    X, _, _ = planted(N=200, seed=3)
    m = SNMF(6, l1=0.01).fit(X, n_iter=10)
    m.save(tmp_path / "snmf")
    back = SNMF.load(tmp_path / "snmf")
    assert torch.equal(back.D, m.D) and back.l1 == m.l1 and back.history_ == m.history_
    torch.testing.assert_close(back.encode(X), m.encode(X))
    x_hat, z = back(X[:5])
    torch.testing.assert_close(x_hat, back.decode(z))


def test_bad_input():
    with pytest.raises(ValueError, match="n_components"):
        SNMF(0)
    with pytest.raises(ValueError, match="l1"):
        SNMF(3, l1=-1)
    m = SNMF(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.encode(torch.randn(4, 5))
    with pytest.raises(TypeError, match="data"):
        m.fit(torch.randn(10), n_iter=2)
    with pytest.raises(TypeError, match="re-iterable"):
        m.fit(iter([torch.randn(10, 5)]), n_iter=2)
    with pytest.raises(ValueError, match="n_components=3"):
        SNMF(3).fit(torch.randn(2, 5), n_iter=2)
    m.fit(torch.randn(20, 5), n_iter=2)
    with pytest.raises(ValueError, match="d=6"):
        m.encode(torch.randn(4, 6))
    with pytest.raises(ValueError, match="z must be"):
        m.decode(torch.randn(4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_gpu_matches_cpu():
    X, _, _ = planted(N=400, seed=4, dtype=torch.float64)
    cpu = SNMF(6, dtype=torch.float64).fit(X, n_iter=10)
    gpu = SNMF(6, dtype=torch.float64).fit(X.cuda(), n_iter=10)
    assert gpu.D.is_cuda
    torch.testing.assert_close(gpu.D.cpu(), cpu.D, rtol=1e-6, atol=1e-8)
