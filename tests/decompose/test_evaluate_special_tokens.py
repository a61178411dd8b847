"""Splicing into the real MiniLM leaves special tokens ([CLS], [SEP]) and padding as they
are by default (a capture job never stores them, so the SAE never saw them), for every
splice kind; splice_special_tokens=True splices them too (the behaviour before)."""
from __future__ import annotations

import pytest
import torch

from _models import load_minilm
from _saeeval_helpers import basis_sae
from actspace.decompose.evaluate import SPLICES, evaluate_sae, splice

pytestmark = pytest.mark.usefixtures("one_thread")

HP = "encoder.layer.2"


@pytest.fixture(scope="module")
def setup():
    from pydoc_data.topics import topics
    model, tok = load_minilm()
    texts = [" ".join(topics[k].split())[:60 + 50 * (i % 4)]
             for i, k in enumerate(sorted(topics)[:6])]
    enc = tok(texts, return_tensors="pt", padding=True, return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask").bool()                     # [B, T]
    mask = enc["attention_mask"].bool()                                 # [B, T]
    seen = []
    with torch.no_grad(), splice(model, HP, lambda x: seen.append(x) or x):
        model(**enc)
    data = seen[0][mask & ~special]          # [n, d]: what capture_to_store keeps by default
    _, _, Vh = torch.linalg.svd(data - data.mean(0), full_matrices=False)
    sae = basis_sae(384, k=24, mean=data.mean(0), basis=Vh, hookpoint=HP)
    return model, tok, texts, enc, mask, special, data, sae


def _spliced_inputs(model, sae, data, tok, texts, **kw):
    """The tensors entering encoder.layer.3 (= encoder.layer.2's spliced output) in each
    forward evaluate_sae runs: the clean one first, then one per splice kind."""
    got = []
    handle = model.encoder.layer[3].register_forward_pre_hook(
        lambda m, args, kwargs: got.append(
            (args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
    try:
        res = evaluate_sae(sae, data, model=model, tokenizer=tok, texts=texts,
                           text_batch_size=8, **kw)
    finally:
        handle.remove()
    return res["downstream"], got[0], dict(zip(SPLICES, got[1:]))


def test_special_positions_untouched(setup):
    model, tok, texts, enc, mask, special, data, sae = setup
    ds, clean, spliced = _spliced_inputs(model, sae, data, tok, texts)
    assert ds["splice_special_tokens"] is False
    assert ds["n_spliced_positions"] == int((mask & ~special).sum()) == data.shape[0]
    content = mask & ~special                                           # [B, T]
    for kind, x in spliced.items():
        assert torch.equal(x[~content], clean[~content]), kind        # [CLS]/[SEP]/padding
        if kind != "sae_with_error":                                    # identity, below
            assert not torch.equal(x[content], clean[content]), kind
    assert (spliced["zero_ablation"][content] == 0).all()
    mean = data.double().mean(0).float()
    assert torch.equal(spliced["mean_ablation"][content], mean.expand(int(content.sum()), -1))
    with torch.no_grad():
        want = sae(clean[content])[0]
    torch.testing.assert_close(spliced["sae"][content], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(spliced["sae_with_error"], clean)


def test_splice_special_tokens_option_restores_all_positions(setup):
    model, tok, texts, enc, mask, special, data, sae = setup
    ds, clean, spliced = _spliced_inputs(model, sae, data, tok, texts,
                                         splice_special_tokens=True)
    assert ds["splice_special_tokens"] is True and ds["n_spliced_positions"] == int(mask.sum())
    assert (spliced["zero_ablation"][mask] == 0).all()
    assert not torch.equal(spliced["sae"][mask & special], clean[mask & special])
    assert torch.equal(spliced["sae"][~mask], clean[~mask])            # padding never

    def pooled_cosine(keep):                  # the old behaviour, by hand: splice keep
        def fn(x):
            rec = sae(x.reshape(-1, 384))[0].reshape(x.shape)
            return torch.where(keep[..., None], rec, x)
        w = mask[..., None].double()
        with torch.no_grad():
            pc = (model(**enc)[0].double() * w).sum(1) / w.sum(1)
            with splice(model, HP, fn):
                po = (model(**enc)[0].double() * w).sum(1) / w.sum(1)
        return torch.nn.functional.cosine_similarity(po, pc, dim=-1).mean().item()
    default, _, _ = _spliced_inputs(model, sae, data, tok, texts)
    assert ds["cosine_sae"] == pytest.approx(pooled_cosine(mask), abs=1e-5)
    assert default["cosine_sae"] == pytest.approx(pooled_cosine(mask & ~special), abs=1e-5)
    # the SAE never saw [CLS]/[SEP]: charging it for them costs more
    assert default["cosine_sae"] > ds["cosine_sae"]
    assert default["rel_change_zero_ablation"] < ds["rel_change_zero_ablation"]
