"""LatentStats vs brute-force float64 counting; encode_store round trip and crash safety."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from _saeeval_helpers import basis_sae, random_store
from actspace.decompose import latent_store as LS
from actspace.decompose import latents as L
from actspace.decompose.latents import encode_store
from actspace.stats.latent import LatentStats


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny tensors: threads only add contention on a shared box
    yield
    torch.set_num_threads(n)


def random_code(N, k, M, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(M, generator=g)[:k] for _ in range(N)]).to(torch.int32)
    idx[torch.rand(N, k, generator=g) < 0.2] = -1
    # values on a coarse grid so ties happen and exercise the (value desc, token asc) order
    val = (torch.randint(-2, 40, (N, k), generator=g).float() / 8)
    return val, idx


def brute(codes, M, T, n_bins=32, lo=-4.0, hi=3.0):
    count = torch.zeros(M, dtype=torch.int64)
    s = torch.zeros(M, dtype=torch.float64)
    hist = torch.zeros(M, n_bins, dtype=torch.int64)
    ex = [[] for _ in range(M)]
    tok0 = 0
    for val, idx in codes:
        for n in range(val.shape[0]):
            for j in range(val.shape[1]):
                m, v = int(idx[n, j]), float(val[n, j])
                if m < 0 or not v > 0:
                    continue
                count[m] += 1
                s[m] += v
                b = int(min(max((torch.log10(torch.tensor(v, dtype=torch.float64)) - lo)
                                / (hi - lo) * n_bins // 1, 0), n_bins - 1))
                hist[m, b] += 1
                ex[m].append((-v, tok0 + n))
        tok0 += val.shape[0]
    tops = [sorted(e)[:T] for e in ex]
    return count, s, hist, tops


def check_against(st, codes, M, T):
    count, s, hist, tops = brute(codes, M, T)
    assert torch.equal(st.counts, count)
    torch.testing.assert_close(st.mean_activation, s / count.clamp_min(1), rtol=1e-12, atol=0)
    assert torch.equal(st.hist, hist)
    n_tok = sum(v.shape[0] for v, _ in codes)
    torch.testing.assert_close(st.frequency, count.double() / n_tok)
    for m in range(M):
        got = [(-v, t) for v, t in zip(st.top_values[m].tolist(), st.top_tokens[m].tolist())
               if t >= 0]
        assert got == tops[m], m
    assert torch.equal(st.dead(), count == 0)


def test_latent_stats_brute_force_and_merge(tmp_path):
    M, T, k = 37, 5, 6
    codes = [random_code(n, k, M, seed) for seed, n in enumerate((40, 13, 29))]
    whole = LatentStats(M, top_t=T)
    for v, i in codes:
        whole.update((v, i))                  # default offsets continue the token stream
    check_against(whole, codes, M, T)
    # parts updated with explicit global offsets, then merged (as separate workers would)
    offs = [0, 40, 53]
    parts = [LatentStats(M, top_t=T).update(c, o) for c, o in zip(codes, offs)]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    check_against(merged, codes, M, T)
    whole.save(tmp_path / "st")
    back = LatentStats.load(tmp_path / "st")
    check_against(back, codes, M, T)
    assert back.n_tokens == 82 and back.next_token == 82


def test_latent_stats_bad_input():
    with pytest.raises(ValueError, match="d_sae"):
        LatentStats(0)
    st = LatentStats(8, top_t=2)
    with pytest.raises(ValueError, match="values/indices"):
        st.update((torch.ones(3, 2), torch.zeros(3, 3, dtype=torch.int32)))
    with pytest.raises(ValueError, match="token_offset"):
        st.update((torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.int32)), -1)
    with pytest.raises(TypeError, match="code"):
        st.update(torch.ones(3, 2))
    with pytest.raises(ValueError, match="top_values"):
        st.merge(LatentStats(8, top_t=3))


def _load_shards(out):
    from safetensors.torch import load_file
    man = json.loads((out / "manifest.json").read_text())
    for s in man["shards"]:
        data = (out / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
    return man, [load_file(str(out / s["file"])) for s in man["shards"]]


def test_encode_store_round_trip(tmp_path):
    store, shards = random_store(tmp_path / "acts", d=16)
    sae = basis_sae(16, k=5, hookpoint="h")
    stats = encode_store(sae, store, tmp_path / "lat", batch_size=16, context=2, top_t=4)
    man, lat = _load_shards(tmp_path / "lat")
    assert man["rows"] == sum(s["acts"].shape[0] for s in shards) == 108
    assert [s["rows"] for s in man["shards"]] == [37, 50, 21]
    x = torch.cat([s["acts"] for s in shards])
    vals = torch.cat([s["values"] for s in lat])
    idx = torch.cat([s["indices"] for s in lat])
    assert vals.dtype == torch.float16 and idx.dtype == torch.int32 and idx.shape == (108, 5)
    from actspace.decompose.sae import SparseCode
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(SparseCode(vals.float(), idx, 32)), sae(x)[0],
                                   rtol=2e-3, atol=2e-3)
    for key in ("token_ids", "doc_ids", "positions"):
        assert torch.equal(torch.cat([s[key] for s in lat]), torch.cat([s[key] for s in shards]))
    with torch.no_grad():
        c = sae.encode(x)
    ref = LatentStats(32, top_t=4).update((c.values.half(), c.indices), 0)
    assert torch.equal(stats.counts, ref.counts) and torch.equal(stats.top_tokens, ref.top_tokens)
    back = LatentStats.load(tmp_path / "lat")
    assert torch.equal(back.counts, ref.counts)
    from actspace import ActivationStore          # an opened store works like its path
    encode_store(sae, ActivationStore.open(store), tmp_path / "lat2", batch_size=16, top_t=4)
    assert [s["sha256"] for s in _load_shards(tmp_path / "lat2")[0]["shards"]] == \
        [s["sha256"] for s in man["shards"]]
    # top examples carry the window of the same document around the token
    ex = json.loads((tmp_path / "lat" / "top_examples.json").read_text())
    tok_ids = torch.cat([s["token_ids"] for s in shards])
    docs = torch.cat([s["doc_ids"] for s in shards])
    assert set(ex) == {str(m) for m in torch.nonzero(ref.counts).flatten().tolist()}
    for lat_id, entries in ex.items():
        for e in entries:
            t = e["token"]
            window = [r for r in range(t - 2, t + 3) if 0 <= r < 108 and docs[r] == docs[t]]
            assert e["context_ids"] == tok_ids[window].tolist()
            assert e["context_ids"][e["context_index"]] == e["token_id"] == int(tok_ids[t])


def test_encode_store_crash_then_resume(tmp_path, monkeypatch):
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(20, 30, 25))
    sae = basis_sae(16, k=4)
    clean = encode_store(sae, store, tmp_path / "clean", batch_size=8)
    real = LS.write_safetensors_checked
    calls = []

    def failing(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:        # killed while writing the 2nd shard: only a temp file left
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        return real(path, tensors, metadata)

    monkeypatch.setattr(LS, "write_safetensors_checked", failing)
    with pytest.raises(KeyboardInterrupt):
        encode_store(sae, store, tmp_path / "lat", batch_size=8)
    man, lat = _load_shards(tmp_path / "lat")      # previous manifest valid, shas match
    assert man["rows"] == 20 and len(man["shards"]) == 1 and not man["complete"]
    assert man["format"] == "actspace.latent_store"
    monkeypatch.setattr(LS, "write_safetensors_checked", real)
    resumed = encode_store(sae, store, tmp_path / "lat", batch_size=8)
    man, lat = _load_shards(tmp_path / "lat")
    man_c, lat_c = _load_shards(tmp_path / "clean")
    assert man["complete"] and man_c["complete"]
    assert [s["sha256"] for s in man["shards"]] == [s["sha256"] for s in man_c["shards"]]
    for key in ("count", "sum", "hist", "top_values", "top_tokens"):
        assert torch.equal(resumed.state[key], clean.state[key]), key
    assert resumed.n_tokens == clean.n_tokens == 75
    # a different SAE or changed source data never mixes into an existing latent store
    with pytest.raises(ValueError, match="new directory"):
        encode_store(basis_sae(16, k=3), store, tmp_path / "lat")
    assert man["sae_sha256"] == L.sae_sha256(sae)
    other_sae = basis_sae(16, k=4, seed=1)       # same kind, d_sae and k; other weights
    with pytest.raises(ValueError, match="another SAE's latents"):
        encode_store(other_sae, store, tmp_path / "lat")
    with torch.no_grad():
        other_sae.load_state_dict(sae.state_dict())
        other_sae.b_enc[3] += 1e-3               # one weight nudged is another SAE too
    with pytest.raises(ValueError, match="another SAE's latents"):
        encode_store(other_sae, store, tmp_path / "lat")
    legacy = {k: v for k, v in man.items() if k != "sae_sha256"}
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="did not record"):
        encode_store(sae, store, tmp_path / "lat")
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(man))
    other, _ = random_store(tmp_path / "acts2", d=16, sizes=(20, 30, 25), seed=5)
    man = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    man["source"] = str(other.resolve())
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="different data"):
        encode_store(sae, other, tmp_path / "lat")
    # a latent shard corrupted on disk is detected, not silently counted
    man["source"] = str(store.resolve())
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(man))
    f = tmp_path / "lat" / man["shards"][1]["file"]
    data = f.read_bytes()             # flip the last 8 bytes (they may be zeros already)
    f.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    with pytest.raises(ValueError, match=f"{man['shards'][1]['file']}.* corrupt"):
        encode_store(sae, store, tmp_path / "lat")


def test_encode_store_empty_shard_and_padded_codes(tmp_path):
    """A store may hold an empty shard (the capture writer never writes one, another writer
    might); a non-TopK SAE's codes vary in width per batch and are padded with -1."""
    from actspace import SAE
    from actspace._io import write_json_atomic, write_safetensors_atomic
    store, shards = random_store(tmp_path / "acts", d=16, sizes=(9, 6))
    man = json.loads((store / "manifest.json").read_text())
    empty = {"acts": torch.zeros(0, 16), "token_ids": torch.zeros(0, dtype=torch.int32),
             "doc_ids": torch.zeros(0, dtype=torch.int64),
             "positions": torch.zeros(0, dtype=torch.int32)}
    sha = write_safetensors_atomic(store / "shard-empty.safetensors", empty)
    man["shards"].insert(1, {"file": "shard-empty.safetensors", "rows": 0, "sha256": sha})
    write_json_atomic(store / "manifest.json", man)
    sae = basis_sae(16, k=3)
    st = encode_store(sae, store, tmp_path / "lat", batch_size=4)
    man, lat = _load_shards(tmp_path / "lat")
    assert [s["rows"] for s in man["shards"]] == [9, 0, 6] and lat[1]["indices"].shape == (0, 3)
    with torch.no_grad():
        c = sae.encode(torch.cat([s["acts"] for s in shards]))
    ref = LatentStats(32).update((c.values.half(), c.indices), 0)
    assert torch.equal(st.counts, ref.counts) and torch.equal(st.top_tokens, ref.top_tokens)
    relu = SAE(16, 40, kind="relu")
    with torch.no_grad():
        relu.b_enc.fill_(-1.0)                 # sparse: few latents active per row
    st = encode_store(relu, store, tmp_path / "relu", batch_size=4)
    man, lat = _load_shards(tmp_path / "relu")
    assert man["k"] is None and lat[1]["indices"].shape == (0, 1)
    x = torch.cat([s["acts"] for s in shards])
    with torch.no_grad():
        dense = relu.encode(x).to_dense()
    for part, rows in zip((lat[0], lat[2]), dense.split([9, 6])):
        idx, vals = part["indices"], part["values"].float()
        assert idx.shape[1] == int((rows > 0).sum(1).max())    # as wide as the busiest row
        got = torch.zeros_like(rows).scatter_add_(1, idx.long().clamp_min(0),
                                                  torch.where(idx >= 0, vals, 0))
        torch.testing.assert_close(got, rows, rtol=1e-3, atol=1e-3)
    assert torch.equal(st.counts, (dense > 0).sum(0))


def test_encode_store_bad_input(tmp_path):
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(10,))
    with pytest.raises(ValueError, match="d="):
        encode_store(basis_sae(8, k=2), store, tmp_path / "o")
    with pytest.raises(ValueError, match="values_dtype"):
        encode_store(basis_sae(16, k=2), store, tmp_path / "o", values_dtype=torch.int8)
    with pytest.raises(FileNotFoundError, match="no activation store"):
        encode_store(basis_sae(16, k=2), tmp_path / "nothing", tmp_path / "o")
    with pytest.raises(TypeError, match="ActivationStore"):
        encode_store(basis_sae(16, k=2), [torch.randn(4, 16)], tmp_path / "o")
