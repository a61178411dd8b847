"""Resuming capture_to_store: stores of one capture left out of step (a kill between two
writers' flushes, a full disk on one) end equal to an uninterrupted run, also with
max_tokens; statistics come back from their checkpoint reading only the shards recorded
after it; max_length is checked against the model and tokenizer; the caller's training
flags survive the job."""
import os
import shutil

import pytest
import torch

import actspace as acts
from actspace.capture.store import ActivationStore
from actspace.capture.writer import StoreWriter

pytest.importorskip("transformers")
from _models import minilm_dir  # noqa: E402

HPS = ["encoder.layer.0", "encoder.layer.1"]
KW = dict(batch_size=2, max_length=24, shard_rows=20, progress=False)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=128)).eval()
    return model, tok


def texts(n=14):
    from pydoc_data.topics import topics

    return [topics[k][:400].replace("\n", " ") for k in sorted(topics)[:n]]


def failing(n):
    """The documents, with the source dying before document n (a crash mid-run)."""
    for i, d in enumerate(texts()):
        if i == n:
            raise RuntimeError("killed")
        yield d


def crash(model, tok, out, n, **kw):
    with pytest.raises(RuntimeError, match="killed"):
        acts.capture_to_store(model, tok, failing(n), HPS, out, **KW, **kw)


def assert_same_stores(a_dir, b_dir, rtol=1e-6):
    for h in HPS:
        a, b = ActivationStore.open(a_dir / h), ActivationStore.open(b_dir / h)
        assert a.manifest["complete"] and a.verify() == [] and len(a) == len(b), h
        assert a.manifest["docs_done"] == b.manifest["docs_done"], h
        for f in ("token_ids", "doc_ids", "positions"):
            assert torch.equal(a.read(0, len(a), f), b.read(0, len(b), f)), (h, f)
        torch.testing.assert_close(a[:], b[:], rtol=1e-5, atol=1e-5)
        sa, sb = a.stats, b.stats
        assert sa.rows == sb.rows == len(a), h
        torch.testing.assert_close(sa.mean, sb.mean, rtol=rtol, atol=1e-9)
        torch.testing.assert_close(sa.var, sb.var, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("ahead", ["killed", "complete"])
def test_resume_with_max_tokens_from_out_of_step_stores(tiny, tmp_path, ahead):
    """layer.0 holds 8 documents (or is complete), layer.1 only 4: the resumed job spends
    the max_tokens budget from where layer.1 stands, and both end with the 250 rows of an
    uninterrupted run (not 176 and 162)."""
    model, tok = tiny
    kw = dict(max_tokens=250)
    x, y, whole = tmp_path / "x", tmp_path / "y", tmp_path / "whole"
    if ahead == "killed":
        crash(model, tok, x, 8, **kw)
    else:
        acts.capture_to_store(model, tok, texts(), HPS, x, **KW, **kw)
    crash(model, tok, y, 4, **kw)
    shutil.rmtree(x / HPS[1])                          # as if killed between the writers
    shutil.copytree(y / HPS[1], x / HPS[1])
    done = [ActivationStore.open(x / h).manifest["docs_done"] for h in HPS]
    assert done[0] > done[1] > 0
    r = acts.capture_to_store(model, tok, texts(), HPS, x, **KW, **kw)
    assert r["resumed_from_doc"] == done[1]
    acts.capture_to_store(model, tok, texts(), HPS, whole, **KW, **kw)
    assert len(ActivationStore.open(whole / HPS[0])) == 250
    assert_same_stores(x, whole)




def test_resume_reads_only_the_shards_after_the_stats_checkpoint(tiny, tmp_path, monkeypatch,
                                                                  shard_reads):
    model, tok = tiny
    kw = dict(covariance=True)
    real_save = StoreWriter.save_stats

    def save_first_two(self, stats=None):   # later checkpoints lost, as in a kill
        if len(self.manifest["shards"]) <= 2:
            real_save(self, stats)

    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "save_stats", save_first_two)
        m.setattr(StoreWriter, "stats_checkpoint_ratio", 0)   # checkpoint every flush
        crash(model, tok, tmp_path / "x", 10, **kw)
    recorded = {h: len(ActivationStore.open(tmp_path / "x" / h).shards) for h in HPS}
    assert min(recorded.values()) > 2
    crash(model, tok, tmp_path / "y", 10, **kw)               # checkpoints intact
    shard_reads.clear()
    acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "x", **KW, **kw)
    assert sorted(shard_reads) == sorted((h, i) for h in HPS for i in range(2, recorded[h]))
    shard_reads.clear()
    acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "y", **KW, **kw)
    assert shard_reads == []                                  # the crash path saved them
    acts.capture_to_store(model, tok, texts(), HPS, tmp_path / "whole", **KW, **kw)
    for out in ("x", "y"):
        assert_same_stores(tmp_path / out, tmp_path / "whole", rtol=1e-9)
        for h in HPS:
            a = ActivationStore.open(tmp_path / out / h).stats
            b = ActivationStore.open(tmp_path / "whole" / h).stats
            torch.testing.assert_close(a.covariance(), b.covariance(), rtol=1e-9, atol=1e-9)
            assert torch.equal(a.top_rows, b.top_rows)


def test_max_length_checked_and_training_flags_restored(tiny, tmp_path):
    model, tok = tiny
    try:
        model.train()
        model.encoder.layer[0].eval()                   # mixed on purpose
        flags = [m.training for m in model.modules()]
        with pytest.raises(ValueError, match=r"max_length=200 exceeds model\.config\."
                           r"max_position_embeddings=128, tokenizer\.model_max_length=512"):
            acts.capture_to_store(model, tok, texts(2), HPS, tmp_path / "a", max_length=200,
                                  progress=False)
        acts.capture_to_store(model, tok, texts(2), HPS, tmp_path / "b", **KW)
        assert [m.training for m in model.modules()] == flags
        # no max_length: 512 capped at the model's 128 positions, not an error
        acts.capture_to_store(model, tok, texts(2), HPS, tmp_path / "d", progress=False)
        assert ActivationStore.open(tmp_path / "d" / HPS[0]).manifest["config"][
            "max_length"] == 128
        crash(model, tok, tmp_path / "c", 1)
        assert [m.training for m in model.modules()] == flags
    finally:
        model.eval()
