"""SNMF beyond the plain factorisation: non-finite rows, converged codes (encode agrees
with the fit's error, KKT conditions hold), hard sparsity (top-k codes, winner-take-all
atoms) with exact zeros, warm starts, device= and the shared interface."""
from __future__ import annotations

import pytest
import torch

from actspace.decompose.base import Decomposition, is_decomposition
from actspace.decompose.snmf import SNMF
from test_snmf import planted, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def dense(N=1500, d=32, seed=0):
    """Correlated Gaussian data: no exact factorisation, the optimum error is well above 0."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, d, generator=g) @ torch.randn(d, d, generator=g)


def poisoned(X, rows):
    bad = X.clone()
    for i, r in enumerate(rows):
        bad[r, i % X.shape[1]] = (float("nan"), float("inf"), -float("inf"))[i % 3]
    keep = torch.ones(X.shape[0], dtype=torch.bool)
    keep[list(rows)] = False
    return bad, keep


# ---------------------------------------------------------------------- non-finite rows
def test_nonfinite_rows_dropped_and_counted(tmp_path):
    X, _, _ = planted(N=600, seed=5)
    bad, keep = poisoned(X, [3, 250, 251, 599])
    full = SNMF(6).fit(bad, n_iter=15)
    assert full.nonfinite_rows_ == 4 and torch.isfinite(full.D).all()
    assert torch.equal(full.D, SNMF(6).fit(X[keep], n_iter=15).D)     # as if never there
    batches = list(bad.split(200))
    batched = SNMF(6).fit(batches, n_iter=10)
    clean = SNMF(6).fit([b[torch.isfinite(b).all(1)] for b in batches], n_iter=10)
    assert batched.nonfinite_rows_ == 4 and clean.nonfinite_rows_ == 0
    assert torch.equal(batched.D, clean.D)
    from _saeeval_helpers import write_store                            # a store on disk
    path, _ = write_store(tmp_path / "s", [{"acts": b, "doc_ids": torch.full((200,), i)}
                                           for i, b in enumerate(batches)], 24)
    stored = SNMF(6).fit(str(path), n_iter=10, batch_size=200)
    assert stored.nonfinite_rows_ == 4 and torch.equal(stored.D, clean.D)


def test_nothing_finite_is_an_error():
    X = torch.full((50, 8), float("nan"))
    with pytest.raises(ValueError, match=r"no finite rows.*50 rows with NaN or inf"):
        SNMF(3).fit(X, n_iter=2)
    with pytest.raises(ValueError, match=r"no finite rows.*50 rows"):
        SNMF(3).fit(list(X.split(20)), n_iter=2)


def test_encode_gives_nan_codes_for_nonfinite_rows():
    X, _, _ = planted(N=300, seed=6)
    m = SNMF(6).fit(X, n_iter=10)
    bad, keep = poisoned(X[:40], [0, 17])
    z = m.encode(bad)
    assert torch.isnan(z[~keep]).all() and torch.isfinite(z[keep]).all()
    torch.testing.assert_close(z[keep], m.encode(X[:40][keep]))


# ---------------------------------------------------------------------- converged codes
@pytest.mark.parametrize("batch_size", [None, 500])
@pytest.mark.parametrize("shape", ["under", "over"])
def test_encode_error_matches_fit_error(shape, batch_size):
    """The fit reports the error of its codes; encode on the same data must reproduce it, as
    both solve the same code problem to tolerance (with 10 multiplicative steps per pass in
    the fit and 100 in encode, encode's error was 1.8x the fit's). "over": r > d, where
    exact fits exist and the code problem is badly conditioned."""
    X, r = (dense(), 8) if shape == "under" else (dense(N=1000, d=16, seed=1), 24)
    m = SNMF(r).fit(X, n_iter=15, batch_size=batch_size)
    e = rel_err(X, m)
    assert 0.9 * m.history_[-1] <= e <= 1.1 * m.history_[-1]
    if shape == "under":                                   # converged: more steps barely help
        z = m.encode(X, tol=1e-9, max_steps=5000)
        assert e <= 1.01 * ((X - m.decode(z)).norm() / X.norm()).item()


@pytest.mark.parametrize("l1", [0.0, 0.5])
def test_codes_satisfy_kkt(l1):
    """Optimality of min ½‖x − zD‖² + λΣz, z ≥ 0: the gradient g = zDDᵀ − xDᵀ + λ is ≈ 0
    where z > 0 and ≥ ≈ 0 where z = 0."""
    X = dense(N=400, d=24, seed=2).double()
    m = SNMF(10, l1=l1, dtype=torch.float64).fit(X, n_iter=5)
    z = m.encode(X, tol=1e-8)
    g = z @ (m.D @ m.D.T) - X @ m.D.T + l1                  # [N, r]
    scale = (X @ m.D.T).abs().max()
    assert (g[z > 0].abs() < 1e-4 * scale).all()
    assert (g[z == 0] > -1e-4 * scale).all()
    assert (z == 0).any()                                   # the constraint is active


# ---------------------------------------------------------------------- hard sparsity
def test_topk_codes_have_exact_zeros():
    X, _, _ = planted(seed=7, density=0.3)
    m = SNMF(6, k=2).fit(X, n_iter=20)
    z = m.encode(X)
    nnz = (z != 0).sum(1)
    assert (nnz <= 2).all() and (nnz == 2).float().mean() > 0.5 and (z >= 0).all()
    assert rel_err(X, m) < 0.5
    # the l1 penalty alone also gives exact zeros (soft threshold), not just small values
    z1 = SNMF(6, l1=0.05).fit(X, n_iter=20).encode(X)
    assert (z1 == 0).float().mean() > 0.3


def test_dict_keep_winner_take_all_atoms():
    X, _, _ = planted(seed=8)                               # d = 24
    m = SNMF(6, dict_keep=0.25).fit(X, n_iter=20)
    nnz = (m.D != 0).sum(1)
    assert (nnz <= 6).all() and (nnz == 6).all()           # ceil(0.25 · 24) per atom
    torch.testing.assert_close(m.D.norm(dim=1), torch.ones(6))
    assert torch.isfinite(torch.tensor(m.history_)).all()
    assert rel_err(X, m) < 1.0


# ---------------------------------------------------------------------- refits, device
def test_refit_reinitialises_unless_warm_start():
    X, _, _ = planted(N=600, seed=9)
    Y, _, _ = planted(N=600, seed=10)
    m = SNMF(6).fit(X, n_iter=10)
    assert torch.equal(m.fit(Y, n_iter=10).D, SNMF(6).fit(Y, n_iter=10).D)
    first = SNMF(6).fit(Y, n_iter=5)
    h5 = first.history_[-1]
    first.fit(Y, n_iter=5, warm_start=True)
    assert first.history_[0] <= h5 * 1.01                  # continues where it stopped
    with pytest.raises(ValueError, match="d=8"):
        first.fit(torch.randn(50, 8), n_iter=2, warm_start=True)
    assert first.fit(torch.randn(50, 8), n_iter=2).d_in == 8


def test_device_argument_on_cpu(tmp_path):
    X, _, _ = planted(N=400, seed=11)
    from _saeeval_helpers import write_store
    path, _ = write_store(tmp_path / "s", [{"acts": b, "doc_ids": torch.full((100,), i)}
                                           for i, b in enumerate(X.split(100))], 24)
    a = SNMF(6).fit(str(path), n_iter=5, batch_size=100, device="cpu")
    b = SNMF(6).fit(X, n_iter=5, batch_size=100)
    assert a.D.device.type == "cpu" and torch.equal(a.D, b.D)
    z = a.encode(X.double(), device=torch.device("cpu"))    # any float dtype in
    assert z.dtype == torch.float32 and torch.equal(z, a.encode(X))


def test_shared_interface():
    X, _, _ = planted(N=300, seed=12)
    m = SNMF(6)
    assert isinstance(m, Decomposition) and is_decomposition(m)
    assert m.d_in is None and m.d_sae == 6
    m.fit(X, n_iter=5)
    assert m.d_in == 24 and m.d_sae == 6
    x_hat, z = m(X)                                         # Decomposition.__call__
    assert z.shape == (300, 6)
    torch.testing.assert_close(x_hat, m.decode(z))
