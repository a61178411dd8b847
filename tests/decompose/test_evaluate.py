"""evaluate_sae: reconstruction metrics vs float64 formulas; splicing into a tiny random
GPT-2 and the real MiniLM (the error term reproduces the clean output; zero-ablation costs
more than a decent SAE)."""
from __future__ import annotations

import json

import pytest
import torch

import actspace as acts
from _models import load_minilm
from _saeeval_helpers import basis_sae, random_store
from actspace.decompose.evaluate import evaluate_sae, save_json, splice


pytestmark = pytest.mark.usefixtures("one_thread")


def test_reconstruction_metrics_vs_float64():
    g = torch.Generator().manual_seed(0)
    d, N = 12, 300
    # anisotropic data so TopK(k=4) is lossy; one channel-mean offset
    x = torch.randn(N, d, generator=g) * torch.linspace(3, 0.2, d) + 1.5
    sae = basis_sae(d, k=4, mean=x.mean(0), basis=torch.eye(d))  # low-variance axes die
    res = evaluate_sae(sae, x, batch_size=64, dense_threshold=0.3)["reconstruction"]
    x64 = x.double()
    xh = sae.W_dec.detach().double()  # recompute x̂ in float64 from the same code
    with torch.no_grad():
        code = sae.encode(x)
    idx = code.indices.long()
    xhat = (code.values.double()[..., None] * xh[idx.clamp_min(0)]
            * (idx >= 0)[..., None]).sum(1) + sae.b_dec.double()
    fvu = ((x64 - xhat) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    assert res["fvu"] == pytest.approx(fvu.item(), rel=1e-5)
    assert res["explained_variance"] == pytest.approx(1 - fvu.item(), rel=1e-5)
    assert res["mse"] == pytest.approx(((x64 - xhat) ** 2).mean().item(), rel=1e-5)
    fired = (idx >= 0) & (code.values != 0)
    assert res["l0"] == pytest.approx(fired.sum().item() / N)
    freq = torch.bincount(idx[fired], minlength=2 * d).double() / N
    assert res["dead_latents"] == int((freq == 0).sum()) > 0
    assert res["dense_latents"] == int((freq > 0.3).sum()) and res["dense_latents"] > 0
    h = res["freq_hist"]
    assert sum(h["counts"]) == 2 * d - res["dead_latents"]
    edges = torch.tensor(h["log10_edges"])
    expect = torch.histogram(torch.log10(freq[freq > 0]), bins=edges.double())[0]
    assert h["counts"] == expect.long().tolist()
    # same numbers from a list of batches and from a store path
    again = evaluate_sae(sae, list(x.split(77)), batch_size=50)["reconstruction"]
    assert again["fvu"] == pytest.approx(res["fvu"], rel=1e-9)
    # rows with NaN/inf are skipped and counted, the rest give the same numbers
    bad = torch.cat([x[:100], torch.full((3, d), float("nan")), x[100:]])
    bad[50, 2] = float("inf")
    res_bad = evaluate_sae(sae, bad, batch_size=64)["reconstruction"]
    ref = evaluate_sae(sae, torch.cat([x[:50], x[51:]]), batch_size=64)["reconstruction"]
    assert res_bad["nonfinite_rows"] == 4 and res_bad["n_tokens"] == N - 1
    assert res_bad["fvu"] == pytest.approx(ref["fvu"], rel=1e-9)
    with pytest.raises(ValueError, match="no finite rows"):
        evaluate_sae(sae, torch.full((3, d), float("nan")))


def test_reconstruction_from_store_and_exact_sae(tmp_path):
    store, shards = random_store(tmp_path / "s", d=8, sizes=(30, 17))
    res = evaluate_sae(basis_sae(8, k=8), str(store), batch_size=10)["reconstruction"]
    assert res["n_tokens"] == 47 and res["fvu"] < 1e-10 and res["l0"] <= 8
    same = evaluate_sae(basis_sae(8, k=8), acts.ActivationStore.open(store),
                        batch_size=10)["reconstruction"]
    assert same["fvu"] == res["fvu"] and same["n_tokens"] == 47


def test_bad_input():
    sae = basis_sae(8, k=2)
    with pytest.raises(ValueError, match="d_in"):
        evaluate_sae(sae, torch.randn(10, 9))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        evaluate_sae(sae, torch.randn(10))
    with pytest.raises(ValueError, match="data"):
        evaluate_sae(sae)
    with pytest.raises(TypeError, match="SAE-like"):
        evaluate_sae(object(), torch.randn(4, 8))


def _texts(n, chars=200):
    from pydoc_data.topics import topics
    keys = sorted(topics)[:n]
    return [" ".join(topics[k].split())[:chars - 37 * (i % 3)] for i, k in enumerate(keys)]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def _captured(model, batch, hookpoint):
    """Activations [tokens, d] at hookpoint on real (non-padding) positions."""
    seen = []
    with splice(model, hookpoint, lambda x: seen.append(x.detach()) or x), torch.no_grad():
        model(**batch)
    return seen[0][batch["attention_mask"].bool()]


def _pca_sae(acts, k, hookpoint):
    """A decent SAE for acts: ± the principal axes, centred at the mean."""
    mean = acts.mean(0)
    _, _, Vh = torch.linalg.svd(acts - mean, full_matrices=False)
    return basis_sae(acts.shape[1], k=k, mean=mean, basis=Vh, hookpoint=hookpoint)


@pytest.mark.parametrize("hookpoint", ["transformer.h.0", "transformer.h.1:input"])
def test_splice_gpt2(minilm, hookpoint):
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok = minilm
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=2,
                     n_head=4, initializer_range=0.2)
    model = GPT2LMHeadModel(cfg).eval()
    texts = _texts(6)
    batch = dict(tok(texts, return_tensors="pt", padding=True))
    batch.pop("token_type_ids")
    acts = _captured(model, batch, hookpoint)
    sae = _pca_sae(acts, k=8, hookpoint=hookpoint)
    # the error term makes the splice an identity: bit-identical logits
    with torch.no_grad():
        clean = model(**batch).logits
        from actspace.decompose.evaluate import splice_fn
        with splice(model, hookpoint, splice_fn("sae_with_error", sae, None)):
            spliced = model(**batch).logits
    assert torch.equal(clean, spliced)
    res = evaluate_sae(sae, acts, model=model, tokenizer=tok, texts=texts, text_batch_size=4)
    ds = res["downstream"]
    assert ds["task"] == "causal_lm" and ds["hookpoint"] == hookpoint
    assert ds["ce_sae_with_error"] == pytest.approx(ds["ce_clean"], abs=1e-9)
    assert abs(ds["kl_sae_with_error"]) < 1e-9
    assert res["reconstruction"]["fvu"] < 0.3
    assert ds["kl_zero_ablation"] > 2 * ds["kl_sae"] > 0
    assert ds["ce_zero_ablation"] > ds["ce_sae"]
    assert ds["kl_mean_ablation"] > ds["kl_sae"]
    # CE per token recomputed directly (padding masked) for the clean model
    logp = torch.log_softmax(clean.double(), -1)
    m = batch["attention_mask"].bool()
    valid = m[:, 1:] & m[:, :-1]
    ce = -logp[:, :-1].gather(2, batch["input_ids"][:, 1:, None])[..., 0][valid].mean()
    assert ds["ce_clean"] == pytest.approx(ce.item(), rel=1e-9)
    assert ds["n_tokens"] == int(valid.sum())


