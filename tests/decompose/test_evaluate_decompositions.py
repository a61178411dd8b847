"""evaluate_sae on decompositions other than the SAE: SNMF and PCA (dense codes), an object
with nothing but encode/decode (widths read off the data and the code), and the one firing
rule (value > 0) shared by evaluate and LatentStats for codes with negative values."""
from __future__ import annotations

import copy

import pytest
import torch

import actspace as acts
from _models import load_minilm
from actspace.decompose.evaluate import evaluate_sae
from actspace.stats.latent import LatentStats

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(N=400, d=12, r=5, seed=0):
    """Rank-r signal plus a little noise, off-centre: [N, d]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, r, generator=g) @ torch.randn(r, d, generator=g)
            + 0.05 * torch.randn(N, d, generator=g) + 2.0)


class Bare:
    """Only encode and decode: no d_in, d_sae, dtype, device or __call__."""

    def __init__(self, inner):
        self.encode, self.decode = inner.encode, inner.decode


def _by_hand(dec, x, batch=64):
    """float64 FVU, L0 (value > 0), dead-latent count and code of dec on x [N, d], encoded
    in the batches evaluate uses (SNMF's iterative encode differs in the last digits)."""
    with torch.no_grad():
        z = torch.cat([dec.encode(b) for b in x.split(batch)])
        x_hat = dec.decode(z).double()
    x64 = x.double()
    fvu = ((x64 - x_hat) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    fired = z > 0
    return fvu.item(), fired.sum().item() / x.shape[0], int((fired.sum(0) == 0).sum()), z


@pytest.mark.parametrize("make", ["snmf", "pca"])
def test_dense_decompositions_reconstruction(make):
    x = _data()
    dec = (acts.SNMF(6, l1=0.05).fit(x, n_iter=40) if make == "snmf"
           else acts.PCA(4).fit(x))
    fvu, l0, dead, z = _by_hand(dec, x)
    for obj in (dec, Bare(dec)):          # the same numbers with or without declared widths
        res = evaluate_sae(obj, x, batch_size=64)
        rec = res["reconstruction"]
        assert res["d_in"] == 12 and res["d_sae"] == z.shape[1]
        assert rec["n_tokens"] == 400 and rec["nonfinite_rows"] == 0
        assert rec["fvu"] == pytest.approx(fvu, rel=1e-5)
        assert rec["l0"] == pytest.approx(l0, rel=1e-6)
        assert rec["dead_latents"] == dead
    if make == "pca":
        # FVU of a PCA is the unexplained share of the variance; scores are mixed-sign, so
        # about half of them count as fired (a negative value is not a firing)
        assert rec["fvu"] == pytest.approx(1 - dec.explained_variance_ratio_.sum().item(),
                                           rel=1e-4, abs=1e-6)
        assert 0.5 * 4 * 0.6 < rec["l0"] < 0.5 * 4 * 1.4
    else:
        assert rec["fvu"] < 0.05 and (z >= 0).all()


def test_firing_rule_matches_latent_stats():
    """A signed sparse code (top-k by |pre|, sign kept, as activation="none" gives):
    evaluate's L0 and dead latents count only values > 0, exactly as LatentStats does."""
    g = torch.Generator().manual_seed(1)
    M, d, k = 40, 12, 5
    W = torch.randn(M, d, generator=g) / d ** 0.5

    class Signed:
        d_sae = M

        def encode(self, x):                  # x [N, d] -> (values [N, k], indices [N, k])
            pre = x @ W.T
            idx = pre.abs().topk(k, dim=1).indices
            return pre.gather(1, idx), idx.to(torch.int32)

        def decode(self, code):               # -> [N, d]
            v, i = code
            return (v[..., None] * W[i.long()]).sum(1)
    x = torch.randn(300, d, generator=g)
    code = Signed().encode(x)
    assert (code[0] < 0).any() and (code[0] > 0).any()
    st = LatentStats(M).update(code)
    rec = evaluate_sae(Signed(), x, batch_size=70)["reconstruction"]
    assert rec["l0"] * 300 == pytest.approx(int(st.counts.sum()))
    assert rec["l0"] < k
    assert rec["dead_latents"] == int(st.dead().sum())
    freq = st.frequency[st.counts > 0]
    assert sum(rec["freq_hist"]["counts"]) == freq.numel()


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok = load_minilm()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=128, n_embd=32,
                                       n_layer=2, n_head=4, initializer_range=0.2)).eval()
    from pydoc_data.topics import topics
    texts = [" ".join(topics[k].split())[:150] for k in sorted(topics)[:6]]
    enc = tok(texts, return_tensors="pt", padding=True, return_special_tokens_mask=True)
    keep = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
    seen = []
    h = model.transformer.h[0].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    h.remove()
    return model, copy.deepcopy(tok), texts, seen[0][keep]


def test_downstream_splice_snmf_and_pca(gpt2):
    model, tok, texts, data = gpt2
    kw = dict(model=model, tokenizer=tok, texts=texts, hookpoint="transformer.h.0")
    full = evaluate_sae(acts.PCA().fit(data), data, **kw)         # all 32 components
    assert full["reconstruction"]["fvu"] < 1e-6
    assert full["downstream"]["kl_sae"] < 1e-6
    for dec in (acts.PCA(4).fit(data), acts.SNMF(8).fit(data, n_iter=30)):
        res = evaluate_sae(dec, data, **kw)
        ds = res["downstream"]
        assert res["d_in"] == 32 and ds["task"] == "causal_lm"
        assert abs(ds["kl_sae_with_error"]) < 1e-9
        assert ds["kl_zero_ablation"] > ds["kl_sae"] > 0
        assert ds["ce_mean_ablation"] > ds["ce_clean"]
    with pytest.raises(ValueError, match="hookpoint is required"):
        evaluate_sae(acts.PCA(4).fit(data), model=model, tokenizer=tok, texts=texts)
    with pytest.raises(TypeError, match="decode"):
        evaluate_sae(type("E", (), {"encode": lambda self, x: x})(), data)
