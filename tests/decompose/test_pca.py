"""acts.PCA from the streaming covariance vs torch.linalg on the same data; its sign
convention, the shared decomposition interface, store paths, save/load checks."""
import pytest
import torch

import actspace as acts
from actspace.decompose.base import Decomposition, is_decomposition


def data(n=2000, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d, d, dtype=torch.float64, generator=g)
    scale = torch.logspace(1, -2, d, dtype=torch.float64)
    return ((torch.randn(n, d, dtype=torch.float64, generator=g) * scale) @ basis + 3.0).float()


def reference(x, k):
    """(components [k, d] in the documented sign convention, variance [k], ratio [k])."""
    xd = x.double()
    xc = xd - xd.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    var = s**2 / (x.shape[0] - 1)
    vh = vh[:k]
    # the largest-magnitude entry of each component is positive (PCA's docstring)
    vh = vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    return vh, var[:k], var[:k] / var.sum()


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
    # the sign convention is part of the contract: no sign alignment before comparing
    torch.testing.assert_close(pca.components_, comps, rtol=1e-7, atol=1e-7)
    top = pca.components_.gather(1, pca.components_.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
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
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["cfg.json",
                                                                   "pca.safetensors"]
    back = acts.PCA.load(tmp_path / "p")
    torch.testing.assert_close(back.transform(x), pca.transform(x), rtol=0, atol=0)
    assert back.n_samples_ == 500 and back.d_in == 10 and back.d_sae == 10


def test_loads_version1_pair(tmp_path):
    """Files written before PCA saved a directory: path.safetensors + path.json."""
    from actspace._io import save_pair

    pca = acts.PCA(3).fit(data(n=200, d=6))
    tensors = {"mean": pca.mean_, "components": pca.components_,
               "explained_variance": pca.explained_variance_,
               "explained_variance_ratio": pca.explained_variance_ratio_}
    save_pair(tmp_path / "old", tensors, {"format": "actspace.pca", "version": 1,
                                          "n_components": 3, "d": 6, "n_samples": 200})
    back = acts.PCA.load(tmp_path / "old.safetensors")
    assert torch.equal(back.components_, pca.components_) and back.n_samples_ == 200
    save_pair(tmp_path / "bad", dict(tensors, components=pca.components_[:2]),
              {"format": "actspace.pca", "version": 1, "n_components": 3, "d": 6,
               "n_samples": 200})
    with pytest.raises(ValueError, match=r"components has shape \[2, 6\].*\[3, 6\]"):
        acts.PCA.load(tmp_path / "bad")


def test_load_checks_shapes(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    acts.PCA(3).fit(data(n=200, d=6)).save(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "cfg.json").read_text())
    (tmp_path / "p" / "cfg.json").write_text(json.dumps(dict(cfg, d_in=7)))
    with pytest.raises(ValueError, match=r"mean has shape \[6\], the config says \[7\]"):
        acts.PCA.load(tmp_path / "p")
    (tmp_path / "p" / "cfg.json").write_text(json.dumps(cfg))
    t = load_file(tmp_path / "p" / "pca.safetensors")
    save_file({k: v for k, v in t.items() if k != "explained_variance"},
              tmp_path / "p" / "pca.safetensors")
    with pytest.raises(ValueError, match="'explained_variance' is missing"):
        acts.PCA.load(tmp_path / "p")
    (tmp_path / "p" / "cfg.json").write_text(json.dumps(dict(cfg, kind="snmf")))
    with pytest.raises(ValueError, match="not a pca"):
        acts.PCA.load(tmp_path / "p")


def test_shared_interface():
    x = data(n=300, d=8)
    pca = acts.PCA(3)
    assert isinstance(pca, Decomposition) and is_decomposition(pca)
    assert pca.d_in is None and pca.d_sae == 3 and acts.PCA().d_sae is None
    pca.fit(x)
    assert pca.d_in == 8 and pca.d_sae == 3
    x_hat, z = pca(x)                                      # Decomposition.__call__
    torch.testing.assert_close(x_hat, pca.decode(pca.encode(x)))
    assert z.shape == (300, 3)


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
    c = acts.PCA(3).fit(str(tmp_path / "s"), batch_size=70)       # a store path, as SNMF
    assert torch.equal(c.components_, a.components_)


def test_nonfinite_rows_left_out_and_counted():
    x = data(n=400, d=6)
    bad = x.clone()
    bad[7, 2], bad[100, 0] = float("nan"), float("inf")
    pca = acts.PCA(3).fit(bad, batch_size=128)
    keep = torch.ones(400, dtype=torch.bool)
    keep[[7, 100]] = False
    clean = acts.PCA(3).fit(x[keep], batch_size=128)
    assert pca.nonfinite_rows_ == 2 and clean.nonfinite_rows_ == 0
    assert pca.n_samples_ == 398
    torch.testing.assert_close(pca.components_, clean.components_, rtol=1e-9, atol=1e-9)


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
    with pytest.raises(TypeError, match="iterable of"):
        acts.PCA(2).fit(3)
    with pytest.raises(ValueError, match="batch_size"):
        acts.PCA(2).fit(data(n=10, d=5), batch_size=0)
