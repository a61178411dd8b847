"""capture_to_store and the capture/stats CLI on a tiny random BERT with the real MiniLM
tokenizer: stored rows equal a direct forward (no padding, no special tokens), windows and
truncation, max_tokens, text sources, and resume after a real kill."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import actspace as acts
from actspace.cli.main import main as cli

pytest.importorskip("transformers")
from _models import save_tiny  # noqa: E402


def texts(n=14):
    from pydoc_data.topics import topics

    return [topics[k][:400].replace("\n", " ") for k in sorted(topics)[:n]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, dir): 2-layer random BERT saved with the MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    return save_tiny(tmp_path_factory, "tinybert", lambda tok: BertModel(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128)))


def direct(model, tok, text, max_length, hookpoint):
    """Activations [T, d] of one unpadded document (truncated) and its special mask."""
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt",
              return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask")[0].bool()
    with torch.inference_mode(), acts.capture(model, hookpoint) as cap:
        model(**enc)
    return cap[hookpoint][0], enc["input_ids"][0], special


def test_job_equals_direct_forward(tiny, tmp_path):
    model, tok, _ = tiny
    docs = texts()
    hps = ["encoder.layer.1", "encoder.layer.0:input"]
    r = acts.capture_to_store(model, tok, docs, hps, tmp_path, batch_size=4, max_length=40,
                              shard_rows=50, covariance=True, progress=False)
    assert set(r["stores"]) == set(hps)
    assert r["documents"] == len(docs) and r["truncated"] > 0 and r["windowed"] == 0
    for h in hps:
        s = acts.ActivationStore.open(r["stores"][h])
        assert s.verify() == [] and len(s.shards) > 1 and s.hookpoint == h
        assert s.manifest["complete"] and s.manifest["docs_done"] == len(docs)
        want, want_tok, want_doc = [], [], []
        for i, t in enumerate(docs):
            a, ids, special = direct(model, tok, t, 40, h)
            want.append(a[~special])
            want_tok.append(ids[~special])
            want_doc.append(torch.full((int((~special).sum()),), i))
        want = torch.cat(want)
        assert len(s) == want.shape[0] == r["tokens"]
        torch.testing.assert_close(s[:], want, rtol=1e-5, atol=1e-5)   # padding differs
        assert torch.equal(s.read(0, len(s), "token_ids").long(), torch.cat(want_tok))
        assert torch.equal(s.read(0, len(s), "doc_ids"), torch.cat(want_doc))
        assert int(s.read(0, len(s), "positions").min()) == 1          # CLS left out
        st = s.stats
        ref = acts.ActivationStats(s.d, covariance=True)
        ref.update(s[:])
        torch.testing.assert_close(st.mean, ref.mean)
        torch.testing.assert_close(st.covariance(), ref.covariance())
        assert st.rows == len(s)


def test_windows_keep_every_token_once(tiny, tmp_path):
    model, tok, _ = tiny
    docs = texts(5)
    r = acts.capture_to_store(model, tok, docs, "encoder.layer.0", tmp_path, batch_size=3,
                              max_length=16, windows=True, progress=False)
    assert r["windowed"] == 5 and r["truncated"] == 0 and r["dropped_tokens"] == 0
    s = acts.ActivationStore.open(tmp_path)
    toks, doc = s.read(0, len(s), "token_ids").long(), s.read(0, len(s), "doc_ids")
    for i, t in enumerate(docs):
        assert toks[doc == i].tolist() == tok(t, add_special_tokens=False)["input_ids"]
    assert int(s.read(0, len(s), "positions").max()) <= 14


def test_keep_special_and_max_tokens(tiny, tmp_path):
    model, tok, _ = tiny
    docs = texts(6)
    r = acts.capture_to_store(model, tok, docs, "encoder.layer.0", tmp_path / "a", max_length=24,
                              keep_special_tokens=True, progress=False, stats=False)
    s = acts.ActivationStore.open(tmp_path / "a")
    assert len(s) == 24 * 6 and s.stats is None
    assert s.read(0, 1, "token_ids").item() == tok.cls_token_id
    r = acts.capture_to_store(model, tok, docs, "encoder.layer.0", tmp_path / "b", max_length=24,
                              max_tokens=50, batch_size=2, progress=False)
    s = acts.ActivationStore.open(tmp_path / "b")
    assert len(s) == 50 == r["tokens"] and s.manifest["complete"] and s.stats.rows == 50
    again = acts.capture_to_store(model, tok, docs, "encoder.layer.0", tmp_path / "b",
                                  max_length=24, max_tokens=50, progress=False)
    assert again["tokens"] == 0 and len(acts.ActivationStore.open(tmp_path / "b")) == 50


def test_cli_capture_and_stats_from_txt_and_jsonl(tiny, tmp_path, capsys):
    _, tok, mdir = tiny
    docs = texts(4)
    (tmp_path / "t.txt").write_text("\n\n".join(d[:100] + "\n" + d[100:200] for d in docs))
    with open(tmp_path / "t.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"body": d[:100] + " " + d[100:200]}) + "\n")
    base = [mdir, "--layer", "1", "--max-length", "32", "--no-progress"]  # base[1:]: options
    assert cli(["capture", mdir, str(tmp_path / "t.txt"), "--out", str(tmp_path / "o1")]
               + base[1:]) == 0
    assert cli(["capture", mdir, str(tmp_path / "t.jsonl"), "--field", "body", "--out",
                str(tmp_path / "o2")] + base[1:]) == 0
    a, b = (acts.ActivationStore.open(tmp_path / o) for o in ("o1", "o2"))
    assert a.hookpoint == "encoder.layer.1" and len(a) == len(b) > 0
    torch.testing.assert_close(a[:], b[:], rtol=0, atol=0)   # blank-line docs == jsonl docs
    capsys.readouterr()
    assert cli(["stats", a.path, "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "rows (tokens)" in out and "token norm" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows"] == len(a) and summary["store"]["hookpoint"] == "encoder.layer.1"
    assert cli(["capture", mdir, str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o3")]
               + base[1:]) == 2                            # missing field -> clean error


_JOB = textwrap.dedent("""
    import sys, time
    from transformers import AutoModel, AutoTokenizer
    import actspace as acts
    mdir, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from pydoc_data.topics import topics
    docs = [topics[k][:400].replace("\\n", " ") for k in sorted(topics)[:n]]
    def slow():                       # throttle so the parent can kill mid-run
        for d in docs:
            time.sleep(0.03)
            yield d
    m, t = AutoModel.from_pretrained(mdir), AutoTokenizer.from_pretrained(mdir)
    acts.capture_to_store(m, t, slow(), ["encoder.layer.1", "encoder.layer.0"], out,
                          batch_size=3, max_length=40, shard_rows=40, progress=False)
