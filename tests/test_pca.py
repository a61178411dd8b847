"""acts.PCA from the streaming covariance vs torch.linalg on the same data."""
import pytest
import torch

import actspace as acts


def data(n=2000, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d, d, dtype=torch.float64, generator=g)
    scale = torch.logspace(1, -2, d, dtype=torch.float64)
    return ((torch.randn(n, d, dtype=torch.float64, generator=g) * scale) @ basis + 3.0).float()


def reference(x, k):
    xd = x.double()
    xc = xd - xd.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    var = s**2 / (x.shape[0] - 1)
    return vh[:k], var[:k], var[:k] / var.sum()


def aligned(a, b):
    """b's rows with signs flipped to match a's."""
    return b * torch.sign((a * b).sum(1, keepdim=True))


@pytest.mark.parametrize("source", ["tensor", "batches", "stats"])
def test_pca_matches_svd(source):
    x = data()
    k = 6
    if source == "tensor":
        pca = acts.PCA(k).fit(x, batch_size=333)
    elif source == "batches":
        pca = acts.PCA(k).fit(iter(x.split(500)))
    else:
        st = acts.ActivationStats(x.shape[1], covariance=True)
        st.update(x)
        pca = acts.PCA.from_stats(st, k)
    comps, var, ratio = reference(x, k)
    assert pca.components_.shape == (k, x.shape[1])
    torch.testing.assert_close(pca.components_, aligned(pca.components_, comps),
                               rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(pca.explained_variance_, var, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pca.explained_variance_ratio_, ratio, rtol=1e-9, atol=1e-12)
    z = pca.encode(x)
    assert z.shape == (x.shape[0], k) and z.dtype == torch.float32
    zr = (x.double() - x.double().mean(0)) @ pca.components_.T
    torch.testing.assert_close(z.double(), zr, rtol=1e-4, atol=1e-4)


def test_full_rank_round_trip_and_save(tmp_path):
    x = data(n=500, d=10)
    pca = acts.PCA().fit(x)
    torch.testing.assert_close(pca.decode(pca.encode(x)), x, rtol=1e-4, atol=1e-4)
    assert pca.explained_variance_ratio_.sum().item() == pytest.approx(1.0)
    pca.save(tmp_path / "p")
    back = acts.PCA.load(tmp_path / "p.safetensors")
    torch.testing.assert_close(back.transform(x), pca.transform(x), rtol=0, atol=0)
    assert back.n_samples_ == 500


def test_fit_from_store(tmp_path):
    from actspace.capture.writer import StoreWriter

    x = data(n=300, d=8)
    w = StoreWriter(tmp_path / "s", d=8, dtype=torch.float32, shard_rows=64, meta={"model": "m"})
    for i in range(0, 300, 50):
        w.append(x[i:i + 50], torch.zeros(50), torch.full((50,), i), torch.arange(50), i + 1)
    w.close(complete=True)
    a = acts.PCA(3).fit(acts.ActivationStore.open(tmp_path / "s"), batch_size=70)
    b = acts.PCA(3).fit(x)
    torch.testing.assert_close(a.components_, b.components_, rtol=1e-9, atol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="n_components"):
        acts.PCA(0)
    with pytest.raises(ValueError, match="exceeds"):
        acts.PCA(30).fit(data(n=100, d=5))
    with pytest.raises(ValueError, match="not fitted"):
        acts.PCA(2).transform(torch.zeros(3, 4))
    pca = acts.PCA(2).fit(data(n=100, d=5))
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        pca.transform(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="empty"):
        acts.PCA(2).fit([])
