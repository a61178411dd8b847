"""The activation store: writer round trip, random access, ordered and shuffled iteration
(every row exactly once, seeded, exact resume by start_batch), verify, locking and
failing writes that leave the store as it was."""
import errno
import json
import os

import pytest
import torch

import actspace as acts
from actspace import _io
from actspace.capture.writer import StoreWriter

D = 12


def make_store(path, doc_lens=(5, 9, 1, 14, 7, 3, 11, 6, 8, 2), shard_rows=16,
               dtype=torch.float32):
    """Writes documents of the given lengths; returns the concatenated rows."""
    w = StoreWriter(path, d=D, dtype=dtype, shard_rows=shard_rows,
                    meta={"model": "m", "hookpoint": "h"})
    rows, toks, docs = [], [], []
    for doc, n in enumerate(doc_lens):
        x = torch.randn(n, D)
        t = torch.randint(0, 1000, (n,))
        w.append(x, t, torch.full((n,), doc), torch.arange(n), docs_end=doc + 1)
        rows.append(x.to(dtype))
        toks.append(t)
        docs.append(torch.full((n,), doc))
    w.close(complete=True)
    return torch.cat(rows), torch.cat(toks), torch.cat(docs)


def test_round_trip_and_random_access(tmp_path):
    x, t, doc = make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    assert len(s) == x.shape[0] == 66 and s.d == D and s.dtype == torch.float32
    assert len(s.shards) > 2                              # several shards
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["complete"] and man["docs_done"] == 10 and man["total_rows"] == 66
    assert sum(sh["rows"] for sh in man["shards"]) == 66
    for sh in man["shards"]:                              # shards end at document boundaries
        assert sh["first_doc"] <= sh["last_doc"]
    ends = torch.cumsum(torch.tensor([sh["rows"] for sh in man["shards"]]), 0)
    for e in ends[:-1].tolist():
        assert doc[e - 1] != doc[e]
    torch.testing.assert_close(s[:], x, rtol=0, atol=0)
    torch.testing.assert_close(s[13:40], x[13:40], rtol=0, atol=0)
    torch.testing.assert_close(s[-1], x[-1], rtol=0, atol=0)
    assert s[5:5].shape == (0, D)
    assert torch.equal(s.read(0, 66, "token_ids").long(), t)
    assert torch.equal(s.read(0, 66, "doc_ids"), doc)
    assert s.verify() == []
    assert not (tmp_path / "s" / ".lock").exists()
    with pytest.raises(IndexError):
        s.read(60, 70)
    with pytest.raises(ValueError, match="step 1"):
        s[0:10:2]


def test_bf16_store(tmp_path):
    x, _, _ = make_store(tmp_path / "s", dtype=torch.bfloat16)
    s = acts.ActivationStore.open(tmp_path / "s")
    assert s.dtype == torch.bfloat16
    b = next(s.iter_batches(8, dtype=torch.float32))
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, x[:8].float(), rtol=0, atol=0)


def test_ordered_iteration(tmp_path):
    x, _, _ = make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    batches = list(s.iter_batches(10))
    assert [b.shape[0] for b in batches] == [10] * 6 + [6]
    torch.testing.assert_close(torch.cat(batches), x, rtol=0, atol=0)
    assert len(list(s.iter_batches(10, drop_last=True))) == 6 == s.num_batches(10, True)


@pytest.mark.parametrize("buffer_size", [8, 32, 1000])
def test_shuffled_iteration_covers_each_row_once_and_is_seeded(tmp_path, buffer_size):
    make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    # random rows are distinct: identify each yielded row by its values
    ids_of = {tuple(r.tolist()): i for i, r in enumerate(s[:])}

    def order(seed):
        return [ids_of[tuple(r.tolist())] for b in s.iter_batches(
            8, shuffle=True, seed=seed, buffer_size=buffer_size) for r in b]

    a = order(0)
    assert sorted(a) == list(range(len(s)))
    assert a == order(0)
    assert a != order(1)
    assert a != list(range(len(s)))


def test_start_batch_resumes_exactly(tmp_path):
    make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    kw = dict(shuffle=True, seed=3, buffer_size=20)
    full = list(s.iter_batches(8, **kw))
    tail = list(s.iter_batches(8, start_batch=3, **kw))
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ordered = list(s.iter_batches(8, start_batch=5))
    torch.testing.assert_close(torch.cat(ordered), s[40:], rtol=0, atol=0)


def test_verify_names_corrupt_shard(tmp_path):
    make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    victim = s.shards[1]["file"]
    p = tmp_path / "s" / victim
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF                                      # flip bits in the tensor data
    p.write_bytes(bytes(data))
    assert s.verify() == [victim]
    os.unlink(tmp_path / "s" / s.shards[2]["file"])
    assert s.verify() == [victim, s.shards[2]["file"]]


def _writer(path, **kw):
    return StoreWriter(path, d=D, dtype=torch.float32, meta={"model": "m"}, **kw)


def test_lock_keeps_two_writers_of_one_process_apart(tmp_path):
    """flock: a second writer in the same process is refused; a lock file nobody holds
    (left by a killed writer, empty or not) is free; a writer that has created the lock
    file but not yet written its pid still holds it."""
    import fcntl

    w = _writer(tmp_path / "s")
    lock = tmp_path / "s" / ".lock"
    assert lock.read_text() == str(os.getpid())
    with pytest.raises(RuntimeError, match="another StoreWriter of this process"):
        _writer(tmp_path / "s")
    w.abort()
    assert not lock.exists()
    lock.write_text("1")                                  # a killed writer's leftover
    _writer(tmp_path / "s").close()
    lock.write_text("")
    fd = os.open(lock, os.O_RDWR)                         # a live writer before its pid
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RuntimeError, match="just starting"):
            _writer(tmp_path / "s")
    finally:
        os.close(fd)
    _writer(tmp_path / "s").close()


