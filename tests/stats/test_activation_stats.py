"""ActivationStats against numpy float64: moments with planted outliers and non-finite
values, merge = whole, covariance views, power-law exponent, massive activations,
save/load and all_reduce."""
import math

import numpy as np
import pytest
import torch

import actspace as acts


def planted(n=3000, d=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + torch.linspace(-1, 1, d)
    if d > 20 and n > 1234:
        x[::97, 5] = 250.0                  # planted massive channel on a few tokens
        x[1234, 11] = -900.0                # one massive token
        x[:, 20] = torch.where(x[:, 20] > 0, x[:, 20], torch.zeros(()))  # ReLU-like zeros
    return x


def numpy_moments(x):
    x = x.astype(np.float64)
    m = x.mean(0)
    dev = x - m
    m2, m3, m4 = (dev**2).mean(0), (dev**3).mean(0), (dev**4).mean(0)
    return dict(mean=m, var=x.var(0, ddof=1), skew=m3 / m2**1.5, kurt=m4 / m2**2 - 3,
                min=x.min(0), max=x.max(0), absmax=np.abs(x).max(0),
                zero=(x == 0).mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moments_vs_numpy_float64(dtype):
    x = planted().to(dtype)
    st = acts.ActivationStats(x.shape[1], covariance=True)
    for part in x.split(701):                       # uneven batches
        st.update(part)
    ref = numpy_moments(x.double().numpy())
    close = dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(st.mean.numpy(), ref["mean"], **close)
    np.testing.assert_allclose(st.var.numpy(), ref["var"], rtol=1e-9)
    np.testing.assert_allclose(st.skewness.numpy(), ref["skew"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(st.kurtosis.numpy(), ref["kurt"], rtol=1e-7, atol=1e-9)
    for k in ("min", "max", "absmax"):
        np.testing.assert_array_equal(getattr(st, k).numpy(), ref[k])
    np.testing.assert_allclose(st.zero_fraction.numpy(), ref["zero"], rtol=1e-12)
    assert st.rows == x.shape[0] and int(st.nonfinite.sum()) == 0
    cov = np.cov(x.double().numpy(), rowvar=False)
    np.testing.assert_allclose(st.covariance().numpy(), cov, rtol=1e-9, atol=1e-9)
    norms = np.linalg.norm(x.double().numpy(), axis=1)
    ns = st.norm_stats
    # a token's norm is computed in float32 (its moments in float64)
    assert math.isclose(ns["mean"], norms.mean(), rel_tol=1e-6)
    assert math.isclose(ns["std"], norms.std(ddof=1), rel_tol=1e-5)
    assert ns["max"] == pytest.approx(norms.max(), rel=1e-6)


def test_nonfinite_counted_not_folded():
    x = planted(n=400, d=8)
    x[3, 2], x[7, 2], x[9, 4] = float("nan"), float("inf"), float("-inf")
    st = acts.ActivationStats(8, covariance=True)
    st.update(x)
    assert st.nonfinite.tolist() == [0, 0, 2, 0, 1, 0, 0, 0]
    col = x[:, 2].double().numpy()
    col = col[np.isfinite(col)]
    assert st.mean[2].item() == pytest.approx(col.mean(), rel=1e-12)
    assert st.count[2].item() == 398
    finite_rows = torch.isfinite(x).all(1)
    np.testing.assert_allclose(st.covariance().numpy(),
                               np.cov(x[finite_rows].double().numpy(), rowvar=False), rtol=1e-9)
    assert st.norm_stats["count"] == int(finite_rows.sum())


def test_merge_of_parts_equals_whole():
    x = planted()
    ids = torch.arange(x.shape[0]) % 1000
    whole = acts.ActivationStats(x.shape[1], covariance=True, top_k=8)
    whole.update(x, token_ids=ids)
    parts = [acts.ActivationStats(x.shape[1], covariance=True, top_k=8) for _ in range(3)]
    for st, a, b in zip(parts, (0, 1000, 1777), (1000, 1777, 3000)):
        st.update(x[a:b], token_ids=ids[a:b])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for k in ("mean", "var", "skewness", "kurtosis", "min", "max", "absmax", "zero_fraction"):
        torch.testing.assert_close(getattr(merged, k), getattr(whole, k), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(merged.covariance(), whole.covariance(), rtol=1e-10, atol=1e-10)
    assert merged.top_rows.tolist() == whole.top_rows.tolist()
    assert merged.top_tokens.tolist() == whole.top_tokens.tolist()
    with pytest.raises(ValueError, match="d=37"):
        merged.merge(acts.ActivationStats(5, covariance=True))


def test_power_law_alpha_recovers_planted_exponent():
    d, alpha = 64, 1.3
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    z = torch.randn(20000, d, dtype=torch.float64, generator=g)
    x = (z * lam.sqrt()) @ q.T
    st = acts.ActivationStats(d, covariance=True)
    for part in x.split(10000):
        st.update(part)
    assert st.power_law_alpha() == pytest.approx(alpha, abs=0.05)
    spec = st.spectrum()
    assert torch.all(spec[:-1] >= spec[1:])
    torch.testing.assert_close(spec, torch.linalg.eigvalsh(torch.cov(x.T)).flip(0),
                               rtol=1e-8, atol=1e-12)
    p = spec / spec.sum()
    assert st.effective_rank() == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert st.participation_ratio() == pytest.approx(float(spec.sum() ** 2 / (spec**2).sum()))
    with pytest.raises(ValueError, match="fit_range"):
        st.power_law_alpha((0.6, 0.2))


def test_massive_activations_found_with_token_ids():
    x = planted()
    ids = torch.arange(x.shape[0]) + 50000
    st = acts.ActivationStats(x.shape[1], top_k=16)
    for a in range(0, x.shape[0], 500):
        st.update(x[a:a + 500], token_ids=ids[a:a + 500])
    m = st.massive_activations(ratio=100)
    assert [c["channel"] for c in m["channels"]] == [11, 5]
    toks = m["tokens"]
    assert toks[0]["row"] == 1234 and toks[0]["token_id"] == 51234 and toks[0]["channel"] == 11
    assert toks[0]["value"] == 900.0
    assert len(toks) == 16                          # top_k tracked rows, ties: earlier first
    assert [t["row"] for t in toks[1:]] == list(range(0, x.shape[0], 97))[:15]
    assert all(t["channel"] == 5 for t in toks[1:])
    none = acts.ActivationStats(4)
    none.update(torch.randn(100, 4))
    assert none.massive_activations()["channels"] == []


def test_save_load_roundtrip(tmp_path):
    x = planted(n=500, d=9)
    st = acts.ActivationStats(9, covariance=True)
    st.update(x, token_ids=torch.arange(500))
    st.save(tmp_path / "s", extra={"docs_done": 3})
    back = acts.ActivationStats.load(tmp_path / "s.safetensors")
    assert back.meta["docs_done"] == 3 and back.rows == 500
    for k in ("mean", "var", "kurtosis", "absmax"):
        torch.testing.assert_close(getattr(back, k), getattr(st, k), rtol=0, atol=0)
    torch.testing.assert_close(back.covariance(), st.covariance(), rtol=0, atol=0)
    assert back.summary() == st.summary()


def test_bad_input():
    st = acts.ActivationStats(4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        st.update(torch.randn(3, 5))
    with pytest.raises(TypeError, match="float"):
        st.update(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="token_ids"):
        st.update(torch.randn(3, 4), token_ids=torch.arange(2))
    with pytest.raises(ValueError, match="d must be"):
        acts.ActivationStats(0)
    with pytest.raises(ValueError, match="covariance=True"):
        st.covariance()


def test_all_reduce_single_process_group(tmp_path):
    import torch.distributed as dist

    x = planted(n=300, d=6)
    st = acts.ActivationStats(6, covariance=True)
    st.update(x)
    assert st.all_reduce() is st                       # not initialised: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        before = st.mean.clone()
        st.all_reduce()
        torch.testing.assert_close(st.mean, before)
        assert st.rows == 300
    finally:
        dist.destroy_process_group()


def _rank_main(rank, world, init, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        x = planted(n=600, d=7)
        st = acts.ActivationStats(7, covariance=True)
        st.update(x[:200] if rank == 0 else x[200:])    # uneven parts: weights matter
        st.all_reduce()
        st.save(f"{out}/rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_processes_equals_whole(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2)
    whole = acts.ActivationStats(7, covariance=True)
    whole.update(planted(n=600, d=7))
    for r in range(2):
        st = acts.ActivationStats.load(tmp_path / f"rank{r}")
        assert st.rows == 600
        for k in ("mean", "var", "kurtosis", "max"):
            torch.testing.assert_close(getattr(st, k), getattr(whole, k), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(st.covariance(), whole.covariance(), rtol=1e-10, atol=1e-10)
    a, b = (acts.ActivationStats.load(tmp_path / f"rank{r}") for r in range(2))
    assert torch.equal(a.covariance(), b.covariance()) and torch.equal(a.mean, b.mean)


def test_summary_is_strict_json_when_empty_or_degenerate():
    """No rows (min/max of nothing, 0/0 means) and a constant channel (undefined kurtosis)
    give None, never NaN/Infinity, which json.dumps would write and JSON readers reject."""
    import json

    empty = acts.ActivationStats(4, covariance=True)
    s = empty.summary()
    json.dumps(s, allow_nan=False)
    assert s["rows"] == 0 and s["max_abs"] is None and s["norm"]["min"] is None
    x = torch.randn(50, 4)
    x[:, 1] = 3.0
    st = acts.ActivationStats(4)
    st.update(x)
    s = st.summary(ratio=2.0)
    json.dumps(s, allow_nan=False)
    assert s["rows"] == 50 and math.isfinite(s["mean_kurtosis"])


def test_stats_cli_on_a_store_it_cannot_write(tmp_path, monkeypatch, capsys):
    """The table is printed; the default JSON next to a read-only store is skipped with a
    note (exit 0); an explicit --json path is written."""
    import builtins
    import json
    import os

    from actspace import _io
    from actspace.capture.writer import StoreWriter
    from actspace.cli.main import main as cli

    store = tmp_path / "s"
    w = StoreWriter(store, d=4, dtype=torch.float32, meta={"model": "m", "hookpoint": "h"})
    w.track_stats()
    w.append(torch.randn(20, 4), torch.zeros(20), torch.zeros(20), torch.arange(20), 1)
    w.close(complete=True)
    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):
        if "w" in mode and os.path.dirname(str(path)) == str(store):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(_io, "open", read_only, raising=False)   # every write goes there
    assert cli(["stats", str(store)]) == 0
    out = capsys.readouterr()
    assert "rows (tokens)" in out.out and "pass --json PATH" in out.err
    assert not (store / "stats_summary.json").exists()
    assert cli(["stats", str(store), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == 20


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="needs a CUDA device"))])
def test_state_on_a_device_equals_cpu_and_merges_across(device):
    """device=: the state lives and updates there (batches from anywhere are copied);
    saving, to(), and merging with statistics on another device give the CPU results."""
    x = planted(n=500, d=9)
    ids = torch.arange(500)
    cpu = acts.ActivationStats(9, covariance=True, top_k=8)
    cpu.update(x, ids)
    dev = acts.ActivationStats(9, covariance=True, top_k=8, device=device)
    dev.update(x[:200], ids[:200])                   # a CPU batch into a device state
    other = acts.ActivationStats(9, covariance=True, top_k=8)
    other.update(x[200:], ids[200:])
    dev.merge(other)                                 # CPU statistics merged into it
    assert dev.mean.device.type == device and dev.covariance().device.type == device
    back = dev.to("cpu")
    for k in ("mean", "var", "kurtosis", "max", "top_rows", "top_tokens"):
        torch.testing.assert_close(getattr(back, k), getattr(cpu, k), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back.covariance(), cpu.covariance(), rtol=1e-10, atol=1e-10)
    assert back.power_law_alpha() == pytest.approx(cpu.power_law_alpha(), rel=1e-9)
    assert dev.nbytes == cpu.nbytes
