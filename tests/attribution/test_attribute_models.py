"""Attribution on real models: the shipped pydoc LM and all-MiniLM-L6-v2, with small SAEs
trained here on their activations. Ablating the top-10 attributed latents of a prompt must
move the metric at least 5x more than ablating 10 random active latents (mean over
prompts), and integrated gradients must be complete on the pydoc LM."""
from __future__ import annotations

import pydoc_data.topics as topics
import pytest
import torch

import actspace as acts
from actspace.attribution.splice import replace_at


def _texts(n: int, width: int, start: int = 0) -> list[str]:
    text = " ".join(topics.topics[k] for k in sorted(topics.topics)[3:40])
    text = " ".join(text.split())
    return [text[start + i * width: start + (i + 1) * width] for i in range(n)]


def _train_sae(model, tok, hookpoint, texts, d_sae, k, steps):
    xs = []
    with acts.capture(model, [hookpoint]) as cap:
        for i in range(0, len(texts), 16):
            enc = tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True,
                      max_length=128)
            with torch.no_grad():
                model(**enc)
            xs.append(cap[hookpoint][enc["attention_mask"].bool()])
            cap.clear()
    x = torch.cat(xs)
    res = acts.train_sae(x, d_sae=d_sae, k=k, batch_size=256, steps=steps, seed=0,
                         progress=False, log_every=10 ** 9)
    return res.sae.eval()


def _ablated_metric(model, tok, prompt, rows, sae, hookpoint, metric_fn):
    """metric after setting the rows' latents to 0 at their positions (one prompt)."""
    enc = tok([prompt], return_tensors="pt")
    W = sae.W_dec.detach()

    def fn(x):
        x = x.clone()
        for r in rows:
            x[0, r["position"]] -= r["activation"] * W[r["index"]].to(x.dtype)
        return x
    with torch.no_grad(), replace_at(model, hookpoint, fn):
        return float(metric_fn(model(**enc), enc["attention_mask"])[0])


def _top_vs_random(model, tok, prompts, metric, sae, hookpoint):
    res = acts.attribute(model, tok, prompts, metric, saes={hookpoint: sae})
    fn = acts.metrics.as_metric(metric).bind(model, tok)
    gen = torch.Generator().manual_seed(0)
    top_eff, rand_eff = [], []
    for p, prompt in enumerate(prompts):
        rows = res.top(10 ** 9, prompt=p, kinds="latent")
        top = rows[:10]
        pick = torch.randperm(len(rows), generator=gen)[:10].tolist()
        rand = [rows[i] for i in pick]
        clean = res.metric[p]
        top_eff.append(abs(clean - _ablated_metric(model, tok, prompt, top, sae, hookpoint, fn)))
        rand_eff.append(abs(clean - _ablated_metric(model, tok, prompt, rand, sae, hookpoint,
                                                    fn)))
    return sum(top_eff) / len(top_eff), sum(rand_eff) / len(rand_eff)


@pytest.fixture(scope="module")
def minilm():
    from _models import load_minilm

    torch.manual_seed(0)
    model, tok = load_minilm()
    sae = _train_sae(model, tok, "encoder.layer.3", _texts(64, 120), 768, 16, 40)
    return model, tok, sae


def test_minilm_top_latents_matter(minilm):
    model, tok, sae = minilm
    with torch.no_grad():
        enc = tok(["The function returns a new list."], return_tensors="pt")
        target = model(**enc).last_hidden_state[0].mean(0)
    prompts = _texts(6, 90, start=20000)
    top, rand = _top_vs_random(model, tok, prompts, acts.metrics.cosine(target), sae,
                               "encoder.layer.3")
    print(f"MiniLM: top-10 ablation {top:.4g}, random-10 {rand:.4g}, ratio {top / rand:.3g}")
    assert top >= 5 * rand, (top, rand)


@pytest.fixture(scope="module")
def pydoc_lm():
    from actspace.assets import load_pydoc_lm

    torch.manual_seed(0)
    model, tok = load_pydoc_lm()
    sae = _train_sae(model, tok, "transformer.h.2", _texts(64, 120), 512, 12, 40)
    return model, tok, sae


def _next_byte_metric(model, tok, prompts):
    """Per prompt: logit(model's top next byte) - logit(its second), a custom metric."""
    ids = []
    with torch.no_grad():
        for p in prompts:
            enc = tok([p], return_tensors="pt")
            ids.append(model(**enc).logits[0, -1].topk(2).indices)
    ids = torch.stack(ids)                                               # [P, 2]
    from actspace.attribution.metrics import last_positions

    def fn(outputs, mask):
        last = outputs.logits[torch.arange(mask.shape[0]), last_positions(mask)]
        rows = torch.arange(mask.shape[0])
        return last[rows, ids[:, 0]] - last[rows, ids[:, 1]]
    return fn


def test_pydoc_lm_top_latents_matter(pydoc_lm):
    model, tok, sae = pydoc_lm
    prompts = _texts(6, 60, start=30000)
    # one prompt per call: the metric's token ids are per prompt
    tops, rands = [], []
    for p in prompts:
        t, r = _top_vs_random(model, tok, [p], _next_byte_metric(model, tok, [p]), sae,
                              "transformer.h.2")
        tops.append(t)
        rands.append(r)
    print(f"pydoc LM: top-10 ablation {sum(tops) / 6:.4g}, random-10 {sum(rands) / 6:.4g}, "
          f"ratio {sum(tops) / sum(rands):.3g}")
    assert sum(tops) >= 5 * sum(rands), (tops, rands)


def test_pydoc_lm_ig_completeness(pydoc_lm):
    model, tok, sae = pydoc_lm
    res = acts.attribute(model, tok, ["    def __init__(self", "The return value is"],
                         acts.metrics.logit_diff(")", ","), saes={"transformer.h.2": sae}, method="ig", steps=64)
    for p in range(2):
        want = res.metric[p] - res.meta["metric_baseline"]["transformer.h.2"][p]
        assert abs(res.total(p) - want) <= 0.01 * abs(want), (p, res.total(p), want)


def test_pydoc_lm_learned():
    from actspace.assets import asset_path
    from actspace._io import read_json

    curve = read_json(asset_path("pydoc_lm") + "/loss_curve.json")
    assert curve["held_out_bits_per_byte"] < 0.8 * curve["unigram_bits_per_byte"]
