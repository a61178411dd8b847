"""Statistics tracked by a StoreWriter: folded per recorded shard, checkpointed tagged with
what they cover, and restored on resume by re-reading only the shards recorded after the
checkpoint; the result equals an uninterrupted writer's statistics exactly."""
import shutil

import pytest
import torch

import actspace as acts
from actspace.capture.store import ActivationStore
from actspace.capture.writer import StoreWriter

D = 6
DOCS = [torch.randn(n, D, generator=torch.Generator().manual_seed(n)) for n in
        (5, 9, 3, 14, 7, 3, 11, 6, 8, 2, 12, 4)]


def _writer(path):
    return StoreWriter(path, d=D, dtype=torch.float32, shard_rows=10, meta={"model": "m"})


def _append(w, docs):
    for i in docs:
        x = DOCS[i]
        w.append(x, torch.full((len(x),), i), torch.full((len(x),), i), torch.arange(len(x)),
                 docs_end=i + 1)


def _indices(shard_reads):
    """Shard indices read (this file's stores are single directories)."""
    return [i for _, i in shard_reads]


def _same(a, b):
    for k in a.moments:
        assert torch.equal(a.moments[k], b.moments[k]), k
    assert a.rows == b.rows and torch.equal(a.top_rows, b.top_rows)
    torch.testing.assert_close(a.covariance(), b.covariance(), rtol=0, atol=0)


def test_resume_folds_only_shards_after_the_checkpoint(tmp_path, monkeypatch, shard_reads):
    whole = _writer(tmp_path / "whole")
    ref = whole.track_stats(covariance=True)
    _append(whole, range(12))
    whole.close(complete=True)

    monkeypatch.setattr(StoreWriter, "stats_checkpoint_ratio", 0)   # every flush
    w = _writer(tmp_path / "s")
    w.track_stats(covariance=True)
    _append(w, range(4))
    n_old = len(w.manifest["shards"])
    assert n_old >= 2 and acts.ActivationStats.load(tmp_path / "s" / "stats").meta[
        "shards"] == n_old
    old = {f: (tmp_path / "s" / f).read_bytes() for f in ("stats.json", "stats.safetensors")}
    _append(w, range(4, 9))
    w.abort()                             # the exception path checkpoints what is recorded
    n_now = len(w.manifest["shards"])
    assert n_now > n_old
    assert acts.ActivationStats.load(tmp_path / "s" / "stats").meta["shards"] == n_now
    for f, data in old.items():           # a kill after the shards, before the checkpoint
        (tmp_path / "s" / f).write_bytes(data)

    w = _writer(tmp_path / "s")
    st = w.track_stats(covariance=True)
    assert _indices(shard_reads) == list(range(n_old, n_now))   # only the missing shards
    assert acts.ActivationStats.load(tmp_path / "s" / "stats").meta["shards"] == n_now
    _append(w, range(12))                 # the rerun feeds every document again
    w.close(complete=True)
    s = ActivationStore.open(tmp_path / "s")
    assert len(s) == len(ActivationStore.open(tmp_path / "whole")) and st.rows == len(s)
    _same(st, ref)
    _same(s.stats, ref)


def test_checkpoint_of_other_shards_is_rebuilt(tmp_path, shard_reads):
    """A checkpoint whose last shard is not the manifest's (another store's stats copied
    in, or a stale file) is ignored: the statistics are rebuilt from every shard."""
    w = _writer(tmp_path / "a")
    w.track_stats()
    _append(w, range(6))
    w.abort()
    other = _writer(tmp_path / "b")
    other.track_stats()
    _append(other, range(6, 12))
    other.abort()
    for f in ("stats.json", "stats.safetensors"):
        shutil.copy(tmp_path / "b" / f, tmp_path / "a" / f)
    rows_b = ActivationStore.open(tmp_path / "b").manifest["total_rows"]
    w = _writer(tmp_path / "a")
    st = w.track_stats()
    n = len(w.manifest["shards"])
    assert _indices(shard_reads) == list(range(n))
    assert st.rows == w.manifest["total_rows"] != rows_b
    ref = acts.ActivationStats(D)
    ref.update(ActivationStore(tmp_path / "a", w.manifest)[:])
    torch.testing.assert_close(st.mean, ref.mean, rtol=1e-12, atol=1e-12)
    w.abort()
    shard_reads.clear()
    w = _writer(tmp_path / "a")                           # other settings: rebuilt
    assert w.track_stats(covariance=True).has_covariance
    assert _indices(shard_reads) == list(range(n))
    w.abort()
