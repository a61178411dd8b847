"""`actspace encode` end to end: a real SAE saved in the SAELens layout and a store
captured from the real MiniLM."""
from __future__ import annotations

import json
import os

import pytest
import torch

import actspace as acts
from _models import minilm_dir
from _saeeval_helpers import basis_sae
from actspace.cli.main import main
from actspace.stats.latent import LatentStats

HP = "encoder.layer.1"


def test_encode_cli(tmp_path, capsys):
    from pydoc_data.topics import topics
    from transformers import AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    docs = [" ".join(topics[k].split())[:150] for k in sorted(topics)[:4]]
    acts.capture_to_store(model, tok, docs, HP, tmp_path / "acts", batch_size=2,
                          max_length=32, shard_rows=40, stats=False, progress=False)
    store = acts.ActivationStore.open(tmp_path / "acts")       # the capture out_dir's one store
    n = len(store)
    assert len(store.shards) > 1
    basis_sae(384, k=3, hookpoint=HP).save(tmp_path / "sae")
    rc = main(["encode", str(tmp_path / "sae"), str(tmp_path / "acts"), str(tmp_path / "lat"),
               "--batch-size", "7", "--values-dtype", "bfloat16", "--top-t", "3",
               "--context", "1", "--tokenizer", minilm_dir(), "--no-progress"])
    assert rc == 0 and f"encoded {n} tokens" in capsys.readouterr().out
    man = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    assert man["rows"] == n and man["dtype"] == "bfloat16" and man["k"] == 3
    assert man["hookpoint"] == HP and man["source"] == os.path.realpath(store.path)
    assert [s["source_sha256"] for s in man["shards"]] == [s["sha256"] for s in store.shards]
    st = LatentStats.load(tmp_path / "lat")
    assert st.n_tokens == n and st.top_values.shape == (768, 3)
    assert torch.isfinite(st.mean_activation).all()
    ex = json.loads((tmp_path / "lat" / "top_examples.json").read_text())
    token_ids = store.read(0, n, "token_ids")
    for entries in ex.values():
        for e in entries:             # the example's token is the store's token at that row
            assert e["token_id"] == int(token_ids[e["token"]])
            assert e["token_text"] == tok.decode([e["token_id"]])
            assert e["token_text"].replace("##", "") in e["text"].replace(" ", "")


def test_encode_cli_error(tmp_path, capsys):
    basis_sae(16, k=3).save(tmp_path / "sae")
    rc = main(["encode", str(tmp_path / "sae"), str(tmp_path / "none"), str(tmp_path / "o")])
    assert rc == 2 and "no activation store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", str(tmp_path / "sae")])
