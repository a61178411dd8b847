"""Capture, statistics and SAE training on 2 ranks of a real gloo process group (loopback
rendezvous, processes started by torch.multiprocessing) against single-process runs."""
import json
import os
import warnings

import pytest
import torch

import actspace as acts
from actspace import distributed as D

pytest.importorskip("transformers")
import _dist_helpers as H  # noqa: E402
from _models import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """Directory of a 2-layer random GPT-2 saved with the MiniLM tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return save_tiny(tmp_path_factory, "tinygpt2", lambda tok: GPT2LMHeadModel(GPT2Config(
        vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)))[2]


def _rows(store):
    """All rows of a store sorted by (doc_id, position): acts, token_ids, doc_ids, positions."""
    n = len(store)
    doc, pos = store.read(0, n, "doc_ids"), store.read(0, n, "positions").long()
    order = torch.argsort(doc * 10_000 + pos)
    return (store.read(0, n)[order], store.read(0, n, "token_ids")[order], doc[order],
            pos[order])


def _assert_stats_close(a, b, rtol=1e-6):
    for k in ("count", "mean", "m2", "m3", "m4", "min", "max", "absmax", "zeros", "nonfinite"):
        torch.testing.assert_close(a.moments[k].double(), b.moments[k].double(), rtol=rtol,
                                   atol=1e-9, msg=k)
    for k in a.norms:
        torch.testing.assert_close(a.norms[k].double(), b.norms[k].double(), rtol=rtol,
                                   atol=1e-9)
    assert a.rows == b.rows and a.cov_count == b.cov_count
    torch.testing.assert_close(a.covariance(), b.covariance(), rtol=rtol, atol=1e-9)
    torch.testing.assert_close(a.top_values, b.top_values)
    assert sorted(a.top_tokens.tolist()) == sorted(b.top_tokens.tolist())


def test_helpers_with_one_process():
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    D.barrier()
    assert [i for i in range(10) if D.owns(i, 1, 3)] == [1, 4, 7]
    assert [D.rank_share(10, r, 4) for r in range(4)] == [3, 3, 2, 2]
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    with D.launched():          # no torchrun environment: nothing initialised
        assert not D.is_distributed()


def test_store_layout_guards_and_manifest_merge(tmp_path):
    """A store of 2 ranks is refused to a single process and to 3 ranks; partial manifests
    merge into one (a rank with no rows included)."""
    from actspace.capture.ranks import RankStoreWriter, make_writer, merged_manifest

    meta = {"model": "m", "hookpoint": "h"}
    x = torch.randn(6, 3)
    for r in range(2):
        w = RankStoreWriter(tmp_path, rank=r, world=2, d=3, dtype=torch.float32, meta=meta)
        if r == 0:                                    # rank 1 owns no document
            w.append(x, torch.zeros(6, dtype=torch.int32), torch.tensor([0, 0, 2, 2, 2, 4]),
                     torch.arange(6), 5)
        w.close(complete=True, extra={"counts": {"documents": 3 - 2 * r}})
    with pytest.raises(ValueError, match="number of processes"):
        make_writer(tmp_path, d=3, dtype=torch.float32, meta=meta)
    with pytest.raises(ValueError, match="number of processes"):
        RankStoreWriter(tmp_path, rank=0, world=3, d=3, dtype=torch.float32, meta=meta)
    man = merged_manifest(str(tmp_path), 2)
    assert man["total_rows"] == 6 and man["complete"] and man["world_size"] == 2
    assert man["counts"] == {"documents": 4} and [s["file"] for s in man["shards"]] == \
        ["shard-r0-000000.safetensors"]
    store = acts.ActivationStore(str(tmp_path), man)
    torch.testing.assert_close(store[:], x)


def test_stats_all_reduce_equals_single_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(301, 6, generator=g) * torch.linspace(0.5, 3, 6) + 1
    x[17, 2] = 40.0                                   # a massive activation
    H.spawn(H.stats_body, x, str(tmp_path))
    ref = acts.ActivationStats(6, covariance=True, top_k=8)
    ref.update(x, token_ids=torch.arange(301))
    xd = x.double()
    per_rank = [acts.ActivationStats.load(tmp_path / f"stats.{r}") for r in range(2)]
    for st in per_rank:                               # every rank holds the global state
        _assert_stats_close(st, ref)
        torch.testing.assert_close(st.mean, xd.mean(0))
        torch.testing.assert_close(st.covariance(), torch.cov(xd.T))
    for k in per_rank[0].moments:                     # bit-identical across ranks
        assert torch.equal(per_rank[0].moments[k], per_rank[1].moments[k])


def test_capture_equals_single_process(tiny_gpt2, tmp_path):
    """A 2-rank capture killed after 5 documents and run again equals one process."""
    model, tok = H.load_tiny(tiny_gpt2)
    single = acts.capture_to_store(model, tok, H.texts(), H.HOOKPOINTS, tmp_path / "one",
                                   batch_size=3, max_length=48, shard_rows=40,
                                   covariance=True, progress=False)
    out = tmp_path / "two"
    H.spawn(H.capture_body, tiny_gpt2, str(out), 5)
    results = [torch.load(out / f"result.r2.{r}.pt") for r in range(2)]
    assert results[0] == results[1] and results[0]["resumed_from_doc"] == 0
    assert 0 < results[0]["tokens"] < single["tokens"]     # the counts cover the rerun
    capped = acts.ActivationStore.open(str(out) + "-capped")      # max_tokens split 51 + 50
    assert len(capped) == 101 and capped.manifest["complete"]
    parity = capped.read(0, 101, "doc_ids") % 2
    assert int((parity == 0).sum()) == 51 and int((parity == 1).sum()) == 50
    for h in H.HOOKPOINTS:
        one = acts.ActivationStore.open(single["stores"][h])
        two = acts.ActivationStore.open(results[0]["stores"][h])
        assert two.verify() == [] and len(two) == len(one)
        assert two.manifest["complete"] and two.manifest["world_size"] == 2
        assert two.manifest["docs_done"] == len(H.texts())
        assert two.manifest["docs_done_by_rank"] == [len(H.texts())] * 2
        files = [s["file"] for s in two.shards]
        assert any(f.startswith("shard-r0-") for f in files)
        assert any(f.startswith("shard-r1-") for f in files)
        for s in two.shards:                          # each shard holds one rank's documents
            rank = int(s["file"].split("-")[1][1:])
            docs = acts.ActivationStore(two.path, {"shards": [s]}).read(0, s["rows"],
                                                                        "doc_ids")
            assert bool((docs % 2 == rank).all())
        a1, t1, d1, p1 = _rows(one)
        a2, t2, d2, p2 = _rows(two)
        assert torch.equal(t1, t2) and torch.equal(d1, d2) and torch.equal(p1, p2)
        torch.testing.assert_close(a2, a1, rtol=1e-5, atol=1e-5)   # other batch padding
        st1, st2 = one.stats, two.stats
        assert st2.rows == len(two) == st1.rows
        # the stored statistics are those of the stored rows, and match single-process ones
        torch.testing.assert_close(st2.mean, two[:].double().mean(0))
        torch.testing.assert_close(st2.covariance(), torch.cov(two[:].double().T))
        torch.testing.assert_close(st2.mean, st1.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(st2.covariance(), st1.covariance(), rtol=1e-4, atol=1e-5)


def _store(path, x, shard_rows=97):
    from actspace.capture.writer import StoreWriter

    w = StoreWriter(path, d=x.shape[1], dtype=torch.float32, shard_rows=shard_rows,
                    meta={"model": "m", "hookpoint": "h"})
    n = x.shape[0]
    w.append(x, torch.zeros(n, dtype=torch.int32), torch.arange(n) // 7,
             torch.arange(n) % 7, n // 7 + 1)
    w.close(complete=True)
    return acts.ActivationStore.open(path)


def _sparse(N=1100, d=16, M=48, k=3):
    g = torch.Generator().manual_seed(1)
    Dm = torch.nn.functional.normalize(torch.randn(M, d, generator=g), dim=1)
    idx = torch.rand(N, M, generator=g).argsort(1)[:, :k]
    codes = torch.zeros(N, M).scatter_(1, idx, torch.rand(N, k, generator=g) * 2 + 0.5)
    return codes @ Dm + 0.2


@pytest.mark.parametrize("data_kind", ["store", "tensor"])
def test_training_matches_single_process(tmp_path, data_kind):
    from actspace.decompose.train import train_sae

    x = _sparse()
    if data_kind == "store":
        data_path = str(tmp_path / "store")
        data = _store(data_path, x)
        kw = dict(d_sae=64, k=4, batch_size=100, epochs=2, lr=3e-3, dead_tokens=100, log_every=1,
                  shuffle=True, seed=3, checkpoint_every=5)
    else:
        x[300, 5] = float("nan")                     # one rank sees it: all skip that batch
        data_path = str(tmp_path / "x.pt")
        torch.save(x, data_path)
        data = x
        kw = dict(d_sae=96, k=4, batch_size=64, steps=12, lr=3e-3, dead_tokens=64, log_every=1,
                  shuffle=True, seed=5, checkpoint_every=0, b_dec_init="median")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = train_sae(data, out_dir=str(tmp_path / "one"), progress=False, **kw)
        sae1, hist1 = res.sae, res.history
    out = tmp_path / "two"
    out.mkdir()
    # the store run is stopped at step 7 (rank 0's checkpoint) and resumed by both ranks
    H.spawn(H.train_body, data_kind, data_path, str(out), kw,
            7 if data_kind == "store" else None)
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in range(2))
    for k, v in r0["state"].items():                  # ranks stay identical
        assert torch.equal(v, r1["state"][k]), k
    for k, v in sae1.state_dict().items():            # and equal single-process training
        torch.testing.assert_close(r0["state"][k], v, rtol=2e-4, atol=2e-5, msg=k)
    assert len(r0["history"]) == len(hist1) and len(hist1) > 1
    for a, b in zip(r0["history"], hist1):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert a["skipped_nonfinite"] == b["skipped_nonfinite"]
        for k in ("fvu", "l0", "auxk", "loss", "dead_fraction"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["step"], k)
    assert any(h["auxk"] > 0 for h in hist1)          # dead-latent bookkeeping exercised
    assert hist1[-1]["skipped_nonfinite"] == (data_kind == "tensor")
    if kw["checkpoint_every"]:                        # rank 0 wrote the only checkpoint
        assert (out / "checkpoint.safetensors").exists() and (out / "sae").exists()
        loaded = acts.SAE.load(out / "sae")
        torch.testing.assert_close(loaded.W_dec, r0["state"]["W_dec"])


@pytest.mark.slow
def test_cli_under_torchrun(tiny_gpt2, tmp_path):
    """`torchrun --nproc-per-node 2 -m actspace.cli.main capture/train` end to end: the store
    equals the single-process CLI capture's, and the trained SAE the single-process one."""
    import subprocess
    import sys

    from actspace.cli.main import main as cli

    txt = tmp_path / "docs.txt"
    txt.write_text("\n".join(H.texts(8)) + "\n")
    cap = ["capture", tiny_gpt2, str(txt), "--layer", "1", "--batch-size", "3",
           "--max-length", "40", "--shard-rows", "50", "--no-progress"]
    trn = ["--k", "4", "--d-sae", "64", "--batch-size", "64", "--steps", "6", "--lr", "3e-3",
           "--quiet", "--checkpoint-every", "3"]
    assert cli(cap + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(H.free_port()),
           "-m", "actspace.cli.main"]
    for args in (cap + ["--out", str(tmp_path / "two")],
                 ["train", str(tmp_path / "two"), "--out", str(tmp_path / "sae2")] + trn,
                 ["train", str(tmp_path / "two"), "--out", str(tmp_path / "sae3"),
                  "--shard-latents"] + trn):
        p = subprocess.run(run + args, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count('"out"') == 1 or p.stdout.count('"stores"') == 1   # rank 0
    one, two = (acts.ActivationStore.open(tmp_path / n) for n in ("one", "two"))
    assert two.manifest["world_size"] == 2 and len(two) == len(one)
    a1, t1, d1, p1 = _rows(one)
    a2, t2, d2, p2 = _rows(two)
    assert torch.equal(d1, d2) and torch.equal(p1, p2) and torch.equal(t1, t2)
    torch.testing.assert_close(a2, a1, rtol=1e-5, atol=1e-5)
    # one process on the same store (same global batches) trains the same SAE
    assert cli(["train", str(tmp_path / "two"), "--out", str(tmp_path / "sae1")] + trn) == 0
    s1, s2, s3 = (acts.SAE.load(tmp_path / n / "sae") for n in ("sae1", "sae2", "sae3"))
    for k, v in s1.state_dict().items():
        torch.testing.assert_close(s2.state_dict()[k], v, rtol=2e-4, atol=2e-5, msg=k)
        torch.testing.assert_close(s3.state_dict()[k], v, rtol=2e-4, atol=2e-5, msg=k)
    assert sorted(p.name for p in (tmp_path / "sae3").glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.safetensors", "checkpoint.rank1-of-2.safetensors"]
    h1 = json.loads((tmp_path / "sae1" / "history.json").read_text())
    h2 = json.loads((tmp_path / "sae2" / "history.json").read_text())
    assert [h["tokens"] for h in h1] == [h["tokens"] for h in h2]
    assert h2[-1]["fvu"] == pytest.approx(h1[-1]["fvu"], rel=1e-3)


def test_every_kind_trains_identically_on_both_ranks(tmp_path):
    """batchtopk / relu / jumprelu (L0 coefficient and L0 target) / matryoshka / gated are
    not exact against one process (per-slice selection and penalties, see train_dist) but
    must keep every rank's SAE identical (jumprelu's L0-target thresholds are initialised
    from the whole first global batch, not from each rank's slice)."""
    H.spawn(H.kinds_body, str(tmp_path))
    assert (tmp_path / "kinds.ok").exists()


@pytest.mark.parametrize("kind", ["topk", "matryoshka"])
def test_many_hookpoints_on_the_fly_match_single_process(tiny_gpt2, tmp_path, kind):
    """train_sae(hookpoints=[2 hookpoints]) on the fly on 2 ranks trains the same SAEs as one
    process on the same global batches: exactly (to float rounding) for topk; for matryoshka
    (BatchTopK's k·N selection is per rank slice) every rank's SAEs stay identical and
    every logged FVU and L0 is within a few per cent of the single process's."""
    kw = dict(kind=kind, d_sae=48, k=4, batch_size=64, steps=6, lr=3e-3, dead_tokens=64,
              log_every=1, seed=3, checkpoint_every=0, max_length=48)
    if kind == "matryoshka":
        kw["prefixes"] = [12, 24]
    model, tok = H.load_tiny(tiny_gpt2)
    one = acts.train_sae(None, model=model, tokenizer=tok, texts=H.texts(),
                         hookpoints=H.HOOKPOINTS, progress=False, **kw)
    H.spawn(H.multi_body, tiny_gpt2, str(tmp_path), kw)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert set(r0["states"]) == set(H.HOOKPOINTS)
    for h in H.HOOKPOINTS:
        for k, v in r0["states"][h].items():          # ranks stay identical
            assert torch.equal(v, r1["states"][h][k]), (h, k)
    assert [(a["step"], a["hookpoint"], a["tokens"]) for a in r0["history"]] == \
        [(b["step"], b["hookpoint"], b["tokens"]) for b in one.history]
    if kind == "topk":
        for h, sae1 in one.by_hookpoint.items():
            for k, v in sae1.state_dict().items():
                torch.testing.assert_close(r0["states"][h][k], v, rtol=2e-4, atol=2e-5,
                                           msg=f"{h} {k}")
        for a, b in zip(r0["history"], one.history):
            for k in ("fvu", "l0", "auxk", "loss", "dead_fraction"):
                assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["step"], k)
    else:
        for a, b in zip(r0["history"], one.history):
            assert a["fvu"] == pytest.approx(b["fvu"], rel=0.05), (a, b)
            assert a["l0"] == pytest.approx(b["l0"], rel=1e-6), (a, b)   # k·N over the ranks


def test_latent_sharded_training_matches_single_process(tmp_path):
    """shard_latents=True on 2 ranks (61 latents: slices of 31 and 30; a sweep with k=4 and
    k=40 > a slice), killed at step 7 and resumed from each rank's slice checkpoint, trains
    the same SAEs as one process on the same batches, AuxK included."""
    from actspace.decompose.train import train_sae

    x = _sparse()
    data_path = str(tmp_path / "x.pt")
    torch.save(x, data_path)
    kw = dict(d_sae=61, k=[4, 40], batch_size=100, steps=11, lr=3e-3, dead_tokens=100,
              k_aux=8, log_every=1, shuffle=True, seed=3, checkpoint_every=7)
    torch.manual_seed(0)
    res = train_sae(x, out_dir=str(tmp_path / "one"), progress=False, **kw)
    saes1, hist1 = res.saes, res.history
    out = tmp_path / "two"
    out.mkdir()
    H.spawn(H.shard_body, data_path, str(out), kw, 7)
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in range(2))
    assert r0["shapes"] == {"sae0.W_enc": [31, 16], "sae1.W_enc": [31, 16]}
    assert r1["shapes"] == {"sae0.W_enc": [30, 16], "sae1.W_enc": [30, 16]}
    assert r1["states"] is None                 # the whole SAEs exist on rank 0 only
    for s, sae1 in enumerate(saes1):
        for k, v in sae1.state_dict().items():
            torch.testing.assert_close(r0["states"][s][k], v, rtol=2e-4, atol=2e-5, msg=k)
    assert len(r0["history"]) == len(hist1)
    for a, b in zip(r0["history"], hist1):
        assert (a["step"], a["sae"], a["d_sae"], a["k"]) == (b["step"], b["sae"], 61, b["k"])
        for k in ("fvu", "l0", "auxk", "loss", "dead_fraction"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["step"], k)
    assert any(h["auxk"] > 0 for h in hist1)
    loaded = acts.SAE.load(out / "sae_1")
    assert loaded.d_sae == 61 and loaded.k == 40
    torch.testing.assert_close(loaded.W_dec, r0["states"][1]["W_dec"])
    # a whole-SAE run refuses the sharded checkpoints instead of restarting silently
    with pytest.raises(ValueError, match="another layout"):
        train_sae(x, out_dir=str(out), progress=False, **kw)


