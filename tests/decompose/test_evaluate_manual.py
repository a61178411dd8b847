"""downstream_metrics recomputed independently: a tiny random GPT-2 with a left-padding
tokenizer that adds special tokens (the real MiniLM WordPiece one, [CLS] ... [SEP]); the
splices done by hand with a forward hook on real non-special positions, CE and KL by hand.
Also: the caller's tokenizer is never changed (no pad token is set on it), and padding
does not change the numbers (positions count real tokens only)."""
from __future__ import annotations

import copy

import pytest
import torch

from _models import load_minilm
from _saeeval_helpers import basis_sae
from actspace.decompose.evaluate import evaluate_sae

pytestmark = pytest.mark.usefixtures("one_thread")

HP = "transformer.h.0"


def _texts():
    from pydoc_data.topics import topics
    keys = sorted(topics)[:5]
    return [" ".join(topics[k].split())[:40 + 45 * i] for i, k in enumerate(keys)]


@pytest.fixture(scope="module")
def setup():
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok = load_minilm()
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=128, n_embd=32,
                                       n_layer=2, n_head=4, initializer_range=0.2)).eval()
    texts = _texts()
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128,
              return_special_tokens_mask=True)
    mask = enc["attention_mask"].bool()                                  # [B, T]
    # positions count real tokens only (GPT-2 does not derive them from the mask)
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "position_ids": pos}
    keep = mask & ~enc["special_tokens_mask"].bool()                     # [B, T]
    assert not mask[:, 0].all() and mask[:, -1].all()                    # left padding
    assert (mask & ~keep).sum() == 2 * len(texts)                        # [CLS], [SEP]
    return model, tok, texts, batch, mask, keep


def _run(model, batch, replace=None):
    """float64 log-probs [B, T, V] with block HP's output h [B, T, d] replaced by
    replace(h) (None: clean)."""
    handle = None
    if replace is not None:
        handle = model.transformer.h[0].register_forward_hook(lambda m, a, out: replace(out))
    try:
        with torch.no_grad():
            return torch.log_softmax(model(**batch).logits.double(), -1)
    finally:
        if handle is not None:
            handle.remove()


def test_ce_kl_mean_ablation_by_hand_left_padding(setup):
    model, tok, texts, batch, mask, keep = setup
    seen = []
    h = model.transformer.h[0].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(**batch)
    h.remove()
    data = seen[0][keep]                      # [n, d]: what a default capture would store
    mean = data.double().mean(0)
    _, _, Vh = torch.linalg.svd(data - data.mean(0), full_matrices=False)
    sae = basis_sae(32, k=6, mean=data.mean(0), basis=Vh)

    def sae_splice(out):                      # [B, T, d] -> SAE output on keep positions
        with torch.no_grad():
            rec = sae(out.reshape(-1, 32))[0].reshape(out.shape)
        return torch.where(keep[..., None], rec, out)
    splices = {"sae": sae_splice,
               "zero_ablation": lambda out: torch.where(keep[..., None], 0.0, out),
               "mean_ablation": lambda out: torch.where(keep[..., None], mean.float(), out)}
    ids = batch["input_ids"]
    valid = mask[:, :-1] & mask[:, 1:]        # [B, T-1]: a real token with a real next one
    lp_clean = _run(model, batch)

    def ce(lp):
        return -lp[:, :-1].gather(2, ids[:, 1:, None])[..., 0][valid].mean().item()

    def kl(lp):                               # mean over real positions of KL(clean ‖ lp)
        return (lp_clean.exp() * (lp_clean - lp)).sum(-1)[mask].mean().item()
    want = {"ce_clean": ce(lp_clean)}
    for kind, fn in splices.items():
        lp = _run(model, batch, fn)
        want[f"ce_{kind}"], want[f"kl_{kind}"] = ce(lp), kl(lp)
    want["ce_loss_score"] = ((want["ce_zero_ablation"] - want["ce_sae"])
                             / (want["ce_zero_ablation"] - want["ce_clean"]))

    got = evaluate_sae(sae, data, model=model, tokenizer=tok, texts=texts, hookpoint=HP,
                       text_batch_size=8)["downstream"]    # one batch, as by hand
    assert got["n_tokens"] == int(valid.sum())
    assert got["n_spliced_positions"] == int(keep.sum())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert got["kl_zero_ablation"] > got["kl_mean_ablation"] > got["kl_sae"] > 0
    assert abs(got["kl_sae_with_error"]) < 1e-12


def test_tokenizer_not_mutated(setup):
    """A tokenizer without a pad token (as GPT-2's) is padded without being given one."""
    model, tok, texts, batch, mask, keep = setup
    bare = copy.deepcopy(tok)
    bare.pad_token = None
    assert bare.pad_token is None
    sae = basis_sae(32, k=6)
    kw = dict(model=model, texts=texts, hookpoint=HP, text_batch_size=8)
    res = evaluate_sae(sae, tokenizer=bare, **kw)["downstream"]
    assert bare.pad_token is None and bare.pad_token_id is None and bare.padding_side == "left"
    ref = evaluate_sae(sae, tokenizer=tok, **kw)["downstream"]    # same ids: pads masked
    for key in ("ce_clean", "ce_sae", "kl_sae", "ce_zero_ablation"):
        assert res[key] == pytest.approx(ref[key], rel=1e-12), key
    assert tok.pad_token == "[PAD]"


def test_batch_grouping_does_not_change_the_numbers(setup):
    """Left padding with real-token positions: each text costs the same whether it is
    evaluated alone or padded into a batch with longer ones."""
    model, tok, texts, batch, mask, keep = setup
    sae = basis_sae(32, k=6)
    kw = dict(model=model, tokenizer=tok, texts=texts, hookpoint=HP)
    alone = evaluate_sae(sae, text_batch_size=1, **kw)["downstream"]
    together = evaluate_sae(sae, text_batch_size=8, **kw)["downstream"]
    for key in ("ce_clean", "ce_sae", "kl_sae", "ce_zero_ablation", "kl_zero_ablation"):
        assert together[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), key
