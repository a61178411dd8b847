"""`actspace eval` end to end with a real SAE saved in the SAELens layout: on a store, and
on a store captured from the real MiniLM plus splicing into it."""
from __future__ import annotations

import json

import pytest
import torch

import actspace as acts
from _models import minilm_dir
from _saeeval_helpers import basis_sae, random_store
from actspace.cli.main import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_cli_store_only(tmp_path, capsys):
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(25, 30))
    basis_sae(16, k=16).save(tmp_path / "sae")
    assert main(["eval", str(tmp_path / "sae"), str(store), "--batch-size", "9"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["reconstruction"]["n_tokens"] == 55 and res["reconstruction"]["fvu"] < 1e-10
    assert res["k"] == 16 and res["d_sae"] == 32


def test_eval_cli_with_model(tmp_path):
    from transformers import AutoModel, AutoTokenizer
    path = minilm_dir()
    texts = ["the cat sat on the mat", "an SAE splices here"]
    hp = "encoder.layer.1"
    acts.capture_to_store(AutoModel.from_pretrained(path).eval(),
                          AutoTokenizer.from_pretrained(path), texts, hp, tmp_path / "acts",
                          stats=False, progress=False)
    basis_sae(384, k=32, hookpoint=hp).save(tmp_path / "sae")
    (tmp_path / "texts.txt").write_text("\n\n".join(texts) + "\n")
    out = tmp_path / "r.json"
    rc = main(["eval", str(tmp_path / "sae"), str(tmp_path / "acts"), "--model", path,
               "--texts", str(tmp_path / "texts.txt"), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    ds = res["downstream"]
    assert ds["task"] == "encoder" and ds["n_sequences"] == 2
    assert abs(ds["cosine_sae_with_error"] - 1) < 1e-9
    assert ds["hookpoint"] == hp
    n = len(acts.ActivationStore.open(tmp_path / "acts"))
    assert res["reconstruction"]["n_tokens"] == n > 0
    # the store holds no [CLS]/[SEP] (capture default): only its tokens are spliced
    assert ds["splice_special_tokens"] is False and ds["n_spliced_positions"] == n
    rc = main(["eval", str(tmp_path / "sae"), str(tmp_path / "acts"), "--model", path,
               "--texts", str(tmp_path / "texts.txt"), "--out", str(out),
               "--splice-special-tokens"])
    every = json.loads(out.read_text())["downstream"]
    assert rc == 0 and every["splice_special_tokens"] is True
    assert every["n_spliced_positions"] == n + 2 * len(texts)
    assert every["cosine_sae"] != ds["cosine_sae"]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_eval_cli_sae_on_device(tmp_path, capsys, monkeypatch, device):
    """--device places the SAE too (it was loaded on the CPU whatever --device said)."""
    import actspace.decompose.evaluate as E
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(25,))
    basis_sae(16, k=16).save(tmp_path / "sae")
    seen = {}
    real_load, real_eval = acts.SAE.load.__func__, E.evaluate_sae

    def load(cls, path, **kw):
        seen["load"] = kw
        return real_load(cls, path, **kw)

    def evaluate(sae, *a, **kw):
        seen["device"] = sae.device
        return real_eval(sae, *a, **kw)
    monkeypatch.setattr(acts.SAE, "load", classmethod(load))
    monkeypatch.setattr(E, "evaluate_sae", evaluate)
    assert main(["eval", str(tmp_path / "sae"), str(store), "--device", device]) == 0
    assert seen["load"].get("device") == device and seen["device"].type == device
    assert json.loads(capsys.readouterr().out)["reconstruction"]["fvu"] < 1e-10


def test_eval_cli_transcoder_on_two_stores(tmp_path, capsys):
    """A transcoder saved in the SAELens layout, evaluated on the two stores of one MiniLM
    capture (MLP input and output of a layer) and spliced into the model."""
    from transformers import AutoModel, AutoTokenizer
    path = minilm_dir()
    texts = ["the cat sat on the mat", "a transcoder maps one hookpoint to another"]
    hp_in, hp_out = "encoder.layer.1.attention.output", "encoder.layer.1.output"
    res = acts.capture_to_store(AutoModel.from_pretrained(path).eval(),
                                AutoTokenizer.from_pretrained(path), texts, [hp_in, hp_out],
                                tmp_path / "acts", stats=False, progress=False)
    x = acts.ActivationStore.open(res["stores"][hp_in])[:]
    y = acts.ActivationStore.open(res["stores"][hp_out])[:]
    d, M = 384, 256
    sae = acts.SAE(d, M, kind="topk", k=M, d_out=d, hookpoint=hp_in, hookpoint_out=hp_out)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(M, d, generator=torch.Generator().manual_seed(0)) / 20)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        h = torch.relu(x @ sae.W_enc.T)
        sae.W_dec.copy_(torch.linalg.lstsq(h.double(), y.double()).solution.float())
    sae.save(tmp_path / "tc")
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    assert main(["eval", str(tmp_path / "tc"), res["stores"][hp_in]]) == 2
    assert "--store-out is required" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "tc"), res["stores"][hp_in], "--store-out",
                 res["stores"][hp_out], "--model", path, "--texts",
                 str(tmp_path / "texts.txt")]) == 0
    out = json.loads(capsys.readouterr().out)
    rec, ds = out["reconstruction"], out["downstream"]
    assert rec["n_tokens"] == len(x) and out["d_out"] == d
    assert rec["fvu"] < 0.5
    assert ds["hookpoint"] == hp_in and ds["hookpoint_out"] == hp_out
    assert abs(ds["cosine_sae_with_error"] - 1) < 1e-9
    assert ds["cosine_zero_ablation"] < ds["cosine_sae"]