""")


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(tiny, tmp_path):
    from transformers import AutoModel

    _, tok, mdir = tiny
    model = AutoModel.from_pretrained(mdir).eval()       # same model name as the job's
    n = 60
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    out = tmp_path / "killed"
    man = out / "encoder.layer.1" / "manifest.json"
    proc = subprocess.Popen([sys.executable, str(script), mdir, str(out), str(n)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(json.loads(man.read_text())["shards"]) >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"job ended before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = acts.ActivationStore.open(out / "encoder.layer.1")
    assert killed.verify() == [] and not killed.manifest["complete"]
    assert 0 < killed.manifest["docs_done"] < n
    docs = texts(n)
    kw = dict(batch_size=3, max_length=40, shard_rows=40, progress=False)
    r = acts.capture_to_store(model, tok, docs, ["encoder.layer.1", "encoder.layer.0"], out, **kw)
    assert r["resumed_from_doc"] > 0
    acts.capture_to_store(model, tok, docs, ["encoder.layer.1", "encoder.layer.0"],
                          tmp_path / "whole", **kw)
    for h in ("encoder.layer.1", "encoder.layer.0"):
        a = acts.ActivationStore.open(out / h)
        b = acts.ActivationStore.open(tmp_path / "whole" / h)
        assert a.manifest["complete"] and a.verify() == [] and len(a) == len(b)
        for f in ("token_ids", "doc_ids", "positions"):
            assert torch.equal(a.read(0, len(a), f), b.read(0, len(b), f)), f
        torch.testing.assert_close(a[:], b[:], rtol=1e-5, atol=1e-5)
        sa, sb = a.stats, b.stats                           # stats rebuilt after the kill
        assert sa.rows == sb.rows == len(a)
        torch.testing.assert_close(sa.mean, sb.mean, rtol=1e-6, atol=1e-7)


def test_iter_texts_sources_and_errors(tmp_path):
    from actspace.capture.texts import iter_texts

    (tmp_path / "lines.txt").write_text("first doc\nsecond doc\n\n")
    assert list(iter_texts(tmp_path / "lines.txt")) == ["first doc", "second doc"]
    (tmp_path / "paras.txt").write_text("a\nb\n\nc\n")
    assert list(iter_texts(str(tmp_path / "paras.txt"))) == ["a b", "c"]
    assert list(iter_texts([{"text": "x"}, "y"])) == ["x", "y"]

    with pytest.raises(FileNotFoundError):
        list(iter_texts(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match=".txt or .jsonl"):
        list(iter_texts(tmp_path / "x.csv"))
    with pytest.raises(TypeError, match="document 1"):
        list(iter_texts(["ok", 3]))
    with pytest.raises(TypeError, match="iterable"):
        list(iter_texts(42))


def test_txt_modes_and_jsonl_errors(tmp_path):
    """.txt: explicit lines / paragraphs modes; auto = paragraphs when a blank line (also a
    whitespace-only one, also with CRLF line ends) separates text, else lines; .jsonl:
    a non-string field, a non-object line or broken JSON name path:line."""
    from actspace.capture.texts import iter_texts

    (tmp_path / "crlf.txt").write_bytes(b"para one line a\r\nline b\r\n\r\npara two\r\n")
    (tmp_path / "ws.txt").write_text("para one a\nline b\n  \t\npara two\n")
    (tmp_path / "lines.txt").write_text("\n  \nfirst doc\n second doc \n")
    paras = ["para one line a line b", "para two"]
    assert list(iter_texts(tmp_path / "crlf.txt")) == paras
    assert list(iter_texts(tmp_path / "ws.txt")) == ["para one a line b", "para two"]
    assert list(iter_texts(tmp_path / "lines.txt")) == ["first doc", "second doc"]
    assert list(iter_texts(tmp_path / "crlf.txt", txt_mode="lines")) == [
        "para one line a", "line b", "para two"]
    assert list(iter_texts(tmp_path / "lines.txt", txt_mode="paragraphs")) == [
        "first doc  second doc"]
    with pytest.raises(ValueError, match="txt_mode"):
        list(iter_texts(tmp_path / "ws.txt", txt_mode="words"))

    bad = tmp_path / "bad.jsonl"
    ok = '{"text": "ok"}\n'
    for body, err, what in ((ok + '\n{"text": 3}\n', TypeError, ":3: field 'text' is int"),
                            (ok + '["text"]\n', TypeError, ":2: expected a JSON object"),
                            (ok + '{"text": \n', ValueError, ":2: not valid JSON")):
        bad.write_text(body)
        with pytest.raises(err, match=f"bad.jsonl{what}"):
            list(iter_texts(bad))


def test_texts_from_hugging_face_datasets(tiny, tmp_path):
    """A real datasets.Dataset (its column, read lazily), its streaming form and a clear
    error for a DatasetDict or a missing column; capture from a Dataset equals capture
    from the same list of strings."""
    datasets = pytest.importorskip("datasets")
    from actspace.capture.texts import iter_texts

    docs = texts(5)
    ds = datasets.Dataset.from_dict({"body": docs, "n": list(range(5))})
    assert list(iter_texts(ds, field_name="body")) == docs
    assert list(iter_texts(ds.to_iterable_dataset(), field_name="body")) == docs
    with pytest.raises(TypeError, match="split"):
        list(iter_texts(datasets.DatasetDict({"train": ds}), field_name="body"))
    with pytest.raises(ValueError, match="field_name='text'.*'body', 'n'"):
        list(iter_texts(ds))
    model, tok, _ = tiny
    kw = dict(batch_size=2, max_length=32, stats=False, progress=False)
    a = acts.capture_to_store(model, tok, ds, "encoder.layer.1", tmp_path / "a",
                              field="body", **kw)
    b = acts.capture_to_store(model, tok, docs, "encoder.layer.1", tmp_path / "b", **kw)
    sa, sb = (acts.ActivationStore.open(r["stores"]["encoder.layer.1"]) for r in (a, b))
    assert len(sa) == len(sb) > 0
    assert torch.equal(sa[:], sb[:])
    assert torch.equal(sa.read(0, len(sa), "token_ids"), sb.read(0, len(sb), "token_ids"))


def test_job_on_decoder_right_padding(tiny, tmp_path):
    """A Llama-family model: right padding with the attention mask changes no stored row."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok, _ = tiny
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)).eval()
    docs = [d[:n] for d, n in zip(texts(5), (40, 120, 10, 200, 75))]
    r = acts.capture_to_store(model, tok, docs, "model.layers.1", tmp_path, batch_size=5,
                              max_length=32, progress=False)
    s = acts.ActivationStore.open(tmp_path)
    want = torch.cat([a[~sp] for a, _, sp in
                      (direct(model, tok, t, 32, "model.layers.1") for t in docs)])
    assert len(s) == want.shape[0] == r["tokens"]
    torch.testing.assert_close(s[:], want, rtol=1e-5, atol=1e-5)


