"""acts.attribute on tiny models: IG completeness, atp == exact where the model is linear
in the hookpoint, padding, persistence, edges, and bad input named in the errors."""
from __future__ import annotations

import types

import pytest
import torch

import actspace as acts
from actspace.assets.byte_tokenizer import build_byte_tokenizer
from actspace.model.hooks import first_tensor


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=256, eos_token_id=256)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def sae32():
    torch.manual_seed(1)
    sae = acts.SAE(32, 64, k=8)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)      # every latent a little active: k fire per token
    return sae


class LinearLM(torch.nn.Module):
    """Embedding -> proj (the hookpoint) -> head: logits are linear in proj's output."""

    def __init__(self, vocab=257, d=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.proj = torch.nn.Linear(d, d)
        self.mix = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.proj(self.emb(input_ids))                              # [B, T, d]
        # linear mixing across positions (causal cumulative mean) keeps it linear
        w = attention_mask.float().unsqueeze(-1)
        h = (h * w).cumsum(1) / w.cumsum(1).clamp_min(1)
        return types.SimpleNamespace(logits=self.head(self.mix(h)))


PROMPTS = ["def f(x", "the value of None", "a"]


def canonical(res):
    """res's columns sorted by node identity (prompt, hookpoint, position, kind, index)."""
    c = res.columns
    key = torch.stack([c[k] for k in ("prompt", "hookpoint", "position", "kind", "index")], 1)
    order = sorted(range(len(res)), key=lambda i: key[i].tolist())
    return {k: v[order] for k, v in c.items()}
METRIC = acts.metrics.logit_diff(")", ",")


def test_ig_completeness_tiny(tiny, tok, sae32):
    res = acts.attribute(tiny, tok, PROMPTS, METRIC, saes={"transformer.h.0": sae32},
                         neurons=["transformer.h.1.mlp"], method="ig", steps=64)
    for hp in res.hookpoints:
        for p in range(len(PROMPTS)):
            want = res.metric[p] - res.meta["metric_baseline"][hp][p]
            assert abs(res.total(p, hp) - want) <= 0.01 * abs(want) + 1e-6, (hp, p)


@pytest.mark.parametrize("baseline", ["zero", "mean", "corrupted"])
def test_atp_equals_exact_when_linear(tok, baseline):
    torch.manual_seed(0)
    model = LinearLM().eval()
    sae = acts.SAE(16, 40, k=6)
    kw = {}
    if baseline == "mean":
        kw["stats"] = {"proj": torch.randn(16)}
    base = ["zzzzzzz", "xyz"] if baseline == "corrupted" else baseline
    prompts = ["def f(x", "abc"]
    for sites in ({"saes": {"proj": sae}}, {"neurons": ["proj"]}):
        atp = acts.attribute(model, tok, prompts, METRIC, method="atp", baseline=base,
                             **sites, **kw)
        ex = acts.attribute(model, tok, prompts, METRIC, method="exact", baseline=base,
                            **sites, **kw)
        assert len(atp) == len(ex) > 0
        torch.testing.assert_close(ex.columns["score"], atp.columns["score"],
                                   atol=1e-4, rtol=1e-4)
        # a linear model: the node scores also add up to the whole hookpoint's change
        for p in range(2):
            assert abs(atp.total(p)) > 0


def test_padding_same_alone_and_in_batch(tiny, tok, sae32):
    kw = dict(saes={"transformer.h.0": sae32}, neurons=["transformer.h.1"])
    alone = acts.attribute(tiny, tok, ["def f(x"], METRIC, **kw)
    batch = acts.attribute(tiny, tok, ["the value of None is", "def f(x", "a"], METRIC, **kw)
    sel = batch.columns["prompt"] == 1
    for k in ("hookpoint", "position", "kind", "index"):
        assert torch.equal(alone.columns[k], batch.columns[k][sel]), k
    torch.testing.assert_close(batch.columns["score"][sel], alone.columns["score"],
                               atol=1e-5, rtol=1e-4)
    assert abs(batch.metric[1] - alone.metric[0]) < 1e-5


def test_chunked_positions_match(tiny, tok, sae32):
    kw = dict(saes={"transformer.h.0": sae32})
    a = acts.attribute(tiny, tok, PROMPTS, METRIC, **kw)
    b = acts.attribute(tiny, tok, PROMPTS, METRIC, chunk_tokens=3, batch_size=1, **kw)
    a, b = canonical(a), canonical(b)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["position"], b["position"])
    torch.testing.assert_close(a["score"], b["score"], atol=1e-5, rtol=1e-4)


