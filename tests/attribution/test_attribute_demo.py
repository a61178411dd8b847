"""`actspace demo --causal --quick`: the pipeline on the shipped pydoc LM end to end (CE/KL
of the SAE splice, steering with generated samples, attribution in the report), and the
shipped model's files."""
from __future__ import annotations

import json
import os

from actspace.assets import asset_path, load_pydoc_lm
from actspace.cli.main import main


def test_shipped_lm_files():
    d = asset_path("pydoc_lm")
    assert os.path.getsize(os.path.join(d, "model.safetensors")) <= 5 * 2 ** 20
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "loss_curve.json",
              "loss_curve.png"):
        assert os.path.isfile(os.path.join(d, f)), f
    model, tok = load_pydoc_lm()
    assert tok("def")["input_ids"] == list(b"def")
    assert model.config.model_type == "gpt2" and model.config.vocab_size == len(tok)


def test_demo_causal_quick(tmp_path):
    out = str(tmp_path / "out")
    assert main(["demo", "--causal", "--quick", "--out", out, "--no-progress"]) == 0
    ev = json.load(open(os.path.join(out, "eval", "transformer.h.2.json")))["downstream"]
    assert ev["task"] == "causal_lm" and ev["ce_sae_with_error"] == ev["ce_clean"]
    assert ev["ce_clean"] < ev["ce_sae"] < ev["ce_zero_ablation"]
    sweep = json.load(open(os.path.join(out, "steer", "sweep.json")))
    assert sweep["samples"] and all(s["plain"] and s["steered"] for s in sweep["samples"])
    top = json.load(open(os.path.join(out, "attribution", "top.json")))
    assert len(top["prompts"]) == 4 and all(p["top"] for p in top["prompts"])
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "<h2>Attribution</h2>" in page and "generated (alpha" in page