def test_resume_refuses_other_tokenization(tiny, tmp_path):
    model, tok, _ = tiny
    acts.capture_to_store(model, tok, texts(3), "encoder.layer.0", tmp_path, max_length=24,
                          progress=False, max_tokens=20)
    with pytest.raises(ValueError, match="max_length=24"):
        acts.capture_to_store(model, tok, texts(3), "encoder.layer.0", tmp_path, max_length=32,
                              progress=False)
    assert not (tmp_path / "encoder.layer.0" / ".lock").exists()


def test_prefix_tokenization_equals_whole_text(tiny, tmp_path):
    """Truncation tokenizes only a whitespace-cut prefix of long documents: the stored
    tokens and activations equal those of tokenizing the whole text (count_dropped_tokens)."""
    model, tok, _ = tiny
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics) if len(topics[k]) > 3000][:6]
    docs.append("word " * 2000)            # long text of one repeated word
    docs.append(".".join("a" * 2500))      # long text without whitespace: tokenized whole
    kw = dict(batch_size=4, max_length=32, progress=False)
    fast = acts.capture_to_store(model, tok, docs, ["encoder.layer.1"], tmp_path / "a", **kw)
    full = acts.capture_to_store(model, tok, docs, ["encoder.layer.1"], tmp_path / "b",
                                 count_dropped_tokens=True, **kw)
    assert fast["truncated"] == full["truncated"] == len(docs)
    assert fast["dropped_tokens"] is None and full["dropped_tokens"] > 0
    a = acts.ActivationStore.open(fast["stores"]["encoder.layer.1"])
    b = acts.ActivationStore.open(full["stores"]["encoder.layer.1"])
    for field in ("token_ids", "doc_ids", "positions"):
        assert torch.equal(a.read(0, len(a), field),
                           b.read(0, len(b), field)), field
    torch.testing.assert_close(a[:], b[:], rtol=0, atol=0)