def test_lock_held_by_another_process_until_it_dies(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("import sys, time, torch\n"
            "from actspace.capture.writer import StoreWriter\n"
            "w = StoreWriter(sys.argv[1], d=12, dtype=torch.float32, meta={'model': 'm'})\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"running process {p.pid}"):
            _writer(tmp_path / "s")
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert (tmp_path / "s" / ".lock").exists()        # the kill released the flock
        _writer(tmp_path / "s").close()
    finally:
        p.kill()
        p.wait()


def test_resume_appends_only_new_documents(tmp_path):
    w = StoreWriter(tmp_path / "s", d=D, dtype=torch.float32, shard_rows=4, meta={"model": "m"})
    x = torch.randn(10, D)
    doc = torch.tensor([0] * 4 + [1] * 3 + [2] * 3)
    w.append(x[:7], torch.zeros(7), doc[:7], torch.arange(7), docs_end=2)
    w.abort()                                             # killed: docs 0 and 1 recorded
    w = StoreWriter(tmp_path / "s", d=D, dtype=torch.float32, shard_rows=4, meta={"model": "m"})
    assert w.docs_done == 2
    kept, _ = w.append(x, torch.zeros(10), doc, torch.arange(10), docs_end=3)
    assert kept.shape[0] == 3
    w.close(complete=True)
    torch.testing.assert_close(acts.ActivationStore.open(tmp_path / "s")[:], x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="d=12"):
        StoreWriter(tmp_path / "s", d=7, dtype=torch.float32, meta={"model": "m"})


def test_unwritable_folder_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create store directory"):
        StoreWriter(blocker / "s", d=D, dtype=torch.float32, meta={"model": "m"})


def test_full_disk_leaves_store_as_before(tmp_path, monkeypatch):
    w = StoreWriter(tmp_path / "s", d=D, dtype=torch.float32, shard_rows=4, meta={"model": "m"})
    w.append(torch.randn(5, D), torch.zeros(5), torch.zeros(5), torch.arange(5), docs_end=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and ".safetensors.tmp." in str(path):
            class Full:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    f.close()

                def write(self, data):
                    f.write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device")
            return Full()
        return f

    monkeypatch.setattr(_io, "open", full_disk, raising=False)
    with pytest.raises(OSError, match="disk is full"):
        w.append(torch.randn(6, D), torch.zeros(6), torch.ones(6), torch.arange(6), docs_end=2)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert after == before                                # no partial shard, same manifest
    s = acts.ActivationStore.open(tmp_path / "s")
    assert len(s) == 5 and s.verify() == []
    w.abort()


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no activation store"):
        acts.ActivationStore.open(tmp_path)
    make_store(tmp_path / "a")
    make_store(tmp_path / "b")
    with pytest.raises(ValueError, match="several stores"):
        acts.ActivationStore.open(tmp_path)


def test_shuffled_iteration_keeps_a_bounded_cache(tmp_path, monkeypatch):
    """The shard cache of a shuffled pass holds at most buffer_size + one shard of rows
    (a tiny last shard must not lift the bound to the whole store) and is gone when the
    iterator finishes."""
    import gc
    import weakref

    from actspace.capture import store as store_mod

    w = StoreWriter(tmp_path / "s", d=4, dtype=torch.float32, shard_rows=100,
                    meta={"model": "m"})
    for doc in range(60):                                 # 60 shards of 100 rows ...
        w.append(torch.randn(100, 4), torch.zeros(100), torch.full((100,), doc),
                 torch.arange(100), docs_end=doc + 1)
    w.append(torch.randn(1, 4), torch.zeros(1), torch.full((1,), 60), torch.arange(1),
             docs_end=61)                                 # ... and one of 1 row
    w.close(complete=True)
    s = acts.ActivationStore.open(tmp_path / "s")
    assert len(s.shards) == 61
    caches, peak = [], [0]

    class Counting(store_mod._ShardCache):
        def __init__(self, *a):
            super().__init__(*a)
            caches.append(weakref.ref(self))

        def get(self, i):
            x = super().get(i)
            peak[0] = max(peak[0], self.rows)
            return x

    monkeypatch.setattr(store_mod, "_ShardCache", Counting)
    n = sum(b.shape[0] for b in s.iter_batches(50, shuffle=True, buffer_size=1000))
    assert n == len(s) == 6001
    assert 0 < peak[0] <= 1000 + 100
    gc.collect()
    assert len(caches) == 1 and caches[0]() is None      # dropped with the iterator


def test_pickle_after_reads(tmp_path):
    """A store that has read (open safetensors handles) pickles, e.g. into DataLoader
    workers started by spawn, and reads the same afterwards."""
    import pickle

    x, _, _ = make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    assert torch.equal(s[:], x)
    list(s.iter_batches(8, shuffle=True, buffer_size=16))
    t = pickle.loads(pickle.dumps(s))
    assert torch.equal(t[:], x) and len(t) == len(s)
    assert torch.equal(t.read(0, len(t), "doc_ids"), s.read(0, len(s), "doc_ids"))


def test_read_dtypes_same_when_empty(tmp_path):
    make_store(tmp_path / "s")
    s = acts.ActivationStore.open(tmp_path / "s")
    for field in ("acts", "token_ids", "doc_ids", "positions"):
        full, empty = s.read(0, 3, field), s.read(3, 3, field)
        assert empty.dtype == full.dtype and empty.shape[0] == 0, field
    with pytest.raises(ValueError, match="field must be"):
        s.read(0, 1, "nope")