def test_stores_in_lockstep_match_single_process(tmp_path):
    """train_sae(stores=[a, b]) (two sources of different widths read in lockstep) on 2
    ranks trains the same TopK SAEs as one process on the same global batches."""
    g = torch.Generator().manual_seed(4)
    data_path = str(tmp_path / "xs.pt")
    torch.save([_sparse(N=700), torch.randn(700, 24, generator=g) * 2 + 1], data_path)
    kw = dict(d_sae=160, k=4, batch_size=100, steps=6, lr=3e-3, dead_tokens=100, log_every=1,
              seed=2, checkpoint_every=0)
    one = acts.train_sae(None, stores=H.lockstep_sources(data_path), progress=False, **kw)
    out = tmp_path / "two"
    out.mkdir()
    H.spawn(H.stores_body, data_path, str(out), kw)
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in range(2))
    assert set(r0["states"]) == {"a", "b"}
    for h, sae1 in one.by_hookpoint.items():
        for k, v in sae1.state_dict().items():
            assert torch.equal(r0["states"][h][k], r1["states"][h][k]), (h, k)
            torch.testing.assert_close(r0["states"][h][k], v, rtol=2e-4, atol=2e-5,
                                       msg=f"{h} {k}")
    assert one.by_hookpoint["b"].d_in == 24
    for a, b in zip(r0["history"], one.history, strict=True):
        assert (a["step"], a["hookpoint"], a["tokens"]) == (b["step"], b["hookpoint"],
                                                            b["tokens"])
        for k in ("fvu", "auxk", "loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["step"], k)
    # AuxK on both parts: its denominator uses each part's own data-parallel loss scale
    assert {h["hookpoint"] for h in one.history if h["auxk"] > 0} == {"a", "b"}
