"""`actspace attribute` and the report's attribution section, on a tiny saved GPT-2."""
from __future__ import annotations

import json
import os

import pytest
import torch

import actspace as acts
from actspace.assets.byte_tokenizer import build_byte_tokenizer
from actspace.cli.main import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_byte_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32,
                                       n_layer=2, n_head=2, bos_token_id=256,
                                       eos_token_id=256)).eval()
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    sae = acts.SAE(32, 64, k=8)
    sae.save(d / "sae")
    return model, tok, sae, d


def test_cli_attribute(saved, tmp_path, capsys):
    model, tok, sae, d = saved
    rc = main(["attribute", "--model", str(d / "model"), "--prompt", "def f(x",
               "--prompt", "a(b", "--target", ")", "--other", ",",
               "--sae", f"transformer.h.0={d / 'sae'}", "--neurons", "transformer.h.1",
               "--top", "5", "--out", str(tmp_path / "out")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "transformer.h.0" in printed and "score" in printed
    res = acts.Attribution.load(tmp_path / "out" / "attribution")
    want = acts.attribute(model, tok, ["def f(x", "a(b"], acts.metrics.logit_diff(")", ","),
                          saes={"transformer.h.0": sae}, neurons=["transformer.h.1"])
    assert res.top(5) == want.top(5)
    top = json.loads((tmp_path / "out" / "top.json").read_text())
    assert len(top["nodes"]) == 10


def test_cli_bad_input(saved, tmp_path, capsys):
    _, _, _, d = saved
    rc = main(["attribute", "--model", str(d / "model"), "--prompt", "x", "--target", " Paris",
               "--other", ",", "--sae", f"transformer.h.0={d / 'sae'}"])
    assert rc == 2 and "' Paris' is 6 tokens" in capsys.readouterr().err
    rc = main(["attribute", "--model", str(d / "model"), "--prompt", "x", "--target", ")",
               "--sae", f"transformer.h.7={d / 'sae'}"])
    assert rc == 2 and "transformer.h.7" in capsys.readouterr().err
    rc = main(["attribute", "--model", str(d / "model"), "--prompt", "x", "--target", ")",
               "--sae", f"transformer.h.0={tmp_path / 'nope'}"])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_report_section(saved, tmp_path):
    from actspace.attribution.summary import summarize
    from actspace.report.html import render

    model, tok, sae, _ = saved
    res = acts.attribute(model, tok, ["<script>x", "def f(x"], acts.metrics.logit_diff(")", ","),
                         saes={"transformer.h.0": sae})
    summ = summarize(res, 5)
    top_latent = next(r for r in summ["prompts"][0]["top"] if r["kind"] == "latent")
    os.makedirs(tmp_path / "attribution")
    (tmp_path / "attribution" / "top.json").write_text(json.dumps(summ))
    os.makedirs(tmp_path / "cards")
    (tmp_path / "cards" / "transformer.h.0.json").write_text(json.dumps(
        {"frequency": [0.1] * 64, "cards": [{"latent": top_latent["index"], "frequency": 0.1,
                                            "mean_activation": 1.0, "examples": []}]}))
    page = render(tmp_path)
    assert "<h2>Attribution</h2>" in page
    anchor = f"card-transformer.h.0-{top_latent['index']}"
    assert f'href="#{anchor}"' in page and f"id='{anchor}'" in page
    assert "<script>" not in page and "&lt;" in page
    assert len(summ["prompts"][1]["heat"]) == len(res.tokens[1])