def test_latent_scores_are_projected_gradients(tiny, tok, sae32):
    """A latent's atp score = (hookpoint gradient · W_dec[latent]) × activation, against a
    dense float64 computation."""
    res = acts.attribute(tiny, tok, ["def f(x"], METRIC, saes={"transformer.h.0": sae32})
    ids = torch.tensor([tok("def f(x")["input_ids"]])
    held = {}

    def grab(module, args, out):
        held["x"] = first_tensor(out)
        held["x"].retain_grad()
    h = tiny.transformer.h[0].register_forward_hook(grab)
    try:
        logits = tiny(input_ids=ids).logits
    finally:
        h.remove()
    (logits[0, -1, ord(")")] - logits[0, -1, ord(",")]).backward()
    G = held["x"].grad[0].double()                                      # [T, d]
    with torch.no_grad():
        dense = sae32.encode(held["x"][0].detach()).to_dense().double()  # [T, M]
    want = (G @ sae32.W_dec.detach().double().T) * dense               # [T, M]
    for r in res.top(10, kinds="latent"):
        assert abs(r["score"] - float(want[r["position"], r["index"]])) < 1e-5


def test_save_load_json(tiny, tok, sae32, tmp_path):
    res = acts.attribute(tiny, tok, PROMPTS, METRIC, saes={"transformer.h.0": sae32})
    res.save(tmp_path / "attr")
    back = acts.Attribution.load(tmp_path / "attr")
    assert back.top(5) == res.top(5)
    obj = res.to_json(tmp_path / "a.json", top=3)
    assert len(obj["nodes"]) == 9 and obj["hookpoints"] == ["transformer.h.0"]
    assert len(res.token_heat(0)) == len(res.tokens[0])


def test_edges(tiny, tok, sae32):
    torch.manual_seed(2)
    down = acts.SAE(32, 64, k=8)
    e = acts.attribute_edges(tiny, tok, ["def f(x"], METRIC,
                             saes={"transformer.h.0": sae32, "transformer.h.1": down},
                             upstream="transformer.h.0", downstream="transformer.h.1", top=3)
    rows = e.top(1000)
    assert rows and {r["down_latent"] for r in rows} <= set(range(64))
    # causal: nothing upstream at a later position feeds a downstream latent
    assert all(r["up_position"] <= r["down_position"] for r in rows)


def test_bad_input(tiny, tok, sae32):
    with pytest.raises(ValueError, match="' Paris' is 6 tokens"):
        acts.attribute(tiny, tok, PROMPTS, acts.metrics.logit_diff(" Paris", " London"),
                       saes={"transformer.h.0": sae32})
    with pytest.raises(ValueError, match="transformer.h.9"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, saes={"transformer.h.9": sae32})
    with pytest.raises(ValueError, match="transformer.hh.0"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, neurons=["transformer.hh.0"])
    with pytest.raises(ValueError, match=r"d_in=48.*transformer.h.0.*d=32"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, saes={"transformer.h.0": acts.SAE(48, 64, k=4)})
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        acts.attribute(tiny, tok, PROMPTS, acts.metrics.logit_diff(300, 5), neurons=["transformer.h.0"])
    with pytest.raises(ValueError, match="corrupted prompt 0 has"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, neurons=["transformer.h.0"],
                       baseline=["x", "the value of None", "a"])
    with pytest.raises(ValueError, match="stats"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, neurons=["transformer.h.0"], baseline="mean")
    with pytest.raises(ValueError, match="method"):
        acts.attribute(tiny, tok, PROMPTS, METRIC, neurons=["transformer.h.0"], method="relp")


def test_unknown_word_named(tok):
    from _models import load_minilm

    model, mtok = load_minilm()
    with pytest.raises(ValueError, match="not in the vocabulary|tokens"):
        acts.attribute(model, mtok, ["hi"], acts.metrics.logit_diff("qqqzzxj", "a"),
                       neurons=["encoder.layer.0"])


def test_mean_baseline_from_activation_stats(tok):
    torch.manual_seed(0)
    model = LinearLM().eval()
    x = torch.randn(50, 16)
    st = acts.ActivationStats(16)
    st.update(x)
    a = acts.attribute(model, tok, ["def f(x"], METRIC, neurons=["proj"], baseline="mean",
                       stats={"proj": st})
    b = acts.attribute(model, tok, ["def f(x"], METRIC, neurons=["proj"], baseline="mean",
                       stats={"proj": x.double().mean(0)})
    torch.testing.assert_close(a.columns["score"], b.columns["score"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.columns["baseline"][:16], x.mean(0), atol=1e-5, rtol=1e-4)
