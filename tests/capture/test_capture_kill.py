"""Kill-anywhere for capture_to_store: the job is "killed" at every file step (the N-th
os.replace, for every N a run makes), then rerun; each time the store must end with the
rows, statistics and document counts of an uninterrupted run, and no temporary file.

The kill is fault injection, not timing: from the N-th rename on, every rename fails and
no file is removed (a killed process removes nothing), and every writer's lock is dropped
as the kernel would drop it."""
import os

import pytest
import torch

import actspace as acts
from actspace.capture import writer as writer_mod
from actspace.capture.store import ActivationStore

pytest.importorskip("transformers")
from _models import minilm_dir  # noqa: E402

HPS = ["encoder.layer.0", "encoder.layer.1"]
KW = dict(batch_size=2, max_length=16, shard_rows=12, progress=False, covariance=True)
REAL_REPLACE, REAL_UNLINK = os.replace, os.unlink


class Killed(BaseException):
    """The process died here (BaseException: no `except Exception` handler swallows it)."""


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer BERT of width 16, run on one thread (tens of tiny forwards: threads only
    contend)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64)).eval()
    yield model, tok
    torch.set_num_threads(threads)


def texts(n=5):
    from pydoc_data.topics import topics

    return [topics[k][:60 + 37 * i].replace("\n", " ") for i, k in enumerate(sorted(topics)[:n])]


class Kill:
    """os.replace / os.unlink for a process killed before its n-th rename."""

    def __init__(self, n: int):
        self.n, self.calls, self.dead = n, 0, False

    def replace(self, src, dst):
        if not self.dead:
            self.calls += 1
            self.dead = self.calls == self.n
            if self.dead:
                raise Killed(f"killed before renaming {dst}")
        if self.dead:                       # the cleanup paths of a dead process never run
            raise OSError(5, "the process is dead")
        return REAL_REPLACE(src, dst)

    def unlink(self, path, *a, **k):
        if not self.dead:
            return REAL_UNLINK(path, *a, **k)


def run_killed(model, tok, out, n, monkeypatch) -> bool:
    """One capture killed before its n-th rename; False when the run makes fewer renames
    (it finished). Locks of every writer are released afterwards, as at a process's death."""
    kill, writers = Kill(n), []
    real_init = writer_mod.StoreWriter.__init__

    def init(self, *a, **k):
        writers.append(self)
        real_init(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", kill.replace)
        m.setattr(os, "unlink", kill.unlink)
        m.setattr(writer_mod.StoreWriter, "__init__", init)
        try:
            acts.capture_to_store(model, tok, texts(), HPS, out, **KW)
        except Killed:
            pass
        except OSError:
            assert kill.dead                 # a cleanup path that ran after the kill
        for w in writers:
            w._unlock()
    return kill.dead


def assert_equal_to(out, whole):
    for h in HPS:
        a, b = ActivationStore.open(out / h), ActivationStore.open(whole / h)
        assert a.manifest["complete"] and a.verify() == [], h
        assert len(a) == len(b) and a.manifest["docs_done"] == b.manifest["docs_done"], h
        for f in ("token_ids", "doc_ids", "positions"):
            assert torch.equal(a.read(0, len(a), f), b.read(0, len(b), f)), (h, f)
        torch.testing.assert_close(a[:], b[:], rtol=1e-5, atol=1e-5)
        sa, sb = a.stats, b.stats
        assert sa is not None and sa.rows == sb.rows == len(a), h
        assert torch.equal(sa.count, sb.count), h       # every row counted exactly once
        torch.testing.assert_close(sa.mean, sb.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(sa.var, sb.var, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(sa.covariance(), sb.covariance(), rtol=1e-6, atol=1e-7)
        assert a.manifest["counts"] == b.manifest["counts"], h
        leftovers = [p for p in os.listdir(out / h) if ".tmp" in p]
        assert leftovers == [], (h, leftovers)


def test_killed_at_every_rename_then_resumed(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    whole = tmp_path / "whole"
    acts.capture_to_store(model, tok, texts(), HPS, whole, **KW)
    assert len(ActivationStore.open(whole / HPS[0]).shards) >= 3
    # a checkpoint at every flush: the stats pair is renamed between shards, where a kill
    # once left new tensors beside an old row count (rows then counted twice)
    monkeypatch.setattr(writer_mod.StoreWriter, "stats_checkpoint_ratio", 0)
    n = 0
    while True:
        n += 1
        out = tmp_path / f"k{n}"
        if not run_killed(model, tok, out, n, monkeypatch):
            break                            # the run made fewer than n renames
        acts.capture_to_store(model, tok, texts(), HPS, out, **KW)
        assert_equal_to(out, whole)
    assert n > 20                            # every step of several shards was a kill point


def test_kill_between_stats_tensors_and_json_counts_rows_once(tiny, tmp_path, monkeypatch):
    """The statistics checkpoint is one unit: killed after its tensors were renamed but
    before its .json, a resume neither folds shards in twice nor loses any."""
    model, tok = tiny
    whole = tmp_path / "whole"
    acts.capture_to_store(model, tok, texts(), HPS, whole, **KW)
    monkeypatch.setattr(writer_mod.StoreWriter, "stats_checkpoint_ratio", 0)
    seen = {"stats": 0}
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst).endswith("stats.json"):
            seen["stats"] += 1
            if seen["stats"] == 3:             # the third checkpoint: tensors new, json old
                raise Killed("killed between the stats renames")
        return real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(writer_mod.StoreWriter, "abort", writer_mod.StoreWriter._unlock)
        with pytest.raises(Killed):
            acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "x", **KW)
    acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "x", **KW)
    assert_equal_to(tmp_path / "x", whole)


def test_counts_cover_the_whole_store_after_resume(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    whole = tmp_path / "whole"
    acts.capture_to_store(model, tok, texts(), HPS, whole, **KW)
    assert ActivationStore.open(whole / HPS[0]).manifest["counts"]["documents"] == 5

    def dying():
        for i, t in enumerate(texts()):
            if i == 3:
                raise Killed("killed while reading document 3")
            yield t
    with pytest.raises(Killed):
        acts.capture_to_store(model, tok, dying(), HPS, tmp_path / "x", **KW)
    r = acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "x", **KW)
    assert r["resumed_from_doc"] > 0 and r["documents"] < 5     # this run's part
    for h in HPS:
        man = ActivationStore.open(tmp_path / "x" / h).manifest
        assert man["counts"] == ActivationStore.open(whole / h).manifest["counts"], h


def test_resume_removes_dead_writers_temporaries(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "x"
    acts.capture_to_store(model, tok, texts(3), HPS, out, **KW)
    store = out / HPS[0]
    dead = 2 ** 22 + 12345                  # above pid_max on Linux by default: never alive
    names = [f"manifest.json.tmp.{dead}", f"shard-000009.safetensors.tmp.{dead}",
             f"stats.safetensors.tmp.{dead}", "manifest.json.tmp",
             f"shard-000001.safetensors.tmp.{os.getppid()}"]       # a live process's
    for name in names:
        (store / name).write_bytes(b"partial")
    acts.capture_to_store(model, tok, texts(3), HPS, out, **KW)   # complete: no writer
    writer_mod.StoreWriter(store, d=16, dtype=torch.float32,
                           meta={"model": "BertModel", "hookpoint": HPS[0]}).abort()
    left = sorted(p for p in os.listdir(store) if ".tmp" in p)
    assert left == [f"shard-000001.safetensors.tmp.{os.getppid()}"]