def test_splice_minilm_encoder(minilm, tmp_path):
    model, tok = minilm
    texts = _texts(8, chars=160)
    hp = "encoder.layer.2"
    batch = tok(texts, return_tensors="pt", padding=True)
    acts = _captured(model, batch, hp)
    sae = _pca_sae(acts, k=48, hookpoint=hp)
    res = evaluate_sae(sae, acts, model=model, tokenizer=tok, texts=texts, text_batch_size=4)
    ds = res["downstream"]
    assert ds["task"] == "encoder" and ds["n_sequences"] == 8
    assert ds["cosine_sae_with_error"] == pytest.approx(1.0, abs=1e-9)
    assert ds["rel_change_sae_with_error"] < 1e-9
    assert ds["cosine_zero_ablation"] < ds["cosine_sae"] < 1.0
    assert ds["rel_change_zero_ablation"] > ds["rel_change_sae"]
    save_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["downstream"]["cosine_sae"] == pytest.approx(ds["cosine_sae"])
    with pytest.raises(ValueError, match="texts"):
        evaluate_sae(sae, acts, model=model)


def test_splice_llama_input_side_matches_previous_output():
    """A Llama layer's input is the previous layer's output: splicing the same SAE at
    either name gives the same numbers (the input hook finds hidden_states), and token ids
    work as texts without a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)).eval()
    ids = torch.randint(0, 97, (3, 11))
    sae = basis_sae(32, k=6)
    a = evaluate_sae(sae, model=model, texts=ids, hookpoint="model.layers.1:input")
    b = evaluate_sae(sae, model=model, texts=ids, hookpoint="model.layers.0")
    a, b = a["downstream"], b["downstream"]
    for key in ("ce_clean", "ce_sae", "kl_sae", "ce_zero_ablation", "kl_zero_ablation"):
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key
    assert a["kl_sae_with_error"] == 0.0 and a["kl_sae"] > 0
    assert "ce_mean_ablation" not in a          # no data given: no mean to ablate with


def test_transcoder_reconstruction_and_splice(minilm):
    """A transcoder (MLP input -> MLP output of a GPT-2 block) fitted by least squares:
    FVU against the target y in float64, the "with error" splice at hookpoint_out leaves
    the logits bit-identical, and the SAE splice costs less than zero-ablating the MLP."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from actspace.decompose.evaluate import spliced, splice_fn
    _, tok = minilm
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=128, n_embd=32,
                                       n_layer=2, n_head=4, initializer_range=0.2)).eval()
    texts = _texts(6)
    batch = dict(tok(texts, return_tensors="pt", padding=True))
    batch.pop("token_type_ids")
    hp_in, hp_out = "transformer.h.0.mlp:input", "transformer.h.0.mlp"
    x, y = _captured(model, batch, hp_in), _captured(model, batch, hp_out)
    d, M = 32, 64
    sae = acts.SAE(d, M, kind="topk", k=M, d_out=d, hookpoint=hp_in, hookpoint_out=hp_out)
    assert sae.is_transcoder
    with torch.no_grad():       # all latents on: ReLU(x W_e^T) W_d fitted to y by lstsq
        sae.W_enc.copy_(torch.randn(M, d) / d ** 0.5)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        h = torch.relu(x @ sae.W_enc.T)
        sae.W_dec.copy_(torch.linalg.lstsq(h.double(), y.double()).solution.float())
    res = evaluate_sae(sae, (x, y), batch_size=50, model=model, tokenizer=tok, texts=texts,
                       text_batch_size=4)
    with torch.no_grad():
        y_hat = sae(x)[0].double()
    y64 = y.double()
    fvu = ((y64 - y_hat) ** 2).sum() / ((y64 - y64.mean(0)) ** 2).sum()
    rec, ds = res["reconstruction"], res["downstream"]
    assert rec["fvu"] == pytest.approx(fvu.item(), rel=1e-5) and rec["fvu"] < 0.5
    assert res["d_out"] == d and ds["hookpoint_out"] == hp_out
    with torch.no_grad():
        clean = model(**batch).logits
        with spliced(model, hp_in, hp_out, splice_fn, "sae_with_error", sae, None):
            same = model(**batch).logits
    assert torch.equal(clean, same)
    assert abs(ds["kl_sae_with_error"]) < 1e-9
    assert ds["kl_zero_ablation"] > ds["kl_sae"] > 0
    # the same numbers from an iterable of (x, y) batches; an unpaired input is refused
    again = evaluate_sae(sae, list(zip(x.split(40), y.split(40))), batch_size=50)
    assert again["reconstruction"]["fvu"] == pytest.approx(rec["fvu"], rel=1e-9)
    with pytest.raises(TypeError, match="pairs"):
        evaluate_sae(sae, [x])
    with pytest.raises(ValueError, match="d_out"):
        evaluate_sae(sae, (x, y[:, :5]))
