"""encode_store never loses a row silently: NaN/inf rows keep their row with an empty code,
are flagged and counted (shards, manifest, LatentStats) and skipped from the firing
statistics, also across a crash and resume; a value too large for float16 raises instead
of being stored as inf."""
from __future__ import annotations

import json

import pytest
import torch

from _saeeval_helpers import basis_sae, write_store
from actspace.cli.main import main
from actspace.decompose import latent_store as LS
from actspace.decompose.latents import encode_store
from actspace.stats.latent import LatentStats

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = {3: float("nan"), 17: float("inf"), 40: float("-inf")}    # row -> poison


def _store(root, big=None):
    """Two shards (25 + 20 rows, d=8); rows of BAD poisoned in one channel; row `big`
    scaled by 1e5 (a value float16 cannot hold)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(45, 8, generator=g)
    for r, v in BAD.items():
        x[r, 2] = v
    if big is not None:
        x[big] *= 1e5
    shards = [{"acts": a, "doc_ids": torch.full((a.shape[0],), i),
               "token_ids": torch.arange(a.shape[0]), "positions": torch.arange(a.shape[0])}
              for i, a in enumerate(x.split([25, 20]))]
    write_store(root, shards, d=8)
    return root, x


def _brute(sae, x):
    """Firing counts [M] and, per latent, the best (value, row) over finite rows only,
    from values rounded to float16 as stored; the rule: value > 0."""
    good = torch.isfinite(x).all(1)
    with torch.no_grad():
        c = sae.encode(x[good])
    rows = torch.nonzero(good).flatten()                            # global row of each
    v, ix = c.values.half().double(), c.indices.long()
    fired = (ix >= 0) & (v > 0)
    counts = torch.bincount(ix[fired], minlength=sae.d_sae)
    best = {}
    for n, j in zip(*torch.nonzero(fired, as_tuple=True)):
        m, val, row = int(ix[n, j]), float(v[n, j]), int(rows[n])
        if m not in best or (val, -row) > (best[m][0], -best[m][1]):
            best[m] = (val, row)
    return counts, best


def _check(st, sae, x):
    counts, best = _brute(sae, x)
    assert st.n_tokens == 45 - len(BAD) and st.n_nonfinite == len(BAD)
    assert st.next_token == 45
    assert torch.equal(st.counts, counts)
    torch.testing.assert_close(st.frequency, counts.double() / (45 - len(BAD)))
    for m, (val, row) in best.items():     # top tokens are global store rows
        assert int(st.top_tokens[m, 0]) == row and float(st.top_values[m, 0]) == val
    assert not set(st.top_tokens.flatten().tolist()) & set(BAD)


def test_nonfinite_rows_flagged_counted_and_skipped(tmp_path, capsys):
    store, x = _store(tmp_path / "acts")
    sae = basis_sae(8, k=3)
    st = encode_store(sae, store, tmp_path / "lat", batch_size=6)
    _check(st, sae, x)
    man = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert man["nonfinite_rows"] == 3 and [s["nonfinite_rows"] for s in man["shards"]] == [2, 1]
    from safetensors.torch import load_file
    lat = [load_file(str(tmp_path / "lat" / s["file"])) for s in man["shards"]]
    flags = torch.cat([s["nonfinite"] for s in lat])
    idx = torch.cat([s["indices"] for s in lat])
    vals = torch.cat([s["values"] for s in lat])
    assert torch.nonzero(flags).flatten().tolist() == sorted(BAD)
    assert (idx[flags] == -1).all() and (vals[flags] == 0).all()   # rows kept, codes empty
    assert torch.isfinite(vals.float()).all()
    back = LatentStats.load(tmp_path / "lat")
    assert back.n_nonfinite == 3 and back.n_tokens == 42
    # the CLI says so too
    sae.save(tmp_path / "sae")
    assert main(["encode", str(tmp_path / "sae"), str(store), str(tmp_path / "lat2"),
                 "--batch-size", "7", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "encoded 42 tokens" in out and "skipped 3 rows with NaN/inf" in out


def test_nonfinite_counts_survive_crash_and_resume(tmp_path, monkeypatch):
    store, x = _store(tmp_path / "acts")
    sae = basis_sae(8, k=3)
    real = LS.write_safetensors_checked
    calls = []

    def failing(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(path, tensors, metadata)
    monkeypatch.setattr(LS, "write_safetensors_checked", failing)
    with pytest.raises(KeyboardInterrupt):
        encode_store(sae, store, tmp_path / "lat", batch_size=6)
    man = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert man["nonfinite_rows"] == 2 and len(man["shards"]) == 1
    monkeypatch.setattr(LS, "write_safetensors_checked", real)
    st = encode_store(sae, store, tmp_path / "lat", batch_size=6)   # shard 0 from disk
    _check(st, sae, x)
    assert json.loads((tmp_path / "lat" / "manifest.json").read_text())["nonfinite_rows"] == 3


def test_float16_overflow_raises(tmp_path):
    store, x = _store(tmp_path / "acts", big=30)
    sae = basis_sae(8, k=3)
    with pytest.raises(ValueError, match=r"values_dtype=torch.bfloat16 or torch.float32") as e:
        encode_store(sae, store, tmp_path / "lat16", batch_size=6)
    assert "65504" in str(e.value)
    for dt in (torch.bfloat16, torch.float32):
        st = encode_store(sae, store, tmp_path / f"lat_{dt}", batch_size=6, values_dtype=dt)
        assert torch.isfinite(st.mean_activation).all() and st.top_values.max() > 6e4


def test_latent_stats_nonfinite_argument():
    v = torch.tensor([[1.0, 2.0], [3.0, 0.5], [float("inf"), 1.0]])
    ix = torch.tensor([[0, 1], [1, 2], [0, 2]], dtype=torch.int32)
    bad = torch.tensor([False, False, True])
    st = LatentStats(4, top_t=2).update((v, ix), nonfinite=bad)
    assert st.counts.tolist() == [1, 2, 1, 0] and st.n_tokens == 2 and st.n_nonfinite == 1
    assert st.next_token == 3 and torch.isfinite(st.top_values[st.top_tokens >= 0]).all()
    other = LatentStats(4, top_t=2).update((v[:1], ix[:1]), 3, nonfinite=torch.tensor([True]))
    st.merge(other)
    assert st.n_nonfinite == 2 and st.n_tokens == 2 and st.next_token == 4
    with pytest.raises(ValueError, match="nonfinite"):
        st.update((v, ix), nonfinite=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="nonfinite"):
        st.update((v, ix), nonfinite=torch.tensor([True]))
